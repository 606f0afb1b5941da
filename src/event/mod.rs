//! The wire event of the Thoth ingest API and the derivation of its stable id.
//!
//! An [`Event`] serializes to exactly the JSON object that `POST /v1/events/batch`
//! takes (field names and order of the 0.5.x SDK). Its `event_id` is derived from
//! where the event came from, never from the clock or a random number, so a
//! re-sent event always carries the id of its first send (design invariant 3).

pub mod bound;
mod buf;
mod stream_metadata;

pub use buf::{EventBuf, TimeWindow};
pub use stream_metadata::StreamMetadata;

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

/// Namespace of thoth-ingest's UUIDv5 event ids. Changing it changes every id.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_bytes([
    0x5b, 0x0e, 0x8a, 0x52, 0x3c, 0x1d, 0x4f, 0x8e, 0x9a, 0x41, 0x77, 0x2c, 0xd0, 0x6e, 0x13, 0xa9,
]);

/// Seconds in the API's default event retention (90 days).
pub const DEFAULT_TTL_SECS: i64 = 90 * 24 * 3600;

/// The `event_type` of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    ToolCallPre,
    ToolCallPost,
    ToolCallBlock,
    LlmInvocation,
}

impl EventType {
    /// Parses the API spelling, ignoring ASCII case (`tool_call_pre` is accepted).
    pub fn parse(s: &str) -> Option<EventType> {
        const ALL: [(&str, EventType); 4] = [
            ("TOOL_CALL_PRE", EventType::ToolCallPre),
            ("TOOL_CALL_POST", EventType::ToolCallPost),
            ("TOOL_CALL_BLOCK", EventType::ToolCallBlock),
            ("LLM_INVOCATION", EventType::LlmInvocation),
        ];
        ALL.iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|(_, t)| *t)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ToolCallPre => "TOOL_CALL_PRE",
            EventType::ToolCallPost => "TOOL_CALL_POST",
            EventType::ToolCallBlock => "TOOL_CALL_BLOCK",
            EventType::LlmInvocation => "LLM_INVOCATION",
        }
    }

    /// The `source_type` the API expects with this event type.
    pub fn source_type(self) -> SourceType {
        match self {
            EventType::LlmInvocation => SourceType::AgentLlmInvocation,
            _ => SourceType::AgentToolCall,
        }
    }
}

/// The `source_type` of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceType {
    AgentToolCall,
    AgentLlmInvocation,
}

impl SourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceType::AgentToolCall => "agent_tool_call",
            SourceType::AgentLlmInvocation => "agent_llm_invocation",
        }
    }
}

/// The `enforcement_mode` of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EnforcementMode {
    #[default]
    Observe,
    StepUp,
    Block,
    Progressive,
}

impl EnforcementMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EnforcementMode::Observe => "observe",
            EnforcementMode::StepUp => "step_up",
            EnforcementMode::Block => "block",
            EnforcementMode::Progressive => "progressive",
        }
    }
}

/// One behavioral event, borrowing what it can from the log line it came from.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub event_id: String,
    pub tenant_id: Cow<'a, str>,
    pub agent_id: Option<Cow<'a, str>>,
    pub session_id: Cow<'a, str>,
    pub user_id: Cow<'a, str>,
    pub source_type: SourceType,
    pub event_type: EventType,
    pub tool_name: Cow<'a, str>,
    pub content: Cow<'a, str>,
    pub metadata: Metadata<'a>,
    pub approved_scope: Vec<Cow<'a, str>>,
    pub enforcement_mode: EnforcementMode,
    pub session_tool_calls: Vec<Cow<'a, str>>,
    pub occurred_at: Timestamp,
    pub ttl: i64,
    pub violation_id: Option<Cow<'a, str>>,
}

impl Event<'_> {
    /// Appends the wire JSON of this event to `out`: the fields of the 0.5.x
    /// SDK, in its order. Written by hand because this is the daemon's hottest
    /// path after parsing; `tests::serializes_exactly_like_the_api_example`
    /// holds it to the API's example.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.write_json_with(out, None)
    }

    /// [`Event::write_json`], with the entries of the event's stream added
    /// to its metadata.
    pub fn write_json_with(&self, out: &mut Vec<u8>, stream: Option<&StreamMetadata>) {
        out.extend_from_slice(b"{\"event_id\":");
        push_str(out, &self.event_id);
        out.extend_from_slice(b",\"tenant_id\":");
        push_str(out, &self.tenant_id);
        out.extend_from_slice(b",\"agent_id\":");
        push_opt_str(out, self.agent_id.as_deref());
        out.extend_from_slice(b",\"session_id\":");
        push_str(out, &self.session_id);
        out.extend_from_slice(b",\"user_id\":");
        push_str(out, &self.user_id);
        out.extend_from_slice(b",\"source_type\":\"");
        out.extend_from_slice(self.source_type.as_str().as_bytes());
        out.extend_from_slice(b"\",\"event_type\":\"");
        out.extend_from_slice(self.event_type.as_str().as_bytes());
        out.extend_from_slice(b"\",\"tool_name\":");
        push_str(out, &self.tool_name);
        out.extend_from_slice(b",\"content\":");
        push_str(out, &self.content);
        out.extend_from_slice(b",\"metadata\":");
        match stream {
            Some(extra) if !extra.is_empty() => extra.write_merged(self.metadata.as_json(), out),
            _ => out.extend_from_slice(self.metadata.as_json().as_bytes()),
        }
        out.extend_from_slice(b",\"approved_scope\":");
        push_str_array(out, &self.approved_scope);
        out.extend_from_slice(b",\"enforcement_mode\":\"");
        out.extend_from_slice(self.enforcement_mode.as_str().as_bytes());
        out.extend_from_slice(b"\",\"session_tool_calls\":");
        push_str_array(out, &self.session_tool_calls);
        out.extend_from_slice(b",\"occurred_at\":\"");
        self.occurred_at.write_rfc3339(out);
        out.extend_from_slice(b"\",\"ttl\":");
        push_i64(out, self.ttl);
        out.extend_from_slice(b",\"violation_id\":");
        push_opt_str(out, self.violation_id.as_deref());
        out.push(b'}');
    }
}

/// True if `s` has a byte JSON must escape: a quote, a backslash or a
/// control character. Eight bytes at a time (SWAR): this runs on every string
/// of every event.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        let below_space = v.wrapping_sub(ONES * 0x20) & !v & HIGHS;
        if below_space
            | has_zero(v ^ (ONES * u64::from(b'"')))
            | has_zero(v ^ (ONES * u64::from(b'\\')))
            != 0
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A JSON string, escaped as JSON requires.
fn push_str(out: &mut Vec<u8>, s: &str) {
    // Most values need no escaping; checking first lets them go in one copy.
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if let Err(e) = serde_json::to_writer(&mut *out, s) {
        unreachable!("escaping a str into memory failed: {e}");
    }
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_str_array(out: &mut Vec<u8>, items: &[Cow<'_, str>]) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(out, item);
    }
    out.push(b']');
}

fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs());
}

/// Decimal digits of `n`, without going through `core::fmt`.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Zero-padded decimal digits of `n`.
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut n = n;
    for slot in buf[20 - width..].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf[20 - width..]);
}

/// The `metadata` object as JSON text. Only the constructors below make one,
/// so it is always a valid JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata<'a>(Cow<'a, str>);

impl<'a> Metadata<'a> {
    pub fn empty() -> Metadata<'static> {
        Metadata(Cow::Borrowed("{}"))
    }

    /// From a JSON object value.
    pub fn from_map(map: &serde_json::Map<String, serde_json::Value>) -> Metadata<'static> {
        match serde_json::to_string(map) {
            Ok(text) => Metadata(Cow::Owned(text)),
            Err(e) => unreachable!("a JSON map always serializes: {e}"),
        }
    }

    /// From keys and raw JSON values, which serde_json already validated, so
    /// the values are copied as they are, not parsed and written again.
    pub fn from_raw_entries<'k>(
        entries: impl IntoIterator<Item = (&'k str, &'k RawValue)>,
    ) -> Metadata<'a> {
        let mut text = Vec::with_capacity(256);
        text.push(b'{');
        for (key, value) in entries {
            if text.len() > 1 {
                text.push(b',');
            }
            push_str(&mut text, key);
            text.push(b':');
            text.extend_from_slice(value.get().as_bytes());
        }
        text.push(b'}');
        match String::from_utf8(text) {
            Ok(text) => Metadata(Cow::Owned(text)),
            Err(e) => unreachable!("built from str pieces: {e}"),
        }
    }

    /// Starts an object built entry by entry; see [`MetadataBuilder`].
    pub fn builder() -> MetadataBuilder {
        MetadataBuilder {
            text: Vec::with_capacity(256),
        }
    }

    pub fn as_json(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == "{}"
    }

    /// This object with one more entry: `key`, set to the object `value`.
    /// Both are objects this module built, so the result is one too.
    /// Callers pick a key their parsers never write.
    pub fn with_entry(&self, key: &str, value: &Metadata<'_>) -> Metadata<'static> {
        let mut text = Vec::with_capacity(self.0.len() + key.len() + value.0.len() + 4);
        text.extend_from_slice(self.0[..self.0.len() - 1].as_bytes());
        if !self.is_empty() {
            text.push(b',');
        }
        push_str(&mut text, key);
        text.push(b':');
        text.extend_from_slice(value.0.as_bytes());
        text.push(b'}');
        match String::from_utf8(text) {
            Ok(text) => Metadata(Cow::Owned(text)),
            Err(e) => unreachable!("built from str pieces: {e}"),
        }
    }

    /// This object with `"key": "value"` added (a JSON string).
    pub fn with_str_entry(&self, key: &str, value: &str) -> Metadata<'static> {
        let mut text = String::new();
        let mut quoted = Vec::with_capacity(value.len() + 2);
        push_str(&mut quoted, value);
        text.push_str(&String::from_utf8_lossy(&quoted));
        self.with_entry(key, &Metadata(Cow::Owned(text)))
    }

    pub fn into_owned(self) -> Metadata<'static> {
        Metadata(Cow::Owned(self.0.into_owned()))
    }
}

/// Builds a [`Metadata`] one entry at a time. Each method writes a complete
/// `"key":value` pair from a typed or already-validated value, so the result
/// is always a valid JSON object. Callers keep keys distinct.
#[derive(Debug)]
pub struct MetadataBuilder {
    text: Vec<u8>,
}

impl MetadataBuilder {
    fn key(&mut self, key: &str) {
        self.text
            .push(if self.text.is_empty() { b'{' } else { b',' });
        push_str(&mut self.text, key);
        self.text.push(b':');
    }

    pub fn raw(&mut self, key: &str, value: &RawValue) {
        self.key(key);
        self.text.extend_from_slice(value.get().as_bytes());
    }

    pub fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        push_str(&mut self.text, value);
    }

    pub fn u64(&mut self, key: &str, value: u64) {
        self.key(key);
        push_u64(&mut self.text, value);
    }

    pub fn bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.text
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    pub fn value(&mut self, key: &str, value: &serde_json::Value) {
        self.key(key);
        if let Err(e) = serde_json::to_writer(&mut self.text, value) {
            unreachable!("a JSON value always serializes into memory: {e}");
        }
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    pub fn finish(mut self) -> Metadata<'static> {
        if self.text.is_empty() {
            return Metadata::empty();
        }
        self.text.push(b'}');
        match String::from_utf8(self.text) {
            Ok(text) => Metadata(Cow::Owned(text)),
            Err(e) => unreachable!("built from str pieces: {e}"),
        }
    }
}

/// An instant in UTC with microsecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    pub unix_micros: i64,
}

impl Timestamp {
    pub fn from_unix_micros(unix_micros: i64) -> Self {
        Timestamp { unix_micros }
    }

    pub fn now() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            unix_micros: since.as_micros() as i64,
        }
    }

    pub fn unix_seconds(self) -> i64 {
        self.unix_micros.div_euclid(1_000_000)
    }

    /// Last microsecond of year 9999.
    pub const MAX_UNIX_MICROS: i64 = 253_402_300_799_999_999;

    /// Parses an RFC 3339 timestamp (`2026-03-13T12:00:00.123Z`, `...+02:00`).
    /// Instants before 1970 or after 9999 are refused: a log line's year 0
    /// would make a negative `ttl` (the line then gets its read time).
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let t =
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
        let micros = i64::try_from(t.unix_timestamp_nanos() / 1000).ok()?;
        (0..=Self::MAX_UNIX_MICROS)
            .contains(&micros)
            .then_some(Timestamp {
                unix_micros: micros,
            })
    }

    /// A timestamp from outside (a journal entry's), if within 1970-9999.
    pub fn from_unix_micros_checked(unix_micros: i64) -> Option<Self> {
        (0..=Self::MAX_UNIX_MICROS)
            .contains(&unix_micros)
            .then_some(Timestamp { unix_micros })
    }

    /// Interprets a Unix epoch number, guessing its unit from its magnitude:
    /// seconds, milliseconds, microseconds or nanoseconds.
    pub fn from_epoch_number(n: f64) -> Option<Self> {
        if !n.is_finite() || n < 0.0 {
            return None;
        }
        let micros = if n < 1e11 {
            n * 1e6
        } else if n < 1e14 {
            n * 1e3
        } else if n < 1e17 {
            n
        } else {
            n / 1e3
        };
        if micros > 253_402_300_799e6 {
            return None; // past year 9999
        }
        Some(Timestamp {
            unix_micros: micros as i64,
        })
    }

    /// RFC 3339 in UTC with microseconds: `2026-03-13T12:00:00.123456+00:00`,
    /// the shape the SDK sends.
    pub fn to_rfc3339(self) -> String {
        let mut out = Vec::with_capacity(32);
        self.write_rfc3339(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    pub fn write_rfc3339(self, out: &mut Vec<u8>) {
        let secs = self.unix_micros.div_euclid(1_000_000);
        let micros = self.unix_micros.rem_euclid(1_000_000) as u64;
        let sod = secs.rem_euclid(86_400) as u64;
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        push_padded(out, y.clamp(0, 9999) as u64, 4);
        out.push(b'-');
        push_padded(out, u64::from(m), 2);
        out.push(b'-');
        push_padded(out, u64::from(d), 2);
        out.push(b'T');
        push_padded(out, sod / 3600, 2);
        out.push(b':');
        push_padded(out, (sod / 60) % 60, 2);
        out.push(b':');
        push_padded(out, sod % 60, 2);
        out.push(b'.');
        push_padded(out, micros, 6);
        out.extend_from_slice(b"+00:00");
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Derives `<tenant_id>:<UUIDv5>` from the event's origin: the identity of its
/// source stream, the position of its record in that stream, and its index among
/// the events of that record.
pub fn event_id(tenant_id: &str, stream_identity: &str, position: u64, index: u32) -> String {
    let mut name = Vec::with_capacity(stream_identity.len() + 32);
    name.extend_from_slice(stream_identity.as_bytes());
    name.push(0x1f);
    push_u64(&mut name, position);
    name.push(0x1f);
    push_u64(&mut name, u64::from(index));
    // UUIDv5 is SHA-1 of namespace and name; the `sha1` crate uses the CPU's
    // SHA extensions where present, several times faster than uuid's own.
    use sha1::Digest;
    let mut hasher = sha1::Sha1::new();
    hasher.update(EVENT_ID_NAMESPACE.as_bytes());
    hasher.update(&name);
    let digest = hasher.finalize();
    let mut first16 = [0u8; 16];
    first16.copy_from_slice(&digest[..16]);
    let id = uuid::Builder::from_sha1_bytes(first16).into_uuid();
    let mut out = String::with_capacity(tenant_id.len() + 37);
    out.push_str(tenant_id);
    out.push(':');
    let mut buf = Uuid::encode_buffer();
    out.push_str(id.hyphenated().encode_lower(&mut buf));
    out
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_outside_1970_to_9999_are_refused() {
        assert_eq!(Timestamp::parse_rfc3339("0000-01-01T00:00:00Z"), None);
        assert_eq!(Timestamp::parse_rfc3339("1969-12-31T23:59:59Z"), None);
        assert!(Timestamp::parse_rfc3339("1970-01-01T00:00:00Z").is_some());
        assert!(Timestamp::parse_rfc3339("9999-12-31T23:59:59.999999Z").is_some());
        assert_eq!(Timestamp::from_unix_micros_checked(-1), None);
        assert_eq!(
            Timestamp::from_unix_micros_checked(Timestamp::MAX_UNIX_MICROS + 1),
            None
        );
    }

    const API_EXAMPLE: &str = r#"{
      "event_id": "acme-corp:4f1c2b9e-6a53-4d67-9d0e-3b6f0c9a1e27",
      "tenant_id": "acme-corp",
      "agent_id": "invoice-processor-v2",
      "session_id": "5d0c1f5e-7c2a-4a51-a0a4-54d8b8a3f0d1",
      "user_id": "alice@example.com",
      "source_type": "agent_tool_call",
      "event_type": "TOOL_CALL_PRE",
      "tool_name": "submit_payment",
      "content": "tool invocation requested",
      "metadata": {"tool_call": {"name": "submit_payment"}},
      "approved_scope": ["search_docs"],
      "enforcement_mode": "progressive",
      "session_tool_calls": ["search_docs"],
      "occurred_at": "2026-03-13T12:00:00.123456+00:00",
      "ttl": 1781352000,
      "violation_id": null
    }"#;

    fn example_event() -> Event<'static> {
        let tool_call: Box<RawValue> =
            RawValue::from_string(r#"{"name":"submit_payment"}"#.to_string()).expect("valid json");
        let metadata = Metadata::from_raw_entries([("tool_call", &*tool_call)]);
        Event {
            event_id: "acme-corp:4f1c2b9e-6a53-4d67-9d0e-3b6f0c9a1e27".into(),
            tenant_id: "acme-corp".into(),
            agent_id: Some("invoice-processor-v2".into()),
            session_id: "5d0c1f5e-7c2a-4a51-a0a4-54d8b8a3f0d1".into(),
            user_id: "alice@example.com".into(),
            source_type: SourceType::AgentToolCall,
            event_type: EventType::ToolCallPre,
            tool_name: "submit_payment".into(),
            content: "tool invocation requested".into(),
            metadata,
            approved_scope: vec!["search_docs".into()],
            enforcement_mode: EnforcementMode::Progressive,
            session_tool_calls: vec!["search_docs".into()],
            occurred_at: Timestamp::parse_rfc3339("2026-03-13T12:00:00.123456+00:00")
                .expect("valid timestamp"),
            ttl: 1781352000,
            violation_id: None,
        }
    }

    #[test]
    fn serializes_exactly_like_the_api_example() {
        let mut out = Vec::new();
        example_event().write_json(&mut out);
        let ours: serde_json::Value = serde_json::from_slice(&out).expect("valid json");
        let theirs: serde_json::Value = serde_json::from_str(API_EXAMPLE).expect("valid json");
        let (ours, theirs) = (ours.as_object().unwrap(), theirs.as_object().unwrap());
        assert_eq!(ours.len(), theirs.len(), "same number of fields");
        for (k, v) in theirs {
            assert_eq!(ours.get(k), Some(v), "field {k}");
        }
        // Field order follows the SDK's, which keeps bodies diffable against it.
        let text = String::from_utf8(out).unwrap();
        let mut last = 0;
        let sdk_order = [
            "event_id",
            "tenant_id",
            "agent_id",
            "session_id",
            "user_id",
            "source_type",
            "event_type",
            "tool_name",
            "content",
            "metadata",
            "approved_scope",
            "enforcement_mode",
            "session_tool_calls",
            "occurred_at",
            "ttl",
            "violation_id",
        ];
        for key in sdk_order {
            let pos = text.find(&format!("\"{key}\":")).expect("key present");
            assert!(pos >= last, "{key} out of order");
            last = pos;
        }
    }

    #[test]
    fn event_id_is_stable_and_depends_on_each_part() {
        let a = event_id("acme", "agents/abc", 120, 0);
        assert_eq!(a, event_id("acme", "agents/abc", 120, 0));
        assert!(a.starts_with("acme:"));
        assert_eq!(a.len(), "acme:".len() + 36);
        assert_ne!(a, event_id("acme", "agents/abd", 120, 0));
        assert_ne!(a, event_id("acme", "agents/abc", 121, 0));
        assert_ne!(a, event_id("acme", "agents/abc", 120, 1));
        // Pinned: a change here would make re-sent events look new to the server.
        assert_eq!(a, "acme:9bdcf526-e18a-568e-a339-f3d38c154b0c");
    }

    #[test]
    fn strings_that_need_escaping_are_escaped() {
        let mut e = example_event();
        e.content = "quote \" backslash \\ newline \n tab \t nul \u{0} é".into();
        let mut out = Vec::new();
        e.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid json");
        assert_eq!(
            v["content"],
            "quote \" backslash \\ newline \n tab \t nul \u{0} é"
        );
    }

    #[test]
    fn needs_escape_agrees_with_the_byte_rule() {
        let specials = [b'"', b'\\', 0, 0x1f, b'\n', 0x7f, 0x80, 0xff, b'a', b' '];
        for len in 0..20 {
            for &special in &specials {
                for pos in 0..len {
                    let mut bytes = vec![b'x'; len];
                    bytes[pos] = special;
                    let expected = special < 0x20 || special == b'"' || special == b'\\';
                    assert_eq!(needs_escape(&bytes), expected, "{bytes:?}");
                }
            }
        }
    }

    #[test]
    fn timestamps_round_trip_in_utc() {
        let t = Timestamp::parse_rfc3339("2026-03-13T14:00:00.5+02:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-03-13T12:00:00.500000+00:00");
        assert_eq!(
            Timestamp::from_unix_micros(0).to_rfc3339(),
            "1970-01-01T00:00:00.000000+00:00"
        );
        let ms = Timestamp::from_epoch_number(1_773_403_200_123.0).unwrap();
        assert_eq!(ms.to_rfc3339(), "2026-03-13T12:00:00.123000+00:00");
        let s = Timestamp::from_epoch_number(1_773_403_200.0).unwrap();
        assert_eq!(s.to_rfc3339(), "2026-03-13T12:00:00.000000+00:00");
        assert!(Timestamp::from_epoch_number(f64::NAN).is_none());
        assert!(Timestamp::parse_rfc3339("yesterday").is_none());
    }
}

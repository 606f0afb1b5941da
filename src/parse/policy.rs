//! What of a line may be copied into an event, and how: every string is
//! screened for secrets (content, metadata keys and values, tool name,
//! session, user and agent ids), `content` is bounded, and metadata keys are
//! filtered by `metadata_allow`. One [`Redaction`] is shared by the parsers
//! of a source.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::value::RawValue;

use super::redact::{self, RedactedJson, Redactor};
use super::{truncate_utf8, EventBuf};
use crate::config::Config;
use crate::event::{Event, MetadataBuilder};

/// What may be copied from a line into an event, shared by all parsers of
/// a source.
#[derive(Debug)]
pub struct Redaction {
    pub redactor: Redactor,
    pub content_max_bytes: usize,
    /// When set, the only metadata keys kept (besides `call_id`).
    pub metadata_allow: Option<Vec<String>>,
    /// Which redaction this is, for the thread's cache of clean strings
    /// (two redactions may differ in their detectors).
    id: u64,
}

/// Short strings known to hold no secret (and, for keys, not to name one)
/// for the redaction `owner`. One per thread: a source parses on its own
/// thread, and a lock taken for every id of every event cost 4% of the
/// parse time. A thread that alternates redactions empties it each time.
#[derive(Debug, Default)]
struct CleanCache {
    owner: u64,
    keys: HashSet<Box<str>, BuildHasherDefault<Fnv>>,
    values: HashSet<Box<str>, BuildHasherDefault<Fnv>>,
}

thread_local! {
    static CLEAN: RefCell<CleanCache> = RefCell::default();
}

/// Ids of redactions; 0 is no redaction, so a fresh cache belongs to none.
static NEXT_REDACTION_ID: AtomicU64 = AtomicU64::new(1);

/// FNV-1a: the cache's strings are short and not chosen to collide (a
/// collision costs a comparison, and the set is bounded), so SipHash's
/// defence against flooding buys nothing here but time.
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Longest string the cache keeps, and most entries in each set (it is
/// emptied when full: a flood of distinct ids costs screening, not memory).
const CACHE_MAX_LEN: usize = 128;
const CACHE_MAX_ENTRIES: usize = 4096;
/// Longest JSON content screened as a tree (a longer one is screened as text).
const JSON_CONTENT_MAX: usize = 1 << 20;

impl Redaction {
    /// The built-in detectors and the given content bound.
    pub fn builtin(content_max_bytes: usize) -> Redaction {
        Redaction::with(Redactor::builtin(), content_max_bytes, None)
    }

    fn with(
        redactor: Redactor,
        content_max_bytes: usize,
        metadata_allow: Option<Vec<String>>,
    ) -> Redaction {
        Redaction {
            redactor,
            content_max_bytes,
            metadata_allow,
            id: NEXT_REDACTION_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The `[redaction]` table of the config.
    pub fn from_config(config: &Config) -> Redaction {
        let r = &config.redaction;
        Redaction::with(
            // Patterns and names were checked once at config validation, so
            // this cannot fail here; builtins alone would be the safe side.
            Redactor::with_disabled(&r.patterns, &r.disable)
                .unwrap_or_else(|_| Redactor::builtin()),
            usize::try_from(r.content_max_bytes.0).unwrap_or(usize::MAX),
            r.metadata_allow.clone(),
        )
    }

    /// `text` redacted and cut to `content_max_bytes`.
    pub fn content<'a>(&self, text: Cow<'a, str>) -> Cow<'a, str> {
        match text {
            Cow::Borrowed(s) => self.bound(s),
            Cow::Owned(s) => match self.bound(&s) {
                Cow::Borrowed(b) if b.len() == s.len() => Cow::Owned(s),
                other => Cow::Owned(other.into_owned()),
            },
        }
    }

    fn bound<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let max = self.content_max_bytes;
        let window = truncate_utf8(s, max.saturating_mul(4).saturating_add(1024));
        if !self.redactor.might_match(window) && !redact::has_hiding_escape(window) {
            // The common case: nothing any detector needs is in what is kept.
            return Cow::Borrowed(truncate_utf8(s, max));
        }
        if let Some(tree) = self.json_content(s) {
            return Cow::Owned(truncate_utf8(&tree, max).to_string());
        }
        // Redact a window a little larger than what is kept: a redaction can
        // shorten the text, and a secret cut at `max` must still be seen whole.
        let mut red = self.redactor.redact_field("content", window);
        if red.len() < max && window.len() < s.len() {
            red = self.redactor.redact_field("content", s);
        }
        match red {
            Cow::Borrowed(b) => Cow::Borrowed(truncate_utf8(b, max)),
            Cow::Owned(o) if o.len() <= max => Cow::Owned(o),
            Cow::Owned(o) => Cow::Owned(truncate_utf8(&o, max).to_string()),
        }
    }

    /// Content that is JSON text (a tool's input, copied raw): screened as
    /// a tree, decoded, with keys that name a secret redacted whole, and
    /// written again if anything was found. None when it is not JSON or
    /// held nothing.
    fn json_content(&self, s: &str) -> Option<String> {
        let first = s.trim_start().as_bytes().first()?;
        if !matches!(first, b'{' | b'[') || s.len() > JSON_CONTENT_MAX {
            return None;
        }
        let raw: &RawValue = serde_json::from_str(s).ok()?;
        match self.redactor.redact_json("content", raw)? {
            RedactedJson::Value(v) => serde_json::to_string(&v).ok(),
            RedactedJson::Text(t) => Some(t),
        }
    }

    /// A metadata object that redacts every key and string and honours
    /// `metadata_allow`.
    pub fn metadata(&self) -> MetaWriter<'_> {
        MetaWriter {
            builder: crate::event::Metadata::builder(),
            policy: self,
        }
    }

    /// Screens the event's own strings (tool name, session, user and agent
    /// ids, scope, violation) and appends it to `out`. The tool history is
    /// not screened here: its names were screened once, when they entered
    /// it ([`Redaction::screen_history_name`]), not again with every event.
    pub fn push(&self, out: &mut EventBuf, e: &mut Event<'_>) {
        self.screen_id("tool_name", &mut e.tool_name);
        self.screen_id("session_id", &mut e.session_id);
        self.screen_id("user_id", &mut e.user_id);
        if let Some(agent) = e.agent_id.as_mut() {
            self.screen_id("agent_id", agent);
        }
        if let Some(v) = e.violation_id.as_mut() {
            self.screen_id("violation_id", v);
        }
        for t in e.approved_scope.iter_mut() {
            self.screen_id("approved_scope", t);
        }
        out.push(e);
    }

    /// What a source tells of a record (`metadata.journald`), screened
    /// as a metadata value under `key`: redacted, and None when
    /// `metadata_allow` leaves `key` out.
    pub fn screen_record_metadata(
        &self,
        key: &str,
        metadata: &crate::event::Metadata<'_>,
    ) -> Option<crate::event::Metadata<'static>> {
        if let Some(keys) = &self.metadata_allow {
            if !keys.iter().any(|k| k == key) {
                return None;
            }
        }
        let Ok(raw) = serde_json::from_str::<&RawValue>(metadata.as_json()) else {
            return Some(crate::event::Metadata::empty());
        };
        Some(match self.redactor.redact_json(&meta_field(key), raw) {
            None => metadata.clone().into_owned(),
            Some(RedactedJson::Value(serde_json::Value::Object(map))) => {
                crate::event::Metadata::from_map(&map)
            }
            // Not an object any more: cannot be, a metadata is one; keep
            // nothing rather than an unscreened copy.
            Some(_) => crate::event::Metadata::empty(),
        })
    }

    /// A tool name as it enters a session's history (see
    /// [`super::history`]).
    pub fn screen_history_name(&self, name: &str) -> String {
        let mut name = Cow::Borrowed(name);
        self.screen_id("session_tool_calls", &mut name);
        name.into_owned()
    }

    fn screen_id(&self, field: &str, value: &mut Cow<'_, str>) {
        if self.known_clean(value, false) {
            return;
        }
        match self.redactor.redact_field(field, value) {
            Cow::Owned(r) => *value = Cow::Owned(r),
            Cow::Borrowed(_) => self.remember_clean(value, false),
        }
    }

    fn known_clean(&self, s: &str, key: bool) -> bool {
        if s.len() > CACHE_MAX_LEN || redact::explain_active() {
            return false;
        }
        CLEAN.with_borrow(|cache| {
            cache.owner == self.id
                && if key {
                    cache.keys.contains(s)
                } else {
                    cache.values.contains(s)
                }
        })
    }

    fn remember_clean(&self, s: &str, key: bool) {
        if s.len() > CACHE_MAX_LEN {
            return;
        }
        CLEAN.with_borrow_mut(|cache| {
            if cache.owner != self.id {
                cache.owner = self.id;
                cache.keys.clear();
                cache.values.clear();
            }
            let set = if key {
                &mut cache.keys
            } else {
                &mut cache.values
            };
            if set.len() >= CACHE_MAX_ENTRIES {
                set.clear();
            }
            set.insert(s.into());
        });
    }

    /// A metadata key screened: itself redacted if it holds a secret, and
    /// whether it names one (its value is then redacted whole).
    fn screen_key<'k>(&self, key: &'k str) -> (Cow<'k, str>, bool) {
        if self.known_clean(key, true) {
            return (Cow::Borrowed(key), false);
        }
        let names_secret = self.redactor.is_secret_name(key);
        let field = meta_field(key);
        let screened = self.redactor.redact_field(&field, key);
        if !names_secret && matches!(screened, Cow::Borrowed(_)) {
            self.remember_clean(key, true);
        }
        (screened, names_secret)
    }
}

/// The name of a metadata field for `parse --explain` (built only then).
fn meta_field(key: &str) -> Cow<'_, str> {
    if redact::explain_active() {
        Cow::Owned(format!("metadata.{key}"))
    } else {
        Cow::Borrowed(key)
    }
}

/// Builds an event's metadata: keys and strings are redacted, keys outside
/// `metadata_allow` are left out. `call_id` is always kept: it is what joins
/// a PRE to its POST downstream.
pub struct MetaWriter<'c> {
    builder: MetadataBuilder,
    policy: &'c Redaction,
}

impl MetaWriter<'_> {
    fn allowed(&self, key: &str) -> bool {
        key == "call_id"
            || self
                .policy
                .metadata_allow
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k == key))
    }

    pub fn str(&mut self, key: &str, value: &str) {
        if !self.allowed(key) {
            return;
        }
        let (name, secret) = self.policy.screen_key(key);
        if secret && !redact::is_placeholder(value, true) {
            redact::record_named(&meta_field(key));
            self.builder.str(&name, "[REDACTED:secret-assignment]");
            return;
        }
        let value = self.policy.redactor.redact_field(&meta_field(key), value);
        self.builder.str(&name, &value);
    }

    pub fn opt_str(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.str(key, v);
        }
    }

    pub fn u64(&mut self, key: &str, value: u64) {
        if self.allowed(key) {
            let (name, _) = self.policy.screen_key(key);
            self.builder.u64(&name, value);
        }
    }

    pub fn bool(&mut self, key: &str, value: bool) {
        if self.allowed(key) {
            let (name, _) = self.policy.screen_key(key);
            self.builder.bool(&name, value);
        }
    }

    /// A JSON value as written in the line; keys and strings inside it are
    /// redacted, and all of it when its key names a secret.
    pub fn raw(&mut self, key: &str, value: &RawValue) {
        if !self.allowed(key) {
            return;
        }
        let (name, secret) = self.policy.screen_key(key);
        let red = &self.policy.redactor;
        let field = meta_field(key);
        if secret {
            let mut v: serde_json::Value = serde_json::from_str(value.get())
                .unwrap_or_else(|_| serde_json::Value::String(value.get().to_string()));
            red.redact_named_value(&mut v, &field);
            self.builder.value(&name, &v);
            return;
        }
        let text = value.get();
        // serde_json accepts `1e400` as raw text but not as a number: a value
        // that does not read back as JSON numbers would fail the whole batch
        // at the API, so it goes in as a string.
        if !text.starts_with('"') && serde_json::from_str::<NumbersInRange>(text).is_err() {
            self.builder.str(&name, &red.redact_field(&field, text));
            return;
        }
        match red.redact_json(&field, value) {
            None => self.builder.raw(&name, value),
            Some(RedactedJson::Value(v)) => self.builder.value(&name, &v),
            Some(RedactedJson::Text(t)) => self.builder.str(&name, &t),
        }
    }

    pub fn opt_raw(&mut self, key: &str, value: Option<&RawValue>) {
        if let Some(v) = value {
            self.raw(key, v);
        }
    }

    pub fn finish(self) -> crate::event::Metadata<'static> {
        self.builder.finish()
    }
}

/// Deserializes any JSON value and fails where serde_json's own value
/// would: on a number out of the f64 range, which skipping (`IgnoredAny`,
/// `RawValue`) lets through.
struct NumbersInRange;

impl<'de> serde::Deserialize<'de> for NumbersInRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = NumbersInRange;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<NumbersInRange, E> {
                Ok(NumbersInRange)
            }
            fn visit_i64<E>(self, _: i64) -> Result<NumbersInRange, E> {
                Ok(NumbersInRange)
            }
            fn visit_u64<E>(self, _: u64) -> Result<NumbersInRange, E> {
                Ok(NumbersInRange)
            }
            fn visit_f64<E>(self, _: f64) -> Result<NumbersInRange, E> {
                Ok(NumbersInRange)
            }
            fn visit_str<E>(self, _: &str) -> Result<NumbersInRange, E> {
                Ok(NumbersInRange)
            }
            fn visit_unit<E>(self) -> Result<NumbersInRange, E> {
                Ok(NumbersInRange)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<NumbersInRange, A::Error> {
                while seq.next_element::<NumbersInRange>()?.is_some() {}
                Ok(NumbersInRange)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<NumbersInRange, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, NumbersInRange>()?
                    .is_some()
                {}
                Ok(NumbersInRange)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::redact::UserPattern;

    fn with_pattern(regex: &str) -> Redaction {
        let user = [UserPattern {
            name: "in-house".into(),
            regex: regex.into(),
        }];
        let redactor = Redactor::new(&user).expect("the test's pattern compiles");
        Redaction::with(redactor, 4096, None)
    }

    #[test]
    fn a_string_clean_for_one_redaction_is_still_screened_by_another() {
        let builtin = Redaction::builtin(4096);
        let in_house = with_pattern("acme-[0-9]{6}");
        let mut id: Cow<'_, str> = Cow::Borrowed("acme-123456");
        builtin.screen_id("session_id", &mut id);
        assert_eq!(id, "acme-123456", "no built-in detector knows this form");
        assert!(builtin.known_clean("acme-123456", false));
        // Same thread, same string: the cache must not answer for the other.
        in_house.screen_id("session_id", &mut id);
        assert_ne!(id, "acme-123456", "the in-house pattern must redact it");
        let mut again: Cow<'_, str> = Cow::Borrowed("acme-123456");
        builtin.screen_id("session_id", &mut again);
        assert_eq!(again, "acme-123456");
    }

    #[test]
    fn a_records_source_fields_are_screened_and_may_be_left_out() {
        let entry = crate::event::Metadata::from_map(
            serde_json::json!({
                "comm": "agent",
                "syslog_identifier": "token=ghp_0123456789abcdefghijABCDEFGHIJ012345",
                "user": "alice",
            })
            .as_object()
            .expect("an object"),
        );
        let builtin = Redaction::builtin(4096);
        let screened = builtin
            .screen_record_metadata("journald", &entry)
            .expect("allowed");
        let v: serde_json::Value = serde_json::from_str(screened.as_json()).expect("JSON");
        assert_eq!(v["comm"], "agent");
        assert_eq!(v["user"], "alice");
        assert!(
            !screened.as_json().contains("ghp_"),
            "{}",
            screened.as_json()
        );
        let clean = crate::event::Metadata::from_map(
            serde_json::json!({"comm": "agent"})
                .as_object()
                .expect("an object"),
        );
        assert_eq!(
            builtin.screen_record_metadata("journald", &clean),
            Some(clean.clone())
        );
        let allow = Redaction::with(Redactor::builtin(), 4096, Some(vec!["seq".into()]));
        assert_eq!(allow.screen_record_metadata("journald", &clean), None);
        let allow = Redaction::with(Redactor::builtin(), 4096, Some(vec!["journald".into()]));
        assert!(allow.screen_record_metadata("journald", &clean).is_some());
    }
}

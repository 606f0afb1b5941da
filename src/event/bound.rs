//! Keeps every event under `max_event_bytes` of JSON, whatever its line
//! held. An event over the bound has its longest strings cut (metadata
//! values and keys at any depth, content, tool name, ids, list items) until
//! it fits, then, if many small values are still too much, its largest
//! metadata entries and list items dropped; `metadata._truncated` says which
//! fields were cut or dropped and how large the event was. Nothing is cut
//! silently, and events under the bound (nearly all) are never touched.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::{truncate_utf8, Event, Metadata};

/// `redaction.max_event_bytes` unless the config says otherwise.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 << 10;
/// Smallest `redaction.max_event_bytes` accepted: room for the fixed fields
/// and the marker of a cut event.
pub const MIN_MAX_EVENT_BYTES: usize = 4 << 10;
/// The metadata key that marks a cut event.
pub const MARK_KEY: &str = "_truncated";
/// Most field names the marker lists; it counts the rest.
const MAX_LISTED: usize = 16;
/// Below this per-string length, cutting strings stops and dropping starts.
const MIN_CAP: usize = 16;

/// What was cut, for the marker.
#[derive(Default)]
struct Cuts {
    fields: Vec<String>,
    more: usize,
}

impl Cuts {
    fn note(&mut self, field: impl FnOnce() -> String) {
        if self.fields.len() < MAX_LISTED {
            self.fields.push(field());
        } else {
            self.more += 1;
        }
    }
}

/// Appends to `out` the JSON of `event` cut to at most `max` bytes; the
/// event's full JSON was `full_len` bytes. Only a tenant or event id longer
/// than the bound itself (the config's, not a line's) can leave it over.
pub fn write_bounded(event: &Event<'_>, full_len: usize, max: usize, out: &mut Vec<u8>) {
    let metadata: Map<String, Value> =
        serde_json::from_str(event.metadata.as_json()).unwrap_or_default();
    let start = out.len();
    // Lowered by a quarter at a time: one long value keeps most of the
    // bound, many long values share it.
    let mut cap = max;
    let mut last_len = usize::MAX;
    loop {
        let mut cuts = Cuts::default();
        let mut cut = cap_strings(event, cap, &mut cuts);
        let mut meta = metadata.clone();
        cap_map(&mut meta, cap, "metadata", &mut cuts);
        if cap <= MIN_CAP {
            drop_largest(&mut cut, &mut meta, max, full_len, &mut cuts);
        }
        mark(&mut meta, full_len, &cuts);
        cut.metadata = Metadata::from_map(&meta);
        out.truncate(start);
        cut.write_json(out);
        let len = out.len() - start;
        if len <= max || cap <= MIN_CAP {
            return;
        }
        // Nothing was cut at this cap: lower it to below the longest string
        // left instead of serializing the event again for nothing (a line of
        // 200,000 tiny entries goes straight to dropping).
        cap = if len >= last_len {
            let longest = longest_string(&cut, &meta);
            (longest - longest / 4).min(cap - cap / 4).max(MIN_CAP)
        } else {
            cap - cap / 4
        };
        last_len = len;
    }
}

/// Length of the longest string (or key) the event still has.
fn longest_string(e: &Event<'_>, meta: &Map<String, Value>) -> usize {
    fn in_value(v: &Value) -> usize {
        match v {
            Value::String(s) => s.len(),
            Value::Array(items) => items.iter().map(in_value).max().unwrap_or(0),
            Value::Object(map) => in_map(map),
            _ => 0,
        }
    }
    fn in_map(map: &Map<String, Value>) -> usize {
        map.iter()
            .map(|(k, v)| k.len().max(in_value(v)))
            .max()
            .unwrap_or(0)
    }
    let fields = [&e.content, &e.tool_name, &e.session_id, &e.user_id];
    fields
        .iter()
        .map(|s| s.len())
        .chain(
            e.agent_id
                .iter()
                .chain(e.violation_id.iter())
                .map(|s| s.len()),
        )
        .chain(
            e.approved_scope
                .iter()
                .chain(&e.session_tool_calls)
                .map(|s| s.len()),
        )
        .chain(std::iter::once(in_map(meta)))
        .max()
        .unwrap_or(0)
}

/// The event with every string field and list item cut to `cap` bytes.
fn cap_strings<'a>(event: &Event<'a>, cap: usize, cuts: &mut Cuts) -> Event<'a> {
    let mut e = event.clone();
    let mut one = |name: &str, s: &mut Cow<'a, str>| {
        if s.len() > cap {
            *s = Cow::Owned(truncate_utf8(s, cap).to_string());
            cuts.note(|| name.to_string());
        }
    };
    one("content", &mut e.content);
    one("tool_name", &mut e.tool_name);
    one("session_id", &mut e.session_id);
    one("user_id", &mut e.user_id);
    if let Some(a) = e.agent_id.as_mut() {
        one("agent_id", a);
    }
    if let Some(v) = e.violation_id.as_mut() {
        one("violation_id", v);
    }
    for item in e.approved_scope.iter_mut() {
        one("approved_scope", item);
    }
    for item in e.session_tool_calls.iter_mut() {
        one("session_tool_calls", item);
    }
    e
}

fn cap_map(map: &mut Map<String, Value>, cap: usize, path: &str, cuts: &mut Cuts) {
    let long_keys: Vec<String> = map.keys().filter(|k| k.len() > cap).cloned().collect();
    for key in long_keys {
        if let Some(v) = map.remove(&key) {
            let short = truncate_utf8(&key, cap).to_string();
            cuts.note(|| format!("{path}.{} (key)", truncate_utf8(&key, 64)));
            // Two long keys cut to the same prefix: the later one is dropped
            // rather than written twice (duplicate keys are not JSON anyone
            // can rely on).
            map.entry(short).or_insert(v);
        }
    }
    for (key, value) in map.iter_mut() {
        cap_value(
            value,
            cap,
            &format!("{path}.{}", truncate_utf8(key, 64)),
            cuts,
        );
    }
}

fn cap_value(value: &mut Value, cap: usize, path: &str, cuts: &mut Cuts) {
    match value {
        Value::String(s) if s.len() > cap => {
            let cut = truncate_utf8(s, cap).len();
            s.truncate(cut);
            cuts.note(|| path.to_string());
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                cap_value(item, cap, path, cuts);
            }
        }
        Value::Object(map) => cap_map(map, cap, path, cuts),
        _ => {}
    }
}

/// Drops the largest metadata entries, then list items from the end, while
/// the event is over `max`: what is left when many small values add up.
fn drop_largest(
    e: &mut Event<'_>,
    meta: &mut Map<String, Value>,
    max: usize,
    full_len: usize,
    cuts: &mut Cuts,
) {
    let size = |e: &Event<'_>, meta: &Map<String, Value>, cuts: &Cuts| {
        let mut m = meta.clone();
        mark(&mut m, full_len, cuts);
        let mut e = e.clone();
        e.metadata = Metadata::from_map(&m);
        let mut out = Vec::new();
        e.write_json(&mut out);
        out.len()
    };
    let mut over = size(e, meta, cuts).saturating_sub(max);
    if over == 0 {
        return;
    }
    let mut entries: Vec<(usize, String)> = meta
        .iter()
        .map(|(k, v)| {
            (
                k.len() + serde_json::to_string(v).map_or(0, |s| s.len()) + 4,
                k.clone(),
            )
        })
        .collect();
    entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
    for (len, key) in entries {
        if over == 0 {
            break;
        }
        meta.remove(&key);
        cuts.note(|| format!("metadata.{} (dropped)", truncate_utf8(&key, 64)));
        over = over.saturating_sub(len);
    }
    for list in [&mut e.approved_scope, &mut e.session_tool_calls] {
        while over > 0 {
            let Some(item) = list.pop() else { break };
            over = over.saturating_sub(item.len() + 3);
        }
    }
    if size(e, meta, cuts) > max {
        // Marker names and counts were estimated; what is left goes too.
        meta.clear();
        e.approved_scope.clear();
        e.session_tool_calls.clear();
    }
}

fn mark(meta: &mut Map<String, Value>, full_len: usize, cuts: &Cuts) {
    let mut m = Map::new();
    m.insert("event_bytes".into(), Value::from(full_len as u64));
    m.insert(
        "fields".into(),
        Value::Array(
            cuts.fields
                .iter()
                .map(|f| Value::from(f.as_str()))
                .collect(),
        ),
    );
    if cuts.more > 0 {
        m.insert("more_fields".into(), Value::from(cuts.more as u64));
    }
    meta.insert(MARK_KEY.into(), Value::Object(m));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EnforcementMode, EventType, Timestamp};

    fn event(content: &str, metadata: &str) -> Event<'static> {
        Event {
            event_id: "t:00000000-0000-5000-8000-000000000000".into(),
            tenant_id: "t".into(),
            agent_id: None,
            session_id: "s".into(),
            user_id: "u".into(),
            source_type: EventType::ToolCallPre.source_type(),
            event_type: EventType::ToolCallPre,
            tool_name: "bash".into(),
            content: Cow::Owned(content.to_string()),
            metadata: Metadata::from_map(&serde_json::from_str(metadata).unwrap()),
            approved_scope: Vec::new(),
            enforcement_mode: EnforcementMode::Observe,
            session_tool_calls: Vec::new(),
            occurred_at: Timestamp::from_unix_micros(0),
            ttl: 0,
            violation_id: None,
        }
    }

    fn bounded(e: &Event<'_>, max: usize) -> Value {
        let mut full = Vec::new();
        e.write_json(&mut full);
        let mut out = Vec::new();
        write_bounded(e, full.len(), max, &mut out);
        assert!(out.len() <= max, "{} bytes, bound {max}", out.len());
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn a_long_metadata_value_is_cut_and_marked() {
        let big = "x".repeat(200_000);
        let e = event(
            "ok",
            &format!(r#"{{"input":{{"command":"{big}"}},"call_id":"c1"}}"#),
        );
        let v = bounded(&e, 64 << 10);
        let command = v["metadata"]["input"]["command"].as_str().unwrap();
        assert!(
            command.len() > 16 << 10,
            "kept a useful prefix: {}",
            command.len()
        );
        assert_eq!(v["metadata"]["call_id"], "c1");
        assert_eq!(v["content"], "ok");
        let mark = &v["metadata"][MARK_KEY];
        assert!(mark["event_bytes"].as_u64().unwrap() > 200_000);
        assert_eq!(
            mark["fields"],
            serde_json::json!(["metadata.input.command"])
        );
    }

    #[test]
    fn many_small_entries_are_dropped_largest_first_and_counted() {
        let entries: Vec<String> = (0..20_000).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let e = event("ok", &format!("{{{}}}", entries.join(",")));
        let v = bounded(&e, 8 << 10);
        let mark = &v["metadata"][MARK_KEY];
        assert!(mark["more_fields"].as_u64().unwrap() > 1000, "{mark}");
        assert_eq!(v["content"], "ok");
    }

    #[test]
    fn long_keys_and_every_top_level_string_are_cut() {
        let key = "k".repeat(100_000);
        let mut e = event(&"c".repeat(100_000), &format!(r#"{{"{key}":1}}"#));
        e.session_id = Cow::Owned("s".repeat(100_000));
        e.tool_name = Cow::Owned("t".repeat(100_000));
        e.session_tool_calls = vec![Cow::Owned("x".repeat(100_000)); 3];
        let v = bounded(&e, 64 << 10);
        let fields = v["metadata"][MARK_KEY]["fields"].to_string();
        for f in [
            "content",
            "session_id",
            "tool_name",
            "session_tool_calls",
            "(key)",
        ] {
            assert!(fields.contains(f), "{f} in {fields}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever the mix of long strings, escapes, keys and entries, the
        /// result is valid JSON within the bound and marked.
        #[test]
        fn any_event_fits_the_bound(
            content in 0usize..100_000,
            entries in proptest::collection::vec((0usize..5_000, 0usize..40_000, proptest::bool::ANY), 0..200),
            max in 4096usize..70_000,
        ) {
            let mut meta = Map::new();
            for (i, (key_len, value_len, escaped)) in entries.iter().enumerate() {
                let fill = if *escaped { "\u{1}\"" } else { "ab" };
                meta.insert(format!("{i}{}", "k".repeat(*key_len)), Value::from(fill.repeat(value_len / 2)));
            }
            let mut e = event(&"c\n".repeat(content / 2), "{}");
            e.metadata = Metadata::from_map(&meta);
            let mut full = Vec::new();
            e.write_json(&mut full);
            let mut out = Vec::new();
            write_bounded(&e, full.len(), max, &mut out);
            proptest::prop_assert!(out.len() <= max, "{} > {max}", out.len());
            let v: Value = serde_json::from_slice(&out).unwrap();
            proptest::prop_assert!(v["metadata"][MARK_KEY]["event_bytes"].as_u64() == Some(full.len() as u64));
        }
    }

    #[test]
    fn multibyte_text_is_cut_on_a_character_boundary() {
        let e = event(&"é".repeat(100_000), r#"{"note":"ü"}"#);
        let v = bounded(&e, 16 << 10);
        assert!(v["content"].as_str().unwrap().chars().all(|c| c == 'é'));
    }
}

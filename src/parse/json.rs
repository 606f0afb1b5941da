//! The generic `json` parser: each line that is a JSON object becomes one event.
//!
//! Configured top-level keys feed the event fields; every other key goes into
//! `metadata` as the raw JSON text of its value, so values are never parsed
//! into a tree and written out again (this parser is on the hot path).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use std::sync::Arc;

use super::{EventBuf, EventContext, Parser, Record, Redaction, Skip};
use crate::config::JsonFields;
use crate::event::{EventType, Timestamp};

const AGENT: usize = 0;
const SESSION: usize = 1;
const USER: usize = 2;
const TOOL: usize = 3;
const TYPE: usize = 4;
const CONTENT: usize = 5;
const TIME: usize = 6;
const FIELDS: usize = 7;

#[derive(Clone)]
pub struct JsonParser {
    ctx: EventContext,
    red: Arc<Redaction>,
    /// For each event field, its candidate keys in order of preference.
    keys: [Vec<String>; FIELDS],
    default_event_type: EventType,
}

impl JsonParser {
    /// With the built-in redaction and the context's content bound.
    pub fn new(ctx: EventContext, fields: &JsonFields) -> JsonParser {
        let red = Arc::new(Redaction::builtin(ctx.content_max_bytes));
        JsonParser::with_redaction(ctx, red, fields)
    }

    pub fn with_redaction(
        ctx: EventContext,
        red: Arc<Redaction>,
        fields: &JsonFields,
    ) -> JsonParser {
        JsonParser {
            ctx,
            red,
            keys: [
                fields.agent_id.clone(),
                fields.session_id.clone(),
                fields.user_id.clone(),
                fields.tool_name.clone(),
                fields.event_type.clone(),
                fields.content.clone(),
                fields.occurred_at.clone(),
            ],
            default_event_type: EventType::parse(&fields.default_event_type)
                .unwrap_or(EventType::ToolCallPost),
        }
    }

    /// Which field `key` feeds, and how preferred it is for that field.
    fn field_of(&self, key: &str) -> Option<(usize, usize)> {
        self.keys
            .iter()
            .enumerate()
            .find_map(|(field, candidates)| {
                candidates
                    .iter()
                    .position(|c| c == key)
                    .map(|rank| (field, rank))
            })
    }
}

/// A string that borrows from the input unless it had escapes.
pub(crate) struct Str<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The top-level entries of a JSON object, values left as raw text.
pub(crate) struct Entries<'a>(pub(crate) Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<'de>, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((k, v)) = map.next_entry::<Str<'de>, &'de RawValue>()? {
                    entries.push((k.0, v));
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON value read as text: strings unescaped, anything else as written.
pub(crate) fn as_text(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<Str>(text).ok().map(|s| s.0),
        Some(b'n') if text == "null" => None,
        _ => Some(Cow::Borrowed(text)),
    }
}

pub(crate) fn as_timestamp(raw: &RawValue) -> Option<Timestamp> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            let s = serde_json::from_str::<Str>(text).ok()?;
            Timestamp::parse_rfc3339(&s.0).or_else(|| {
                s.0.parse::<f64>()
                    .ok()
                    .and_then(Timestamp::from_epoch_number)
            })
        }
        Some(b'-' | b'0'..=b'9') => text
            .parse::<f64>()
            .ok()
            .and_then(Timestamp::from_epoch_number),
        _ => None,
    }
}

impl Parser for JsonParser {
    fn parse(&mut self, rec: &Record<'_>, out: &mut EventBuf) -> Result<usize, Skip> {
        let line = rec.line.trim_ascii();
        if line.is_empty() {
            return Err(Skip::EmptyLine);
        }
        if line[0] != b'{' {
            return match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                Ok(_) => Err(Skip::NotAnObject),
                Err(_) => Err(Skip::InvalidJson),
            };
        }
        let Entries(entries) = serde_json::from_slice(line).map_err(|_| Skip::InvalidJson)?;

        // For each field, the index of the entry that feeds it and that key's rank.
        let mut chosen: [Option<(usize, usize)>; FIELDS] = [None; FIELDS];
        for (i, (key, _)) in entries.iter().enumerate() {
            if let Some((field, rank)) = self.field_of(key) {
                if chosen[field].is_none_or(|(_, best)| rank < best) {
                    chosen[field] = Some((i, rank));
                }
            }
        }
        let value = |field: usize| chosen[field].map(|(i, _)| entries[i].1);

        let event_type = value(TYPE)
            .and_then(as_text)
            .and_then(|t| EventType::parse(&t))
            .unwrap_or(self.default_event_type);
        let occurred_at = value(TIME).and_then(as_timestamp).unwrap_or(rec.read_at);
        let mut event = self.ctx.base_event(rec, 0, event_type, occurred_at);
        if let Some(v) = value(AGENT).and_then(as_text) {
            event.agent_id = Some(v);
        }
        if let Some(v) = value(SESSION).and_then(as_text) {
            event.session_id = v;
        }
        if let Some(v) = value(USER).and_then(as_text) {
            event.user_id = v;
        }
        if let Some(v) = value(TOOL).and_then(as_text) {
            event.tool_name = v;
        }
        if let Some(v) = value(CONTENT).and_then(as_text) {
            event.content = self.red.content(v);
        }

        let others = entries
            .iter()
            .enumerate()
            .filter(|(i, _)| !chosen.iter().any(|c| matches!(c, Some((j, _)) if j == i)));
        let mut meta = self.red.metadata();
        for (_, (k, v)) in others {
            meta.raw(k, v);
        }
        event.metadata = meta.finish();
        self.red.push(out, &mut event);
        Ok(1)
    }

    fn set_user(&mut self, user: &str) {
        self.ctx.user_id = user.to_string();
    }

    fn fresh(&self) -> Box<dyn Parser> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EnforcementMode;
    use serde_json::Value;

    fn parser() -> JsonParser {
        let mut ctx = EventContext::preview("acme", "agents");
        ctx.enforcement_mode = EnforcementMode::Observe;
        ctx.ttl_secs = 100;
        ctx.content_max_bytes = 16;
        JsonParser::new(ctx, &JsonFields::default())
    }

    fn parse_one(line: &str) -> Result<Value, Skip> {
        let mut out = EventBuf::default();
        let rec = Record {
            stream: "agents/abc",
            position: 7,
            line: line.as_bytes(),
            read_at: Timestamp::from_unix_micros(1_000_000),
        };
        parser().parse(&rec, &mut out)?;
        assert_eq!(out.len(), 1);
        Ok(serde_json::from_slice(out.get(0)).expect("event is valid JSON"))
    }

    #[test]
    fn maps_known_keys_and_keeps_the_rest_as_metadata() {
        let e = parse_one(
            r#"{"agent":"bot-1","session_id":"s1","tool":"bash","event_type":"tool_call_pre",
                "content":"ls -la","timestamp":"2026-03-13T12:00:00Z","cwd":"/tmp","n":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(e["agent_id"], "bot-1");
        assert_eq!(e["session_id"], "s1");
        assert_eq!(e["user_id"], "system");
        assert_eq!(e["tool_name"], "bash");
        assert_eq!(e["event_type"], "TOOL_CALL_PRE");
        assert_eq!(e["source_type"], "agent_tool_call");
        assert_eq!(e["content"], "ls -la");
        assert_eq!(e["occurred_at"], "2026-03-13T12:00:00.000000+00:00");
        assert_eq!(
            e["metadata"],
            serde_json::json!({"cwd": "/tmp", "n": [1, 2]})
        );
        assert_eq!(e["tenant_id"], "acme");
        assert!(e["event_id"].as_str().unwrap().starts_with("acme:"));
        assert_eq!(e["ttl"], 1_773_403_200 + 100);
    }

    #[test]
    fn defaults_when_the_line_has_little() {
        let e = parse_one(r#"{"x":"\u00e9\"q"}"#).unwrap();
        assert_eq!(e["session_id"], "agents");
        assert_eq!(e["event_type"], "TOOL_CALL_POST");
        assert_eq!(e["agent_id"], Value::Null);
        assert_eq!(e["occurred_at"], "1970-01-01T00:00:01.000000+00:00");
        assert_eq!(e["metadata"]["x"], "é\"q");
    }

    #[test]
    fn llm_invocation_gets_its_source_type_and_content_is_bounded() {
        let e =
            parse_one(r#"{"event_type":"LLM_INVOCATION","msg":"0123456789abcdefghij"}"#).unwrap();
        assert_eq!(e["source_type"], "agent_llm_invocation");
        assert_eq!(e["content"], "0123456789abcdef");
    }

    #[test]
    fn epoch_timestamps() {
        let e = parse_one(r#"{"ts":1773403200123}"#).unwrap();
        assert_eq!(e["occurred_at"], "2026-03-13T12:00:00.123000+00:00");
    }

    #[test]
    fn skips_with_reasons() {
        assert_eq!(parse_one("   ").unwrap_err(), Skip::EmptyLine);
        assert_eq!(parse_one("[1,2]").unwrap_err(), Skip::NotAnObject);
        assert_eq!(parse_one("hello").unwrap_err(), Skip::InvalidJson);
        assert_eq!(parse_one(r#"{"a":"#).unwrap_err(), Skip::InvalidJson);
        assert_eq!(
            parse_one(r#"{"a":1} trailing"#).unwrap_err(),
            Skip::InvalidJson
        );
    }

    #[test]
    fn content_and_metadata_are_redacted() {
        let e =
            parse_one(r#"{"content":"pw=x AKIAIOSFODNN7EXAMPLE","env":{"k":"password=hunter2"}}"#)
                .unwrap();
        assert_eq!(e["content"], "pw=x [REDACTED:a");
        assert_eq!(
            e["metadata"]["env"]["k"],
            "password=[REDACTED:secret-assignment]"
        );
    }

    #[test]
    fn same_record_same_event() {
        let a = parse_one(r#"{"k":1}"#).unwrap();
        let b = parse_one(r#"{"k":1}"#).unwrap();
        assert_eq!(a, b);
    }
}

//! The `otel-genai` preset: JSON log or span records that follow the
//! OpenTelemetry GenAI semantic conventions.
//!
//! Attributes are found wherever exporters put them: as top-level dotted keys,
//! in an `attributes` object, or in OTLP's `attributes` array of
//! `{key, value: {stringValue|intValue|...}}`. A `chat`, `generate_content` or
//! `text_completion` record is an LLM_INVOCATION, an `execute_tool` record a
//! TOOL_CALL_POST; the session is `gen_ai.conversation.id`. The conventions
//! are still in development, so names are matched as they stand today.
//!
//! A line may also be a whole OTLP/JSON export (what the collector's file
//! exporter writes): `resourceSpans[].scopeSpans[].spans[]` or
//! `resourceLogs[].scopeLogs[].logRecords[]`. Each record in it is read as
//! above, and the line gives one event per GenAI record, in order.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    decode_state, encode_state, field, parse_object, skip_kind, string, text, timestamp, KindTable,
};
use crate::event::EventType;
use crate::parse::history::{EntersAt, SavedHistory, SessionHistory};
use crate::parse::json::Entries;
use std::sync::Arc;

use crate::parse::{EventBuf, EventContext, MetaWriter, Parser, Record, Redaction, Skip};

/// GenAI operations that make no event, and why.
pub const SKIPPED: KindTable = &[
    (
        "embeddings",
        "OTel `embeddings` operation: text turned into vectors, no chat or tool call",
    ),
    (
        "invoke_agent",
        "OTel `invoke_agent` operation: an agent's whole run (its chats and tool calls are records of their own)",
    ),
    (
        "create_agent",
        "OTel `create_agent` operation: an agent defined, no call",
    ),
];

/// Top-level keys holding the record's time, most specific first.
const TIME_KEYS: [&str; 7] = [
    "timeUnixNano",
    "startTimeUnixNano",
    "timestamp",
    "time",
    "@timestamp",
    "start_time",
    "observedTimeUnixNano",
];

#[derive(Deserialize)]
struct OtlpAttribute<'a> {
    #[serde(borrow)]
    key: Option<&'a RawValue>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
}

/// A record's attributes, values as raw JSON (OTLP's typed wrappers removed).
struct Attributes<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Attributes<'a> {
    fn collect(top: &[(Cow<'a, str>, &'a RawValue)]) -> Attributes<'a> {
        let mut attrs = Vec::new();
        for (k, v) in top {
            if k == "attributes" {
                match v.get().as_bytes().first() {
                    Some(b'{') => {
                        if let Some(Entries(inner)) = field::<Entries>(Some(v)) {
                            attrs.extend(inner);
                        }
                    }
                    Some(b'[') => {
                        let list: Vec<OtlpAttribute> = field(Some(v)).unwrap_or_default();
                        for a in list {
                            if let (Some(key), Some(value)) = (string(a.key), unwrap_any(a.value)) {
                                attrs.push((key, value));
                            }
                        }
                    }
                    _ => {}
                }
            } else if k.contains('.') {
                attrs.push((k.clone(), *v));
            }
        }
        Attributes(attrs)
    }

    fn raw(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    fn text(&self, name: &str) -> Option<Cow<'a, str>> {
        text(self.raw(name))
    }
}

/// The inner value of OTLP's `{"stringValue": ...}` (or int, double, bool,
/// array, kvlist) wrapper.
fn unwrap_any(raw: Option<&RawValue>) -> Option<&RawValue> {
    let Entries(entries) = field::<Entries>(raw)?;
    entries.into_iter().next().map(|(_, v)| v)
}

pub struct OtelGenAi {
    ctx: EventContext,
    red: Arc<Redaction>,
    /// `execute_tool` records are completed calls: each enters the
    /// history at its TOOL_CALL_POST.
    history: SessionHistory,
}

impl OtelGenAi {
    pub fn new(ctx: EventContext, red: Arc<Redaction>) -> Self {
        OtelGenAi {
            ctx,
            red,
            history: SessionHistory::new(EntersAt::Outcome),
        }
    }
}

fn put(meta: &mut MetaWriter<'_>, key: &str, attrs: &Attributes<'_>, name: &str) {
    meta.opt_raw(key, attrs.raw(name));
}

/// One resource of an OTLP/JSON export, with its scopes.
#[derive(Deserialize)]
struct Resource<'a> {
    /// The resource's own attributes (`service.name`, ...).
    #[serde(borrow)]
    resource: Option<ResourceAttributes<'a>>,
    #[serde(borrow, rename = "scopeSpans")]
    scope_spans: Option<Vec<Scope<'a>>>,
    #[serde(borrow, rename = "scopeLogs")]
    scope_logs: Option<Vec<Scope<'a>>>,
}

#[derive(Deserialize)]
struct ResourceAttributes<'a> {
    #[serde(borrow)]
    attributes: Option<&'a RawValue>,
}

/// A record of an export, with its resource's `service.name`.
type Exported<'a> = (&'a RawValue, Option<Cow<'a, str>>);

#[derive(Deserialize)]
struct Scope<'a> {
    #[serde(borrow)]
    spans: Option<Vec<&'a RawValue>>,
    #[serde(borrow, rename = "logRecords")]
    log_records: Option<Vec<&'a RawValue>>,
}

/// The records of an OTLP/JSON export line, in order; None if `top` is not one.
fn exported_records<'a>(top: &[(Cow<'a, str>, &'a RawValue)]) -> Option<Vec<Exported<'a>>> {
    let resources = top
        .iter()
        .filter(|(k, _)| k == "resourceSpans" || k == "resourceLogs")
        .map(|(_, v)| *v)
        .collect::<Vec<_>>();
    if resources.is_empty() {
        return None;
    }
    let mut records = Vec::new();
    for raw in resources {
        for resource in field::<Vec<Resource>>(Some(raw)).unwrap_or_default() {
            let service = resource.resource.and_then(|r| r.attributes).and_then(|a| {
                Attributes::collect(&[(Cow::Borrowed("attributes"), a)]).text("service.name")
            });
            let scopes = resource.scope_spans.into_iter().flatten();
            for scope in scopes.chain(resource.scope_logs.into_iter().flatten()) {
                let spans = scope.spans.into_iter().flatten();
                for record in spans.chain(scope.log_records.into_iter().flatten()) {
                    records.push((record, service.clone()));
                }
            }
        }
    }
    Some(records)
}

impl OtelGenAi {
    /// The event of one record (its top-level entries), as event `index` of
    /// the line; `service` is its resource's `service.name`.
    fn record(
        &mut self,
        rec: &Record<'_>,
        index: u32,
        top: &[(Cow<'_, str>, &RawValue)],
        service: Option<Cow<'_, str>>,
        out: &mut EventBuf,
    ) -> Result<(), Skip> {
        let attrs = Attributes::collect(top);
        let top_raw = |name: &str| top.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        let operation = attrs
            .text("gen_ai.operation.name")
            .ok_or(Skip::NoGenAiOperation)?;
        let event_type = match &*operation {
            "chat" | "generate_content" | "text_completion" => EventType::LlmInvocation,
            "execute_tool" => EventType::ToolCallPost,
            other => return Err(skip_kind(SKIPPED, Some(other), Skip::UnmappedOperation)),
        };
        let at = TIME_KEYS
            .iter()
            .find_map(|k| timestamp(top_raw(k)))
            .unwrap_or(rec.read_at);
        let mut e = self.ctx.base_event(rec, index, event_type, at);
        // The agent's own name, else the service's: the record's, then
        // its resource's.
        e.agent_id = self.ctx.agent_or_else(|| {
            attrs
                .text("gen_ai.agent.name")
                .or_else(|| attrs.text("service.name"))
                .or(service)
        });
        if let Some(s) = attrs
            .text("gen_ai.conversation.id")
            .or_else(|| attrs.text("mcp.session.id"))
        {
            e.session_id = s;
        }
        let mut meta = self.red.metadata();
        if event_type == EventType::ToolCallPost {
            e.tool_name = attrs.text("gen_ai.tool.name").unwrap_or_default();
            let call_id = attrs
                .text("gen_ai.tool.call.id")
                .or_else(|| attrs.text("jsonrpc.request.id"));
            meta.opt_str("call_id", call_id.as_deref());
            put(&mut meta, "tool_type", &attrs, "gen_ai.tool.type");
            put(&mut meta, "mcp_method", &attrs, "mcp.method.name");
            put(&mut meta, "mcp_session_id", &attrs, "mcp.session.id");
            let body = attrs
                .text("gen_ai.tool.call.result")
                .or_else(|| attrs.text("gen_ai.tool.call.arguments"));
            if let Some(body) = body {
                e.content = self.red.content(body);
            }
        } else {
            put(&mut meta, "request_model", &attrs, "gen_ai.request.model");
            put(&mut meta, "response_model", &attrs, "gen_ai.response.model");
            put(
                &mut meta,
                "input_tokens",
                &attrs,
                "gen_ai.usage.input_tokens",
            );
            put(
                &mut meta,
                "output_tokens",
                &attrs,
                "gen_ai.usage.output_tokens",
            );
        }
        meta.str("operation", &operation);
        let provider = attrs
            .raw("gen_ai.provider.name")
            .or(attrs.raw("gen_ai.system"));
        meta.opt_raw("provider", provider);
        let error = attrs.text("error.type");
        meta.bool("is_error", error.is_some());
        meta.opt_str("error_type", error.as_deref());
        meta.opt_raw("trace_id", top_raw("traceId").or(top_raw("trace_id")));
        meta.opt_raw("span_id", top_raw("spanId").or(top_raw("span_id")));
        meta.opt_raw("span_name", top_raw("name"));
        let entry = self.history.fill(&self.red, &mut e, &mut meta);
        e.metadata = meta.finish();
        self.red.push(out, &mut e);
        self.history.record(entry);
        Ok(())
    }
}

impl Parser for OtelGenAi {
    fn parse(&mut self, rec: &Record<'_>, out: &mut EventBuf) -> Result<usize, Skip> {
        let Entries(top) = parse_object(rec.line)?;
        let Some(records) = exported_records(&top) else {
            self.record(rec, 0, &top, None, out)?;
            return Ok(1);
        };
        // An export: one event per GenAI record; the line is skipped, with
        // the first record's reason, only when none makes one.
        let mut made = 0u32;
        let mut first_skip = None;
        for (raw, service) in records {
            let result = match field::<Entries>(Some(raw)) {
                Some(Entries(record)) => self.record(rec, made, &record, service, out),
                None => Err(Skip::UnexpectedShape),
            };
            match result {
                Ok(()) => made += 1,
                Err(skip) => {
                    first_skip.get_or_insert(skip);
                }
            }
        }
        match made {
            0 => Err(first_skip.unwrap_or(Skip::NoGenAiOperation)),
            n => Ok(n as usize),
        }
    }

    fn set_user(&mut self, user: &str) {
        self.ctx.user_id = user.to_string();
    }

    fn fresh(&self) -> Box<dyn Parser> {
        Box::new(OtelGenAi::new(self.ctx.clone(), self.red.clone()))
    }

    fn save_state(&self) -> Vec<u8> {
        if self.history.is_empty() {
            return Vec::new();
        }
        encode_state(&self.history.save())
    }

    fn load_state(&mut self, bytes: &[u8]) {
        let saved: SavedHistory = decode_state(bytes).unwrap_or_default();
        self.history.load(saved, &self.red);
    }

    fn take_evictions(&mut self) -> u64 {
        self.history.take_evictions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Timestamp;

    fn parse(line: &str) -> Result<Vec<serde_json::Value>, Skip> {
        let ctx = EventContext::preview("t", "s");
        let red = Arc::new(Redaction::builtin(ctx.content_max_bytes));
        let mut p = OtelGenAi::new(ctx, red);
        let mut out = EventBuf::default();
        let rec = Record {
            stream: "x",
            position: 0,
            line: line.as_bytes(),
            read_at: Timestamp::from_unix_micros(0),
        };
        let n = p.parse(&rec, &mut out)?;
        assert_eq!(n, out.len());
        Ok(out
            .iter()
            .map(|e| serde_json::from_slice(e).unwrap())
            .collect())
    }

    #[test]
    fn an_otlp_export_gives_one_event_per_genai_record_with_distinct_ids() {
        let chat =
            r#"{"attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"chat"}}]}"#;
        let tool =
            r#"{"attributes":{"gen_ai.operation.name":"execute_tool","gen_ai.tool.name":"t"}}"#;
        let line = format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{chat},{{"name":"x"}},7]}}]}},{{"scopeSpans":[{{"spans":[{tool}]}}]}}]}}"#
        );
        let events = parse(&line).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["event_type"], "LLM_INVOCATION");
        assert_eq!(events[1]["tool_name"], "t");
        assert_ne!(events[0]["event_id"], events[1]["event_id"]);
        let none = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{}}]}]}]}"#;
        assert_eq!(parse(none).unwrap_err(), Skip::NoGenAiOperation);
        assert_eq!(
            parse(r#"{"resourceSpans":7}"#).unwrap_err(),
            Skip::NoGenAiOperation
        );
    }
}

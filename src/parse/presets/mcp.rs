//! The `mcp-claude-desktop` preset: MCP traffic in Claude Desktop's logs
//! (`mcp.log`, `mcp-server-<NAME>.log`).
//!
//! A line is `<ISO 8601> [<server>] [<level>] Message from client|server:
//! <JSON-RPC>`, sometimes followed by ` { metadata: undefined }`. A client
//! `tools/call` is a TOOL_CALL_PRE; the server's answer with the same `id`
//! (paired per server, in state) is the TOOL_CALL_POST. The log names no
//! session: it is `<server>@<stream>`, the server and the file.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    boolean, decode_state, encode_state, field, output_text, string, text, BoundedMap,
    STATE_MAX_ENTRIES,
};
use crate::event::{EventType, Timestamp};
use std::sync::Arc;

use crate::parse::{EventBuf, EventContext, Parser, Record, Redaction, Skip};

const FROM_CLIENT: &str = "Message from client: ";
const FROM_SERVER: &str = "Message from server: ";

#[derive(Deserialize)]
struct JsonRpc<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CallParams<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CallResult<'a> {
    #[serde(borrow, rename = "isError")]
    is_error: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RpcError<'a> {
    #[serde(borrow)]
    code: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
}

/// The parts of a log line around its JSON-RPC message.
struct LogLine<'a> {
    at: Option<Timestamp>,
    server: &'a str,
    from_client: bool,
    json: &'a str,
}

fn split_line(line: &str) -> Option<LogLine<'_>> {
    let (ts, rest) = line.split_once(' ')?;
    let rest = rest.strip_prefix('[')?;
    let (server, rest) = rest.split_once("] ")?;
    // `[<level>] ` then the marker, right there: searching the whole line
    // costs a scan of every long message and would take a server's message
    // that quotes "Message from client: " in its JSON for the client's.
    let rest = match rest.strip_prefix('[') {
        Some(r) => r.split_once("] ")?.1,
        None => rest,
    };
    let (from_client, json) = if let Some(json) = rest.strip_prefix(FROM_CLIENT) {
        (true, json)
    } else {
        (false, rest.strip_prefix(FROM_SERVER)?)
    };
    Some(LogLine {
        at: Timestamp::parse_rfc3339(ts),
        server,
        from_client,
        json,
    })
}

/// The first JSON value of `s`; whatever follows it (` { metadata: undefined }`)
/// is not JSON and is ignored.
fn first_message(s: &str) -> Option<JsonRpc<'_>> {
    let s = s.trim_start();
    if !s.starts_with('{') {
        return None;
    }
    let mut values = serde_json::Deserializer::from_str(s).into_iter::<JsonRpc>();
    values.next()?.ok()
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    /// Tool names of calls awaiting an answer, by `<server>\u{1f}<id>`.
    calls: Vec<(String, String)>,
}

pub struct McpClaudeDesktop {
    ctx: EventContext,
    red: Arc<Redaction>,
    calls: BoundedMap<String>,
}

impl McpClaudeDesktop {
    pub fn new(ctx: EventContext, red: Arc<Redaction>) -> Self {
        McpClaudeDesktop {
            ctx,
            red,
            calls: BoundedMap::new(STATE_MAX_ENTRIES),
        }
    }
}

/// `mcp:<server>`, unless the config names the agent.
fn mcp_agent<'c>(ctx: &'c EventContext, server: &str) -> Option<Cow<'c, str>> {
    ctx.agent_or_else(|| Some(Cow::Owned(format!("mcp:{server}"))))
}

fn pending_key(server: &str, id: &str) -> String {
    let mut k = String::with_capacity(server.len() + id.len() + 1);
    k.push_str(server);
    k.push('\u{1f}');
    k.push_str(id);
    k
}

impl Parser for McpClaudeDesktop {
    fn parse(&mut self, rec: &Record<'_>, out: &mut EventBuf) -> Result<usize, Skip> {
        let trimmed = rec.line.trim_ascii();
        if trimmed.is_empty() {
            return Err(Skip::EmptyLine);
        }
        let line = std::str::from_utf8(trimmed).map_err(|_| Skip::NotJsonRpc)?;
        let parts = split_line(line).ok_or(Skip::NotJsonRpc)?;
        let msg = first_message(parts.json).ok_or(Skip::NotJsonRpc)?;
        let at = parts.at.unwrap_or(rec.read_at);
        let call_id = text(msg.id);
        let session = format!("{}@{}", parts.server, rec.stream);
        let method = string(msg.method);

        if parts.from_client {
            if method.as_deref() != Some("tools/call") {
                return Err(Skip::NotAToolCall);
            }
            let params: Option<CallParams> = field(msg.params);
            let name = params
                .as_ref()
                .and_then(|p| string(p.name))
                .unwrap_or(Cow::Borrowed(""));
            if let Some(id) = &call_id {
                self.calls
                    .insert(pending_key(parts.server, id), name.to_string());
            }
            let mut e = self.ctx.base_event(rec, 0, EventType::ToolCallPre, at);
            e.agent_id = mcp_agent(&self.ctx, parts.server);
            e.session_id = Cow::Owned(session);
            e.tool_name = name;
            if let Some(args) = params.as_ref().and_then(|p| p.arguments) {
                e.content = self.red.content(Cow::Borrowed(args.get()));
            }
            let mut meta = self.red.metadata();
            meta.opt_str("call_id", call_id.as_deref());
            meta.str("server", parts.server);
            e.metadata = meta.finish();
            self.red.push(out, &mut e);
            return Ok(1);
        }

        // From the server: only answers (an id and a result or error) matter.
        let Some(id) = &call_id else {
            return Err(Skip::NotAToolCall);
        };
        if method.is_some() || (msg.result.is_none() && msg.error.is_none()) {
            return Err(Skip::NotAToolCall);
        }
        let Some(name) = self.calls.remove(&pending_key(parts.server, id)) else {
            return Err(Skip::UnmatchedResponse);
        };
        let result: Option<CallResult> = field(msg.result);
        let error: Option<RpcError> = field(msg.error);
        let is_error = msg.error.is_some()
            || result
                .as_ref()
                .and_then(|r| boolean(r.is_error))
                .unwrap_or(false);
        let content = match (&result, &error) {
            (Some(r), _) => output_text(r.content),
            (None, Some(err)) => string(err.message),
            (None, None) => None,
        };
        let mut e = self.ctx.base_event(rec, 0, EventType::ToolCallPost, at);
        e.agent_id = mcp_agent(&self.ctx, parts.server);
        e.session_id = Cow::Owned(session);
        e.tool_name = Cow::Owned(name);
        if let Some(c) = content {
            e.content = self.red.content(c);
        }
        let mut meta = self.red.metadata();
        meta.str("call_id", id);
        meta.str("server", parts.server);
        meta.bool("is_error", is_error);
        meta.opt_raw("error_code", error.as_ref().and_then(|e| e.code));
        e.metadata = meta.finish();
        self.red.push(out, &mut e);
        Ok(1)
    }

    fn set_user(&mut self, user: &str) {
        self.ctx.user_id = user.to_string();
    }

    fn fresh(&self) -> Box<dyn Parser> {
        Box::new(McpClaudeDesktop::new(self.ctx.clone(), self.red.clone()))
    }

    fn save_state(&self) -> Vec<u8> {
        if self.calls.is_empty() {
            return Vec::new();
        }
        encode_state(&State {
            calls: self.calls.to_entries(),
        })
    }

    fn load_state(&mut self, bytes: &[u8]) {
        let state: State = decode_state(bytes).unwrap_or_default();
        self.calls = BoundedMap::from_entries(STATE_MAX_ENTRIES, state.calls);
    }

    fn take_evictions(&mut self) -> u64 {
        self.calls.take_evictions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_observed_layout() {
        let l = split_line(
            r#"2026-03-13T12:00:00.000Z [github] [info] Message from client: {"jsonrpc":"2.0"} { metadata: undefined }"#,
        )
        .unwrap();
        assert_eq!(l.server, "github");
        assert!(l.from_client);
        assert!(l.at.is_some());
        assert!(first_message(l.json).is_some());
        assert!(split_line("2026-03-13T12:00:00.000Z [github] [info] Server started").is_none());
        // A server's answer quoting the client's marker is still the server's.
        let quoted = split_line(
            r#"2026-03-13T12:00:00.000Z [fs] [info] Message from server: {"result":"Message from client: x"}"#,
        )
        .unwrap();
        assert!(!quoted.from_client);
        assert!(quoted.json.starts_with("{\"result\""));
    }
}

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
    boolean, decode_state, encode_state, field, output_text, skip_kind, string, text, BoundedMap,
    KindTable, STATE_MAX_ENTRIES,
};
use crate::event::{EventType, Timestamp};
use crate::parse::history::{EntersAt, SavedHistory, SessionHistory};
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
    #[serde(default)]
    requests: Vec<(String, ())>,
    #[serde(default)]
    history: SavedHistory,
}

pub struct McpClaudeDesktop {
    ctx: EventContext,
    red: Arc<Redaction>,
    calls: BoundedMap<String>,
    /// Other requests awaiting an answer, by [`direction_key`].
    requests: BoundedMap<()>,
    history: SessionHistory,
}

impl McpClaudeDesktop {
    pub fn new(ctx: EventContext, red: Arc<Redaction>) -> Self {
        McpClaudeDesktop {
            ctx,
            red,
            calls: BoundedMap::new(STATE_MAX_ENTRIES),
            requests: BoundedMap::new(REQUESTS_KEPT),
            history: SessionHistory::new(EntersAt::Pre),
        }
    }
}

/// `mcp:<server>`, unless the config names the agent.
fn mcp_agent<'c>(ctx: &'c EventContext, server: &str) -> Option<Cow<'c, str>> {
    ctx.agent_or_else(|| Some(Cow::Owned(format!("mcp:{server}"))))
}

/// JSON-RPC methods that are not tool calls, and why they make no event.
pub const SKIPPED: KindTable = &[
    ("initialize", "MCP `initialize`: the connection's handshake"),
    ("ping", "MCP `ping`: a keepalive"),
    (
        "tools/list",
        "MCP `tools/list`: the client learning the server's tools, no call",
    ),
    ("resources/list", "MCP `resources/list`: a listing, no call"),
    (
        "resources/templates/list",
        "MCP `resources/templates/list`: a listing, no call",
    ),
    (
        "resources/read",
        "MCP `resources/read`: the app reading a resource the user attached, not the agent's call",
    ),
    (
        "resources/subscribe",
        "MCP `resources/subscribe`: the app asking to hear of a resource's changes",
    ),
    ("prompts/list", "MCP `prompts/list`: a listing, no call"),
    (
        "prompts/get",
        "MCP `prompts/get`: a prompt template the user picked",
    ),
    (
        "completion/complete",
        "MCP `completion/complete`: completing an argument as the user types",
    ),
    (
        "logging/setLevel",
        "MCP `logging/setLevel`: the server's log level",
    ),
    (
        "sampling/createMessage",
        "MCP `sampling/createMessage`: the server asking the app's model for text (not mapped yet)",
    ),
    (
        "roots/list",
        "MCP `roots/list`: the server asking which folders it may use",
    ),
    (
        "elicitation/create",
        "MCP `elicitation/create`: the server asking the user a question",
    ),
    (
        NOTIFICATIONS,
        "MCP `notifications/...`: a notification, no call",
    ),
    (ANSWERS, "MCP answer to a request that is not a tool call"),
];

/// The entry of [`SKIPPED`] for any `notifications/...` method.
const NOTIFICATIONS: &str = "notifications/*";
/// The entry of [`SKIPPED`] for an answer to one of its requests.
const ANSWERS: &str = "(answer)";

/// Requests that are not tool calls kept per stream, to tell their answers
/// apart from answers never asked for: few are ever pending at once.
const REQUESTS_KEPT: usize = 256;

fn method_skip(method: Option<&str>) -> Skip {
    match method {
        Some(m) if m.starts_with("notifications/") => {
            skip_kind(SKIPPED, Some(NOTIFICATIONS), Skip::NotAToolCall)
        }
        m => skip_kind(SKIPPED, m, Skip::NotAToolCall),
    }
}

fn pending_key(server: &str, id: &str) -> String {
    direction_key(server, '\u{1f}', id)
}

/// A request's key: its server, who asked (`\u{1f}` the client, `\u{1e}`
/// the server; ids of the two directions are apart) and its id.
fn direction_key(server: &str, from: char, id: &str) -> String {
    let mut k = String::with_capacity(server.len() + id.len() + 1);
    k.push_str(server);
    k.push(from);
    k.push_str(id);
    k
}

/// Who sent a message, as [`direction_key`] marks it.
fn from_mark(from_client: bool) -> char {
    if from_client {
        '\u{1f}'
    } else {
        '\u{1e}'
    }
}

impl McpClaudeDesktop {
    /// A client's `tools/call`: the PRE.
    fn call(
        &mut self,
        rec: &Record<'_>,
        parts: &LogLine<'_>,
        msg: &JsonRpc<'_>,
        out: &mut EventBuf,
    ) -> usize {
        let at = parts.at.unwrap_or(rec.read_at);
        let call_id = text(msg.id);
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
        e.session_id = Cow::Owned(session_of(parts, rec));
        e.tool_name = name;
        if let Some(args) = params.as_ref().and_then(|p| p.arguments) {
            e.content = self.red.content(Cow::Borrowed(args.get()));
        }
        let mut meta = self.red.metadata();
        meta.opt_str("call_id", call_id.as_deref());
        meta.str("server", parts.server);
        let entry = self.history.fill(&self.red, &mut e, &mut meta);
        e.metadata = meta.finish();
        self.red.push(out, &mut e);
        self.history.record(entry);
        1
    }

    /// The server's answer to a tool call: the POST.
    fn answer(
        &mut self,
        rec: &Record<'_>,
        parts: &LogLine<'_>,
        msg: &JsonRpc<'_>,
        id: &str,
        name: String,
        out: &mut EventBuf,
    ) -> usize {
        let at = parts.at.unwrap_or(rec.read_at);
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
        e.session_id = Cow::Owned(session_of(parts, rec));
        e.tool_name = Cow::Owned(name);
        if let Some(c) = content {
            e.content = self.red.content(c);
        }
        let mut meta = self.red.metadata();
        meta.str("call_id", id);
        meta.str("server", parts.server);
        meta.bool("is_error", is_error);
        meta.opt_raw("error_code", error.as_ref().and_then(|e| e.code));
        let entry = self.history.fill(&self.red, &mut e, &mut meta);
        e.metadata = meta.finish();
        self.red.push(out, &mut e);
        self.history.record(entry);
        1
    }
}

/// The session of a server's lines: `<server>@<stream>`.
fn session_of(parts: &LogLine<'_>, rec: &Record<'_>) -> String {
    format!("{}@{}", parts.server, rec.stream)
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
        let id = text(msg.id);
        let method = string(msg.method);
        match (method.as_deref(), &id) {
            (Some("tools/call"), _) if parts.from_client => Ok(self.call(rec, &parts, &msg, out)),
            // Any other request: remembered, so its answer is known.
            (Some(m), Some(id)) => {
                let key = direction_key(parts.server, from_mark(parts.from_client), id);
                self.requests.insert(key, ());
                Err(method_skip(Some(m)))
            }
            (Some(m), None) => Err(method_skip(Some(m))),
            (None, Some(id)) if msg.result.is_some() || msg.error.is_some() => {
                let asker = from_mark(!parts.from_client);
                if !parts.from_client {
                    if let Some(name) = self.calls.remove(&pending_key(parts.server, id)) {
                        return Ok(self.answer(rec, &parts, &msg, id, name, out));
                    }
                }
                if self
                    .requests
                    .remove(&direction_key(parts.server, asker, id))
                    .is_some()
                {
                    Err(skip_kind(SKIPPED, Some(ANSWERS), Skip::NotAToolCall))
                } else if parts.from_client {
                    Err(Skip::NotAToolCall)
                } else {
                    Err(Skip::UnmatchedResponse)
                }
            }
            (None, _) => Err(Skip::NotAToolCall),
        }
    }

    fn set_user(&mut self, user: &str) {
        self.ctx.user_id = user.to_string();
    }

    fn fresh(&self) -> Box<dyn Parser> {
        Box::new(McpClaudeDesktop::new(self.ctx.clone(), self.red.clone()))
    }

    fn save_state(&self) -> Vec<u8> {
        if self.calls.is_empty() && self.requests.is_empty() && self.history.is_empty() {
            return Vec::new();
        }
        encode_state(&State {
            calls: self.calls.to_entries(),
            requests: self.requests.to_entries(),
            history: self.history.save(),
        })
    }

    fn load_state(&mut self, bytes: &[u8]) {
        let state: State = decode_state(bytes).unwrap_or_default();
        self.calls = BoundedMap::from_entries(STATE_MAX_ENTRIES, state.calls);
        self.requests = BoundedMap::from_entries(REQUESTS_KEPT, state.requests);
        self.history.load(state.history, &self.red);
    }

    fn take_evictions(&mut self) -> u64 {
        self.calls.take_evictions() + self.requests.take_evictions() + self.history.take_evictions()
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

//! The `codex` preset: OpenAI Codex CLI rollouts
//! (`$CODEX_HOME/sessions/YYYY/MM/DD/rollout-*.jsonl`).
//!
//! Every line is `{"timestamp", "type", "payload"}`. The session id comes from
//! the file's `session_meta` line and the model from `turn_context` lines, so
//! both are parser state, as are the tool names of calls awaiting output.
//! A rollout without `session_meta` takes its session from the uuid at the
//! end of its file name (`rollout-<timestamp>-<uuid>.jsonl`), given by
//! [`Parser::set_origin`].

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    decode_state, encode_state, field, output_text, parse_object, skip_kind, string, text,
    timestamp, BoundedMap, KindTable, STATE_MAX_ENTRIES,
};
use crate::event::EventType;
use crate::parse::history::{EntersAt, SavedHistory, SessionHistory};
use std::sync::Arc;

use crate::parse::{EventBuf, EventContext, MetaWriter, Parser, Record, Redaction, Skip};

/// Top-level line types that carry no event, and why.
pub const SKIPPED_LINES: KindTable = &[(
    "compacted",
    "codex `compacted` line: the history summarized to save context",
)];

/// `response_item` payload types that carry no event, and why.
pub const SKIPPED_ITEMS: KindTable = &[
    ("message", "codex `message` item: a prompt or a reply, no call"),
    ("reasoning", "codex `reasoning` item: the model's reasoning, no call"),
    (
        "ghost_snapshot",
        "codex `ghost_snapshot` item: a git snapshot kept for undo",
    ),
    (
        "compaction",
        "codex `compaction` item: the history summarized to save context",
    ),
    (
        "image_generation_call",
        "codex `image_generation_call` item: the provider's own image tool, nothing leaves the host beyond the model call",
    ),
    (
        "tool_search_call",
        "codex `tool_search_call` item: the model looking up which tools exist, no call",
    ),
    (
        "tool_search_output",
        "codex `tool_search_output` item: the tools found, no call",
    ),
];

/// `event_msg` payload types that carry no event, and why. The ones that
/// echo a call (`exec_command_end`, `mcp_tool_call_end`, ...) are skipped
/// because the call and its output are already events from their
/// `response_item`s.
pub const SKIPPED_EVENTS: KindTable = &[
    (
        "user_message",
        "codex `user_message` event: the user's prompt, no call",
    ),
    (
        "agent_message",
        "codex `agent_message` event: the agent's reply, no call",
    ),
    (
        "agent_reasoning",
        "codex `agent_reasoning` event: the model's reasoning summary, no call",
    ),
    (
        "agent_reasoning_raw_content",
        "codex `agent_reasoning_raw_content` event: the model's reasoning, no call",
    ),
    ("task_started", "codex `task_started` event: a turn begins"),
    ("turn_started", "codex `turn_started` event: a turn begins"),
    ("task_complete", "codex `task_complete` event: a turn ends"),
    ("turn_complete", "codex `turn_complete` event: a turn ends"),
    (
        "turn_aborted",
        "codex `turn_aborted` event: the user interrupted a turn",
    ),
    (
        "exec_command_begin",
        "codex `exec_command_begin` event: echoes a call already an event",
    ),
    (
        "exec_command_end",
        "codex `exec_command_end` event (not declined): echoes an output already an event",
    ),
    (
        "patch_apply_begin",
        "codex `patch_apply_begin` event: echoes a call already an event",
    ),
    (
        "patch_apply_end",
        "codex `patch_apply_end` event: echoes an output already an event",
    ),
    (
        "mcp_tool_call_begin",
        "codex `mcp_tool_call_begin` event: echoes a call already an event",
    ),
    (
        "mcp_tool_call_end",
        "codex `mcp_tool_call_end` event: echoes an output already an event",
    ),
    (
        "web_search_begin",
        "codex `web_search_begin` event: echoes a search already an event",
    ),
    (
        "image_generation_end",
        "codex `image_generation_end` event: the provider's own image tool",
    ),
    (
        "context_compacted",
        "codex `context_compacted` event: the history summarized to save context",
    ),
    (
        "thread_rolled_back",
        "codex `thread_rolled_back` event: the user rewound the history",
    ),
    (
        "undo_completed",
        "codex `undo_completed` event: the user undid a turn",
    ),
    (
        "entered_review_mode",
        "codex `entered_review_mode` event: a code review begins",
    ),
    (
        "exited_review_mode",
        "codex `exited_review_mode` event: a code review ends",
    ),
    (
        "plan_update",
        "codex `plan_update` event: the agent's to-do list",
    ),
    (
        "thread_goal_updated",
        "codex `thread_goal_updated` event: the thread's goal, no call",
    ),
    (
        "item_completed",
        "codex `item_completed` event: a turn item done (its calls are `response_item`s)",
    ),
    (
        "error",
        "codex `error` event: an error shown to the user, no call",
    ),
];

/// Output texts with which Codex reports that the user refused a call.
const REJECTIONS: [&str; 2] = ["exec command rejected by user", "patch rejected by user"];

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

/// The fields of every payload variant this preset reads.
#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    cwd: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    call_id: Option<&'a RawValue>,
    #[serde(borrow)]
    output: Option<&'a RawValue>,
    #[serde(borrow)]
    action: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    info: Option<&'a RawValue>,
    #[serde(borrow)]
    exit_code: Option<&'a RawValue>,
    #[serde(borrow)]
    command: Option<&'a RawValue>,
    #[serde(borrow)]
    query: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct TokenInfo<'a> {
    #[serde(borrow)]
    last_token_usage: Option<&'a RawValue>,
    #[serde(borrow)]
    total_token_usage: Option<&'a RawValue>,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct State {
    session_id: Option<String>,
    model: Option<String>,
    cwd: Option<String>,
    /// Tool names of calls awaiting output, by `call_id`, oldest first.
    calls: Vec<(String, String)>,
    #[serde(default)]
    history: SavedHistory,
}

pub struct Codex {
    ctx: EventContext,
    red: Arc<Redaction>,
    session_id: Option<String>,
    model: Option<String>,
    cwd: Option<String>,
    calls: BoundedMap<String>,
    /// The uuid of the file name: the session when no `session_meta` says.
    file_session: Option<String>,
    history: SessionHistory,
}

impl Codex {
    pub fn new(ctx: EventContext, red: Arc<Redaction>) -> Self {
        Codex {
            ctx,
            red,
            session_id: None,
            model: None,
            cwd: None,
            calls: BoundedMap::new(STATE_MAX_ENTRIES),
            file_session: None,
            history: SessionHistory::new(EntersAt::Pre),
        }
    }

    fn context_metadata(&self, meta: &mut MetaWriter<'_>) {
        meta.opt_str("model", self.model.as_deref());
        meta.opt_str("cwd", self.cwd.as_deref());
    }

    fn event<'s>(
        &'s self,
        rec: &Record<'_>,
        event_type: EventType,
        line: &Line<'_>,
    ) -> crate::event::Event<'s> {
        let at = timestamp(line.timestamp).unwrap_or(rec.read_at);
        let mut e = self.ctx.base_event(rec, 0, event_type, at);
        e.agent_id = self.ctx.agent_or_else(|| Some(Cow::Borrowed("codex")));
        if let Some(s) = self.session_id.as_ref().or(self.file_session.as_ref()) {
            e.session_id = Cow::Borrowed(s);
        }
        e
    }

    fn response_item(
        &mut self,
        rec: &Record<'_>,
        line: &Line<'_>,
        p: &Payload<'_>,
        out: &mut EventBuf,
    ) -> Result<usize, Skip> {
        let kind = string(p.kind);
        let call_id = string(p.call_id);
        match kind.as_deref() {
            Some("function_call" | "custom_tool_call" | "local_shell_call") => {
                let name = match kind.as_deref() {
                    Some("local_shell_call") => Cow::Borrowed("local_shell"),
                    _ => string(p.name).unwrap_or(Cow::Borrowed("")),
                };
                if let Some(id) = &call_id {
                    self.calls.insert(id.to_string(), name.to_string());
                }
                // `arguments` is a JSON string holding the arguments' JSON.
                let args = match kind.as_deref() {
                    Some("function_call") => text(p.arguments),
                    Some("custom_tool_call") => text(p.input),
                    _ => p.action.map(|a| Cow::Borrowed(a.get())),
                };
                let mut e = self.event(rec, EventType::ToolCallPre, line);
                e.tool_name = name;
                if let Some(args) = args {
                    e.content = self.red.content(args);
                }
                let mut meta = self.red.metadata();
                meta.opt_str("call_id", call_id.as_deref());
                meta.opt_str("status", string(p.status).as_deref());
                self.context_metadata(&mut meta);
                let entry = self.history.fill(&self.red, &mut e, &mut meta);
                e.metadata = meta.finish();
                self.red.push(out, &mut e);
                self.history.record(entry);
                Ok(1)
            }
            Some("function_call_output" | "custom_tool_call_output") => {
                let output = output_of(p.output);
                let rejected = REJECTIONS.iter().any(|r| output.contains(r));
                let name = call_id.as_deref().and_then(|id| self.calls.remove(id));
                let event_type = if rejected {
                    EventType::ToolCallBlock
                } else {
                    EventType::ToolCallPost
                };
                let mut e = self.event(rec, event_type, line);
                e.tool_name = name.map(Cow::Owned).unwrap_or(Cow::Borrowed(""));
                e.content = self.red.content(output);
                let mut meta = self.red.metadata();
                meta.opt_str("call_id", call_id.as_deref());
                self.context_metadata(&mut meta);
                let entry = self.history.fill(&self.red, &mut e, &mut meta);
                e.metadata = meta.finish();
                self.red.push(out, &mut e);
                self.history.record(entry);
                Ok(1)
            }
            // A web search the model ran: its query can carry data out.
            Some("web_search_call") => {
                let query = search_query(p.action);
                let call_id = call_id.or_else(|| string(p.id));
                Ok(self.web_search(rec, line, EventType::ToolCallPre, query, call_id, p, out))
            }
            kind => Err(skip_kind(SKIPPED_ITEMS, kind, Skip::IgnoredRecordType)),
        }
    }

    fn event_msg(
        &mut self,
        rec: &Record<'_>,
        line: &Line<'_>,
        p: &Payload<'_>,
        out: &mut EventBuf,
    ) -> Result<usize, Skip> {
        match string(p.kind).as_deref() {
            Some("token_count") => {
                let info: Option<TokenInfo> = field(p.info);
                let Some(usage) = info.as_ref().and_then(|i| i.last_token_usage) else {
                    return Err(Skip::NoTokenUsage);
                };
                let mut e = self.event(rec, EventType::LlmInvocation, line);
                let mut meta = self.red.metadata();
                meta.raw("usage", usage);
                meta.opt_raw(
                    "total_usage",
                    info.as_ref().and_then(|i| i.total_token_usage),
                );
                self.context_metadata(&mut meta);
                let entry = self.history.fill(&self.red, &mut e, &mut meta);
                e.metadata = meta.finish();
                self.red.push(out, &mut e);
                self.history.record(entry);
                Ok(1)
            }
            Some("exec_command_end") if string(p.status).as_deref() == Some("declined") => {
                let call_id = string(p.call_id);
                let name = call_id.as_deref().and_then(|id| self.calls.remove(id));
                let mut e = self.event(rec, EventType::ToolCallBlock, line);
                e.tool_name = name
                    .map(Cow::Owned)
                    .unwrap_or(Cow::Borrowed("exec_command"));
                if let Some(cmd) = p.command {
                    e.content = self.red.content(Cow::Borrowed(cmd.get()));
                }
                let mut meta = self.red.metadata();
                meta.opt_str("call_id", call_id.as_deref());
                meta.str("status", "declined");
                meta.opt_raw("exit_code", p.exit_code);
                self.context_metadata(&mut meta);
                let entry = self.history.fill(&self.red, &mut e, &mut meta);
                e.metadata = meta.finish();
                self.red.push(out, &mut e);
                self.history.record(entry);
                Ok(1)
            }
            Some("web_search_end") => {
                let query = text(p.query).or_else(|| search_query(p.action));
                let call_id = string(p.call_id);
                Ok(self.web_search(rec, line, EventType::ToolCallPost, query, call_id, p, out))
            }
            kind => Err(skip_kind(SKIPPED_EVENTS, kind, Skip::IgnoredRecordType)),
        }
    }

    /// A web search's PRE (`web_search_call`) or POST (`web_search_end`):
    /// tool `web_search`, the query as content.
    #[allow(clippy::too_many_arguments)]
    fn web_search(
        &mut self,
        rec: &Record<'_>,
        line: &Line<'_>,
        event_type: EventType,
        query: Option<Cow<'_, str>>,
        call_id: Option<Cow<'_, str>>,
        p: &Payload<'_>,
        out: &mut EventBuf,
    ) -> usize {
        let mut e = self.event(rec, event_type, line);
        e.tool_name = Cow::Borrowed("web_search");
        if let Some(q) = query {
            e.content = self.red.content(q);
        }
        let mut meta = self.red.metadata();
        meta.opt_str("call_id", call_id.as_deref());
        meta.opt_str("status", string(p.status).as_deref());
        self.context_metadata(&mut meta);
        let entry = self.history.fill(&self.red, &mut e, &mut meta);
        e.metadata = meta.finish();
        self.red.push(out, &mut e);
        self.history.record(entry);
        1
    }
}

/// The query of a web search action: `action.query`, else its `queries`
/// one a line.
fn search_query(action: Option<&RawValue>) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Action<'a> {
        #[serde(borrow)]
        query: Option<&'a RawValue>,
        #[serde(borrow)]
        queries: Option<Vec<&'a RawValue>>,
    }
    let action: Action = field(action)?;
    if let Some(q) = text(action.query) {
        return Some(q);
    }
    let queries: Vec<String> = action
        .queries?
        .into_iter()
        .filter_map(|q| text(Some(q)).map(Cow::into_owned))
        .collect();
    (!queries.is_empty()).then(|| Cow::Owned(queries.join("\n")))
}

/// The text of a tool output: a string, an array of text items, or (some
/// versions) an object with `content`.
fn output_of(raw: Option<&RawValue>) -> Cow<'_, str> {
    #[derive(Deserialize)]
    struct WithContent<'a> {
        #[serde(borrow)]
        content: Option<&'a RawValue>,
    }
    if let Some(t) = output_text(raw) {
        return t;
    }
    if let Some(obj) = field::<WithContent>(raw) {
        if let Some(t) = output_text(obj.content) {
            return t;
        }
    }
    raw.map(|r| Cow::Borrowed(r.get()))
        .unwrap_or(Cow::Borrowed(""))
}

impl Parser for Codex {
    fn parse(&mut self, rec: &Record<'_>, out: &mut EventBuf) -> Result<usize, Skip> {
        let line: Line = parse_object(rec.line)?;
        let kind = string(line.kind);
        let payload: Payload = match kind.as_deref() {
            Some("session_meta" | "turn_context" | "response_item" | "event_msg") => {
                field(line.payload).ok_or(Skip::UnexpectedShape)?
            }
            kind => return Err(skip_kind(SKIPPED_LINES, kind, Skip::IgnoredRecordType)),
        };
        match kind.as_deref() {
            Some("session_meta") => {
                if let Some(id) = string(payload.id) {
                    self.session_id = Some(super::state_string(id));
                }
                if let Some(cwd) = string(payload.cwd) {
                    self.cwd = Some(super::state_string(cwd));
                }
                Err(Skip::StateOnly)
            }
            Some("turn_context") => {
                if let Some(model) = string(payload.model) {
                    self.model = Some(super::state_string(model));
                }
                if let Some(cwd) = string(payload.cwd) {
                    self.cwd = Some(super::state_string(cwd));
                }
                Err(Skip::StateOnly)
            }
            Some("response_item") => self.response_item(rec, &line, &payload, out),
            _ => self.event_msg(rec, &line, &payload, out),
        }
    }

    fn set_user(&mut self, user: &str) {
        self.ctx.user_id = user.to_string();
    }

    fn fresh(&self) -> Box<dyn Parser> {
        Box::new(Codex::new(self.ctx.clone(), self.red.clone()))
    }

    fn save_state(&self) -> Vec<u8> {
        encode_state(&State {
            session_id: self.session_id.clone(),
            model: self.model.clone(),
            cwd: self.cwd.clone(),
            calls: self.calls.to_entries(),
            history: self.history.save(),
        })
    }

    fn load_state(&mut self, bytes: &[u8]) {
        let state: State = decode_state(bytes).unwrap_or_default();
        self.session_id = state.session_id.map(|s| super::state_string(s.into()));
        self.model = state.model.map(|s| super::state_string(s.into()));
        self.cwd = state.cwd.map(|s| super::state_string(s.into()));
        self.calls = BoundedMap::from_entries(STATE_MAX_ENTRIES, state.calls);
        self.history.load(state.history, &self.red);
    }

    fn take_evictions(&mut self) -> u64 {
        self.calls.take_evictions() + self.history.take_evictions()
    }

    fn set_origin(&mut self, path: &std::path::Path) {
        self.file_session = session_of_file_name(path);
    }
}

/// The uuid that ends a rollout's file name
/// (`rollout-2026-03-13T10-00-00-<uuid>.jsonl`), in its canonical spelling.
pub fn session_of_file_name(path: &std::path::Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    // A rotated or compressed copy (`.jsonl.1`, `.jsonl.gz`) keeps its session.
    let stem = name.split(".jsonl").next().unwrap_or(name);
    let tail = stem.get(stem.len().checked_sub(36)?..)?;
    uuid::Uuid::try_parse(tail)
        .ok()
        .map(|u| u.hyphenated().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn session_from_the_file_name() {
        let p = Path::new(
            "/home/dev/.codex/sessions/2026/03/13/rollout-2026-03-13T10-00-00-0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b.jsonl",
        );
        assert_eq!(
            session_of_file_name(p).as_deref(),
            Some("0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
        );
        assert_eq!(
            session_of_file_name(Path::new(
                "rollout-2026-03-13T10-00-00-0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b.jsonl.1"
            ))
            .as_deref(),
            Some("0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
        );
        assert_eq!(session_of_file_name(Path::new("rollout.jsonl")), None);
        assert_eq!(
            session_of_file_name(Path::new("x-not-a-uuid-at-all-but-36-chars-long.jsonl")),
            None
        );
        assert_eq!(session_of_file_name(Path::new("é")), None);
    }
}

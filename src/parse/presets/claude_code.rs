//! The `claude-code` preset: Claude Code session transcripts (JSONL under
//! `~/.claude/projects/`).
//!
//! An assistant line makes one LLM_INVOCATION the first time its `message.id`
//! is seen (the CLI writes one line per content block, all with one id), then
//! a TOOL_CALL_PRE per `tool_use` block. A user line makes a TOOL_CALL_POST per
//! `tool_result` block, or a TOOL_CALL_BLOCK when the result is a permission
//! denial. The tool name of a result comes from its call, kept in state.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    boolean, decode_state, encode_state, field, output_text, parse_object, skip_kind, string, text,
    timestamp, BoundedMap, KindTable, STATE_MAX_ENTRIES,
};
use crate::event::EventType;
use crate::parse::history::{EntersAt, SavedHistory, SessionHistory};
use std::sync::Arc;

use crate::parse::{EventBuf, EventContext, Parser, Record, Redaction, Skip};

/// Message ids remembered: the lines of one message are written one after
/// another, so a few recent ids suffice, and the state saved with every
/// checkpoint stays small.
const MESSAGES_KEPT: usize = 256;

/// The documented line types that carry no event, and why.
pub const SKIPPED: KindTable = &[
    (
        "system",
        "claude-code `system` line: a notice (hook output, compaction, API error), no call",
    ),
    ("summary", "claude-code `summary` line: the conversation's title"),
    (
        "file-history-snapshot",
        "claude-code `file-history-snapshot` line: file backups kept for undo",
    ),
    (
        "queue-operation",
        "claude-code `queue-operation` line: a prompt queued while the agent works",
    ),
    (
        "progress",
        "claude-code `progress` line: a running tool's or hook's progress (its call and result are events)",
    ),
];

const DENIED_PREFIX: &str = "Permission to use ";
const DENIED_SUFFIX: &str = " has been denied";
const NOT_GRANTED_PREFIX: &str = "Claude requested permissions to use ";
const NOT_GRANTED_SUFFIX: &str = ", but you haven't granted it yet";

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, rename = "sessionId")]
    session_id: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    #[serde(borrow)]
    cwd: Option<&'a RawValue>,
    #[serde(borrow)]
    uuid: Option<&'a RawValue>,
    #[serde(borrow, rename = "requestId")]
    request_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "isSidechain")]
    is_sidechain: Option<&'a RawValue>,
    #[serde(borrow, rename = "agentId")]
    agent_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "gitBranch")]
    git_branch: Option<&'a RawValue>,
    #[serde(borrow)]
    version: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
    #[serde(borrow)]
    stop_reason: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_use_id: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    is_error: Option<&'a RawValue>,
}

/// Blocks of `message.content`; an array with a malformed element keeps the
/// well-formed ones.
fn blocks(raw: Option<&RawValue>) -> Vec<Block<'_>> {
    let Some(raw) = raw else { return Vec::new() };
    if raw.get().as_bytes().first() != Some(&b'[') {
        return Vec::new(); // a plain-text prompt
    }
    if let Ok(all) = serde_json::from_str::<Vec<Block>>(raw.get()) {
        return all;
    }
    field::<Vec<&RawValue>>(Some(raw))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|b| field::<Block>(Some(b)))
        .collect()
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    /// `message.id`s already given their LLM_INVOCATION, oldest first.
    messages: Vec<(String, ())>,
    /// Tool names of calls not yet answered, by `tool_use_id`.
    calls: Vec<(String, String)>,
    #[serde(default)]
    history: SavedHistory,
}

pub struct ClaudeCode {
    ctx: EventContext,
    red: Arc<Redaction>,
    messages: BoundedMap<()>,
    calls: BoundedMap<String>,
    history: SessionHistory,
}

/// `claude-code`, or `claude-code/<agentId>` for a subagent's transcript,
/// unless the config names the agent.
fn agent<'c>(ctx: &'c EventContext, line: &Line<'_>) -> Option<Cow<'c, str>> {
    ctx.agent_or_else(|| {
        Some(match string(line.agent_id) {
            Some(id) => Cow::Owned(format!("claude-code/{id}")),
            None => Cow::Borrowed("claude-code"),
        })
    })
}

impl ClaudeCode {
    pub fn new(ctx: EventContext, red: Arc<Redaction>) -> Self {
        ClaudeCode {
            ctx,
            red,
            messages: BoundedMap::new(MESSAGES_KEPT),
            calls: BoundedMap::new(STATE_MAX_ENTRIES),
            history: SessionHistory::new(EntersAt::Pre),
        }
    }

    fn common_metadata(&self, line: &Line<'_>, meta: &mut crate::parse::MetaWriter<'_>) {
        meta.opt_str("cwd", string(line.cwd).as_deref());
        meta.opt_str("uuid", string(line.uuid).as_deref());
        meta.opt_str("git_branch", string(line.git_branch).as_deref());
        meta.opt_str("version", string(line.version).as_deref());
        meta.opt_str("claude_agent_id", string(line.agent_id).as_deref());
        if let Some(side) = boolean(line.is_sidechain) {
            meta.bool("is_sidechain", side);
        }
    }

    fn assistant(
        &mut self,
        rec: &Record<'_>,
        line: &Line<'_>,
        out: &mut EventBuf,
    ) -> Result<usize, Skip> {
        let message: Message = field(line.message).ok_or(Skip::UnexpectedShape)?;
        let session = string(line.session_id);
        let at = timestamp(line.timestamp).unwrap_or(rec.read_at);
        let mut index = 0u32;
        let model = string(message.model);
        let synthetic = model.as_deref() == Some("<synthetic>");
        let message_id = string(message.id);
        let mut repeated = false;
        if let (Some(id), Some(model), false) = (&message_id, &model, synthetic) {
            if self.messages.contains(id) {
                repeated = true;
            } else {
                self.messages.insert(id.to_string(), ());
                let mut e = self
                    .ctx
                    .base_event(rec, index, EventType::LlmInvocation, at);
                e.agent_id = agent(&self.ctx, line);
                if let Some(s) = &session {
                    e.session_id = s.clone();
                }
                let mut meta = self.red.metadata();
                meta.str("model", model);
                meta.str("message_id", id);
                meta.opt_str("request_id", string(line.request_id).as_deref());
                meta.opt_raw("usage", message.usage);
                meta.opt_str("stop_reason", string(message.stop_reason).as_deref());
                self.common_metadata(line, &mut meta);
                let entry = self.history.fill(&self.red, &mut e, &mut meta);
                e.metadata = meta.finish();
                self.red.push(out, &mut e);
                self.history.record(entry);
                index += 1;
            }
        }
        for block in blocks(message.content) {
            if string(block.kind).as_deref() != Some("tool_use") {
                continue;
            }
            let name = string(block.name).unwrap_or(Cow::Borrowed(""));
            let call_id = string(block.id);
            if let Some(id) = &call_id {
                self.calls.insert(id.to_string(), name.to_string());
            }
            let mut e = self.ctx.base_event(rec, index, EventType::ToolCallPre, at);
            e.agent_id = agent(&self.ctx, line);
            if let Some(s) = &session {
                e.session_id = s.clone();
            }
            e.tool_name = name;
            if let Some(input) = block.input {
                e.content = self.red.content(Cow::Borrowed(input.get()));
            }
            let mut meta = self.red.metadata();
            meta.opt_str("call_id", call_id.as_deref());
            meta.opt_str("message_id", message_id.as_deref());
            self.common_metadata(line, &mut meta);
            let entry = self.history.fill(&self.red, &mut e, &mut meta);
            e.metadata = meta.finish();
            self.red.push(out, &mut e);
            self.history.record(entry);
            index += 1;
        }
        match index {
            0 if synthetic => Err(Skip::SyntheticModel),
            0 if repeated => Err(Skip::RepeatedModelMessage),
            0 => Err(Skip::NoToolOrModelActivity),
            n => Ok(n as usize),
        }
    }

    fn user(
        &mut self,
        rec: &Record<'_>,
        line: &Line<'_>,
        out: &mut EventBuf,
    ) -> Result<usize, Skip> {
        let Some(message) = field::<Message>(line.message) else {
            return Err(Skip::UnexpectedShape);
        };
        let session = string(line.session_id);
        let at = timestamp(line.timestamp).unwrap_or(rec.read_at);
        let mut index = 0u32;
        for block in blocks(message.content) {
            if string(block.kind).as_deref() != Some("tool_result") {
                continue;
            }
            let call_id = string(block.tool_use_id);
            let is_error = boolean(block.is_error).unwrap_or(false);
            let result = output_text(block.content).unwrap_or(Cow::Borrowed(""));
            let denied_tool = if is_error { denied_tool(&result) } else { None };
            let known_name = call_id.as_deref().and_then(|id| self.calls.remove(id));
            let event_type = if denied_tool.is_some() {
                EventType::ToolCallBlock
            } else {
                EventType::ToolCallPost
            };
            let mut e = self.ctx.base_event(rec, index, event_type, at);
            e.agent_id = agent(&self.ctx, line);
            if let Some(s) = &session {
                e.session_id = s.clone();
            }
            e.tool_name = match (known_name, denied_tool) {
                (Some(n), _) => Cow::Owned(n),
                (None, Some(t)) => Cow::Owned(t.to_string()),
                (None, None) => Cow::Borrowed(""),
            };
            e.content = self.red.content(result);
            let mut meta = self.red.metadata();
            meta.opt_str("call_id", call_id.as_deref());
            meta.bool("is_error", is_error);
            self.common_metadata(line, &mut meta);
            let entry = self.history.fill(&self.red, &mut e, &mut meta);
            e.metadata = meta.finish();
            self.red.push(out, &mut e);
            self.history.record(entry);
            index += 1;
        }
        if index == 0 {
            Err(Skip::NoToolOrModelActivity)
        } else {
            Ok(index as usize)
        }
    }
}

/// The tool a permission denial names, if `text` is one.
fn denied_tool(text: &str) -> Option<&str> {
    if let Some(rest) = text.strip_prefix(DENIED_PREFIX) {
        let end = rest.find(DENIED_SUFFIX)?;
        return Some(&rest[..end]);
    }
    let rest = text.strip_prefix(NOT_GRANTED_PREFIX)?;
    let end = rest.find(NOT_GRANTED_SUFFIX)?;
    Some(&rest[..end])
}

impl Parser for ClaudeCode {
    fn parse(&mut self, rec: &Record<'_>, out: &mut EventBuf) -> Result<usize, Skip> {
        let line: Line = parse_object(rec.line)?;
        match text(line.kind).as_deref() {
            Some("assistant") => self.assistant(rec, &line, out),
            Some("user") => self.user(rec, &line, out),
            kind => Err(skip_kind(SKIPPED, kind, Skip::IgnoredRecordType)),
        }
    }

    fn set_user(&mut self, user: &str) {
        self.ctx.user_id = user.to_string();
    }

    fn fresh(&self) -> Box<dyn Parser> {
        Box::new(ClaudeCode::new(self.ctx.clone(), self.red.clone()))
    }

    fn save_state(&self) -> Vec<u8> {
        if self.messages.is_empty() && self.calls.is_empty() && self.history.is_empty() {
            return Vec::new();
        }
        encode_state(&State {
            messages: self.messages.to_entries(),
            calls: self.calls.to_entries(),
            history: self.history.save(),
        })
    }

    fn load_state(&mut self, bytes: &[u8]) {
        let state: State = decode_state(bytes).unwrap_or_default();
        self.messages = BoundedMap::from_entries(MESSAGES_KEPT, state.messages);
        self.calls = BoundedMap::from_entries(STATE_MAX_ENTRIES, state.calls);
        self.history.load(state.history, &self.red);
    }

    fn take_evictions(&mut self) -> u64 {
        self.messages.take_evictions() + self.calls.take_evictions() + self.history.take_evictions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_texts_name_the_tool() {
        assert_eq!(
            denied_tool("Permission to use Bash has been denied because ..."),
            Some("Bash")
        );
        assert_eq!(
            denied_tool(
                "Claude requested permissions to use Write, but you haven't granted it yet."
            ),
            Some("Write")
        );
        assert_eq!(denied_tool("Error: file not found"), None);
    }
}

//! Parsing: the pure step from a record (one line of a source) to zero or more
//! events, written straight into an [`EventBuf`] as wire JSON.
//!
//! Parsers do no I/O, so they are tested and benchmarked in isolation, and the
//! `parse` command can show an operator what a line becomes.

pub mod check;
pub mod cli;
pub mod history;
pub mod json;
pub mod policy;
pub mod presets;
pub mod redact;
pub mod rules;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, ConfigError, SourceConfig};
pub use crate::event::{bound, truncate_utf8, EventBuf};
use crate::event::{EnforcementMode, Event, Timestamp};
pub use policy::{MetaWriter, Redaction};

/// The built-in parsers, accepted by `parser = "..."` on a source beside the
/// `[parsers.NAME]` of the config.
pub const PARSER_NAMES: &[&str] = &[
    "json",
    "claude-code",
    "codex",
    "mcp-claude-desktop",
    "otel-genai",
];

pub use crate::config::CONTENT_MAX_BYTES;

/// One unit of input: a line of a file, with where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Identity of the stream the record belongs to (source name and file
    /// fingerprint); part of every event id derived from the record.
    pub stream: &'a str,
    /// Position of the record in its stream (byte offset of the line's start).
    pub position: u64,
    pub line: &'a [u8],
    /// When the line was read; the event time of last resort.
    pub read_at: Timestamp,
}

/// Event fields that come from the configuration, not from the line.
#[derive(Debug, Clone)]
pub struct EventContext {
    pub tenant_id: String,
    pub user_id: String,
    /// Configured (the source's, else `[defaults]`); None lets a preset
    /// name the agent.
    pub agent_id: Option<String>,
    pub session_id: String,
    pub enforcement_mode: EnforcementMode,
    pub ttl_secs: i64,
    /// Longest `content` copied from a line, in bytes.
    pub content_max_bytes: usize,
}

impl EventContext {
    /// The context of a source: its own `agent_id` and `user_id` over the
    /// config's `[defaults]`.
    pub fn for_source(config: &Config, source: &SourceConfig) -> EventContext {
        let mut ctx = EventContext::for_config(config, source.name.get_ref());
        if let Some(agent) = &source.agent_id {
            ctx.agent_id = Some(agent.clone());
        }
        if let Some(user) = &source.user_id {
            ctx.user_id = user.clone();
        }
        ctx
    }

    /// The agent of an event: the configured one, else the one the log's
    /// format names (`named`, which presets pass; None: not known).
    pub fn agent_or_else<'a>(
        &'a self,
        named: impl FnOnce() -> Option<Cow<'a, str>>,
    ) -> Option<Cow<'a, str>> {
        match &self.agent_id {
            Some(configured) => Some(Cow::Borrowed(configured)),
            None => named(),
        }
    }

    /// The config's tenant and defaults; `session` is the session of events
    /// whose line names none, unless `defaults.session_id` is set.
    pub fn for_config(config: &Config, session: &str) -> EventContext {
        EventContext {
            tenant_id: config.api.tenant_id.get_ref().clone(),
            user_id: config.defaults.user_id.clone(),
            agent_id: config.defaults.agent_id.clone(),
            session_id: config
                .defaults
                .session_id
                .clone()
                .unwrap_or_else(|| session.to_string()),
            enforcement_mode: config.defaults.enforcement_mode,
            ttl_secs: config.defaults.ttl.as_secs() as i64,
            content_max_bytes: usize::try_from(config.redaction.content_max_bytes.0)
                .unwrap_or(usize::MAX),
        }
    }

    /// A context for previews and tests: fixed tenant, builtin redaction.
    pub fn preview(tenant_id: &str, session_id: &str) -> EventContext {
        EventContext {
            tenant_id: tenant_id.to_string(),
            user_id: "system".to_string(),
            agent_id: None,
            session_id: session_id.to_string(),
            enforcement_mode: EnforcementMode::Observe,
            ttl_secs: crate::event::DEFAULT_TTL_SECS,
            content_max_bytes: CONTENT_MAX_BYTES,
        }
    }

    /// An event with every field this context fixes already filled in.
    pub fn base_event<'a>(
        &'a self,
        rec: &Record<'_>,
        index: u32,
        event_type: crate::event::EventType,
        occurred_at: Timestamp,
    ) -> Event<'a> {
        Event {
            event_id: crate::event::event_id(&self.tenant_id, rec.stream, rec.position, index),
            tenant_id: Cow::Borrowed(&self.tenant_id),
            agent_id: self.agent_id.as_deref().map(Cow::Borrowed),
            session_id: Cow::Borrowed(&self.session_id),
            user_id: Cow::Borrowed(&self.user_id),
            source_type: event_type.source_type(),
            event_type,
            tool_name: Cow::Borrowed(""),
            content: Cow::Borrowed(""),
            metadata: crate::event::Metadata::empty(),
            approved_scope: Vec::new(),
            enforcement_mode: self.enforcement_mode,
            session_tool_calls: Vec::new(),
            occurred_at,
            ttl: occurred_at.unix_seconds().saturating_add(self.ttl_secs),
            violation_id: None,
        }
    }
}

/// Why a line produced no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    EmptyLine,
    InvalidJson,
    NotAnObject,
    /// A record kind that never describes a tool call or a model call
    /// (Claude Code `summary`, Codex `compacted`, most `event_msg`s, ...).
    IgnoredRecordType,
    /// A message with no tool call, tool result or new model call in it
    /// (a user prompt, an assistant text block).
    NoToolOrModelActivity,
    /// Another line of a model response already counted (Claude Code writes
    /// one line per content block, all with one `message.id`).
    RepeatedModelMessage,
    /// Claude Code's `<synthetic>` model: messages the CLI made up itself.
    SyntheticModel,
    /// A line that only updates the parser's state (Codex `session_meta`,
    /// `turn_context`).
    StateOnly,
    /// A Codex `token_count` with no usage figures.
    NoTokenUsage,
    /// A log line that carries no JSON-RPC message (connection notices, a
    /// server's stderr).
    NotJsonRpc,
    /// JSON-RPC, but neither a `tools/call` nor the answer to one.
    NotAToolCall,
    /// A response whose request was not seen (or was evicted from the state).
    UnmatchedResponse,
    /// A record without `gen_ai.operation.name`.
    NoGenAiOperation,
    /// A GenAI operation no event type stands for (embeddings, agents, ...).
    UnmappedOperation,
    /// Known fields are present but of the wrong JSON type.
    UnexpectedShape,
    /// A rules parser: no rule's pattern matched the line.
    NoPatternMatch,
    /// A rules parser: a pattern matched, but no rule's conditions held.
    NoRuleMatched,
    /// `parse --source` of a journald source: a line that is not an entry
    /// of `journalctl --output=json`.
    NotAJournalEntry,
    /// A rules parser: what the chosen rule made of the line (dropped it, or
    /// found no value for a field it needs), naming the rule and the field.
    Rule(&'static str),
    /// A kind of record its format documents that carries no event, named
    /// with why (`parse --explain` counts each kind apart; the lists are
    /// in [`presets::SKIPPED_KINDS`] and the README).
    Kind(&'static str),
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::EmptyLine => "empty line",
            Skip::NotAJournalEntry => "not a journal entry",
            Skip::InvalidJson => "invalid JSON",
            Skip::NotAnObject => "JSON but not an object",
            Skip::IgnoredRecordType => "record type that carries no event",
            Skip::NoToolOrModelActivity => {
                "message without a tool call, tool result or new model call"
            }
            Skip::RepeatedModelMessage => "further line of a model response already counted",
            Skip::SyntheticModel => "message of the <synthetic> model",
            Skip::StateOnly => "session or turn context, kept as parser state",
            Skip::NoTokenUsage => "token count without usage figures",
            Skip::NotJsonRpc => "not a JSON-RPC message line",
            Skip::NotAToolCall => "JSON-RPC message that is not a tool call or its answer",
            Skip::UnmatchedResponse => "response to a tool call not seen (or evicted from state)",
            Skip::NoGenAiOperation => "no gen_ai.operation.name",
            Skip::UnmappedOperation => {
                "GenAI operation without an event type (embeddings, agents, ...)"
            }
            Skip::UnexpectedShape => "known fields of the wrong JSON type",
            Skip::NoPatternMatch => "no rule's pattern matches the line",
            Skip::NoRuleMatched => "no rule matches the line",
            Skip::Rule(reason) | Skip::Kind(reason) => reason,
        }
    }
}

/// Lines seen, events made and lines skipped by reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParseStats {
    pub lines: u64,
    pub events: u64,
    pub skipped: BTreeMap<Skip, u64>,
    /// Entries of bounded parser state dropped to make room (unmatched calls,
    /// message ids): a POST whose PRE was evicted loses its tool name.
    pub state_evictions: u64,
    /// Events dropped because their line made more than
    /// [`MAX_EVENTS_PER_LINE`].
    pub events_cut: u64,
    /// Events cut to fit `max_event_bytes` (and marked `_truncated`).
    pub events_truncated: u64,
    /// Events made but dropped for falling outside the time window of a
    /// replay (not counted in `events`).
    pub events_outside_window: u64,
}

impl ParseStats {
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// A parser turns records into events. Implementations are pure: no I/O, and
/// any state they keep depends only on the records they were given.
///
/// State kept across lines belongs to one stream (one file): a source makes
/// one parser per file with [`Parser::fresh`], and stores [`Parser::save_state`]
/// in the checkpoint beside the offset, so a restart resumes with the state
/// an uninterrupted run would have had at that offset.
pub trait Parser: Send {
    /// Appends the events of `rec` to `out` and returns how many, or why none.
    fn parse(&mut self, rec: &Record<'_>, out: &mut EventBuf) -> Result<usize, Skip>;

    /// A parser of the same kind and configuration with empty state.
    fn fresh(&self) -> Box<dyn Parser>;

    /// The state carried across lines, as bytes; empty when there is none.
    fn save_state(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Restores what `save_state` returned. Bytes it cannot read leave the
    /// state empty: a damaged state costs some tool names, not the file.
    fn load_state(&mut self, _state: &[u8]) {}

    /// State entries evicted since the last call.
    fn take_evictions(&mut self) -> u64 {
        0
    }

    /// Tells the parser the path of the file its records come from. A source
    /// calls it on every parser it makes for a file (after [`Parser::fresh`],
    /// before or after [`Parser::load_state`]: the order does not matter),
    /// since some formats name things only in the file name (the session id
    /// of a Codex rollout). Not part of the saved state.
    fn set_origin(&mut self, _path: &std::path::Path) {}

    /// The user of this stream's events (a source's `user_id_from`: the
    /// file's owner), over the configured one; a format that names the
    /// user in its lines still uses the line's.
    fn set_user(&mut self, _user: &str) {}

    /// What the source tells of the next records (a journal entry's unit,
    /// pid, ...), by name; empty after them. Rules parsers test and copy
    /// them as `journald.NAME`; other parsers ignore them.
    fn set_record_fields(&mut self, _fields: &[(&'static str, String)]) {}
}

/// Builds the parser named `name` (one of [`PARSER_NAMES`]).
pub fn build_named(
    name: &str,
    ctx: EventContext,
    redaction: Arc<Redaction>,
    fields: &crate::config::JsonFields,
) -> Option<Box<dyn Parser>> {
    let r = redaction;
    Some(match name {
        "json" => Box::new(json::JsonParser::with_redaction(ctx, r, fields)),
        "claude-code" => Box::new(presets::claude_code::ClaudeCode::new(ctx, r)),
        "codex" => Box::new(presets::codex::Codex::new(ctx, r)),
        "mcp-claude-desktop" => Box::new(presets::mcp::McpClaudeDesktop::new(ctx, r)),
        "otel-genai" => Box::new(presets::otel::OtelGenAi::new(ctx, r)),
        _ => return None,
    })
}

/// Builds the parser a source names: a preset, or a `[parsers.NAME]` of
/// the config (compiled here; [`check::check`] has said it compiles).
pub fn build(config: &Config, source: &SourceConfig) -> Result<Box<dyn Parser>, ConfigError> {
    let ctx = EventContext::for_source(config, source);
    let redaction = Arc::new(Redaction::from_config(config));
    let name = source.parser.get_ref();
    if let Some(set) = check::rule_set(config, name)? {
        return Ok(Box::new(rules::RulesParser::new(set, ctx, redaction)));
    }
    build_named(name, ctx, redaction, &source.fields).ok_or_else(|| {
        config.invalid_at(
            source.parser.span(),
            &format!("sources.{}.parser", source.name.get_ref()),
            format!("unknown parser `{name}`"),
        )
    })
}

/// Most events one record makes; the rest are dropped and counted. A line
/// is at most `max_line_bytes`, but a 1 MB transcript line with 19,000 tool
/// results would otherwise become 19,000 events in one commit.
pub const MAX_EVENTS_PER_LINE: usize = 1_000;

/// Runs `parser` over `rec` and keeps the tally.
pub fn parse_counted(
    parser: &mut dyn Parser,
    rec: &Record<'_>,
    out: &mut EventBuf,
    stats: &mut ParseStats,
) {
    stats.lines += 1;
    let before = out.len();
    let truncated_before = out.events_truncated;
    match parser.parse(rec, out) {
        Ok(n) if n > MAX_EVENTS_PER_LINE => {
            out.truncate(before + MAX_EVENTS_PER_LINE);
            stats.events += MAX_EVENTS_PER_LINE as u64;
            stats.events_cut += (n - MAX_EVENTS_PER_LINE) as u64;
        }
        Ok(n) => stats.events += n as u64,
        Err(skip) => *stats.skipped.entry(skip).or_default() += 1,
    }
    // After the cap, so a window keeps exactly events the daemon would send.
    let outside = out.drop_outside_window(before);
    stats.events = stats.events.saturating_sub(outside);
    stats.events_outside_window += outside;
    stats.state_evictions += parser.take_evictions();
    stats.events_truncated += out.events_truncated.saturating_sub(truncated_before);
}

/// A line as parsers get it: without its trailing `\r`, and with invalid
/// UTF-8 replaced rather than dropped (an audit trail keeps the line even when
/// one byte in it is wrong). The flag says whether a repair was needed. The
/// file source and `thoth-ingest parse` both use this, so a preview shows
/// exactly what the daemon queues.
pub fn clean_line(mut line: &[u8]) -> (std::borrow::Cow<'_, [u8]>, bool) {
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    if std::str::from_utf8(line).is_ok() {
        (std::borrow::Cow::Borrowed(line), false)
    } else {
        let repaired = String::from_utf8_lossy(line).into_owned().into_bytes();
        (std::borrow::Cow::Owned(repaired), true)
    }
}

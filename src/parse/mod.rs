//! Parsing: the pure step from a record (one line of a source) to zero or more
//! events, written straight into an [`EventBuf`] as wire JSON.
//!
//! Parsers do no I/O, so they are tested and benchmarked in isolation, and the
//! `parse` command can show an operator what a line becomes.

pub mod json;

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::config::{Config, SourceConfig};
use crate::event::{EnforcementMode, Event, Timestamp};

/// Names accepted by `parser = "..."` on a source.
pub const PARSER_NAMES: &[&str] = &["json"];

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
    pub agent_id: Option<String>,
    pub session_id: String,
    pub enforcement_mode: EnforcementMode,
    pub ttl_secs: i64,
    /// Longest `content` copied from a line, in bytes.
    pub content_max_bytes: usize,
}

impl EventContext {
    pub fn for_source(config: &Config, source: &SourceConfig) -> EventContext {
        EventContext {
            tenant_id: config.api.tenant_id.get_ref().clone(),
            user_id: config.defaults.user_id.clone(),
            agent_id: config.defaults.agent_id.clone(),
            session_id: config
                .defaults
                .session_id
                .clone()
                .unwrap_or_else(|| source.name.get_ref().clone()),
            enforcement_mode: config.defaults.enforcement_mode,
            ttl_secs: config.defaults.ttl.as_secs() as i64,
            content_max_bytes: 4096,
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

/// Events serialized back to back, with the end offset of each.
#[derive(Debug, Default, Clone)]
pub struct EventBuf {
    pub bytes: Vec<u8>,
    pub ends: Vec<u32>,
}

impl EventBuf {
    pub fn push(&mut self, event: &Event<'_>) {
        event.write_json(&mut self.bytes);
        self.ends.push(self.bytes.len() as u32);
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// The JSON of event `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// Why a line produced no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    EmptyLine,
    InvalidJson,
    NotAnObject,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::EmptyLine => "empty line",
            Skip::InvalidJson => "invalid JSON",
            Skip::NotAnObject => "JSON but not an object",
        }
    }
}

/// Lines seen, events made and lines skipped by reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParseStats {
    pub lines: u64,
    pub events: u64,
    pub skipped: BTreeMap<Skip, u64>,
}

impl ParseStats {
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// A parser turns records into events. Implementations are pure: no I/O, and
/// any state they keep depends only on the records they were given.
pub trait Parser: Send {
    /// Appends the events of `rec` to `out` and returns how many, or why none.
    fn parse(&mut self, rec: &Record<'_>, out: &mut EventBuf) -> Result<usize, Skip>;
}

/// Builds the parser a source names.
pub fn build(config: &Config, source: &SourceConfig) -> Box<dyn Parser> {
    let ctx = EventContext::for_source(config, source);
    // Config validation admits only names in PARSER_NAMES; `json` is the only one yet.
    Box::new(json::JsonParser::new(ctx, &source.fields))
}

/// Runs `parser` over `rec` and keeps the tally.
pub fn parse_counted(
    parser: &mut dyn Parser,
    rec: &Record<'_>,
    out: &mut EventBuf,
    stats: &mut ParseStats,
) {
    stats.lines += 1;
    match parser.parse(rec, out) {
        Ok(n) => stats.events += n as u64,
        Err(skip) => *stats.skipped.entry(skip).or_default() += 1,
    }
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

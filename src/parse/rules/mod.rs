//! Rules for in-house formats: a parser defined in the config
//! (`[parsers.NAME]`) that cuts a line into fields, by a regex with named
//! captures or by dotted paths into a JSON object, and maps them onto event
//! fields with templates, lookup tables and timestamp formats.
//!
//! Rules are tried in order; the first whose pattern and conditions match
//! decides the line: it makes one event, or drops the line. A line no rule
//! matches, or whose chosen rule lacks a field it needs, is skipped with a
//! reason naming the rule and the field. Everything that can be checked
//! before a line is read (regexes, capture names, tables, event types,
//! strftime patterns) is checked when the config is loaded, by [`compile()`].
//!
//! This file holds the compiled form, a [`RuleSet`], and the parser that
//! runs it, [`RulesParser`]; `compile.rs` turns a spec into a rule set and
//! `run.rs` applies it to a line.

mod compile;
mod paths;
mod run;
mod template;
mod timefmt;

use std::collections::BTreeMap;
use std::sync::Arc;

use regex::{CaptureLocations, Regex};

use super::history::{EntersAt, SessionHistory};
use super::{EventContext, Redaction, Skip};
use crate::config::parsers::Format;
use crate::event::EventType;
use paths::PathTrie;
use timefmt::TimeFormat;

pub use compile::compile;

/// The field that stands for the whole line, in both formats.
pub const LINE_FIELD: &str = "_line";

/// A field of a line: a capture group of the rule's pattern (regex), a slot
/// of the parser's path trie (JSON), or the whole line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldId {
    Line,
    Group(usize),
    Slot(usize),
    /// What the source tells of the record: `journald.NAME`, an index into
    /// [`SOURCE_FIELDS`].
    Source(usize),
}

/// The fields a source gives a record, as rules name them after
/// `journald.`.
const SOURCE_FIELDS: [&str; 9] = crate::source::journald::entry::FIELD_NAMES;
/// The prefix of a source's fields in a rule.
const SOURCE_PREFIX: &str = "journald.";

/// What is wrong with a parser's spec, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuleError {
    /// Index of the rule at fault; None for the parser's own keys.
    pub rule: Option<usize>,
    /// The key under the parser (`pattern`, `rules[1]`, `tables.phase`).
    pub key: String,
    pub message: String,
}

/// A rules parser, checked and compiled; shared by every file of its sources.
#[derive(Debug)]
pub struct RuleSet {
    name: String,
    format: Format,
    /// The parser's pattern, then each distinct rule pattern (regex only).
    patterns: Vec<Regex>,
    /// Every path the rules read (JSON only).
    trie: PathTrie,
    tables: Vec<BTreeMap<String, String>>,
    rules: Vec<Rule>,
    /// `session_history = true`: where a call enters the history.
    history: Option<EntersAt>,
}

#[derive(Debug)]
struct Rule {
    /// Index into `patterns` (regex only).
    pattern: usize,
    when: Vec<Condition>,
    action: Action,
}

#[derive(Debug)]
enum Action {
    Drop(Skip),
    Emit(Box<Emit>),
}

#[derive(Debug)]
struct Emit {
    event_type: EventTypeOf,
    tool_name: Option<Template>,
    session_id: Option<Template>,
    agent_id: Option<Template>,
    user_id: Option<Template>,
    content: Option<Template>,
    occurred_at: Option<TimeOf>,
    metadata: Vec<(String, Template)>,
}

#[derive(Debug)]
enum EventTypeOf {
    Fixed(EventType),
    /// Rendered per line; `Skip` when the value is not an event type.
    Template(Template, Skip),
}

#[derive(Debug)]
struct TimeOf {
    value: Template,
    format: TimeFormat,
    /// The value is not a timestamp in `format`.
    invalid: Skip,
}

#[derive(Debug)]
struct Condition {
    field: FieldId,
    test: Test,
}

#[derive(Debug)]
enum Test {
    Equals(String),
    OneOf(Vec<String>),
    Matches(Regex),
    Exists(bool),
}

#[derive(Debug)]
struct Template {
    parts: Vec<Part>,
}

#[derive(Debug)]
enum Part {
    Literal(String),
    Field {
        field: FieldId,
        table: Option<usize>,
        default: Option<String>,
        /// The field has no value and there is no default.
        missing: Skip,
        /// The table has no entry for the value and there is no default.
        not_in_table: Skip,
    },
}

/// A parser made of a [`RuleSet`]: stateless across lines, but for the
/// sessions' tool history when the set asks for it.
pub struct RulesParser {
    set: Arc<RuleSet>,
    ctx: EventContext,
    red: Arc<Redaction>,
    /// Capture positions per pattern, reused from line to line.
    locs: Vec<CaptureLocations>,
    /// Whether each pattern was tried on the current line, and matched.
    state: Vec<Match>,
    /// What the source tells of the current record (see [`FieldId::Source`]).
    source_fields: Vec<(&'static str, String)>,
    history: Option<SessionHistory>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    Untried,
    Hit,
    Miss,
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Env};
    use crate::event::Timestamp;
    use crate::parse::{EventBuf, Record};
    use std::path::Path;

    const HEAD: &str = r#"
[api]
base_url = "http://127.0.0.1:9"
tenant_id = "acme"
"#;

    pub(super) fn load(parsers: &str) -> Result<Config, String> {
        let config = Config::from_toml(
            &format!("{HEAD}{parsers}"),
            Path::new("config.toml"),
            &Env::default(),
        )
        .map_err(|e| e.to_string())?;
        crate::parse::check::check(&config).map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// The config error of `parsers`, with the example header.
    pub(super) fn error(parsers: &str) -> String {
        load(parsers).expect_err("config error")
    }

    #[test]
    fn journal_fields_are_named_or_refused() {
        let spec = |field: &str| {
            format!(
                r#"
[parsers.j]
format = "regex"
pattern = '(?P<all>.*)'
[[parsers.j.rules]]
name = "r"
event_type = "TOOL_CALL_POST"
content = "${{{field}}}"
"#
            )
        };
        assert!(load(&spec("journald.systemd_unit")).is_ok());
        let e = error(&spec("journald.unit"));
        assert!(
            e.contains("journald.unit") && e.contains("journald.systemd_unit"),
            "{e}"
        );
    }

    #[test]
    fn a_source_may_name_a_rules_parser() {
        let source = r#"
[[sources]]
name = "s"
type = "file"
include = ["/x/*.log"]
parser = "mine"
"#;
        let e = error(source);
        assert!(
            e.contains("unknown parser `mine`") && e.contains("[parsers.mine]"),
            "{e}"
        );
        let ok = format!(
            "{source}\n[parsers.mine]\nformat = \"json\"\n[[parsers.mine.rules]]\nevent_type = \"TOOL_CALL_POST\"\n"
        );
        let config = load(&ok).unwrap();
        let mut p = crate::parse::build(&config, &config.sources[0]).unwrap();
        let mut out = EventBuf::default();
        let rec = Record {
            stream: "s/0",
            position: 0,
            line: b"{}",
            read_at: Timestamp::from_unix_micros(0),
        };
        assert_eq!(p.parse(&rec, &mut out), Ok(1));
    }
}

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
//! strftime patterns) is checked when the config is loaded, by [`compile`].

mod paths;
mod template;
mod timefmt;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use regex::{CaptureLocations, Regex};
use serde_json::value::RawValue;

use super::{EventBuf, EventContext, Parser, Record, Redaction, Skip};
use crate::config::parsers::{ConditionSpec, Format, ParserSpec, RuleSpec, TimeSpec};
use crate::event::EventType;
use paths::PathTrie;
use template::Piece;
use timefmt::TimeFormat;

/// The field that stands for the whole line, in both formats.
pub const LINE_FIELD: &str = "_line";

/// A field of a line: a capture group of the rule's pattern (regex), a slot
/// of the parser's path trie (JSON), or the whole line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldId {
    Line,
    Group(usize),
    Slot(usize),
}

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

/// Skip reasons are `&'static str` so that [`Skip`] stays a small `Copy`
/// key; the texts of rules are made once per distinct text and kept.
fn intern(text: String) -> &'static str {
    static TEXTS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut texts = TEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(t) = texts.get(text.as_str()) {
        return t;
    }
    let t: &'static str = Box::leak(text.into_boxed_str());
    texts.insert(t);
    t
}

fn rule_skip(text: String) -> Skip {
    Skip::Rule(intern(text))
}

const EVENT_TYPES: &str = "TOOL_CALL_PRE, TOOL_CALL_POST, TOOL_CALL_BLOCK or LLM_INVOCATION";

/// Checks `spec` and compiles it. Errors name the rule and the key at fault.
pub fn compile(name: &str, spec: &ParserSpec) -> Result<RuleSet, RuleError> {
    let parser_err = |key: &str, message: String| RuleError {
        rule: None,
        key: key.to_string(),
        message,
    };
    if super::PARSER_NAMES.contains(&name) {
        return Err(parser_err(
            "",
            format!("`{name}` is the name of a built-in parser; choose another"),
        ));
    }
    let mut set = RuleSet {
        name: name.to_string(),
        format: spec.format,
        patterns: Vec::new(),
        trie: PathTrie::default(),
        tables: Vec::new(),
        rules: Vec::new(),
    };
    let table_names: Vec<&String> = spec.tables.keys().collect();
    set.tables = spec.tables.values().cloned().collect();
    match (spec.format, &spec.pattern) {
        (Format::Json, Some(_)) => {
            return Err(parser_err(
                "pattern",
                "a json parser reads fields by path and takes no pattern".into(),
            ))
        }
        (Format::Regex, Some(p)) => {
            let re = Regex::new(p.get_ref())
                .map_err(|e| parser_err("pattern", format!("bad regex: {e}")))?;
            set.patterns.push(re);
        }
        (Format::Regex, None) => {
            if let Some(i) = spec
                .rules
                .iter()
                .position(|r| r.get_ref().pattern.is_none())
            {
                return Err(RuleError {
                    rule: Some(i),
                    key: format!("rules[{i}]"),
                    message: format!(
                        "{}: no `pattern`, and the parser has none either",
                        label(i, spec.rules[i].get_ref())
                    ),
                });
            }
        }
        (Format::Json, None) => {}
    }
    if spec.rules.is_empty() {
        return Err(parser_err("rules", "needs at least one rule".into()));
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let rule = rule.get_ref();
        let compiled = RuleCompiler {
            set: &mut set,
            table_names: &table_names,
            tables: &spec.tables,
            label: label(i, rule),
        }
        .compile(rule)
        .map_err(|message| RuleError {
            rule: Some(i),
            key: format!("rules[{i}]"),
            message: format!("{}: {message}", label(i, rule)),
        })?;
        set.rules.push(compiled);
    }
    Ok(set)
}

fn label(i: usize, rule: &RuleSpec) -> String {
    match &rule.name {
        Some(n) => format!("rule `{n}`"),
        None => format!("rule {i}"),
    }
}

struct RuleCompiler<'a> {
    set: &'a mut RuleSet,
    table_names: &'a [&'a String],
    tables: &'a BTreeMap<String, BTreeMap<String, String>>,
    label: String,
}

impl RuleCompiler<'_> {
    fn compile(mut self, rule: &RuleSpec) -> Result<Rule, String> {
        let pattern = match (&rule.pattern, self.set.format) {
            (Some(_), Format::Json) => {
                return Err("a json parser's rules take no `pattern`".into());
            }
            (Some(p), Format::Regex) => {
                let re = Regex::new(p).map_err(|e| format!("bad regex in `pattern`: {e}"))?;
                self.set.patterns.push(re);
                self.set.patterns.len() - 1
            }
            (None, _) => 0,
        };
        let when = rule
            .when
            .iter()
            .map(|c| self.condition(pattern, c))
            .collect::<Result<Vec<_>, _>>()?;
        let has_fields = rule.event_type.is_some()
            || rule.tool_name.is_some()
            || rule.session_id.is_some()
            || rule.agent_id.is_some()
            || rule.user_id.is_some()
            || rule.content.is_some()
            || rule.occurred_at.is_some()
            || !rule.metadata.is_empty();
        if rule.drop {
            if has_fields {
                return Err("`drop = true` makes no event, so it takes no event fields".into());
            }
            return Ok(Rule {
                pattern,
                when,
                action: Action::Drop(rule_skip(format!("dropped by {}", self.label))),
            });
        }
        let Some(event_type) = &rule.event_type else {
            return Err("needs `event_type` (or `drop = true`)".into());
        };
        let emit = Emit {
            event_type: self.event_type(pattern, event_type)?,
            tool_name: self.opt_template(pattern, "tool_name", &rule.tool_name)?,
            session_id: self.opt_template(pattern, "session_id", &rule.session_id)?,
            agent_id: self.opt_template(pattern, "agent_id", &rule.agent_id)?,
            user_id: self.opt_template(pattern, "user_id", &rule.user_id)?,
            content: self.opt_template(pattern, "content", &rule.content)?,
            occurred_at: rule
                .occurred_at
                .as_ref()
                .map(|t| self.time(pattern, t))
                .transpose()?,
            metadata: rule
                .metadata
                .iter()
                .map(|(k, v)| {
                    self.template(pattern, &format!("metadata.{k}"), v)
                        .map(|t| (k.clone(), t))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Rule {
            pattern,
            when,
            action: Action::Emit(Box::new(emit)),
        })
    }

    /// The field `name` names, checked against the rule's pattern.
    fn field(&mut self, pattern: usize, name: &str) -> Result<FieldId, String> {
        if name == LINE_FIELD {
            return Ok(FieldId::Line);
        }
        match self.set.format {
            Format::Json => self.set.trie.slot(name).map(FieldId::Slot),
            Format::Regex => {
                let re = &self.set.patterns[pattern];
                re.capture_names()
                    .position(|n| n == Some(name))
                    .map(FieldId::Group)
                    .ok_or_else(|| {
                        let groups: Vec<&str> = re.capture_names().flatten().collect();
                        format!(
                            "no capture group named `{name}` (the pattern has: {}; `{LINE_FIELD}` \
                             is the whole line)",
                            if groups.is_empty() {
                                "none".to_string()
                            } else {
                                groups.join(", ")
                            }
                        )
                    })
            }
        }
    }

    fn condition(&mut self, pattern: usize, c: &ConditionSpec) -> Result<Condition, String> {
        let what = format!("condition on `{}`", c.field);
        let field = self
            .field(pattern, &c.field)
            .map_err(|e| format!("{what}: {e}"))?;
        let mut tests = Vec::new();
        if let Some(v) = &c.equals {
            tests.push(Test::Equals(v.clone()));
        }
        if let Some(v) = &c.one_of {
            tests.push(Test::OneOf(v.clone()));
        }
        if let Some(v) = &c.matches {
            let re = Regex::new(v).map_err(|e| format!("{what}: bad regex in `matches`: {e}"))?;
            tests.push(Test::Matches(re));
        }
        if let Some(v) = c.exists {
            tests.push(Test::Exists(v));
        }
        if tests.len() != 1 {
            return Err(format!(
                "{what}: give exactly one of `equals`, `one_of`, `matches`, `exists`"
            ));
        }
        Ok(Condition {
            field,
            test: tests.remove(0),
        })
    }

    fn template(&mut self, pattern: usize, key: &str, text: &str) -> Result<Template, String> {
        let pieces = template::pieces(text).map_err(|e| format!("`{key}`: {e}"))?;
        let mut parts = Vec::with_capacity(pieces.len());
        for piece in pieces {
            parts.push(match piece {
                Piece::Literal(s) => Part::Literal(s),
                Piece::Field {
                    name,
                    table,
                    default,
                } => {
                    let shown = format!("${{{name}}}");
                    let field = self
                        .field(pattern, &name)
                        .map_err(|e| format!("`{key}`: template {shown}: {e}"))?;
                    let table = match table {
                        None => None,
                        Some(t) => {
                            Some(self.table_names.iter().position(|n| **n == t).ok_or_else(
                                || {
                                    format!(
                                        "`{key}`: template {shown}: no table `{t}` in this parser \
                                         (tables: {})",
                                        if self.table_names.is_empty() {
                                            "none".to_string()
                                        } else {
                                            self.table_names
                                                .iter()
                                                .map(|s| s.as_str())
                                                .collect::<Vec<_>>()
                                                .join(", ")
                                        }
                                    )
                                },
                            )?)
                        }
                    };
                    let table_name = table.map(|t| self.table_names[t].as_str()).unwrap_or("");
                    Part::Field {
                        field,
                        table,
                        default,
                        missing: rule_skip(format!(
                            "{}: no value for `{name}` ({key})",
                            self.label
                        )),
                        not_in_table: rule_skip(format!(
                            "{}: value of `{name}` not in table `{table_name}` ({key})",
                            self.label
                        )),
                    }
                }
            });
        }
        Ok(Template { parts })
    }

    fn opt_template(
        &mut self,
        pattern: usize,
        key: &str,
        text: &Option<String>,
    ) -> Result<Option<Template>, String> {
        text.as_deref()
            .map(|t| self.template(pattern, key, t))
            .transpose()
    }

    fn event_type(&mut self, pattern: usize, text: &str) -> Result<EventTypeOf, String> {
        let t = self.template(pattern, "event_type", text)?;
        match t.parts.as_slice() {
            [] => Err(format!("`event_type` is empty; use {EVENT_TYPES}")),
            [Part::Literal(s)] => EventType::parse(s)
                .map(EventTypeOf::Fixed)
                .ok_or_else(|| format!("`event_type` `{s}` is not one of {EVENT_TYPES}")),
            parts => {
                // A value looked up in a table can be checked now: every
                // entry (and the default) must be an event type.
                if let [Part::Field {
                    table: Some(table),
                    default,
                    ..
                }] = parts
                {
                    let name = self.table_names[*table];
                    let values = self.tables.get(name.as_str()).into_iter().flatten();
                    for (k, v) in values {
                        if EventType::parse(v).is_none() {
                            return Err(format!(
                                "`event_type`: table `{name}` maps `{k}` to `{v}`, \
                                 which is not one of {EVENT_TYPES}"
                            ));
                        }
                    }
                    if let Some(d) = default.as_deref().filter(|d| EventType::parse(d).is_none()) {
                        return Err(format!(
                            "`event_type`: default `{d}` is not one of {EVENT_TYPES}"
                        ));
                    }
                }
                let invalid = rule_skip(format!(
                    "{}: event_type value is not one of {EVENT_TYPES}",
                    self.label
                ));
                Ok(EventTypeOf::Template(t, invalid))
            }
        }
    }

    fn time(&mut self, pattern: usize, spec: &TimeSpec) -> Result<TimeOf, String> {
        let format = TimeFormat::parse(&spec.format).map_err(|e| format!("`occurred_at`: {e}"))?;
        let value = match (&spec.field, &spec.template) {
            (Some(f), None) => {
                let text = format!("${{{}}}", f.replace('$', "$$"));
                self.template(pattern, "occurred_at", &text)?
            }
            (None, Some(t)) => self.template(pattern, "occurred_at", t)?,
            _ => {
                return Err(
                    "`occurred_at` needs either `field` or `template` (not both)".to_string(),
                )
            }
        };
        let invalid = rule_skip(format!(
            "{}: occurred_at value is not a timestamp in format `{}`",
            self.label,
            format.name()
        ));
        Ok(TimeOf {
            value,
            format,
            invalid,
        })
    }
}

/// The fields of one line.
enum Fields<'a> {
    Regex {
        text: &'a str,
        locs: &'a CaptureLocations,
    },
    Json {
        line: &'a [u8],
        values: &'a [Option<&'a RawValue>],
    },
}

impl<'a> Fields<'a> {
    fn get(&self, id: FieldId) -> Option<Cow<'a, str>> {
        match (self, id) {
            (Fields::Regex { text, .. }, FieldId::Line) => Some(Cow::Borrowed(*text)),
            (Fields::Json { line, .. }, FieldId::Line) => Some(String::from_utf8_lossy(line)),
            (Fields::Regex { text, locs }, FieldId::Group(g)) => {
                let (start, end) = locs.get(g)?;
                text.get(start..end).map(Cow::Borrowed)
            }
            (Fields::Json { values, .. }, FieldId::Slot(s)) => {
                super::json::as_text(values.get(s).copied().flatten()?)
            }
            _ => None,
        }
    }
}

impl Condition {
    fn holds(&self, fields: &Fields<'_>) -> bool {
        let value = fields.get(self.field);
        match (&self.test, value) {
            (Test::Exists(want), v) => v.is_some() == *want,
            (_, None) => false,
            (Test::Equals(s), Some(v)) => *s == *v,
            (Test::OneOf(list), Some(v)) => list.iter().any(|s| *s == *v),
            (Test::Matches(re), Some(v)) => re.is_match(&v),
        }
    }
}

impl Template {
    fn render<'a>(
        &'a self,
        fields: &Fields<'a>,
        tables: &'a [BTreeMap<String, String>],
    ) -> Result<Cow<'a, str>, Skip> {
        // One piece (the usual case): no copy unless a table or default is used.
        if let [part] = self.parts.as_slice() {
            return self.piece(part, fields, tables);
        }
        let mut out = String::new();
        for part in &self.parts {
            out.push_str(&self.piece(part, fields, tables)?);
        }
        Ok(Cow::Owned(out))
    }

    fn piece<'a>(
        &'a self,
        part: &'a Part,
        fields: &Fields<'a>,
        tables: &'a [BTreeMap<String, String>],
    ) -> Result<Cow<'a, str>, Skip> {
        match part {
            Part::Literal(s) => Ok(Cow::Borrowed(s)),
            Part::Field {
                field,
                table,
                default,
                missing,
                not_in_table,
            } => {
                let value = match (fields.get(*field), default) {
                    (Some(v), _) => v,
                    (None, Some(d)) => return Ok(Cow::Borrowed(d)),
                    (None, None) => return Err(*missing),
                };
                let Some(t) = table else { return Ok(value) };
                match (tables.get(*t).and_then(|t| t.get(value.as_ref())), default) {
                    (Some(mapped), _) => Ok(Cow::Borrowed(mapped)),
                    (None, Some(d)) => Ok(Cow::Borrowed(d)),
                    (None, None) => Err(*not_in_table),
                }
            }
        }
    }
}

fn render_opt<'a>(
    fields: &Fields<'a>,
    tables: &'a [BTreeMap<String, String>],
    t: &'a Option<Template>,
) -> Result<Option<Cow<'a, str>>, Skip> {
    t.as_ref().map(|t| t.render(fields, tables)).transpose()
}

/// A parser made of a [`RuleSet`]: stateless across lines.
pub struct RulesParser {
    set: Arc<RuleSet>,
    ctx: EventContext,
    red: Arc<Redaction>,
    /// Capture positions per pattern, reused from line to line.
    locs: Vec<CaptureLocations>,
    /// Whether each pattern was tried on the current line, and matched.
    state: Vec<Match>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    Untried,
    Hit,
    Miss,
}

impl RulesParser {
    pub fn new(set: Arc<RuleSet>, ctx: EventContext, red: Arc<Redaction>) -> RulesParser {
        let locs = set.patterns.iter().map(|p| p.capture_locations()).collect();
        RulesParser {
            set,
            ctx,
            red,
            locs,
            state: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.set.name
    }

    fn emit(
        &self,
        rec: &Record<'_>,
        emit: &Emit,
        fields: &Fields<'_>,
        out: &mut EventBuf,
    ) -> Result<usize, Skip> {
        let tables = &self.set.tables;
        let event_type = match &emit.event_type {
            EventTypeOf::Fixed(t) => *t,
            EventTypeOf::Template(t, invalid) => {
                EventType::parse(t.render(fields, tables)?.trim()).ok_or(*invalid)?
            }
        };
        let occurred_at = match &emit.occurred_at {
            Some(t) => t
                .format
                .read(&t.value.render(fields, tables)?)
                .ok_or(t.invalid)?,
            None => rec.read_at,
        };
        let mut e = self.ctx.base_event(rec, 0, event_type, occurred_at);
        if let Some(v) = render_opt(fields, tables, &emit.tool_name)? {
            e.tool_name = v;
        }
        if let Some(v) = render_opt(fields, tables, &emit.session_id)? {
            e.session_id = v;
        }
        if let Some(v) = render_opt(fields, tables, &emit.agent_id)? {
            e.agent_id = Some(v);
        }
        if let Some(v) = render_opt(fields, tables, &emit.user_id)? {
            e.user_id = v;
        }
        if let Some(v) = render_opt(fields, tables, &emit.content)? {
            e.content = self.red.content(v);
        }
        let mut meta = self.red.metadata();
        for (key, t) in &emit.metadata {
            meta.str(key, &t.render(fields, tables)?);
        }
        e.metadata = meta.finish();
        self.red.push(out, &mut e);
        Ok(1)
    }

    fn decide(
        &self,
        rule: &Rule,
        rec: &Record<'_>,
        fields: &Fields<'_>,
        out: &mut EventBuf,
    ) -> Result<usize, Skip> {
        match &rule.action {
            Action::Drop(reason) => Err(*reason),
            Action::Emit(emit) => self.emit(rec, emit, fields, out),
        }
    }
}

impl Parser for RulesParser {
    fn parse(&mut self, rec: &Record<'_>, out: &mut EventBuf) -> Result<usize, Skip> {
        match self.set.format {
            Format::Json => {
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
                let mut values = vec![None; self.set.trie.slots()];
                self.set
                    .trie
                    .read(line, &mut values)
                    .map_err(|_| Skip::InvalidJson)?;
                let fields = Fields::Json {
                    line: rec.line,
                    values: &values,
                };
                for rule in &self.set.rules {
                    if rule.when.iter().all(|c| c.holds(&fields)) {
                        return self.decide(rule, rec, &fields, out);
                    }
                }
                Err(Skip::NoRuleMatched)
            }
            Format::Regex => {
                let text = match std::str::from_utf8(rec.line) {
                    Ok(s) => Cow::Borrowed(s),
                    Err(_) => String::from_utf8_lossy(rec.line),
                };
                // Each pattern runs at most once a line, when a rule first needs it.
                self.state.clear();
                self.state.resize(self.set.patterns.len(), Match::Untried);
                for rule in &self.set.rules {
                    let p = rule.pattern;
                    if self.state[p] == Match::Untried {
                        let hit = self.set.patterns[p].captures_read(&mut self.locs[p], &text);
                        self.state[p] = if hit.is_some() {
                            Match::Hit
                        } else {
                            Match::Miss
                        };
                    }
                    if self.state[p] == Match::Miss {
                        continue;
                    }
                    let fields = Fields::Regex {
                        text: &text,
                        locs: &self.locs[p],
                    };
                    if rule.when.iter().all(|c| c.holds(&fields)) {
                        return self.decide(rule, rec, &fields, out);
                    }
                }
                if self.state.contains(&Match::Hit) {
                    Err(Skip::NoRuleMatched)
                } else {
                    Err(Skip::NoPatternMatch)
                }
            }
        }
    }

    fn fresh(&self) -> Box<dyn Parser> {
        Box::new(RulesParser::new(
            self.set.clone(),
            self.ctx.clone(),
            self.red.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Env};
    use crate::event::Timestamp;
    use serde_json::Value;
    use std::path::Path;

    const HEAD: &str = r#"
[api]
base_url = "http://127.0.0.1:9"
tenant_id = "acme"
"#;

    fn load(parsers: &str) -> Result<Config, String> {
        let config = Config::from_toml(
            &format!("{HEAD}{parsers}"),
            Path::new("config.toml"),
            &Env::default(),
        )
        .map_err(|e| e.to_string())?;
        crate::parse::check::check(&config).map_err(|e| e.to_string())?;
        Ok(config)
    }

    fn parser(parsers: &str, name: &str) -> RulesParser {
        let config = load(parsers).expect("valid config");
        let set = crate::parse::check::rule_set(&config, name)
            .expect("compiles")
            .expect("parser defined");
        let ctx = EventContext::for_config(&config, name);
        RulesParser::new(set, ctx, Arc::new(Redaction::from_config(&config)))
    }

    fn one(p: &mut RulesParser, line: &str) -> Result<Value, Skip> {
        let mut out = EventBuf::default();
        let rec = Record {
            stream: "t/0",
            position: 0,
            line: line.as_bytes(),
            read_at: Timestamp::from_unix_micros(1_000_000),
        };
        assert_eq!(p.parse(&rec, &mut out)?, 1);
        Ok(serde_json::from_slice(out.get(0)).expect("event JSON"))
    }

    fn reason(r: Result<Value, Skip>) -> String {
        r.expect_err("skipped").as_str().to_string()
    }

    const REGEX: &str = r#"
[parsers.p]
format = "regex"
pattern = '^(?P<ts>\S+) (?P<phase>\w+) (?P<tool>\S+)(?: (?P<rest>.*))?$'
[parsers.p.tables.phase]
pre = "TOOL_CALL_PRE"
post = "TOOL_CALL_POST"
[[parsers.p.rules]]
name = "noise"
when = { field = "tool", matches = '^(ping|pong)$' }
drop = true
[[parsers.p.rules]]
name = "absent"
when = { field = "rest", exists = false }
event_type = "TOOL_CALL_POST"
tool_name = "${tool}"
occurred_at = { field = "ts", format = "epoch_s" }
[[parsers.p.rules]]
name = "listed"
when = { field = "tool", one_of = ["a", "b"] }
event_type = "${phase|phase:-TOOL_CALL_BLOCK}"
tool_name = "${tool}"
content = "${rest}"
occurred_at = { field = "ts", format = "epoch_ms" }
[[parsers.p.rules]]
name = "exact"
when = { field = "tool", equals = "c" }
event_type = "LLM_INVOCATION"
content = "$$${rest}"
occurred_at = "${ts}"
metadata = { line = "${_line}" }
"#;

    #[test]
    fn each_condition_kind_picks_its_rule() {
        let mut p = parser(REGEX, "p");
        assert_eq!(
            reason(one(&mut p, "1 pre ping x")),
            "dropped by rule `noise`"
        );
        let e = one(&mut p, "1773403200 post z").unwrap();
        assert_eq!(e["tool_name"], "z");
        assert_eq!(e["occurred_at"], "2026-03-13T12:00:00.000000+00:00");
        let e = one(&mut p, "1773403200001 pre b args").unwrap();
        assert_eq!(e["event_type"], "TOOL_CALL_PRE");
        assert_eq!(e["content"], "args");
        assert_eq!(e["occurred_at"], "2026-03-13T12:00:00.001000+00:00");
        // The table has no `deny`: the default stands in.
        let e = one(&mut p, "1773403200001 deny a args").unwrap();
        assert_eq!(e["event_type"], "TOOL_CALL_BLOCK");
        let e = one(&mut p, "2026-03-13T12:00:00Z x c 5").unwrap();
        assert_eq!(e["event_type"], "LLM_INVOCATION");
        assert_eq!(e["source_type"], "agent_llm_invocation");
        assert_eq!(e["content"], "$5");
        assert_eq!(e["metadata"]["line"], "2026-03-13T12:00:00Z x c 5");
        assert_eq!(e["session_id"], "p");
        assert_eq!(reason(one(&mut p, "1 pre d x")), "no rule matches the line");
        assert_eq!(
            reason(one(&mut p, "")),
            "no rule's pattern matches the line"
        );
        assert_eq!(
            reason(one(&mut p, "soon pre a x")),
            "rule `listed`: occurred_at value is not a timestamp in format `epoch_ms`"
        );
    }

    #[test]
    fn same_line_same_event_and_fresh_parsers_agree() {
        let mut p = parser(REGEX, "p");
        let a = one(&mut p, "1773403200001 pre b args").unwrap();
        let mut q = p.fresh();
        let mut out = EventBuf::default();
        let rec = Record {
            stream: "t/0",
            position: 0,
            line: b"1773403200001 pre b args",
            read_at: Timestamp::from_unix_micros(5),
        };
        q.parse(&rec, &mut out).unwrap();
        assert_eq!(a, serde_json::from_slice::<Value>(out.get(0)).unwrap());
    }

    const JSON: &str = r#"
[redaction]
content_max_bytes = 24
[parsers.j]
format = "json"
[[parsers.j.rules]]
event_type = "${e}"
tool_name = "${a.b.0.c}"
session_id = "${s:-none}"
agent_id = "${agent}"
user_id = "${u:-fallback-user}"
content = "${body}"
occurred_at = { template = "${d}T${t}Z", format = "rfc3339" }
metadata = { n = "${n}", obj = "${o}" }
"#;

    #[test]
    fn json_paths_templates_and_redaction() {
        let mut p = parser(JSON, "j");
        let e = one(
            &mut p,
            r#"{"e":"tool_call_pre","a":{"b":[{"c":"grep"}]},"agent":"x","d":"2026-03-13","t":"12:00:00","n":1.5,"o":{"k":[true]},"body":"token=ghp_0123456789abcdefghijABCDEFGHIJ012345 and more"}"#,
        )
        .unwrap();
        assert_eq!(e["event_type"], "TOOL_CALL_PRE");
        assert_eq!(e["tool_name"], "grep");
        assert_eq!(e["session_id"], "none");
        assert_eq!(e["agent_id"], "x");
        assert_eq!(e["user_id"], "fallback-user");
        assert_eq!(e["occurred_at"], "2026-03-13T12:00:00.000000+00:00");
        assert_eq!(e["metadata"]["n"], "1.5");
        assert_eq!(e["metadata"]["obj"], r#"{"k":[true]}"#);
        // Redacted first, then cut to content_max_bytes.
        assert_eq!(e["content"], "token=[REDACTED:github-t");
        let r = one(
            &mut p,
            r#"{"e":"LLM_INVOCATION","a":{"b":[{"c":1}]},"agent":null,"d":"2026-03-13","t":"12:00:00"}"#,
        );
        assert_eq!(reason(r), "rule 0: no value for `agent` (agent_id)");
        let r = one(
            &mut p,
            r#"{"e":"launch","a":{"b":[{"c":1}]},"agent":"x","d":"2026-03-13","t":"12:00:00"}"#,
        );
        assert_eq!(
            reason(r),
            "rule 0: event_type value is not one of TOOL_CALL_PRE, TOOL_CALL_POST, \
             TOOL_CALL_BLOCK or LLM_INVOCATION"
        );
        assert_eq!(reason(one(&mut p, "  ")), "empty line");
        assert_eq!(reason(one(&mut p, "[]")), "JSON but not an object");
        assert_eq!(reason(one(&mut p, "{\"e\":")), "invalid JSON");
    }

    #[test]
    fn metadata_allow_applies_to_rules() {
        let text = JSON.replace(
            "content_max_bytes = 24",
            "content_max_bytes = 24\nmetadata_allow = [\"n\"]",
        );
        let mut p = parser(&text, "j");
        let e = one(
            &mut p,
            r#"{"e":"TOOL_CALL_POST","a":{"b":[{"c":"x"}]},"agent":"x","d":"2026-03-13","t":"12:00:00","n":2,"o":{},"body":""}"#,
        )
        .unwrap();
        assert_eq!(e["metadata"], serde_json::json!({"n": "2"}));
    }

    /// The config error of `parsers`, with the example header.
    fn error(parsers: &str) -> String {
        load(parsers).expect_err("config error")
    }

    #[test]
    fn config_errors_name_the_parser_the_rule_and_the_line() {
        let base = r#"
[parsers.my-agent]
format = "regex"
pattern = '^(?P<ts>\S+) (?P<phase>\w+) (?P<tool>\w+) (?P<rest>.*)$'
[parsers.my-agent.tables.phase]
pre = "TOOL_CALL_PRE"
[[parsers.my-agent.rules]]
name = "drop-heartbeats"
when = { field = "tool", equals = "heartbeat" }
drop = true
[[parsers.my-agent.rules]]
name = "calls"
event_type = "${phase|phase}"
tool_name = "${tool}"
occurred_at = { field = "ts", format = "rfc3339" }
"#;
        assert!(load(base).is_ok(), "{:?}", load(base).err());
        let cases: &[(&str, &str, &str)] = &[
            (
                r#"tool_name = "${tool}""#,
                r#"tool_name = "${tol}""#,
                "config.toml:15: `parsers.my-agent.rules[1]`: rule `calls`: `tool_name`: \
                 template ${tol}: no capture group named `tol` (the pattern has: ts, phase, \
                 tool, rest; `_line` is the whole line)",
            ),
            (
                r#"(?P<rest>.*)$'"#,
                r#"(?P<rest>.*$'"#,
                "config.toml:8: `parsers.my-agent.pattern`: bad regex:",
            ),
            (
                r#""${phase|phase}""#,
                r#""${phase|phases}""#,
                "`parsers.my-agent.rules[1]`: rule `calls`: `event_type`: template ${phase}: \
                 no table `phases` in this parser (tables: phase)",
            ),
            (
                r#""${phase|phase}""#,
                r#""TOOL_CALL_MAYBE""#,
                "rule `calls`: `event_type` `TOOL_CALL_MAYBE` is not one of",
            ),
            (
                r#"pre = "TOOL_CALL_PRE""#,
                r#"pre = "PRE""#,
                "rule `calls`: `event_type`: table `phase` maps `pre` to `PRE`, which is not",
            ),
            (
                r#"format = "rfc3339""#,
                r#"format = "%Y-%m-%d %H:%M:%Q""#,
                "config.toml:15: `parsers.my-agent.rules[1]`: rule `calls`: `occurred_at`: \
                 strftime pattern `%Y-%m-%d %H:%M:%Q`",
            ),
            (
                r#"format = "rfc3339""#,
                r#"format = "%H:%M:%S""#,
                "does not give a full date and time",
            ),
            (
                r#"format = "rfc3339""#,
                r#"format = "iso""#,
                "`occurred_at`: unknown timestamp format `iso`",
            ),
            (
                r#"equals = "heartbeat""#,
                r#"matches = "(""#,
                "config.toml:11: `parsers.my-agent.rules[0]`: rule `drop-heartbeats`: \
                 condition on `tool`: bad regex in `matches`",
            ),
            (
                r#"equals = "heartbeat""#,
                r#"equals = "heartbeat", exists = true"#,
                "give exactly one of `equals`, `one_of`, `matches`, `exists`",
            ),
            (
                r#"field = "tool""#,
                r#"field = "tools""#,
                "rule `drop-heartbeats`: condition on `tools`: no capture group named `tools`",
            ),
            (
                "drop = true",
                "drop = true\nevent_type = \"TOOL_CALL_PRE\"",
                "`drop = true` makes no event, so it takes no event fields",
            ),
            (
                "drop = true",
                "",
                "rule `drop-heartbeats`: needs `event_type` (or `drop = true`)",
            ),
            (
                r#"tool_name = "${tool}""#,
                r#"tool_name = "${tool""#,
                "`tool_name`: `${` at byte 0 is not closed by `}`",
            ),
            (
                r#"format = "regex""#,
                r#"format = "yaml""#,
                "parsers.my-agent.format",
            ),
            (
                r#"tool_name = "${tool}""#,
                r#"tool_nam = "${tool}""#,
                "config.toml:18:1: `parsers.my-agent.rules[1].tool_nam`: unknown field `tool_nam`",
            ),
            (
                r#"equals = "heartbeat""#,
                r#"equal = "heartbeat""#,
                "`parsers.my-agent.rules[0].when.equal`: unknown field `equal`, expected one of",
            ),
        ];
        for (from, to, want) in cases {
            assert!(base.contains(from), "{from}");
            let e = error(&base.replacen(from, to, 1));
            assert!(e.contains(want), "{to}:\n got  {e}\n want {want}");
        }
        let e = error(&base.replace("parsers.my-agent", "parsers.codex"));
        assert!(
            e.contains("config.toml:8: `parsers.codex`: `codex` is the name of a built-in parser"),
            "{e}"
        );
        // Rule and parser level: pattern missing, json with a pattern.
        let e = error(&base.replacen("pattern = ", "# pattern = ", 1));
        assert!(
            e.contains("`parsers.my-agent.rules[0]`: rule `drop-heartbeats`: no `pattern`"),
            "{e}"
        );
        let e = error("[parsers.j]\nformat = \"json\"\npattern = 'x'\n");
        assert!(e.contains("`parsers.j.pattern`: a json parser"), "{e}");
        let e = error("[parsers.j]\nformat = \"json\"\n");
        assert!(
            e.contains("`parsers.j.rules`: needs at least one rule"),
            "{e}"
        );
        let e = error(
            "[parsers.j]\nformat = \"json\"\n[[parsers.j.rules]]\nevent_type = \"${a..b}\"\n",
        );
        assert!(
            e.contains("rule 0: `event_type`: template ${a..b}: `a..b` is not a dotted path"),
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

//! From spec to rule set: [`compile`] checks a `[parsers.NAME]` spec
//! (regexes, capture names, tables, event types, strftime patterns) and
//! compiles its rules, templates and conditions, with errors that name the
//! rule and the key at fault. Skip reasons are made here, once per rule.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, OnceLock};

use regex::Regex;

use super::paths::PathTrie;
use super::template::{self, Piece};
use super::timefmt::TimeFormat;
use super::{
    Action, Condition, Emit, EventTypeOf, FieldId, Part, Rule, RuleError, RuleSet, Template, Test,
    TimeOf, LINE_FIELD,
};
use super::{SOURCE_FIELDS, SOURCE_PREFIX};
use crate::config::parsers::{ConditionSpec, Format, ParserSpec, RuleSpec, TimeSpec};
use crate::event::EventType;
use crate::parse::history::EntersAt;
use crate::parse::Skip;

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
    if crate::parse::PARSER_NAMES.contains(&name) {
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
        history: None,
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
    if spec.session_history {
        set.history = Some(history_entry(&set.rules));
    }
    Ok(set)
}

/// Where calls enter the tool history: at their TOOL_CALL_PRE when a rule
/// may make one (an event type from a template may), else at their
/// TOOL_CALL_POST or TOOL_CALL_BLOCK (a format that logs only outcomes).
fn history_entry(rules: &[Rule]) -> EntersAt {
    let may_make_pre = rules.iter().any(|r| match &r.action {
        Action::Emit(emit) => match emit.event_type {
            EventTypeOf::Fixed(t) => t == EventType::ToolCallPre,
            EventTypeOf::Template(..) => true,
        },
        Action::Drop(_) => false,
    });
    if may_make_pre {
        EntersAt::Pre
    } else {
        EntersAt::Outcome
    }
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
        if let Some(field) = name.strip_prefix(SOURCE_PREFIX) {
            return SOURCE_FIELDS
                .iter()
                .position(|n| *n == field)
                .map(FieldId::Source)
                .ok_or_else(|| {
                    format!(
                        "no source field `{name}` (a journald source gives {SOURCE_PREFIX}{})",
                        SOURCE_FIELDS.join(&format!(", {SOURCE_PREFIX}"))
                    )
                });
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

#[cfg(test)]
mod tests {
    use super::super::tests::{error, load};

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
}

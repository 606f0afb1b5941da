//! Running a rule set on a line: the line's fields (capture groups or JSON
//! paths), conditions, template rendering, and the [`RulesParser`] that picks
//! the first matching rule and makes its event or its skip reason.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use regex::CaptureLocations;
use serde_json::value::RawValue;

use super::{
    Action, Condition, Emit, EventTypeOf, FieldId, Match, Part, Rule, RuleSet, RulesParser,
    Template, Test,
};
use crate::config::parsers::Format;
use crate::event::EventType;
use crate::parse::history::{SavedHistory, SessionHistory};
use crate::parse::{EventBuf, EventContext, Parser, Record, Redaction, Skip};

/// The fields of one line.
enum Fields<'a> {
    Regex {
        text: &'a str,
        locs: &'a CaptureLocations,
        source: &'a [(&'static str, String)],
    },
    Json {
        line: &'a [u8],
        values: &'a [Option<&'a RawValue>],
        source: &'a [(&'static str, String)],
    },
}

impl<'a> Fields<'a> {
    fn get(&self, id: FieldId) -> Option<Cow<'a, str>> {
        match (self, id) {
            (Fields::Regex { source, .. } | Fields::Json { source, .. }, FieldId::Source(i)) => {
                let name = super::SOURCE_FIELDS.get(i)?;
                source
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| Cow::Borrowed(v.as_str()))
            }
            (Fields::Regex { text, .. }, FieldId::Line) => Some(Cow::Borrowed(*text)),
            (Fields::Json { line, .. }, FieldId::Line) => Some(String::from_utf8_lossy(line)),
            (Fields::Regex { text, locs, .. }, FieldId::Group(g)) => {
                let (start, end) = locs.get(g)?;
                text.get(start..end).map(Cow::Borrowed)
            }
            (Fields::Json { values, .. }, FieldId::Slot(s)) => {
                crate::parse::json::as_text(values.get(s).copied().flatten()?)
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

impl RulesParser {
    pub fn new(set: Arc<RuleSet>, ctx: EventContext, red: Arc<Redaction>) -> RulesParser {
        let locs = set.patterns.iter().map(|p| p.capture_locations()).collect();
        RulesParser {
            ctx,
            red,
            locs,
            state: Vec::new(),
            source_fields: Vec::new(),
            history: set.history.map(SessionHistory::new),
            set,
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
        history: Option<&mut SessionHistory>,
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
        let entry = match history.as_deref() {
            Some(h) => h.fill(&self.red, &mut e, &mut meta),
            None => None,
        };
        e.metadata = meta.finish();
        self.red.push(out, &mut e);
        if let Some(h) = history {
            h.record(entry);
        }
        Ok(1)
    }

    fn decide(
        &self,
        rule: &Rule,
        rec: &Record<'_>,
        fields: &Fields<'_>,
        out: &mut EventBuf,
        history: Option<&mut SessionHistory>,
    ) -> Result<usize, Skip> {
        match &rule.action {
            Action::Drop(reason) => Err(*reason),
            Action::Emit(emit) => self.emit(rec, emit, fields, out, history),
        }
    }

    fn parse_line(
        &mut self,
        rec: &Record<'_>,
        out: &mut EventBuf,
        mut history: Option<&mut SessionHistory>,
    ) -> Result<usize, Skip> {
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
                    source: &self.source_fields,
                };
                for rule in &self.set.rules {
                    if rule.when.iter().all(|c| c.holds(&fields)) {
                        return self.decide(rule, rec, &fields, out, history.as_deref_mut());
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
                        source: &self.source_fields,
                    };
                    if rule.when.iter().all(|c| c.holds(&fields)) {
                        return self.decide(rule, rec, &fields, out, history.as_deref_mut());
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
}

impl Parser for RulesParser {
    fn parse(&mut self, rec: &Record<'_>, out: &mut EventBuf) -> Result<usize, Skip> {
        // Out of `self` while the line's fields borrow it.
        let mut history = self.history.take();
        let made = self.parse_line(rec, out, history.as_mut());
        self.history = history;
        made
    }

    fn save_state(&self) -> Vec<u8> {
        match &self.history {
            Some(h) if !h.is_empty() => crate::parse::presets::encode_state(&h.save()),
            _ => Vec::new(),
        }
    }

    fn load_state(&mut self, bytes: &[u8]) {
        if let Some(h) = self.history.as_mut() {
            let saved: SavedHistory =
                crate::parse::presets::decode_state(bytes).unwrap_or_default();
            h.load(saved, &self.red);
        }
    }

    fn take_evictions(&mut self) -> u64 {
        self.history
            .as_mut()
            .map_or(0, SessionHistory::take_evictions)
    }

    fn set_record_fields(&mut self, fields: &[(&'static str, String)]) {
        self.source_fields.clear();
        self.source_fields.extend_from_slice(fields);
    }

    fn set_user(&mut self, user: &str) {
        self.ctx.user_id = user.to_string();
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
    use crate::event::Timestamp;
    use serde_json::Value;

    use super::super::tests::load;

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
}

//! The TOML shape of a rules parser (`[parsers.NAME]`), as the operator
//! writes it: plain data. `crate::parse::rules::compile` checks it and turns
//! it into a rule set.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// How a line is cut into fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Named capture groups of a regex are the fields.
    Regex,
    /// The line is a JSON object; fields are dotted paths into it.
    Json,
}

/// `[parsers.NAME]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParserSpec {
    pub format: Format,
    /// The regex of every rule that has no `pattern` of its own (regex only).
    pub pattern: Option<Spanned<String>>,
    /// Lookup tables: `${field|table}` replaces a value by its entry.
    #[serde(default)]
    pub tables: BTreeMap<String, BTreeMap<String, String>>,
    /// Tried in order; the first whose pattern and conditions match decides.
    #[serde(default)]
    pub rules: Vec<Spanned<RuleSpec>>,
    /// Fill `session_tool_calls` with the tools each session called before
    /// the event (see `crate::parse::history`).
    #[serde(default)]
    pub session_history: bool,
}

/// `[[parsers.NAME.rules]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Shown in skip reasons and config errors.
    pub name: Option<String>,
    /// This rule's own regex (regex only); else the parser's.
    pub pattern: Option<String>,
    /// Conditions that must all hold; one table or an array of them.
    #[serde(default, deserialize_with = "one_or_many_conditions")]
    pub when: Vec<ConditionSpec>,
    /// A matching line makes no event (counted as dropped by this rule).
    #[serde(default)]
    pub drop: bool,
    pub event_type: Option<String>,
    pub tool_name: Option<String>,
    pub session_id: Option<String>,
    pub agent_id: Option<String>,
    pub user_id: Option<String>,
    pub content: Option<String>,
    pub occurred_at: Option<TimeSpec>,
    /// Metadata keys and their templates.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// `{ field = "tool", equals = "x" }`; exactly one test per condition.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    pub field: String,
    pub equals: Option<String>,
    pub one_of: Option<Vec<String>>,
    /// A regex the value must match (anywhere; anchor it with `^...$`).
    pub matches: Option<String>,
    /// `true`: the field has a value; `false`: it has none.
    pub exists: Option<bool>,
}

/// `occurred_at`: a template (read as RFC 3339 or an epoch number), or
/// `{ field = "ts", format = "..." }` / `{ template = "...", format = "..." }`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeSpec {
    pub field: Option<String>,
    pub template: Option<String>,
    pub format: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeTable {
    field: Option<String>,
    template: Option<String>,
    #[serde(default = "auto")]
    format: String,
}

fn auto() -> String {
    "auto".into()
}

impl<'de> Deserialize<'de> for TimeSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TimeSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a template such as \"${ts}\" or { field = \"ts\", format = \"rfc3339\" }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TimeSpec, E> {
                Ok(TimeSpec {
                    field: None,
                    template: Some(v.to_string()),
                    format: auto(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TimeSpec, A::Error> {
                let t = TimeTable::deserialize(MapAccessDeserializer::new(map))?;
                Ok(TimeSpec {
                    field: t.field,
                    template: t.template,
                    format: t.format,
                })
            }
        }
        d.deserialize_any(V)
    }
}

fn one_or_many_conditions<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ConditionSpec>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<ConditionSpec>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a condition { field = ..., equals = ... } or an array of them")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            ConditionSpec::deserialize(MapAccessDeserializer::new(map)).map(|c| vec![c])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Vec::<ConditionSpec>::deserialize(SeqAccessDeserializer::new(seq))
        }
    }
    d.deserialize_any(V)
}

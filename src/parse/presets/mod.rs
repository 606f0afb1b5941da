//! Built-in parsers for the logs of agents that use no Thoth SDK, one module
//! per format (`../shared/agent-log-formats.md` describes each), and what
//! they share: lenient access to JSON fields and bounded state across lines.
//!
//! Known fields are read as `&RawValue` and interpreted one by one, so a field
//! of the wrong type costs that field, not the line.

pub mod claude_code;
pub mod codex;
pub mod mcp;
pub mod otel;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::json::{as_timestamp, Str};
use super::Skip;
use crate::event::Timestamp;

/// Most entries a parser keeps in one map of state (pending calls, message
/// ids). Beyond it the oldest entry goes, and the eviction is counted.
pub const STATE_MAX_ENTRIES: usize = 10_000;
/// Most bytes of keys and values one map of state holds: the state is saved
/// with every checkpoint, and ids come from lines a user writes.
pub const STATE_MAX_BYTES: usize = 256 << 10;
/// An entry larger than this (a call id or tool name no agent writes) is not
/// kept, and counted as an eviction.
pub const STATE_MAX_ENTRY_BYTES: usize = 1024;
/// Longest single string of state (a session id, model name, directory).
pub const STATE_MAX_STRING_BYTES: usize = 1024;

/// Bytes a value of state costs, for the byte bound of [`BoundedMap`].
pub trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for () {
    fn weight(&self) -> usize {
        0
    }
}

impl Weigh for String {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weigh for u64 {
    fn weight(&self) -> usize {
        8
    }
}

impl Weigh for i32 {
    fn weight(&self) -> usize {
        4
    }
}

/// A string of state from a line, cut to [`STATE_MAX_STRING_BYTES`].
pub fn state_string(s: Cow<'_, str>) -> String {
    if s.len() <= STATE_MAX_STRING_BYTES {
        s.into_owned()
    } else {
        super::truncate_utf8(&s, STATE_MAX_STRING_BYTES).to_string()
    }
}

/// Record kinds a format documents that make no event, each with why: the
/// name as it appears in the line, and the skip reason `parse --explain`
/// counts it under.
pub type KindTable = &'static [(&'static str, &'static str)];

/// Every preset's table, for the test that the README lists them all.
pub const SKIPPED_KINDS: [(&str, KindTable); 6] = [
    ("claude-code", claude_code::SKIPPED),
    ("codex", codex::SKIPPED_LINES),
    ("codex", codex::SKIPPED_ITEMS),
    ("codex", codex::SKIPPED_EVENTS),
    ("mcp-claude-desktop", mcp::SKIPPED),
    ("otel-genai", otel::SKIPPED),
];

/// The skip of a record of kind `kind`: its entry in `table`, else
/// `otherwise` (a kind no documentation names).
pub(crate) fn skip_kind(table: KindTable, kind: Option<&str>, otherwise: Skip) -> Skip {
    kind.and_then(|k| table.iter().find(|(name, _)| *name == k))
        .map_or(otherwise, |(_, why)| Skip::Kind(why))
}

/// Parses a line that must be one JSON object into `T`, telling apart
/// "not JSON", "JSON but not an object" and "an object of the wrong shape".
pub(crate) fn parse_object<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, Skip> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Err(Skip::EmptyLine);
    }
    if line[0] != b'{' {
        return match serde_json::from_slice::<IgnoredAny>(line) {
            Ok(_) => Err(Skip::NotAnObject),
            Err(_) => Err(Skip::InvalidJson),
        };
    }
    serde_json::from_slice(line).map_err(|e| {
        if e.is_data() {
            Skip::UnexpectedShape
        } else {
            Skip::InvalidJson
        }
    })
}

/// Parses a raw value into `T`, or None if it has another shape.
pub(crate) fn field<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Option<T> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

/// The value if it is a JSON string.
pub(crate) fn string(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let raw = raw?;
    if raw.get().as_bytes().first() != Some(&b'"') {
        return None;
    }
    serde_json::from_str::<Str>(raw.get()).ok().map(|s| s.0)
}

/// A string as itself, a number or other value as its JSON text; None for null.
pub(crate) fn text(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    super::json::as_text(raw?)
}

pub(crate) fn boolean(raw: Option<&RawValue>) -> Option<bool> {
    match raw?.get() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

pub(crate) fn timestamp(raw: Option<&RawValue>) -> Option<Timestamp> {
    as_timestamp(raw?)
}

/// A content item of a tool result: `{"type":"text","text":"..."}`.
#[derive(Deserialize)]
pub(crate) struct TextItem<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
}

/// The text of a tool output that is a string or an array of text items
/// (Claude Code, Codex and MCP all use one of the two).
pub(crate) fn output_text(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let raw = raw?;
    match raw.get().as_bytes().first() {
        Some(b'"') => string(Some(raw)),
        Some(b'[') => {
            let items: Vec<TextItem> = field(Some(raw))?;
            let mut texts = items.iter().filter_map(|i| {
                let kind = string(i.kind);
                if kind
                    .as_deref()
                    .is_none_or(|k| k == "text" || k == "input_text" || k == "output_text")
                {
                    string(i.text)
                } else {
                    None
                }
            });
            let first = texts.next()?;
            match texts.next() {
                None => Some(first),
                Some(second) => {
                    let mut all = first.into_owned();
                    for t in std::iter::once(second).chain(texts) {
                        all.push('\n');
                        all.push_str(&t);
                    }
                    Some(Cow::Owned(all))
                }
            }
        }
        _ => None,
    }
}

/// A map that keeps at most `cap` entries and [`STATE_MAX_BYTES`] bytes,
/// dropping the oldest insertion when full and counting each drop.
#[derive(Debug, Clone)]
pub struct BoundedMap<V> {
    map: HashMap<String, (u64, V)>,
    /// Insertion order; entries whose sequence number no longer matches the
    /// map's are stale (removed or replaced) and skipped.
    order: VecDeque<(u64, String)>,
    next_seq: u64,
    cap: usize,
    /// Bytes of the live entries' keys and values.
    bytes: usize,
    evicted: u64,
}

impl<V: Weigh> BoundedMap<V> {
    pub fn new(cap: usize) -> Self {
        BoundedMap {
            map: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            cap: cap.max(1),
            bytes: 0,
            evicted: 0,
        }
    }

    pub fn insert(&mut self, key: String, value: V) {
        let weight = key.len() + value.weight();
        if weight > STATE_MAX_ENTRY_BYTES {
            self.remove(&key);
            self.evicted += 1;
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += weight;
        if let Some((_, old)) = self.map.insert(key.clone(), (seq, value)) {
            self.bytes = self.bytes.saturating_sub(key.len() + old.weight());
        }
        while self.map.len() > self.cap || self.bytes > STATE_MAX_BYTES {
            let Some((old_seq, old_key)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old_key).is_some_and(|(s, _)| *s == old_seq) {
                self.remove(&old_key);
                self.evicted += 1;
            }
        }
        self.order.push_back((seq, key));
        if self.order.len() > 2 * self.cap {
            let map = &self.map;
            self.order
                .retain(|(s, k)| map.get(k).is_some_and(|(cur, _)| cur == s));
        }
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key).map(|(_, v)| v)
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let (_, v) = self.map.remove(key)?;
        self.bytes = self.bytes.saturating_sub(key.len() + v.weight());
        Some(v)
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn take_evictions(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
    }

    /// Live entries, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &V)> + '_ {
        self.order.iter().filter_map(|(seq, k)| {
            self.map
                .get(k)
                .filter(|(s, _)| s == seq)
                .map(|(_, v)| (k.as_str(), v))
        })
    }
}

impl<V: Clone + Weigh> BoundedMap<V> {
    /// Rebuilds a map from entries listed oldest first.
    pub fn from_entries(cap: usize, entries: Vec<(String, V)>) -> Self {
        let mut m = BoundedMap::new(cap);
        for (k, v) in entries {
            m.insert(k, v);
        }
        m.evicted = 0;
        m
    }

    pub fn to_entries(&self) -> Vec<(String, V)> {
        self.entries()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }
}

/// Serializes parser state; state is small and read once per restart, so a
/// self-describing format beats a compact one.
pub(crate) fn encode_state<T: Serialize>(state: &T) -> Vec<u8> {
    serde_json::to_vec(state).unwrap_or_default()
}

pub(crate) fn decode_state<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    if bytes.is_empty() {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_lists_every_skipped_kind_under_its_preset() {
        let readme = include_str!("../../../README.md");
        let section = |from: &str, to: &str| {
            let start = readme.find(from).expect("section start");
            let len = readme[start..].find(to).expect("section end");
            &readme[start..start + len]
        };
        let presets = section("### What each preset skips", "\n### ");
        let codex = section("What the `codex` preset makes", "A Codex rollout without");
        for (preset, table) in SKIPPED_KINDS {
            for (kind, why) in table {
                if kind.starts_with('(') {
                    continue; // not a name a line holds
                }
                let named = format!("`{kind}`");
                let listed = if preset == "codex" {
                    codex
                        .lines()
                        .any(|l| l.starts_with('|') && l.contains(&named))
                } else {
                    let row = format!("| `{preset}` |");
                    presets
                        .lines()
                        .any(|l| l.starts_with(&row) && l.contains(&named))
                };
                assert!(listed, "README lacks {preset} {named} ({why})");
            }
        }
    }

    #[test]
    fn bounded_map_evicts_oldest_and_counts() {
        let mut m = BoundedMap::new(3);
        for i in 0..5 {
            m.insert(format!("k{i}"), i);
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.take_evictions(), 2);
        assert!(!m.contains("k0") && !m.contains("k1"));
        assert_eq!(m.remove("k3"), Some(3));
        m.insert("k5".into(), 5);
        assert_eq!(m.take_evictions(), 0);
        let order: Vec<_> = m.entries().map(|(k, _)| k.to_string()).collect();
        assert_eq!(order, ["k2", "k4", "k5"]);
    }

    #[test]
    fn bounded_map_stays_bounded_under_churn() {
        let mut m = BoundedMap::new(100);
        for i in 0..1_000_000u64 {
            m.insert(format!("c{i}"), i);
            if i % 2 == 0 {
                m.remove(&format!("c{i}"));
            }
        }
        assert!(m.len() <= 100);
        assert!(m.order.len() <= 200);
    }

    #[test]
    fn bounded_map_holds_its_bytes_whatever_the_ids() {
        let mut m: BoundedMap<String> = BoundedMap::new(STATE_MAX_ENTRIES);
        // Ids of 1,000 bytes: the byte bound, not the entry count, binds.
        for i in 0..10_000 {
            m.insert(format!("{i:0>990}"), "bash".into());
        }
        assert!(m.bytes() <= STATE_MAX_BYTES, "{}", m.bytes());
        assert!(m.len() < 300, "{}", m.len());
        assert!(m.take_evictions() > 9_000);
        // An entry past the per-entry bound is not kept at all.
        m.insert("x".repeat(STATE_MAX_ENTRY_BYTES), "t".into());
        assert!(!m.contains(&"x".repeat(STATE_MAX_ENTRY_BYTES)));
        assert_eq!(m.take_evictions(), 1);
        let held: usize = m.entries().map(|(k, v)| k.len() + v.len()).sum();
        assert_eq!(held, m.bytes());
    }
}

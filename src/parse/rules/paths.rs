//! Dotted paths into a JSON line (`payload.tool.name`, `items.0.id`), all
//! of a parser's paths read in one pass over the line.
//!
//! The paths form a trie; a walk of the line descends only into the keys the
//! trie names and skips everything else unparsed, keeping the raw text of
//! each value a path ends at.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::parse::json::Str;

#[derive(Debug, Clone, Default)]
struct Node {
    /// Key segment, its value as an array index if it is one, and the child.
    children: Vec<(String, Option<usize>, usize)>,
    /// The slot of the path that ends here.
    slot: Option<usize>,
}

/// The set of paths a parser reads; each path has a slot in the values of a line.
#[derive(Debug, Clone)]
pub struct PathTrie {
    nodes: Vec<Node>,
    slots: usize,
}

impl Default for PathTrie {
    fn default() -> Self {
        PathTrie {
            nodes: vec![Node::default()],
            slots: 0,
        }
    }
}

impl PathTrie {
    /// The slot of `path`, added if new. Segments are split on `.`.
    pub fn slot(&mut self, path: &str) -> Result<usize, String> {
        let mut node = 0;
        for seg in path.split('.') {
            if seg.is_empty() {
                return Err(format!("`{path}` is not a dotted path (empty segment)"));
            }
            let found = self.nodes[node]
                .children
                .iter()
                .find(|(k, _, _)| k == seg)
                .map(|(_, _, c)| *c);
            node = match found {
                Some(c) => c,
                None => {
                    let child = self.nodes.len();
                    self.nodes.push(Node::default());
                    let index = seg.parse::<usize>().ok();
                    self.nodes[node]
                        .children
                        .push((seg.to_string(), index, child));
                    child
                }
            };
        }
        Ok(*self.nodes[node].slot.get_or_insert_with(|| {
            self.slots += 1;
            self.slots - 1
        }))
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Reads `line` (one JSON object) into `values`, which must have
    /// [`PathTrie::slots`] entries. Errors are serde_json's.
    pub fn read<'de>(
        &self,
        line: &'de [u8],
        values: &mut [Option<&'de RawValue>],
    ) -> Result<(), serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(line);
        Walk {
            trie: self,
            node: 0,
            values,
        }
        .deserialize(&mut de)?;
        de.end()
    }
}

struct Walk<'t, 'v, 'de> {
    trie: &'t PathTrie,
    node: usize,
    values: &'v mut [Option<&'de RawValue>],
}

impl<'de> Walk<'_, '_, 'de> {
    /// The raw value of `child`, which both ends a path and goes on below:
    /// kept, then read again for the paths below it.
    fn take_and_descend<E: serde::de::Error>(
        &mut self,
        child: usize,
        raw: &'de RawValue,
    ) -> Result<(), E> {
        if let Some(slot) = self.trie.nodes[child].slot {
            if let Some(v) = self.values.get_mut(slot) {
                *v = Some(raw);
            }
        }
        if matches!(raw.get().as_bytes().first(), Some(b'{' | b'[')) {
            let mut de = serde_json::Deserializer::from_str(raw.get());
            Walk {
                trie: self.trie,
                node: child,
                values: &mut *self.values,
            }
            .deserialize(&mut de)
            .map_err(E::custom)?;
        }
        Ok(())
    }

    /// How the value of `child` is read: kept whole (a path ends there),
    /// walked (paths go on below it), or both.
    fn kind(&self, child: usize) -> Take {
        let node = &self.trie.nodes[child];
        match (node.slot, node.children.is_empty()) {
            (Some(slot), true) => Take::Keep(slot),
            (None, _) => Take::Walk,
            (Some(_), false) => Take::Both,
        }
    }
}

enum Take {
    Keep(usize),
    Walk,
    Both,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Str<'de>>()? {
            let child = self.trie.nodes[self.node]
                .children
                .iter()
                .find(|(k, _, _)| *k == key.0)
                .map(|(_, _, c)| *c);
            match child.map(|c| (c, self.kind(c))) {
                Some((_, Take::Keep(slot))) => {
                    let raw: &'de RawValue = map.next_value()?;
                    if let Some(v) = self.values.get_mut(slot) {
                        *v = Some(raw);
                    }
                }
                Some((c, Take::Walk)) => map.next_value_seed(Walk {
                    trie: self.trie,
                    node: c,
                    values: &mut *self.values,
                })?,
                Some((c, Take::Both)) => {
                    let raw: &'de RawValue = map.next_value()?;
                    self.take_and_descend(c, raw)?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let child = self.trie.nodes[self.node]
                .children
                .iter()
                .find(|(_, idx, _)| *idx == Some(i))
                .map(|(_, _, c)| *c);
            let more = match child.map(|c| (c, self.kind(c))) {
                Some((_, Take::Keep(slot))) => match seq.next_element::<&'de RawValue>()? {
                    Some(raw) => {
                        if let Some(v) = self.values.get_mut(slot) {
                            *v = Some(raw);
                        }
                        true
                    }
                    None => false,
                },
                Some((c, Take::Walk)) => seq
                    .next_element_seed(Walk {
                        trie: self.trie,
                        node: c,
                        values: &mut *self.values,
                    })?
                    .is_some(),
                Some((c, Take::Both)) => match seq.next_element::<&'de RawValue>()? {
                    Some(raw) => {
                        self.take_and_descend(c, raw)?;
                        true
                    }
                    None => false,
                },
                None => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                break;
            }
            i += 1;
        }
        Ok(())
    }

    // Scalars where the trie expected an object or array hold none of its paths.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(paths: &[&str], line: &str) -> Vec<Option<String>> {
        let mut trie = PathTrie::default();
        let slots: Vec<usize> = paths.iter().map(|p| trie.slot(p).unwrap()).collect();
        let mut values = vec![None; trie.slots()];
        trie.read(line.as_bytes(), &mut values).unwrap();
        slots
            .iter()
            .map(|&s| values[s].map(|v| v.get().to_string()))
            .collect()
    }

    #[test]
    fn nested_keys_and_array_indexes() {
        let line = r#"{"a":1,"p":{"tool":{"name":"bash","x":[1]},"z":null},"items":[{"id":"i0"},{"id":"i1"}],"q":"s"}"#;
        assert_eq!(
            read(
                &[
                    "p.tool.name",
                    "items.1.id",
                    "p.tool",
                    "a",
                    "missing.x",
                    "q.r",
                    "items.7",
                    "p.z.y",
                    "p.tool.x.0"
                ],
                line
            ),
            vec![
                Some(r#""bash""#.into()),
                Some(r#""i1""#.into()),
                Some(r#"{"name":"bash","x":[1]}"#.into()),
                Some("1".into()),
                None,
                None,
                None,
                None,
                Some("1".into()),
            ]
        );
    }

    #[test]
    fn escaped_keys_match_and_bad_json_fails() {
        assert_eq!(
            read(&["k"], r#"{"\u006b":"v"}"#),
            vec![Some(r#""v""#.into())]
        );
        let mut trie = PathTrie::default();
        trie.slot("a.b").unwrap();
        let mut values = vec![None; 1];
        assert!(trie.read(br#"{"a":{"b":1}"#, &mut values).is_err());
        assert!(trie.read(br#"{"a":1} x"#, &mut values).is_err());
        assert!(PathTrie::default().slot("a..b").is_err());
    }
}

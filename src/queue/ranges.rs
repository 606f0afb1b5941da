//! Sets of event ranges within a chunk: what is acknowledged and what is in
//! flight, and how acknowledged ranges are stored in sled.

use std::ops::Range;

/// A set of disjoint, sorted, non-adjacent ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RangeSet(pub(super) Vec<Range<u32>>);

impl RangeSet {
    pub(super) fn insert(&mut self, r: Range<u32>) {
        if r.is_empty() {
            return;
        }
        let mut merged = r;
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for cur in self.0.drain(..) {
            if cur.end < merged.start || cur.start > merged.end {
                out.push(cur);
            } else {
                merged = merged.start.min(cur.start)..merged.end.max(cur.end);
            }
        }
        out.push(merged);
        out.sort_by_key(|r| r.start);
        self.0 = out;
    }

    pub(super) fn remove(&mut self, r: &Range<u32>) {
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for cur in self.0.drain(..) {
            if cur.end <= r.start || cur.start >= r.end {
                out.push(cur);
                continue;
            }
            if cur.start < r.start {
                out.push(cur.start..r.start);
            }
            if cur.end > r.end {
                out.push(r.end..cur.end);
            }
        }
        self.0 = out;
    }

    pub(super) fn covers(&self, r: &Range<u32>) -> bool {
        self.0.iter().any(|c| c.start <= r.start && r.end <= c.end)
    }

    /// The first range not in the set within `within`, if any.
    pub(super) fn first_gap(&self, within: Range<u32>) -> Option<Range<u32>> {
        let mut start = within.start;
        for c in &self.0 {
            if c.end <= start {
                continue;
            }
            if c.start > start {
                return Some(start..c.start.min(within.end));
            }
            start = c.end;
            if start >= within.end {
                return None;
            }
        }
        (start < within.end).then_some(start..within.end)
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        self.0
            .iter()
            .flat_map(|r| r.start.to_le_bytes().into_iter().chain(r.end.to_le_bytes()))
            .collect()
    }

    pub(super) fn decode(bytes: &[u8]) -> RangeSet {
        let mut set = RangeSet::default();
        for pair in bytes.chunks_exact(8) {
            let start = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]);
            let end = u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]);
            set.insert(start..end);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_set() {
        let mut s = RangeSet::default();
        s.insert(5..10);
        s.insert(0..2);
        assert_eq!(s.first_gap(0..12), Some(2..5));
        s.insert(2..5);
        assert_eq!(s.0, vec![0..10]);
        assert_eq!(s.first_gap(0..12), Some(10..12));
        assert!(s.covers(&(0..10)));
        let mut t = s.clone();
        t.remove(&(3..5));
        assert_eq!(t.0, vec![0..3, 5..10]);
        assert_eq!(RangeSet::decode(&s.encode()), s);
    }
}

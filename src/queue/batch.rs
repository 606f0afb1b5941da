//! Batches: events read from the head of the queue into a request body
//! (peek), handed out (take) and put back (release), and the reader's
//! knowledge of delivery progress.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use crate::event::Timestamp;

use super::chunk::{Chunk, Pointer};
use super::ranges::RangeSet;
use super::{seq_of, Queue, QueueError};

/// Where a batch's events live: event `range` of chunk `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub seq: u64,
    pub range: Range<u32>,
}

/// Events read from the head of the queue, ready to send.
#[derive(Debug, Clone)]
pub struct Batch {
    pub pieces: Vec<Piece>,
    /// The JSON array of the events, the request body as is.
    pub body: bytes::Bytes,
    pub events: usize,
    /// Where each event's JSON is in `body`, so a refused batch can be split
    /// without going back to the queue.
    pub spans: Vec<Range<u32>>,
    /// Commit time of the oldest chunk the batch draws from.
    pub oldest: Timestamp,
}

impl Batch {
    /// The JSON of event `i`.
    pub fn event(&self, i: usize) -> &[u8] {
        let r = &self.spans[i];
        &self.body[r.start as usize..r.end as usize]
    }

    /// Splits into the first `at` events and the rest (both non-empty when
    /// `0 < at < events`), each with its own body.
    pub fn split_at(&self, at: usize) -> (Batch, Batch) {
        let mut first_pieces = Vec::new();
        let mut rest_pieces = Vec::new();
        let mut seen = 0usize;
        for p in &self.pieces {
            let n = p.range.len();
            if seen + n <= at {
                first_pieces.push(p.clone());
            } else if seen >= at {
                rest_pieces.push(p.clone());
            } else {
                let cut = p.range.start + (at - seen) as u32;
                first_pieces.push(Piece {
                    seq: p.seq,
                    range: p.range.start..cut,
                });
                rest_pieces.push(Piece {
                    seq: p.seq,
                    range: cut..p.range.end,
                });
            }
            seen += n;
        }
        let build = |pieces: Vec<Piece>, range: Range<usize>| {
            let mut body = Vec::with_capacity(self.body.len() / 2 + 16);
            let mut spans = Vec::with_capacity(range.len());
            body.push(b'[');
            for i in range.clone() {
                if body.len() > 1 {
                    body.push(b',');
                }
                let start = body.len() as u32;
                body.extend_from_slice(self.event(i));
                spans.push(start..body.len() as u32);
            }
            body.push(b']');
            Batch {
                pieces,
                body: body.into(),
                events: range.len(),
                spans,
                oldest: self.oldest,
            }
        };
        (
            build(first_pieces, 0..at),
            build(rest_pieces, at..self.events),
        )
    }
}

/// What the reader knows of delivery progress.
#[derive(Default)]
pub(super) struct ReadState {
    /// Acknowledged ranges of chunks not yet fully acknowledged.
    pub(super) acked: BTreeMap<u64, RangeSet>,
    /// Ranges handed out in batches and not yet acknowledged.
    pub(super) in_flight: BTreeMap<u64, RangeSet>,
    /// The chunk the reader looked at last, kept decoded.
    pub(super) cached: Option<(u64, Arc<Chunk>)>,
}

impl Queue {
    /// Reads up to `max_events` not yet handed out, oldest first, in a body of
    /// at most `max_bytes` (a single larger event still makes a batch of one),
    /// without handing them out: call [`Queue::take`] to do that.
    pub fn peek_batch(
        &self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Option<Batch>, QueueError> {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let mut body = Vec::with_capacity((256 << 10).min(max_bytes.saturating_add(16)));
        let mut spans = Vec::with_capacity(max_events.min(4096));
        let mut full = false;
        body.push(b'[');
        let mut pieces = Vec::new();
        let mut events = 0usize;
        let mut oldest = None;
        for item in self.chunks.iter() {
            if events >= max_events || full {
                break;
            }
            let (k, v) = item.map_err(|e| self.storage(e))?;
            let seq = seq_of(&k);
            let Some(ptr) = Pointer::decode(&v) else {
                self.quarantine(&mut read, seq, None, "unreadable pointer")?;
                continue;
            };
            let mut taken = read.acked.get(&seq).cloned().unwrap_or_default();
            if let Some(f) = read.in_flight.get(&seq) {
                for r in &f.0 {
                    taken.insert(r.clone());
                }
            }
            if taken.covers(&(0..ptr.count)) {
                continue;
            }
            let chunk = match &read.cached {
                Some((s, c)) if *s == seq => c.clone(),
                _ => match self.read_chunk(seq, &ptr) {
                    Ok(c) => {
                        let c = Arc::new(c);
                        read.cached = Some((seq, c.clone()));
                        c
                    }
                    Err(QueueError::Corrupt { what, .. }) => {
                        self.quarantine(&mut read, seq, Some(ptr), &what)?;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            let mut from = 0;
            while events < max_events && !full {
                let Some(gap) = taken.first_gap(from..chunk.count) else {
                    break;
                };
                let limit = gap.end.min(gap.start + (max_events - events) as u32);
                let mut end = gap.start;
                while end < limit {
                    let event = chunk.event(end);
                    if events > 0 && body.len() + 1 + event.len() + 1 > max_bytes {
                        full = true;
                        break;
                    }
                    if events > 0 {
                        body.push(b',');
                    }
                    let start = body.len() as u32;
                    body.extend_from_slice(event);
                    spans.push(start..body.len() as u32);
                    events += 1;
                    end += 1;
                }
                if end > gap.start {
                    pieces.push(Piece {
                        seq,
                        range: gap.start..end,
                    });
                    oldest.get_or_insert(chunk.committed_at);
                }
                from = end;
            }
        }
        if events == 0 {
            return Ok(None);
        }
        body.push(b']');
        Ok(Some(Batch {
            pieces,
            body: body.into(),
            events,
            spans,
            oldest: oldest.unwrap_or_else(Timestamp::now),
        }))
    }

    /// Marks the batch's events as handed out, so later batches skip them.
    pub fn take(&self, batch: &Batch) {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        for p in &batch.pieces {
            read.in_flight
                .entry(p.seq)
                .or_default()
                .insert(p.range.clone());
        }
    }

    /// Puts a batch's events back to be handed out again.
    pub fn release(&self, batch: &Batch) {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        for p in &batch.pieces {
            if let Some(set) = read.in_flight.get_mut(&p.seq) {
                set.remove(&p.range);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{contents, events};
    use super::*;

    #[test]
    fn commit_peek_take_ack_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), 8 << 20).unwrap();
        q.commit(&events(1000, "a"), b"src-a", b"1000").unwrap();
        assert_eq!(
            q.checkpoint(b"src-a").unwrap().as_deref(),
            Some(&b"1000"[..])
        );
        let b1 = q.peek_batch(600, usize::MAX).unwrap().unwrap();
        assert_eq!(b1.events, 600);
        assert!(
            b1.pieces.len() > 1,
            "600 events of ~700 bytes span several chunks"
        );
        q.take(&b1);
        let b2 = q.peek_batch(600, usize::MAX).unwrap().unwrap();
        assert_eq!(b2.events, 400);
        assert_eq!(contents(&b2)[0], "a-600");
        q.take(&b2);
        assert!(q.peek_batch(600, usize::MAX).unwrap().is_none());
        // Out-of-order acknowledgement.
        q.ack(&b2).unwrap();
        assert!(!q.is_empty());
        q.ack(&b1).unwrap();
        assert!(q.is_empty());
    }

    #[test]
    fn release_hands_events_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), 8 << 20).unwrap();
        q.commit(&events(5, "a"), b"src", b"5").unwrap();
        let b = q.peek_batch(5, usize::MAX).unwrap().unwrap();
        q.take(&b);
        assert!(q.peek_batch(5, usize::MAX).unwrap().is_none());
        q.release(&b);
        assert_eq!(q.peek_batch(5, usize::MAX).unwrap().unwrap().events, 5);
    }
}

//! Damage is quarantined, not fatal: a chunk whose bytes fail their
//! checksum, lie past the end of a truncated segment, or whose segment is
//! gone, and a pointer sled cannot decode, are set aside so that everything
//! else is delivered. Each costs one error in the log, one dead letter that
//! names the segment and offset (code `DAMAGED_CHUNK`, status 0: the server
//! never saw it), and the count of events lost; the lines they came from
//! are still in their files, which `replay` can send again under the same
//! event ids.
//!
//! Only damage is quarantined: an I/O error that may pass (too many open
//! files, a disk that answers EIO once) stays an error, and the chunk is
//! tried again.

use std::sync::atomic::Ordering;

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use tracing::error;

use super::batch::ReadState;
use super::chunk::Pointer;
use super::{DeadLetter, Queue, QueueError};
use crate::event::Timestamp;

/// The dead letters' code for a quarantined chunk.
pub const DAMAGED_CODE: &str = "DAMAGED_CHUNK";

impl Queue {
    /// Sets chunk `seq` aside: its pointer and progress go, a dead letter
    /// says where it was and why. `ptr` is None when the pointer itself
    /// could not be decoded. `read` is the reader's state, held by the
    /// caller.
    pub(super) fn quarantine(
        &self,
        read: &mut ReadState,
        seq: u64,
        ptr: Option<Pointer>,
        what: &str,
    ) -> Result<(), QueueError> {
        let acked: u64 = read
            .acked
            .get(&seq)
            .map(|set| {
                set.0
                    .iter()
                    .map(|r| u64::from(r.end.saturating_sub(r.start)))
                    .sum()
            })
            .unwrap_or(0);
        let lost = ptr.map_or(0, |p| u64::from(p.count).saturating_sub(acked));
        let place = match ptr {
            Some(p) => format!(
                "segment {:016}.seg, offset {}, {} bytes, {} events ({lost} not yet delivered)",
                p.segment, p.offset, p.len, p.count
            ),
            None => "its pointer in the index cannot be read".to_string(),
        };
        let message = format!(
            "queued chunk {seq} is damaged ({what}): {place}. Its events are lost from the \
             queue; the lines they came from are still in their files (`thoth-ingest replay` \
             sends them again under the same event ids)"
        );
        let id = self.db.generate_id().map_err(|e| self.storage(e))?;
        let record = DeadLetter {
            status: 0,
            code: DAMAGED_CODE.to_string(),
            message: message.clone(),
            request_id: String::new(),
            at: Timestamp::now().to_rfc3339(),
            event: String::new(),
        };
        let record = serde_json::to_vec(&record).unwrap_or_default();
        let key = id.to_be_bytes();
        let added = (key.len() + record.len()) as u64;
        let (evict, freed) = self.dead_to_evict(added)?;
        let result: Result<(), TransactionError<()>> = (&self.chunks, &self.acks, &self.dead)
            .transaction(|(chunks, acks, dead)| {
                for old in &evict {
                    dead.remove(old)?;
                }
                dead.insert(&key[..], record.as_slice())?;
                chunks.remove(&seq.to_be_bytes())?;
                acks.remove(&seq.to_be_bytes())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match result {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => return Err(self.storage(e)),
            Err(TransactionError::Abort(())) => unreachable!("the quarantine never aborts"),
        }
        self.dead_evicted(evict.len(), freed, added)?;
        read.acked.remove(&seq);
        read.in_flight.remove(&seq);
        if matches!(&read.cached, Some((s, _)) if *s == seq) {
            read.cached = None;
        }
        self.dead_events.fetch_add(lost, Ordering::Relaxed);
        self.damaged_chunks.fetch_add(1, Ordering::Relaxed);
        self.damaged_events.fetch_add(lost, Ordering::Relaxed);
        error!(chunk = seq, events_lost = lost, "{message}");
        let Some(ptr) = ptr else {
            return self.sync();
        };
        self.sub_queued(u64::from(ptr.len));
        // The pointer's removal is durable before the segment may go.
        self.sync()?;
        let mut segments = self.segments.lock().unwrap_or_else(|p| p.into_inner());
        let empty = match segments.live.get_mut(&ptr.segment) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n == 0 && ptr.segment != segments.current
            }
            None => false,
        };
        if empty {
            segments.retire(ptr.segment).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Chunks set aside as damaged since this process opened the queue.
    pub fn damaged_chunks(&self) -> u64 {
        self.damaged_chunks.load(Ordering::Relaxed)
    }

    /// Events lost with them.
    pub fn damaged_events(&self) -> u64 {
        self.damaged_events.load(Ordering::Relaxed)
    }

    /// Quarantines the chunks whose pointers [`Queue::open`] could not
    /// decode.
    pub(super) fn quarantine_unreadable_pointers(&self, seqs: &[u64]) -> Result<(), QueueError> {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        for &seq in seqs {
            self.quarantine(&mut read, seq, None, "unreadable pointer")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{contents, events};
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const CHUNKS: usize = 12;
    const PER_CHUNK: usize = 5;

    /// A queue of CHUNKS commits of PER_CHUNK events, closed; the path of
    /// its one segment.
    fn filled(dir: &std::path::Path) -> std::path::PathBuf {
        let q = Queue::open(dir, 8 << 20).unwrap();
        for c in 0..CHUNKS {
            q.commit(&events(PER_CHUNK, &format!("c{c}")), b"src", b"x")
                .unwrap();
        }
        q.close().unwrap();
        let mut segments: Vec<_> = std::fs::read_dir(dir.join("segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
            .collect();
        assert_eq!(segments.len(), 1, "{segments:?}");
        segments.pop().unwrap()
    }

    /// Delivers everything the queue holds; the contents delivered.
    fn drain(q: &Queue) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(b) = q.peek_batch(7, usize::MAX).unwrap() {
            q.take(&b);
            q.ack(&b).unwrap();
            out.extend(contents(&b));
        }
        out
    }

    fn check(q: &Queue, delivered: &[String], max_damaged: u64) {
        let unique: BTreeSet<&String> = delivered.iter().collect();
        assert_eq!(unique.len(), delivered.len(), "each event once");
        for d in delivered {
            let chunk: usize = d[1..d.find('-').unwrap()].parse().unwrap();
            assert!(chunk < CHUNKS, "{d}");
        }
        assert_eq!(
            delivered.len() as u64 + q.damaged_events(),
            (CHUNKS * PER_CHUNK) as u64,
            "delivered or counted as lost"
        );
        assert!(q.damaged_chunks() <= max_damaged);
        assert_eq!(q.damaged_events(), q.damaged_chunks() * PER_CHUNK as u64);
        let letters = q.dead_letter_list().unwrap();
        assert_eq!(letters.len() as u64, q.damaged_chunks());
        for (_, l) in letters {
            assert_eq!(l.code, DAMAGED_CODE);
            assert!(
                l.message.contains("segment") && l.message.contains("offset"),
                "{l:?}"
            );
        }
        assert!(q.is_empty());
        assert_eq!(q.pending_events(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn a_flipped_byte_costs_its_chunk_alone(at in 0.0f64..1.0, bit in 0u8..8) {
            let dir = tempfile::tempdir().unwrap();
            let segment = filled(dir.path());
            let mut bytes = std::fs::read(&segment).unwrap();
            let i = ((bytes.len() as f64 * at) as usize).min(bytes.len() - 1);
            bytes[i] ^= 1 << bit;
            std::fs::write(&segment, &bytes).unwrap();
            let q = Queue::open(dir.path(), 8 << 20).unwrap();
            let delivered = drain(&q);
            check(&q, &delivered, 1);
            prop_assert_eq!(q.damaged_chunks(), 1, "a flip anywhere in a chunk is seen");
        }

        #[test]
        fn a_cut_segment_costs_the_chunks_past_the_cut(at in 0.0f64..1.0) {
            let dir = tempfile::tempdir().unwrap();
            let segment = filled(dir.path());
            let len = std::fs::metadata(&segment).unwrap().len();
            let cut = (len as f64 * at) as u64;
            std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(cut).unwrap();
            let q = Queue::open(dir.path(), 8 << 20).unwrap();
            let delivered = drain(&q);
            check(&q, &delivered, CHUNKS as u64);
            // What the cut left whole is delivered: the first chunks.
            let whole: BTreeSet<usize> = delivered
                .iter()
                .map(|d| d[1..d.find('-').unwrap()].parse().unwrap())
                .collect();
            let kept = CHUNKS - q.damaged_chunks() as usize;
            prop_assert_eq!(whole, (0..kept).collect::<BTreeSet<_>>());
            prop_assert!(cut == len || q.damaged_chunks() >= 1);
        }
    }

    #[test]
    fn a_missing_segment_costs_its_chunks_and_delivery_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let segment = filled(dir.path());
        std::fs::remove_file(&segment).unwrap();
        let q = Queue::open(dir.path(), 8 << 20).unwrap();
        q.commit(&events(3, "new"), b"src", b"y").unwrap();
        let delivered = drain(&q);
        assert_eq!(delivered, vec!["new-0", "new-1", "new-2"]);
        assert_eq!(q.damaged_chunks(), CHUNKS as u64);
    }
}

//! What becomes of a batch the server answered: its events acknowledged
//! (ack) or moved to the dead letters (set aside), in one sled transaction,
//! and the chunks and segments left with nothing to deliver deleted.

use std::sync::atomic::Ordering;

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::event::Timestamp;

use super::batch::Batch;
use super::chunk::Pointer;
use super::dead_letter::{DeadLetter, DeadReason};
use super::{Queue, QueueError};

impl Queue {
    /// Records that the server accepted the batch; chunks whose every event is
    /// now accepted are deleted, and so are segments left with none.
    pub fn ack(&self, batch: &Batch) -> Result<(), QueueError> {
        self.finish(batch, None)
    }

    /// Moves the batch's events to the dead-letter tree with the server's
    /// reason, and takes them out of the queue, in one transaction.
    pub fn set_aside(&self, batch: &Batch, reason: &DeadReason) -> Result<(), QueueError> {
        let ids: Result<Vec<u64>, _> = (0..batch.events).map(|_| self.db.generate_id()).collect();
        let ids = ids.map_err(|e| self.storage(e))?;
        let at = Timestamp::now().to_rfc3339();
        let records: Vec<([u8; 8], Vec<u8>)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let record = DeadLetter {
                    status: reason.status,
                    code: reason.code.clone(),
                    message: reason.message.clone(),
                    request_id: reason.request_id.clone(),
                    at: at.clone(),
                    event: String::from_utf8_lossy(batch.event(i)).into_owned(),
                };
                (
                    id.to_be_bytes(),
                    serde_json::to_vec(&record).unwrap_or_default(),
                )
            })
            .collect();
        self.finish(batch, Some(&records))?;
        self.dead_events
            .fetch_add(batch.events as u64, Ordering::Relaxed);
        Ok(())
    }

    fn finish(&self, batch: &Batch, dead: Option<&[([u8; 8], Vec<u8>)]>) -> Result<(), QueueError> {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let mut updates: Vec<(u64, Option<Vec<u8>>)> = Vec::new();
        let mut finished: Vec<Pointer> = Vec::new();
        // Events of chunks still queued: a chunk dropped by the bound while
        // its batch was out was counted as dropped, not again as delivered.
        let mut still_queued = 0u64;
        for p in &batch.pieces {
            let Some(v) = self
                .chunks
                .get(p.seq.to_be_bytes())
                .map_err(|e| self.storage(e))?
            else {
                continue; // already gone
            };
            still_queued += u64::from(p.range.end.saturating_sub(p.range.start));
            let ptr =
                Pointer::decode(&v).ok_or_else(|| self.corrupt(p.seq, "unreadable pointer"))?;
            let set = read.acked.entry(p.seq).or_default();
            set.insert(p.range.clone());
            let done = set.covers(&(0..ptr.count));
            let encoded = (!done).then(|| set.encode());
            if done {
                read.acked.remove(&p.seq);
                read.in_flight.remove(&p.seq);
                if matches!(&read.cached, Some((s, _)) if *s == p.seq) {
                    read.cached = None;
                }
                finished.push(ptr);
            }
            updates.retain(|(s, _)| *s != p.seq);
            updates.push((p.seq, encoded));
        }
        let added: u64 = dead
            .unwrap_or_default()
            .iter()
            .map(|(k, r)| (k.len() + r.len()) as u64)
            .sum();
        let (evict, freed) = self.dead_to_evict(added)?;
        let result: Result<(), TransactionError<()>> = (&self.chunks, &self.acks, &self.dead)
            .transaction(|(chunks, acks, dead_tree)| {
                for key in &evict {
                    dead_tree.remove(key)?;
                }
                for (key, record) in dead.unwrap_or_default() {
                    dead_tree.insert(&key[..], record.as_slice())?;
                }
                for (seq, ranges) in &updates {
                    let key = seq.to_be_bytes();
                    match ranges {
                        Some(r) => {
                            acks.insert(&key, r.as_slice())?;
                        }
                        None => {
                            chunks.remove(&key)?;
                            acks.remove(&key)?;
                        }
                    }
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match result {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => return Err(self.storage(e)),
            Err(TransactionError::Abort(())) => unreachable!("the ack never aborts"),
        }
        self.dead_evicted(evict.len(), freed, added)?;
        drop(read);
        self.acked_events.fetch_add(still_queued, Ordering::Relaxed);
        let freed: u64 = finished.iter().map(|p| u64::from(p.len)).sum();
        self.sub_queued(freed);

        let mut segments = self.segments.lock().unwrap_or_else(|p| p.into_inner());
        let mut empty = Vec::new();
        for ptr in finished {
            if let Some(n) = segments.live.get_mut(&ptr.segment) {
                *n = n.saturating_sub(1);
                if *n == 0 && ptr.segment != segments.current {
                    empty.push(ptr.segment);
                }
            }
        }
        if !empty.is_empty() {
            // The pointers' removal must be durable before their bytes go, or a
            // power cut could bring back pointers to a deleted file.
            self.sync()?;
            for id in empty {
                segments.retire(id).map_err(|e| self.io(e))?;
            }
        }
        Ok(())
    }

    /// Events acknowledged since this process opened the queue.
    pub fn acked_events(&self) -> u64 {
        self.acked_events.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{contents, events};
    use super::*;

    #[test]
    fn unacknowledged_events_come_back_after_reopen_and_acked_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(dir.path(), 8 << 20).unwrap();
            q.commit(&events(10, "a"), b"src", b"10").unwrap();
            let b = q.peek_batch(4, usize::MAX).unwrap().unwrap();
            q.take(&b);
            q.ack(&b).unwrap();
            let b = q.peek_batch(3, usize::MAX).unwrap().unwrap();
            q.take(&b); // in flight at the "crash"
            q.close().unwrap();
        }
        let q = Queue::open(dir.path(), 8 << 20).unwrap();
        let b = q.peek_batch(100, usize::MAX).unwrap().unwrap();
        assert_eq!(
            contents(&b),
            (4..10).map(|i| format!("a-{i}")).collect::<Vec<_>>()
        );
        assert_eq!(q.checkpoint(b"src").unwrap().as_deref(), Some(&b"10"[..]));
    }
}

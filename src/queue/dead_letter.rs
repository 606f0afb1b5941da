//! Dead letters: the events the server refused, kept with its reason where
//! an operator can list, retry or purge them, under a byte bound that drops
//! the oldest and counts them.

use std::sync::atomic::Ordering;

use sled::IVec;

use crate::event::{EventBuf, Timestamp};

use super::{seq_of, Queue, QueueError};

/// Why the server refused an event, as the API's error body says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadReason {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub request_id: String,
}

/// An event the server refused, kept where an operator can see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    pub status: u16,
    pub code: String,
    pub message: String,
    #[serde(rename = "requestId")]
    pub request_id: String,
    /// When it was set aside.
    pub at: String,
    /// The event's JSON, as it was sent.
    pub event: String,
}

/// Checkpoint key of the count of dead letters dropped by the bound.
pub(super) const DEAD_DROPPED_KEY: &[u8] = b"dead-letter/dropped";

impl Queue {
    /// Bounds the dead letters' bytes: past it, the oldest are dropped and
    /// counted. Applied at once to what is already stored.
    pub fn set_dead_letter_bound(&self, max_bytes: u64) -> Result<(), QueueError> {
        self.dead_max_bytes.store(max_bytes, Ordering::Relaxed);
        let _read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let (evict, freed) = self.dead_to_evict(0)?;
        if evict.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for key in &evict {
            batch.remove(key);
        }
        self.dead.apply_batch(batch).map_err(|e| self.storage(e))?;
        self.dead_evicted(evict.len(), freed, 0)?;
        self.sync()
    }

    /// The oldest dead letters to drop so that `incoming` more bytes fit
    /// under the bound, and the bytes they free. The newest letter is kept
    /// even when it alone is over the bound.
    pub(super) fn dead_to_evict(&self, incoming: u64) -> Result<(Vec<IVec>, u64), QueueError> {
        let max = self.dead_max_bytes.load(Ordering::Relaxed);
        let over = self
            .dead_bytes
            .load(Ordering::Relaxed)
            .saturating_add(incoming)
            .saturating_sub(max);
        let mut evict = Vec::new();
        let mut freed = 0u64;
        if over == 0 {
            return Ok((evict, freed));
        }
        for item in self.dead.iter() {
            if freed >= over {
                break;
            }
            let (k, v) = item.map_err(|e| self.storage(e))?;
            freed = freed.saturating_add((k.len() + v.len()) as u64);
            evict.push(k);
        }
        Ok((evict, freed))
    }

    /// Accounts for dead letters dropped by the bound: the count survives a
    /// restart (bookkeeping a crash may lose without harm), and the operator
    /// hears about it at most once a minute.
    pub(super) fn dead_evicted(
        &self,
        dropped: usize,
        freed: u64,
        added: u64,
    ) -> Result<(), QueueError> {
        self.dead_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_add(added).saturating_sub(freed))
            })
            .ok();
        if dropped == 0 {
            return Ok(());
        }
        let total = self
            .dead_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed)
            .saturating_add(dropped as u64);
        self.put_checkpoint(DEAD_DROPPED_KEY, &total.to_le_bytes())?;
        let mut warned = self.dead_warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
            *warned = Some(std::time::Instant::now());
            tracing::warn!(
                dropped,
                dropped_total = total,
                max_bytes = self.dead_max_bytes.load(Ordering::Relaxed),
                "the dead letters are over queue.dead_letter_max_bytes: the oldest were deleted. \
                 Look at `thoth-ingest dead-letter list` for why the API refuses events"
            );
        }
        Ok(())
    }

    /// Dead letters dropped by `queue.dead_letter_max_bytes`, ever.
    pub fn dead_letters_dropped(&self) -> u64 {
        self.dead_dropped.load(Ordering::Relaxed)
    }

    /// Bytes of dead letters stored.
    pub fn dead_letter_bytes(&self) -> u64 {
        self.dead_bytes.load(Ordering::Relaxed)
    }

    /// Number of events set aside because the server refused them.
    pub fn dead_letters(&self) -> usize {
        self.dead.len()
    }

    /// Every dead letter, oldest first, with its key.
    pub fn dead_letter_list(&self) -> Result<Vec<(u64, DeadLetter)>, QueueError> {
        let mut out = Vec::new();
        for item in self.dead.iter() {
            let (k, v) = item.map_err(|e| self.storage(e))?;
            let seq = seq_of(&k);
            let record: DeadLetter = serde_json::from_slice(&v)
                .map_err(|e| self.corrupt(seq, format!("dead letter: {e}")))?;
            out.push((seq, record));
        }
        Ok(out)
    }

    /// Puts every dead letter back into the queue, under its original event
    /// id, and removes it from the dead-letter tree, atomically. Returns how
    /// many.
    pub fn dead_letter_retry(&self) -> Result<usize, QueueError> {
        let letters = self.dead_letter_list()?;
        if letters.is_empty() {
            return Ok(0);
        }
        let mut events = EventBuf::default();
        for (_, letter) in &letters {
            events.bytes.extend_from_slice(letter.event.as_bytes());
            events.ends.push(events.bytes.len() as u32);
        }
        let n = Timestamp::now().unix_micros.to_le_bytes();
        let keys: Vec<u64> = letters.iter().map(|(key, _)| *key).collect();
        // One transaction: a crash leaves them either dead or queued, never both.
        self.commit_removing_dead(
            &events,
            b"dead-letter/retried-at",
            &n,
            &keys,
            super::RoomWait::default(),
        )?;
        self.recount_dead_bytes()?;
        Ok(letters.len())
    }

    /// Deletes every dead letter. Returns how many.
    pub fn dead_letter_purge(&self) -> Result<usize, QueueError> {
        let n = self.dead.len();
        self.dead.clear().map_err(|e| self.storage(e))?;
        self.recount_dead_bytes()?;
        self.sync()?;
        Ok(n)
    }

    /// Counts the dead letters' bytes again from the tree, under the lock
    /// that setting one aside takes: a letter set aside while the others
    /// were retried or purged stays counted against the bound.
    fn recount_dead_bytes(&self) -> Result<(), QueueError> {
        let _read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let mut bytes = 0u64;
        for item in self.dead.iter() {
            let (k, v) = item.map_err(|e| self.storage(e))?;
            bytes = bytes.saturating_add((k.len() + v.len()) as u64);
        }
        self.dead_bytes.store(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Events set aside since this process opened the queue.
    pub fn dead_events(&self) -> u64 {
        self.dead_events.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::events;
    use super::*;

    fn reason() -> DeadReason {
        DeadReason {
            status: 400,
            code: "VALIDATION_ERROR".into(),
            message: "refused".into(),
            request_id: String::new(),
        }
    }

    #[test]
    fn dead_letters_are_bounded_oldest_dropped_counted_and_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let one_letter;
        {
            let q = Queue::open(dir.path(), 8 << 20).unwrap();
            q.commit(&events(12, "a"), b"src", b"1").unwrap();
            let first = q.peek_batch(1, usize::MAX).unwrap().unwrap();
            q.take(&first);
            q.set_aside(&first, &reason()).unwrap();
            one_letter = q.dead_letter_bytes();
            assert!(one_letter > 400, "{one_letter}");
            // Room for three and a half letters.
            q.set_dead_letter_bound(one_letter * 7 / 2).unwrap();
            for _ in 1..10 {
                let b = q.peek_batch(1, usize::MAX).unwrap().unwrap();
                q.take(&b);
                q.set_aside(&b, &reason()).unwrap();
            }
            let kept: Vec<String> = q
                .dead_letter_list()
                .unwrap()
                .iter()
                .map(|(_, l)| {
                    let e: serde_json::Value = serde_json::from_str(&l.event).unwrap();
                    e["content"].as_str().unwrap()[..3].to_string()
                })
                .collect();
            assert_eq!(kept, ["a-7", "a-8", "a-9"], "the newest are kept");
            assert_eq!(q.dead_letters_dropped(), 7);
            assert!(q.dead_letter_bytes() <= one_letter * 7 / 2);
            // The rest of the queue is untouched.
            assert_eq!(q.peek_batch(100, usize::MAX).unwrap().unwrap().events, 2);
        }
        // After a restart: bytes recounted, the drop count remembered, and a
        // lower bound applies at once to what is stored.
        let q = Queue::open(dir.path(), 8 << 20).unwrap();
        assert_eq!(q.dead_letters_dropped(), 7);
        assert_eq!(q.dead_letters(), 3);
        q.set_dead_letter_bound(one_letter + 1).unwrap();
        assert_eq!(q.dead_letters(), 1);
        assert_eq!(q.dead_letters_dropped(), 9);
        assert_eq!(q.dead_letter_bytes(), one_letter);
        assert_eq!(q.dead_letter_purge().unwrap(), 1);
        assert_eq!(q.dead_letter_bytes(), 0);
    }
}

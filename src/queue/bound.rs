//! The bound on the bytes waiting for delivery: a commit at the bound waits
//! for room or, with `drop_oldest`, drops the oldest undelivered chunks and
//! counts their events.

use std::sync::atomic::{AtomicBool, Ordering};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::chunk::Pointer;
use super::{seq_of, Queue, QueueError};

impl Queue {
    /// Bounds the bytes waiting for delivery. At the bound, a commit waits for
    /// room (sources pause, their logs are the buffer) or, with `drop_oldest`,
    /// the oldest undelivered chunks are dropped and counted.
    pub fn set_bound(&self, max_bytes: u64, drop_oldest: bool) {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
        self.drop_oldest.store(drop_oldest, Ordering::Relaxed);
    }

    /// Events dropped by `when_full = "drop_oldest"` since the queue was opened.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events.load(Ordering::Relaxed)
    }

    /// Waits until `incoming` more bytes fit under the bound (or drops the
    /// oldest chunks to make room, if so configured). Err(Closing) when the
    /// queue closes or the committer's own stop flag is raised meanwhile.
    pub(super) fn wait_for_room(
        &self,
        incoming: u64,
        wait: &mut Waiting<'_>,
    ) -> Result<(), QueueError> {
        let mut warned = false;
        loop {
            let max = self.max_bytes.load(Ordering::Relaxed);
            let queued = self.queued_bytes();
            // An empty queue always takes a commit, however large.
            if queued == 0 || queued.saturating_add(incoming) <= max {
                return Ok(());
            }
            if self.drop_oldest.load(Ordering::Relaxed) {
                self.drop_oldest_chunk()?;
                continue;
            }
            if self.is_closing() || wait.stopped() {
                return Err(QueueError::Closing);
            }
            wait.mark();
            if !warned {
                tracing::warn!(
                    queued_bytes = queued,
                    max_bytes = max,
                    "queue full: sources pause until deliveries make room"
                );
                warned = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn drop_oldest_chunk(&self) -> Result<(), QueueError> {
        // Held from the look at the oldest chunk to its removal, as `finish`
        // holds it: a delivery that completes the chunk in between would
        // otherwise have both count it out of its segment, and the segment
        // could be deleted while other chunks still point into it.
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let Some((k, v)) = self.chunks.first().map_err(|e| self.storage(e))? else {
            return Ok(());
        };
        let seq = seq_of(&k);
        let ptr = Pointer::decode(&v).ok_or_else(|| self.corrupt(seq, "unreadable pointer"))?;
        read.in_flight.remove(&seq);
        if matches!(&read.cached, Some((s, _)) if *s == seq) {
            read.cached = None;
        }
        let acked = read.acked.remove(&seq);
        let already: u32 = acked
            .map(|a| a.0.iter().map(|r| r.len() as u32).sum())
            .unwrap_or(0);
        let result: Result<(), TransactionError<()>> =
            (&self.chunks, &self.acks).transaction(|(chunks, acks)| {
                chunks.remove(&k)?;
                acks.remove(&k)?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        drop(read);
        match result {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => return Err(self.storage(e)),
            Err(TransactionError::Abort(())) => unreachable!("the drop never aborts"),
        }
        let dropped = u64::from(ptr.count.saturating_sub(already));
        self.dropped_events.fetch_add(dropped, Ordering::Relaxed);
        self.sub_queued(u64::from(ptr.len));
        tracing::warn!(
            events = dropped,
            "queue full: dropped the oldest undelivered events (when_full = drop_oldest)"
        );
        let mut segments = self.segments.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = segments.live.get_mut(&ptr.segment) {
            *n = n.saturating_sub(1);
            if *n == 0 && ptr.segment != segments.current {
                self.sync()?;
                segments.retire(ptr.segment).map_err(|e| self.io(e))?;
            }
        }
        Ok(())
    }

    pub(super) fn sub_queued(&self, n: u64) {
        let _ = self
            .queued_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(n))
            });
    }

    /// Bytes of events waiting for delivery (whole chunks, as stored).
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Relaxed)
    }
}

/// What a commit that must wait (for room under the bound, or for disk
/// space) watches: its committer's stop flag, which ends the wait, and a
/// mark it raises while it waits (a source paused by design, not stuck).
#[derive(Clone, Copy, Default)]
pub struct RoomWait<'a> {
    pub stop: Option<&'a AtomicBool>,
    pub waiting: Option<&'a AtomicBool>,
}

/// A [`RoomWait`] in use: lowers the mark it raised when the commit goes on.
pub(super) struct Waiting<'a> {
    wait: RoomWait<'a>,
    marked: bool,
}

impl<'a> Waiting<'a> {
    pub(super) fn new(wait: RoomWait<'a>) -> Self {
        Waiting {
            wait,
            marked: false,
        }
    }

    pub(super) fn stopped(&self) -> bool {
        self.wait.stop.is_some_and(|s| s.load(Ordering::SeqCst))
    }

    pub(super) fn mark(&mut self) {
        if let (false, Some(mark)) = (self.marked, self.wait.waiting) {
            mark.store(true, Ordering::Relaxed);
            self.marked = true;
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let (true, Some(mark)) = (self.marked, self.wait.waiting) {
            mark.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use super::super::tests::{contents, events};

    #[test]
    fn a_full_queue_drops_the_oldest_when_so_configured_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), 8 << 20).unwrap();
        q.set_bound(10_000, true);
        q.commit(&events(10, "a"), b"src", b"1").unwrap();
        q.commit(&events(10, "b"), b"src", b"2").unwrap();
        assert_eq!(q.dropped_events(), 10);
        let b = q.peek_batch(100, usize::MAX).unwrap().unwrap();
        assert_eq!(contents(&b)[0], "b-0", "only the newest events are left");
        assert_eq!(b.events, 10);
    }

    #[test]
    fn a_full_queue_makes_commits_wait_and_gives_up_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let q = Arc::new(Queue::open(dir.path(), 8 << 20).unwrap());
        q.set_bound(10_000, false);
        q.commit(&events(10, "a"), b"src", b"1").unwrap();
        let q2 = q.clone();
        let waiting = std::thread::spawn(move || q2.commit(&events(10, "b"), b"src", b"2"));
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!waiting.is_finished(), "the second commit waits for room");
        let b = q.peek_batch(100, usize::MAX).unwrap().unwrap();
        q.take(&b);
        q.ack(&b).unwrap();
        assert!(
            waiting.join().unwrap().is_ok(),
            "room made by a delivery lets it in"
        );
        assert_eq!(q.checkpoint(b"src").unwrap().as_deref(), Some(&b"2"[..]));
        let q3 = q.clone();
        let blocked = std::thread::spawn(move || q3.commit(&events(10, "c"), b"src", b"3"));
        std::thread::sleep(std::time::Duration::from_millis(200));
        q.start_closing();
        assert!(matches!(blocked.join().unwrap(), Err(QueueError::Closing)));
        assert_eq!(
            q.checkpoint(b"src").unwrap().as_deref(),
            Some(&b"2"[..]),
            "checkpoint did not move"
        );
        assert_eq!(q.dropped_events(), 0);
    }

    #[test]
    fn a_waiting_commit_is_marked_and_gives_up_on_its_own_stop_flag() {
        let dir = tempfile::tempdir().unwrap();
        let q = Arc::new(Queue::open(dir.path(), 8 << 20).unwrap());
        q.set_bound(10_000, false);
        q.commit(&events(10, "a"), b"src", b"1").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mark = Arc::new(AtomicBool::new(false));
        let waiting = {
            let (q, stop, mark) = (q.clone(), stop.clone(), mark.clone());
            std::thread::spawn(move || {
                let wait = RoomWait {
                    stop: Some(&stop),
                    waiting: Some(&mark),
                };
                q.commit_waiting(&events(10, "b"), b"src", b"2", wait)
            })
        };
        let start = std::time::Instant::now();
        while !mark.load(Ordering::Relaxed) {
            assert!(start.elapsed().as_secs() < 10, "the wait is not marked");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        stop.store(true, Ordering::SeqCst);
        assert!(matches!(waiting.join().unwrap(), Err(QueueError::Closing)));
        assert!(!mark.load(Ordering::Relaxed), "the mark outlived the wait");
        assert!(!q.is_closing(), "one committer's stop closes nothing else");
        assert_eq!(q.checkpoint(b"src").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(q.pending_events(), 10);
    }

    #[test]
    fn dropping_the_oldest_while_deliveries_ack_counts_every_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let q = Arc::new(Queue::open(dir.path(), 8 << 20).unwrap());
        q.set_bound(6_000, true);
        let commits = 1_500;
        let committer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..commits {
                    q.commit(&events(4, "a"), b"src", format!("{i}").as_bytes())
                        .unwrap();
                }
            })
        };
        while !committer.is_finished() {
            // Small batches: chunks are completed a piece at a time.
            if let Some(b) = q.peek_batch(3, usize::MAX).unwrap() {
                q.take(&b);
                q.ack(&b).unwrap();
            }
        }
        committer.join().unwrap();
        while let Some(b) = q.peek_batch(1_000, usize::MAX).unwrap() {
            q.take(&b);
            q.ack(&b).unwrap();
        }
        assert_eq!(
            q.acked_events() + q.dropped_events(),
            commits * 4,
            "every event delivered or dropped, none both"
        );
        assert_eq!(q.queued_bytes(), 0);
    }
}

//! The commit transaction: events cut into chunks, appended to the current
//! segment and fdatasynced, then their pointers and the source's checkpoint
//! written in one sled transaction (the commit point) and made durable.

use std::sync::atomic::Ordering;

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::event::{EventBuf, Timestamp};

use super::bound::{RoomWait, Waiting};
use super::chunk::{chunk_header, Pointer, CHUNK_TARGET_BYTES, HEADER_LEN, POINTER_LEN};
use super::disk::{free_bytes, DISK_RESERVE_BYTES};
use super::segments::{write_all_vectored_at, SEGMENT_MAX_BYTES};
use super::{Queue, QueueError};

impl Queue {
    /// Appends `events` and sets checkpoint `key` to `value` atomically, and
    /// returns once both are on disk.
    pub fn commit(&self, events: &EventBuf, key: &[u8], value: &[u8]) -> Result<(), QueueError> {
        self.commit_removing_dead(events, key, value, &[], RoomWait::default())
    }

    /// [`commit`](Self::commit) for a source: a wait for room or disk space
    /// ends (Err(Closing), nothing committed) when `wait.stop` is raised,
    /// and raises `wait.waiting` while it lasts.
    pub fn commit_waiting(
        &self,
        events: &EventBuf,
        key: &[u8],
        value: &[u8],
        wait: RoomWait<'_>,
    ) -> Result<(), QueueError> {
        self.commit_removing_dead(events, key, value, &[], wait)
    }

    /// [`commit`](Self::commit), also removing the dead letters `dead` in
    /// the same transaction (what `dead-letter retry` puts back).
    pub(super) fn commit_removing_dead(
        &self,
        events: &EventBuf,
        key: &[u8],
        value: &[u8],
        dead: &[u64],
        wait: RoomWait<'_>,
    ) -> Result<(), QueueError> {
        let mut wait = Waiting::new(wait);
        let committed_at = Timestamp::now();
        // Cut the events into chunks and build their headers outside the lock.
        let mut headers: Vec<Vec<u8>> = Vec::new();
        let mut data: Vec<&[u8]> = Vec::new();
        let mut first = 0;
        let mut base = 0u32;
        for i in 0..events.len() {
            let end = events.ends[i];
            if (end - base) as usize >= CHUNK_TARGET_BYTES || i + 1 == events.len() {
                headers.push(chunk_header(events, first..i + 1));
                data.push(&events.bytes[base as usize..end as usize]);
                first = i + 1;
                base = end;
            }
        }
        // (offset within this commit, length, event count) of each chunk.
        let mut spans: Vec<(u64, u32, u32)> = Vec::with_capacity(headers.len());
        let mut total = 0u64;
        for (h, d) in headers.iter().zip(&data) {
            let len = (h.len() + d.len()) as u32;
            spans.push((total, len, ((h.len() - HEADER_LEN) / 4) as u32));
            total += u64::from(len);
        }
        self.wait_for_room(total, &mut wait)?;
        let mut warned = false;
        // The segment lock is not held while the disk is full, so deliveries
        // (and their acknowledgements, which free space) go on meanwhile.
        let (mut segments, segment, offset) = loop {
            let free = free_bytes(&self.dir);
            let short = free.is_some_and(|f| f < DISK_RESERVE_BYTES.saturating_add(total));
            let mut segments = self.segments.lock().unwrap_or_else(|p| p.into_inner());
            let old = segments.current;
            let delivered = segments.live.get(&old).copied().unwrap_or(0) == 0;
            // On a nearly full disk a segment whose chunks are all delivered
            // is started again from its first byte: rewriting its blocks
            // takes no new space, so commits go on while deliveries do.
            if segments.current_len >= SEGMENT_MAX_BYTES
                || (short && delivered && segments.current_len > 0)
            {
                if delivered {
                    // Its pointers' removal must be durable before its bytes go, or
                    // a power cut could bring back pointers into a reused file.
                    self.sync()?;
                    segments.retire(old).map_err(|e| self.io(e))?;
                }
                segments.start_new(old + 1).map_err(|e| self.io(e))?;
            }
            let segment = segments.current;
            let offset = segments.current_len;
            // Only what grows the file needs new blocks, and then sled's log
            // keeps its reserve; a commit written over blocks the segment
            // has needs room for its sled records alone (half the reserve
            // stays for the acknowledgements).
            let on_disk = segments.files[&segment].metadata().map_or(0, |m| m.len());
            let grows = offset.saturating_add(total).saturating_sub(on_disk);
            let needed = if grows == 0 {
                DISK_RESERVE_BYTES / 2
            } else {
                DISK_RESERVE_BYTES.saturating_add(grows)
            };
            if free.is_some_and(|f| f < needed) {
                drop(segments);
                self.pause_on_full_disk(&mut warned, free, &mut wait)?;
                continue;
            }
            if total > 0 {
                let slices: Vec<std::io::IoSlice<'_>> = headers
                    .iter()
                    .zip(&data)
                    .flat_map(|(h, d)| [std::io::IoSlice::new(h), std::io::IoSlice::new(d)])
                    .collect();
                let file = &segments.files[&segment];
                let written = write_all_vectored_at(file, &mut slices.clone(), offset)
                    .and_then(|()| file.sync_data());
                match written {
                    Ok(()) => {}
                    // Another writer took the space since the check: the bytes
                    // past the segment's end are rewritten on the next try.
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                        drop(segments);
                        self.pause_on_full_disk(&mut warned, free, &mut wait)?;
                        continue;
                    }
                    Err(e) => return Err(self.io(e)),
                }
            }
            break (segments, segment, offset);
        };
        let first_seq = self.next_seq.load(Ordering::SeqCst);
        let pointers: Vec<[u8; POINTER_LEN]> = spans
            .iter()
            .map(|&(at, len, count)| {
                Pointer {
                    segment,
                    offset: offset + at,
                    len,
                    count,
                    committed_at,
                }
                .encode()
            })
            .collect();
        let insert = |chunks: &sled::transaction::TransactionalTree,
                      checkpoints: &sled::transaction::TransactionalTree| {
            for (i, p) in pointers.iter().enumerate() {
                chunks.insert(&(first_seq + i as u64).to_be_bytes(), &p[..])?;
            }
            checkpoints.insert(key, value)?;
            Ok::<(), ConflictableTransactionError<()>>(())
        };
        // Counted before the chunks can be seen: a delivery may take, send and
        // acknowledge them before this commit returns, and its subtraction
        // must find them counted (a count left too high would keep sources
        // waiting for room that is there).
        self.queued_bytes.fetch_add(total, Ordering::Relaxed);
        let result: Result<(), TransactionError<()>> = if dead.is_empty() {
            (&self.chunks, &self.checkpoints)
                .transaction(|(chunks, checkpoints)| insert(chunks, checkpoints))
        } else {
            (&self.chunks, &self.checkpoints, &self.dead).transaction(
                |(chunks, checkpoints, dead_tree)| {
                    insert(chunks, checkpoints)?;
                    for seq in dead {
                        dead_tree.remove(&seq.to_be_bytes())?;
                    }
                    Ok(())
                },
            )
        };
        match result {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => {
                self.sub_queued(total);
                return Err(self.storage(e));
            }
            Err(TransactionError::Abort(())) => unreachable!("the commit never aborts"),
        }
        self.sync()?;
        segments.current_len += total;
        if !spans.is_empty() {
            *segments.live.entry(segment).or_default() += spans.len() as u64;
        }
        self.next_seq
            .store(first_seq + spans.len() as u64, Ordering::SeqCst);
        drop(segments);
        self.committed_events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        self.appended.notify_one();
        Ok(())
    }

    /// Events committed since this process opened the queue.
    pub fn committed_events(&self) -> u64 {
        self.committed_events.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{contents, events};
    use super::*;

    #[test]
    fn sequence_continues_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(dir.path(), 8 << 20).unwrap();
            q.commit(&events(3, "a"), b"src", b"1").unwrap();
        }
        let q = Queue::open(dir.path(), 8 << 20).unwrap();
        q.commit(&events(3, "b"), b"src", b"2").unwrap();
        let b = q.peek_batch(10, usize::MAX).unwrap().unwrap();
        assert_eq!(contents(&b), ["a-0", "a-1", "a-2", "b-0", "b-1", "b-2"]);
    }
}

//! The durable queue: the only state thoth-ingest keeps on disk.
//!
//! It holds the serialized events waiting for delivery, each source's
//! checkpoint, and the events the server refused. A commit writes a source's
//! events and its new checkpoint in one sled transaction and then fsyncs
//! (design invariants 1 and 6). Events are stored as *chunks* (one sled value of
//! up to [`CHUNK_TARGET_BYTES`] holding many events), because sled's cost is per
//! key: a key per event would make the queue the bottleneck of the daemon.
//!
//! Delivery progress is kept per chunk as the set of acknowledged event ranges,
//! so batches may complete in any order. Acknowledgements are written but not
//! fsynced: losing one after a power cut only re-sends events under the ids
//! they had, which the server de-duplicates.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::IVec;

use crate::event::Timestamp;
use crate::parse::EventBuf;

/// Target size of one chunk value. sled 0.34 writes values larger than a
/// quarter of its 512 KiB segment as separate blob files that it never fsyncs,
/// so chunks stay well below that.
pub const CHUNK_TARGET_BYTES: usize = 64 << 10;
/// Values above this go to sled's blob files (see [`CHUNK_TARGET_BYTES`]).
const SLED_BLOB_THRESHOLD: usize = 100 << 10;
const CHUNK_FORMAT: u8 = 1;
const HEADER_LEN: usize = 1 + 8 + 4;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue storage in {dir}: {source}")]
    Storage { dir: PathBuf, source: sled::Error },
    #[error("queue storage in {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the state directory {dir} is in use by another thoth-ingest process \
         (stop it first, or give this one its own [state] dir)"
    )]
    Locked { dir: PathBuf },
    #[error("queue storage in {dir}: chunk {seq} is damaged ({what})")]
    Corrupt {
        dir: PathBuf,
        seq: u64,
        what: &'static str,
    },
}

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
    pub body: Vec<u8>,
    pub events: usize,
    /// Commit time of the oldest chunk the batch draws from.
    pub oldest: Timestamp,
}

/// A set of disjoint, sorted, non-adjacent ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RangeSet(Vec<Range<u32>>);

impl RangeSet {
    fn insert(&mut self, r: Range<u32>) {
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

    fn covers(&self, r: &Range<u32>) -> bool {
        self.0.iter().any(|c| c.start <= r.start && r.end <= c.end)
    }

    /// The first range not in the set within `within`, if any.
    fn first_gap(&self, within: Range<u32>) -> Option<Range<u32>> {
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

    fn encode(&self) -> Vec<u8> {
        self.0
            .iter()
            .flat_map(|r| r.start.to_le_bytes().into_iter().chain(r.end.to_le_bytes()))
            .collect()
    }

    fn decode(bytes: &[u8]) -> RangeSet {
        let mut set = RangeSet::default();
        for pair in bytes.chunks_exact(8) {
            let start = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]);
            let end = u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]);
            set.insert(start..end);
        }
        set
    }
}

/// A decoded view of one chunk value.
struct Chunk {
    value: IVec,
    count: u32,
    committed_at: Timestamp,
}

impl Chunk {
    fn decode(seq: u64, value: IVec, dir: &Path) -> Result<Chunk, QueueError> {
        let corrupt = |what| QueueError::Corrupt {
            dir: dir.to_path_buf(),
            seq,
            what,
        };
        if value.len() < HEADER_LEN || value[0] != CHUNK_FORMAT {
            return Err(corrupt("bad header"));
        }
        let committed_at =
            i64::from_le_bytes(value[1..9].try_into().map_err(|_| corrupt("bad header"))?);
        let count = u32::from_le_bytes(value[9..13].try_into().map_err(|_| corrupt("bad header"))?);
        let table_end = HEADER_LEN + count as usize * 4;
        if value.len() < table_end {
            return Err(corrupt("short offset table"));
        }
        let chunk = Chunk {
            value,
            count,
            committed_at: Timestamp::from_unix_micros(committed_at),
        };
        if count > 0 && chunk.end(count - 1) > chunk.value.len() - table_end {
            return Err(corrupt("offsets past the end"));
        }
        Ok(chunk)
    }

    fn end(&self, i: u32) -> usize {
        let at = HEADER_LEN + i as usize * 4;
        u32::from_le_bytes([
            self.value[at],
            self.value[at + 1],
            self.value[at + 2],
            self.value[at + 3],
        ]) as usize
    }

    fn event(&self, i: u32) -> &[u8] {
        let data = &self.value[HEADER_LEN + self.count as usize * 4..];
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        &data[start..self.end(i)]
    }
}

fn encode_chunk(events: &EventBuf, range: Range<usize>, committed_at: Timestamp) -> Vec<u8> {
    let base = if range.start == 0 {
        0
    } else {
        events.ends[range.start - 1]
    };
    let data_end = events.ends[range.end - 1];
    let mut v = Vec::with_capacity(HEADER_LEN + range.len() * 4 + (data_end - base) as usize);
    v.push(CHUNK_FORMAT);
    v.extend_from_slice(&committed_at.unix_micros.to_le_bytes());
    v.extend_from_slice(&(range.len() as u32).to_le_bytes());
    for &end in &events.ends[range.clone()] {
        v.extend_from_slice(&(end - base).to_le_bytes());
    }
    v.extend_from_slice(&events.bytes[base as usize..data_end as usize]);
    v
}

/// What the reader knows of delivery progress.
#[derive(Default)]
struct ReadState {
    /// Acknowledged ranges of chunks not yet fully acknowledged.
    acked: BTreeMap<u64, RangeSet>,
    /// Ranges handed out in batches and not yet acknowledged.
    in_flight: BTreeMap<u64, RangeSet>,
    /// The chunk the reader looked at last, kept decoded.
    cached: Option<(u64, Arc<Chunk>)>,
}

pub struct Queue {
    dir: PathBuf,
    db: sled::Db,
    chunks: sled::Tree,
    acks: sled::Tree,
    checkpoints: sled::Tree,
    dead: sled::Tree,
    /// sled's log file, fsynced after each commit (sled's own flush does not).
    data_file: File,
    next_seq: AtomicU64,
    /// Serialises commits so that sequence numbers land in order: the reader
    /// must never see chunk n+1 before chunk n.
    commit_lock: Mutex<()>,
    read: Mutex<ReadState>,
    /// Wakes the flusher when a commit lands.
    pub appended: tokio::sync::Notify,
    committed_events: AtomicU64,
    acked_events: AtomicU64,
}

impl Queue {
    /// Opens (or creates) the queue in `dir`, with at most `cache_bytes` of
    /// sled page cache.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Queue, QueueError> {
        let io = |source| QueueError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let storage = |source| QueueError::Storage {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let db = sled::Config::new()
            .path(dir.join("queue"))
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| match e {
                // sled reports its flock failure as a generic I/O error.
                sled::Error::Io(ref err) if err.to_string().contains("could not acquire lock") => {
                    QueueError::Locked {
                        dir: dir.to_path_buf(),
                    }
                }
                other => storage(other),
            })?;
        let data_file = File::open(dir.join("queue").join("db")).map_err(io)?;
        let chunks = db.open_tree("chunks").map_err(storage)?;
        let acks = db.open_tree("acks").map_err(storage)?;
        let checkpoints = db.open_tree("checkpoints").map_err(storage)?;
        let dead = db.open_tree("dead").map_err(storage)?;
        let next_seq = match chunks.last().map_err(storage)? {
            Some((k, _)) => seq_of(&k) + 1,
            None => 0,
        };
        let mut read = ReadState::default();
        for item in acks.iter() {
            let (k, v) = item.map_err(storage)?;
            read.acked.insert(seq_of(&k), RangeSet::decode(&v));
        }
        Ok(Queue {
            dir: dir.to_path_buf(),
            db,
            chunks,
            acks,
            checkpoints,
            dead,
            data_file,
            next_seq: AtomicU64::new(next_seq),
            commit_lock: Mutex::new(()),
            read: Mutex::new(read),
            appended: tokio::sync::Notify::new(),
            committed_events: AtomicU64::new(0),
            acked_events: AtomicU64::new(0),
        })
    }

    fn storage(&self, source: sled::Error) -> QueueError {
        QueueError::Storage {
            dir: self.dir.clone(),
            source,
        }
    }

    /// The stored checkpoint of a source stream.
    pub fn checkpoint(&self, key: &[u8]) -> Result<Option<IVec>, QueueError> {
        self.checkpoints.get(key).map_err(|e| self.storage(e))
    }

    /// All checkpoints, for `status`.
    pub fn checkpoints(&self) -> Result<Vec<(IVec, IVec)>, QueueError> {
        self.checkpoints
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| self.storage(e))
    }

    /// Appends `events` and sets checkpoint `key` to `value` in one transaction,
    /// and returns once both are on disk.
    pub fn commit(&self, events: &EventBuf, key: &[u8], value: &[u8]) -> Result<(), QueueError> {
        let now = Timestamp::now();
        let mut values = Vec::new();
        let mut start = 0;
        let mut base = 0u32;
        for i in 0..events.len() {
            let end = events.ends[i];
            if (end - base) as usize >= CHUNK_TARGET_BYTES || i + 1 == events.len() {
                values.push(encode_chunk(events, start..i + 1, now));
                start = i + 1;
                base = end;
            }
        }
        let any_blob = values.iter().any(|v| v.len() > SLED_BLOB_THRESHOLD);
        {
            let _order = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
            let first_seq = self.next_seq.load(Ordering::SeqCst);
            let result: Result<(), TransactionError<()>> = (&self.chunks, &self.checkpoints)
                .transaction(|(chunks, checkpoints)| {
                    for (i, v) in values.iter().enumerate() {
                        chunks.insert(&(first_seq + i as u64).to_be_bytes(), v.as_slice())?;
                    }
                    checkpoints.insert(key, value)?;
                    Ok::<(), ConflictableTransactionError<()>>(())
                });
            match result {
                Ok(()) => {}
                Err(TransactionError::Storage(e)) => return Err(self.storage(e)),
                Err(TransactionError::Abort(())) => unreachable!("the commit never aborts"),
            }
            self.next_seq
                .store(first_seq + values.len() as u64, Ordering::SeqCst);
        }
        self.sync(any_blob)?;
        self.committed_events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        self.appended.notify_one();
        Ok(())
    }

    /// Makes everything written so far durable: sled's flush, then an fsync of
    /// its log file (sled 0.34 only calls `sync_file_range`), and of its blob
    /// files when a value was large enough to become one.
    pub fn sync(&self, blobs_too: bool) -> Result<(), QueueError> {
        let io = |source| QueueError::Io {
            dir: self.dir.clone(),
            source,
        };
        self.db.flush().map_err(|e| self.storage(e))?;
        self.data_file.sync_data().map_err(io)?;
        if blobs_too {
            let blob_dir = self.dir.join("queue").join("blobs");
            for entry in std::fs::read_dir(&blob_dir).map_err(io)? {
                let path = entry.map_err(io)?.path();
                match File::open(&path) {
                    Ok(f) => f.sync_all().map_err(io)?,
                    // sled removes blobs that are no longer referenced.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(e)),
                }
            }
            File::open(&blob_dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }

    /// Reads up to `max_events` not yet handed out, oldest first, without
    /// handing them out: call [`Queue::take`] to do that.
    pub fn peek_batch(&self, max_events: usize) -> Result<Option<Batch>, QueueError> {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let mut body = Vec::with_capacity(64 << 10);
        body.push(b'[');
        let mut pieces = Vec::new();
        let mut events = 0usize;
        let mut oldest = None;
        for item in self.chunks.iter() {
            if events >= max_events {
                break;
            }
            let (k, v) = item.map_err(|e| self.storage(e))?;
            let seq = seq_of(&k);
            let chunk = match &read.cached {
                Some((s, c)) if *s == seq => c.clone(),
                _ => {
                    let c = Arc::new(Chunk::decode(seq, v, &self.dir)?);
                    read.cached = Some((seq, c.clone()));
                    c
                }
            };
            let mut taken = RangeSet::default();
            if let Some(a) = read.acked.get(&seq) {
                taken.0.extend(a.0.iter().cloned());
            }
            if let Some(f) = read.in_flight.get(&seq) {
                for r in &f.0 {
                    taken.insert(r.clone());
                }
            }
            let mut from = 0;
            while events < max_events {
                let Some(gap) = taken.first_gap(from..chunk.count) else {
                    break;
                };
                let end = gap.end.min(gap.start + (max_events - events) as u32);
                for i in gap.start..end {
                    if events > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(chunk.event(i));
                    events += 1;
                }
                pieces.push(Piece {
                    seq,
                    range: gap.start..end,
                });
                oldest.get_or_insert(chunk.committed_at);
                from = end;
            }
        }
        if events == 0 {
            return Ok(None);
        }
        body.push(b']');
        Ok(Some(Batch {
            pieces,
            body,
            events,
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
                let kept: Vec<_> = set.0.iter().filter(|r| **r != p.range).cloned().collect();
                set.0 = kept;
            }
        }
    }

    /// Records that the server accepted the batch; chunks whose every event is
    /// now accepted are deleted.
    pub fn ack(&self, batch: &Batch) -> Result<(), QueueError> {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let mut updates: Vec<(u64, Option<Vec<u8>>)> = Vec::new();
        for p in &batch.pieces {
            let count = match &read.cached {
                Some((s, c)) if *s == p.seq => c.count,
                _ => match self
                    .chunks
                    .get(p.seq.to_be_bytes())
                    .map_err(|e| self.storage(e))?
                {
                    Some(v) => Chunk::decode(p.seq, v, &self.dir)?.count,
                    None => continue, // already gone
                },
            };
            let set = read.acked.entry(p.seq).or_default();
            set.insert(p.range.clone());
            let done = set.covers(&(0..count));
            let encoded = (!done).then(|| set.encode());
            if done {
                read.acked.remove(&p.seq);
                read.in_flight.remove(&p.seq);
                if matches!(&read.cached, Some((s, _)) if *s == p.seq) {
                    read.cached = None;
                }
            }
            updates.retain(|(s, _)| *s != p.seq);
            updates.push((p.seq, encoded));
        }
        let result: Result<(), TransactionError<()>> =
            (&self.chunks, &self.acks).transaction(|(chunks, acks)| {
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
        self.acked_events
            .fetch_add(batch.events as u64, Ordering::Relaxed);
        Ok(())
    }

    /// True when no event waits for delivery.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Events committed since this process opened the queue.
    pub fn committed_events(&self) -> u64 {
        self.committed_events.load(Ordering::Relaxed)
    }

    /// Events acknowledged since this process opened the queue.
    pub fn acked_events(&self) -> u64 {
        self.acked_events.load(Ordering::Relaxed)
    }

    /// Number of events set aside because the server refused them.
    pub fn dead_letters(&self) -> usize {
        self.dead.len()
    }

    /// Flushes sled and fsyncs, for a clean shutdown.
    pub fn close(&self) -> Result<(), QueueError> {
        self.sync(false)
    }
}

fn seq_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[8 - n..].copy_from_slice(&key[key.len() - n..]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EnforcementMode, EventType};
    use crate::parse::{EventContext, Record};

    fn events(n: usize, tag: &str) -> EventBuf {
        let ctx = EventContext {
            tenant_id: "t".into(),
            user_id: "u".into(),
            agent_id: None,
            session_id: "s".into(),
            enforcement_mode: EnforcementMode::Observe,
            ttl_secs: 1,
            content_max_bytes: 4096,
        };
        let mut buf = EventBuf::default();
        for i in 0..n {
            let rec = Record {
                stream: tag,
                position: i as u64,
                line: b"",
                read_at: Timestamp::from_unix_micros(0),
            };
            let mut e = ctx.base_event(&rec, 0, EventType::ToolCallPost, rec.read_at);
            let content = format!("{tag}-{i}-{}", "x".repeat(400));
            e.content = content.as_str().into();
            buf.push(&e);
        }
        buf
    }

    fn contents(batch: &Batch) -> Vec<String> {
        let v: Vec<serde_json::Value> = serde_json::from_slice(&batch.body).unwrap();
        v.iter()
            .map(|e| {
                e["content"]
                    .as_str()
                    .unwrap()
                    .split('-')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join("-")
            })
            .collect()
    }

    #[test]
    fn commit_peek_take_ack_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), 8 << 20).unwrap();
        q.commit(&events(300, "a"), b"src-a", b"300").unwrap();
        assert_eq!(
            q.checkpoint(b"src-a").unwrap().as_deref(),
            Some(&b"300"[..])
        );
        let b1 = q.peek_batch(200).unwrap().unwrap();
        assert_eq!(b1.events, 200);
        assert!(
            b1.pieces.len() > 1,
            "300 events of ~700 bytes span several chunks"
        );
        q.take(&b1);
        let b2 = q.peek_batch(200).unwrap().unwrap();
        assert_eq!(b2.events, 100);
        assert_eq!(contents(&b2)[0], "a-200");
        q.take(&b2);
        assert!(q.peek_batch(200).unwrap().is_none());
        // Out-of-order acknowledgement.
        q.ack(&b2).unwrap();
        assert!(!q.is_empty());
        q.ack(&b1).unwrap();
        assert!(q.is_empty());
    }

    #[test]
    fn unacknowledged_events_come_back_after_reopen_and_acked_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(dir.path(), 8 << 20).unwrap();
            q.commit(&events(10, "a"), b"src", b"10").unwrap();
            let b = q.peek_batch(4).unwrap().unwrap();
            q.take(&b);
            q.ack(&b).unwrap();
            let b = q.peek_batch(3).unwrap().unwrap();
            q.take(&b); // in flight at the "crash"
            q.close().unwrap();
        }
        let q = Queue::open(dir.path(), 8 << 20).unwrap();
        let b = q.peek_batch(100).unwrap().unwrap();
        assert_eq!(
            contents(&b),
            (4..10).map(|i| format!("a-{i}")).collect::<Vec<_>>()
        );
        assert_eq!(q.checkpoint(b"src").unwrap().as_deref(), Some(&b"10"[..]));
    }

    #[test]
    fn release_hands_events_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), 8 << 20).unwrap();
        q.commit(&events(5, "a"), b"src", b"5").unwrap();
        let b = q.peek_batch(5).unwrap().unwrap();
        q.take(&b);
        assert!(q.peek_batch(5).unwrap().is_none());
        q.release(&b);
        assert_eq!(q.peek_batch(5).unwrap().unwrap().events, 5);
    }

    #[test]
    fn sequence_continues_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(dir.path(), 8 << 20).unwrap();
            q.commit(&events(3, "a"), b"src", b"1").unwrap();
        }
        let q = Queue::open(dir.path(), 8 << 20).unwrap();
        q.commit(&events(3, "b"), b"src", b"2").unwrap();
        let b = q.peek_batch(10).unwrap().unwrap();
        assert_eq!(contents(&b), ["a-0", "a-1", "a-2", "b-0", "b-1", "b-2"]);
    }

    #[test]
    fn second_open_of_the_same_dir_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _q = Queue::open(dir.path(), 8 << 20).unwrap();
        let e = Queue::open(dir.path(), 8 << 20).err().expect("locked");
        assert!(e.to_string().contains("in use by another"), "{e}");
    }

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
        assert_eq!(RangeSet::decode(&s.encode()), s);
    }
}

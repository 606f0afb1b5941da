//! The durable queue: the only state thoth-ingest keeps on disk.
//!
//! It holds the serialized events waiting for delivery, each source's
//! checkpoint, and the events the server refused. Event bytes live in
//! append-only *segment files*; sled holds everything else: a pointer per
//! chunk of events (`chunks`: seq -> segment, offset, length), the checkpoints,
//! delivery progress and dead letters.
//!
//! Why not the event bytes in sled itself: sled 0.34 keeps up to 16 values per
//! leaf and rewrites whole leaves on consolidation, so large values cost it
//! several times their size in writes, and any leaf over a quarter of a
//! segment goes to a blob file that sled never fsyncs. Measured on 1M events
//! it dominated the daemon's CPU. Here each event byte is written once.
//!
//! A commit appends the chunk to the current segment and fdatasyncs it, then
//! writes the chunk's pointer and the source's checkpoint in one sled
//! transaction, flushes sled and fsyncs its file (design invariants 1 and 6).
//! The sled transaction is the commit point: bytes appended to a segment by a
//! commit that never reached sled are never referenced, and each start opens
//! a fresh segment, so such a tail is harmless.
//!
//! Delivery progress is kept per chunk as the set of acknowledged event ranges,
//! so batches may complete in any order. Acknowledgements are written but not
//! fsynced: losing one after a power cut only re-sends events under the ids
//! they had, which the server de-duplicates.
//!
//! By job: `chunk.rs` is the chunk format, `segments.rs` the segment files,
//! `ranges.rs` the sets of event ranges, `disk.rs` a full disk, `bound.rs`
//! the byte bound and drop-oldest, `dead_letter.rs` the dead letters,
//! `batch.rs` batches (peek, take, release), `delivery.rs` what an answered
//! batch does (ack, set aside), `commit.rs` the commit transaction,
//! `published.rs` files published for other processes (replay). This
//! file keeps the [`Queue`], its opening, its error type and checkpoints.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sled::IVec;

mod batch;
mod bound;
mod chunk;
mod commit;
mod damage;
mod dead_letter;
mod delivery;
mod disk;
pub mod published;
mod ranges;
mod segments;

pub use batch::{Batch, Piece};
pub use bound::RoomWait;
pub use chunk::CHUNK_TARGET_BYTES;
pub use damage::DAMAGED_CODE;
pub use dead_letter::{DeadLetter, DeadReason};
pub use disk::{is_disk_full, DISK_RESERVE_BYTES};

use batch::ReadState;
use chunk::Pointer;
use dead_letter::DEAD_DROPPED_KEY;
use ranges::RangeSet;
use segments::{Segments, SEGMENT_POOL};

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
        what: String,
    },
    /// The queue is shutting down; the commit did not happen (its source's
    /// checkpoint did not move, so nothing is lost).
    #[error("the queue is closing")]
    Closing,
}

pub struct Queue {
    dir: PathBuf,
    db: sled::Db,
    /// seq -> [`Pointer`] of each chunk not yet fully acknowledged.
    chunks: sled::Tree,
    acks: sled::Tree,
    checkpoints: sled::Tree,
    dead: sled::Tree,
    /// sled's log file, fsynced after each commit (sled's own flush does not).
    sled_file: File,
    /// Appends go through this lock, which also keeps sequence numbers in
    /// commit order: the reader must never see chunk n+1 before chunk n.
    segments: Mutex<Segments>,
    next_seq: AtomicU64,
    read: Mutex<ReadState>,
    /// Wakes the flusher when a commit lands.
    pub appended: tokio::sync::Notify,
    /// Events in the chunks found at open (partly acknowledged chunks
    /// count whole): with the counters below, the backlog.
    events_at_open: u64,
    committed_events: AtomicU64,
    acked_events: AtomicU64,
    dead_events: AtomicU64,
    dropped_events: AtomicU64,
    /// Bound on `queued_bytes`, and what to do at it.
    max_bytes: AtomicU64,
    drop_oldest: std::sync::atomic::AtomicBool,
    closing: std::sync::atomic::AtomicBool,
    /// Bytes of chunks not yet fully acknowledged.
    queued_bytes: AtomicU64,
    /// Bytes of dead letters (keys and records), their bound, and how many
    /// the bound has dropped (also kept under [`DEAD_DROPPED_KEY`]).
    dead_bytes: AtomicU64,
    dead_max_bytes: AtomicU64,
    dead_dropped: AtomicU64,
    dead_warned: Mutex<Option<std::time::Instant>>,
    /// Chunks set aside as damaged, and their events (see `damage.rs`).
    damaged_chunks: AtomicU64,
    damaged_events: AtomicU64,
}

enum IndexOpen {
    Locked,
    Other(sled::Error),
}

/// How long an open waits for a lock that is being let go: sled releases its
/// flock from a background thread some moments after the last handle drops
/// (spacejam/sled#1234), so a queue closed and reopened at once, by a test,
/// a reload or an operator's `dead-letter` command just after a stop, would
/// otherwise be refused. A live daemon holds the lock far longer than this.
const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(2);

fn open_index(path: &Path, cache_bytes: u64) -> Result<sled::Db, IndexOpen> {
    let started = Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(1000))
            .open();
        match opened {
            Ok(db) => return Ok(db),
            // sled reports its flock failure as a generic I/O error.
            Err(sled::Error::Io(ref err)) if err.to_string().contains("could not acquire lock") => {
                if started.elapsed() >= LOCK_RELEASE_WAIT {
                    return Err(IndexOpen::Locked);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(other) => return Err(IndexOpen::Other(other)),
        }
    }
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
        let seg_dir = dir.join("segments");
        // Every user's queued events live here: the daemon's user alone reads them.
        crate::private_fs::secure_state_dir(dir).map_err(io)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(crate::private_fs::DIR_MODE)
            .create(&seg_dir)
            .map_err(io)?;
        let db = open_index(&dir.join("index"), cache_bytes).map_err(|e| match e {
            IndexOpen::Locked => QueueError::Locked {
                dir: dir.to_path_buf(),
            },
            IndexOpen::Other(other) => storage(other),
        })?;
        let sled_file = File::open(dir.join("index").join("db")).map_err(io)?;
        let chunks = db.open_tree("chunks").map_err(storage)?;
        let acks = db.open_tree("acks").map_err(storage)?;
        let checkpoints = db.open_tree("checkpoints").map_err(storage)?;
        let dead = db.open_tree("dead").map_err(storage)?;

        let mut live: BTreeMap<u64, u64> = BTreeMap::new();
        let mut queued_bytes = 0u64;
        let mut events_at_open = 0u64;
        let mut next_seq = 0;
        let mut unreadable = Vec::new();
        for item in chunks.iter() {
            let (k, v) = item.map_err(storage)?;
            let seq = seq_of(&k);
            next_seq = seq + 1;
            let Some(ptr) = Pointer::decode(&v) else {
                unreadable.push(seq); // set aside once the queue is open
                continue;
            };
            *live.entry(ptr.segment).or_default() += 1;
            queued_bytes += u64::from(ptr.len);
            events_at_open += u64::from(ptr.count);
        }
        // Segments no chunk points to: fully delivered, or the unreferenced
        // tail of a commit that a crash cut short.
        let mut last_segment = 0;
        let mut free = Vec::new();
        for entry in std::fs::read_dir(&seg_dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            last_segment = last_segment.max(id);
            if !live.contains_key(&id) {
                if free.len() < SEGMENT_POOL {
                    free.push(path);
                } else {
                    std::fs::remove_file(&path).map_err(io)?;
                }
            }
        }
        // A segment file gone but still pointed at keeps its id: new chunks
        // must never sit where an old pointer could read them.
        last_segment = last_segment.max(live.keys().next_back().copied().unwrap_or(0));
        let mut segments = Segments {
            dir: seg_dir,
            files: BTreeMap::new(),
            current: 0,
            current_len: 0,
            live,
            free,
        };
        segments.start_new(last_segment + 1).map_err(io)?;

        let mut dead_bytes = 0u64;
        for item in dead.iter() {
            let (k, v) = item.map_err(storage)?;
            dead_bytes = dead_bytes.saturating_add((k.len() + v.len()) as u64);
        }
        let dead_dropped = checkpoints
            .get(DEAD_DROPPED_KEY)
            .map_err(storage)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_le_bytes);
        let mut read = ReadState::default();
        for item in acks.iter() {
            let (k, v) = item.map_err(storage)?;
            read.acked.insert(seq_of(&k), RangeSet::decode(&v));
        }
        let queue = Queue {
            dir: dir.to_path_buf(),
            db,
            chunks,
            acks,
            checkpoints,
            dead,
            sled_file,
            segments: Mutex::new(segments),
            next_seq: AtomicU64::new(next_seq),
            read: Mutex::new(read),
            appended: tokio::sync::Notify::new(),
            events_at_open,
            committed_events: AtomicU64::new(0),
            acked_events: AtomicU64::new(0),
            dead_events: AtomicU64::new(0),
            dropped_events: AtomicU64::new(0),
            max_bytes: AtomicU64::new(u64::MAX),
            drop_oldest: std::sync::atomic::AtomicBool::new(false),
            closing: std::sync::atomic::AtomicBool::new(false),
            queued_bytes: AtomicU64::new(queued_bytes),
            dead_bytes: AtomicU64::new(dead_bytes),
            dead_max_bytes: AtomicU64::new(u64::MAX),
            dead_dropped: AtomicU64::new(dead_dropped),
            dead_warned: Mutex::new(None),
            damaged_chunks: AtomicU64::new(0),
            damaged_events: AtomicU64::new(0),
        };
        queue.quarantine_unreadable_pointers(&unreadable)?;
        Ok(queue)
    }

    fn storage(&self, source: sled::Error) -> QueueError {
        QueueError::Storage {
            dir: self.dir.clone(),
            source,
        }
    }

    fn io(&self, source: std::io::Error) -> QueueError {
        QueueError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    fn corrupt(&self, seq: u64, what: impl Into<String>) -> QueueError {
        QueueError::Corrupt {
            dir: self.dir.clone(),
            seq,
            what: what.into(),
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

    /// The checkpoints whose keys start with `prefix`.
    pub fn checkpoints_with_prefix(&self, prefix: &[u8]) -> Result<Vec<(IVec, IVec)>, QueueError> {
        self.checkpoints
            .scan_prefix(prefix)
            .collect::<Result<_, _>>()
            .map_err(|e| self.storage(e))
    }

    /// Rewrites a checkpoint outside a commit: bookkeeping (when a file was
    /// last seen) that a crash may lose without harm.
    pub fn put_checkpoint(&self, key: &[u8], value: &[u8]) -> Result<(), QueueError> {
        self.checkpoints
            .insert(key, value)
            .map(|_| ())
            .map_err(|e| self.storage(e))
    }

    /// Forgets a checkpoint (of a file gone longer than the retention).
    pub fn remove_checkpoint(&self, key: &[u8]) -> Result<(), QueueError> {
        self.checkpoints
            .remove(key)
            .map(|_| ())
            .map_err(|e| self.storage(e))
    }

    /// Makes waiting commits give up with [`QueueError::Closing`].
    pub fn start_closing(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Events waiting for delivery, about (a chunk partly delivered before
    /// the queue was opened counts whole).
    pub fn pending_events(&self) -> u64 {
        (self.events_at_open + self.committed_events())
            .saturating_sub(self.acked_events())
            .saturating_sub(self.dead_events())
            .saturating_sub(self.dropped_events())
    }

    /// When the oldest chunk still waiting for delivery was committed (None
    /// when nothing waits, or its pointer cannot be read).
    pub fn oldest_committed_at(&self) -> Option<crate::event::Timestamp> {
        let (_, v) = self.chunks.first().ok()??;
        Pointer::decode(&v).map(|p| p.committed_at)
    }

    /// True when no event waits for delivery.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Makes sled's state durable: its flush, then an fsync of its log file
    /// (sled 0.34's flush only calls `sync_file_range`).
    fn sync(&self) -> Result<(), QueueError> {
        self.db.flush().map_err(|e| self.storage(e))?;
        self.sled_file.sync_data().map_err(|e| self.io(e))
    }

    /// Flushes sled and fsyncs, for a clean shutdown.
    pub fn close(&self) -> Result<(), QueueError> {
        self.sync()
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
    use crate::event::{EnforcementMode, EventBuf, EventType, Timestamp};
    use crate::parse::{EventContext, Record};

    pub(super) fn events(n: usize, tag: &str) -> EventBuf {
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

    pub(super) fn contents(batch: &Batch) -> Vec<String> {
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
    fn second_open_of_the_same_dir_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _q = Queue::open(dir.path(), 8 << 20).unwrap();
        let e = Queue::open(dir.path(), 8 << 20).err().expect("locked");
        assert!(e.to_string().contains("in use by another"), "{e}");
    }
}

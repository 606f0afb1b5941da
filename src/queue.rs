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

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::IVec;

use crate::event::EventBuf;
use crate::event::Timestamp;

/// Target size of one chunk: big enough that per-chunk costs vanish, small
/// enough that a batch does not read far past what it sends.
pub const CHUNK_TARGET_BYTES: usize = 256 << 10;
/// A segment file is closed for appends past this size.
const SEGMENT_MAX_BYTES: u64 = 32 << 20;
/// Retired segment files kept for reuse.
const SEGMENT_POOL: usize = 2;
const CHUNK_FORMAT: u8 = 1;
/// format, crc32 of the rest, event count.
const HEADER_LEN: usize = 1 + 4 + 4;
const POINTER_LEN: usize = 8 + 8 + 4 + 4 + 8;

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

impl QueueError {
    /// The file system holding the state is full (ENOSPC), whether the
    /// segment files or sled's log met it: a pause, not a failure.
    pub fn is_disk_full(&self) -> bool {
        match self {
            QueueError::Io { source, .. } => is_io_disk_full(source),
            QueueError::Storage { source, .. } => is_disk_full(source),
            _ => false,
        }
    }
}

/// Whether an error, or a link of a chain of errors, is a full disk under
/// the state directory. Wrappers that forward `source()` (`transparent`)
/// skip the QueueError itself, so sled's and the OS's errors count too.
pub fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(q) = e.downcast_ref::<QueueError>() {
        return q.is_disk_full();
    }
    if let Some(sled::Error::Io(io)) = e.downcast_ref::<sled::Error>() {
        return is_io_disk_full(io);
    }
    e.downcast_ref::<std::io::Error>()
        .is_some_and(is_io_disk_full)
}

fn is_io_disk_full(e: &std::io::Error) -> bool {
    // sled wraps the OS error in one of its own, which keeps the kind.
    e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == std::io::ErrorKind::StorageFull
}

/// Space kept free on the state's file system: commits pause below it, so
/// that sled's log (pointers, checkpoints, acks) meets a full disk after the
/// segment files do, and deliveries can still be acknowledged.
pub const DISK_RESERVE_BYTES: u64 = 4 << 20;

/// Bytes available to an unprivileged writer on the file system of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes only into the struct it is given.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

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

    fn remove(&mut self, r: &Range<u32>) {
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

/// Where a chunk is stored, as kept in sled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pointer {
    segment: u64,
    offset: u64,
    len: u32,
    count: u32,
    committed_at: Timestamp,
}

impl Pointer {
    fn encode(&self) -> [u8; POINTER_LEN] {
        let mut b = [0u8; POINTER_LEN];
        b[0..8].copy_from_slice(&self.segment.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b[20..24].copy_from_slice(&self.count.to_le_bytes());
        b[24..32].copy_from_slice(&self.committed_at.unix_micros.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Pointer> {
        let u64_at = |i: usize| {
            b.get(i..i + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let u32_at = |i: usize| {
            b.get(i..i + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_le_bytes)
        };
        Some(Pointer {
            segment: u64_at(0)?,
            offset: u64_at(8)?,
            len: u32_at(16)?,
            count: u32_at(20)?,
            committed_at: Timestamp::from_unix_micros(u64_at(24)? as i64),
        })
    }
}

/// A chunk read back from its segment and checked.
struct Chunk {
    bytes: Vec<u8>,
    count: u32,
    committed_at: Timestamp,
}

impl Chunk {
    fn check(bytes: Vec<u8>, ptr: &Pointer) -> Result<Chunk, String> {
        if bytes.len() < HEADER_LEN || bytes[0] != CHUNK_FORMAT {
            return Err("bad header".into());
        }
        let crc = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        if crc32fast::hash(&bytes[5..]) != crc {
            return Err("checksum mismatch".into());
        }
        let count = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        let table_end = HEADER_LEN + count as usize * 4;
        if count != ptr.count || bytes.len() < table_end {
            return Err("event count does not match its pointer".into());
        }
        let chunk = Chunk {
            bytes,
            count,
            committed_at: ptr.committed_at,
        };
        if count > 0 && chunk.end(count - 1) > chunk.bytes.len() - table_end {
            return Err("offsets past the end".into());
        }
        Ok(chunk)
    }

    fn end(&self, i: u32) -> usize {
        let at = HEADER_LEN + i as usize * 4;
        let b = &self.bytes[at..at + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
    }

    fn event(&self, i: u32) -> &[u8] {
        let data = &self.bytes[HEADER_LEN + self.count as usize * 4..];
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        &data[start..self.end(i)]
    }
}

/// The header of the chunk of `events[range]` (format, crc32, count, event
/// end offsets); the chunk is this header followed by the events' bytes,
/// which are written from where they are rather than copied.
fn chunk_header(events: &EventBuf, range: Range<usize>) -> Vec<u8> {
    let base = if range.start == 0 {
        0
    } else {
        events.ends[range.start - 1]
    };
    let data = &events.bytes[base as usize..events.ends[range.end - 1] as usize];
    let mut header = Vec::with_capacity(HEADER_LEN + range.len() * 4);
    header.push(CHUNK_FORMAT);
    header.extend_from_slice(&[0; 4]);
    header.extend_from_slice(&(range.len() as u32).to_le_bytes());
    for &end in &events.ends[range] {
        header.extend_from_slice(&(end - base).to_le_bytes());
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[5..]);
    crc.update(data);
    let crc = crc.finalize().to_le_bytes();
    header[1..5].copy_from_slice(&crc);
    header
}

/// `pwritev` until every slice is written.
fn write_all_vectored_at(
    file: &File,
    mut slices: &mut [std::io::IoSlice<'_>],
    mut offset: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    while !slices.is_empty() {
        let count = slices.len().min(1024) as libc::c_int;
        // SAFETY: IoSlice is ABI-compatible with iovec, the slices outlive the
        // call, and the fd is open for the duration of the borrow of `file`.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                slices.as_ptr() as *const libc::iovec,
                count,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        offset += n as u64;
        std::io::IoSlice::advance_slices(&mut slices, n as usize);
    }
    Ok(())
}

/// The segment files: one open for appends, the rest read until every chunk
/// in them is acknowledged, then deleted.
struct Segments {
    dir: PathBuf,
    /// Open handles, the current one included.
    files: BTreeMap<u64, File>,
    current: u64,
    current_len: u64,
    /// Chunks still referenced, per segment.
    live: BTreeMap<u64, u64>,
    /// Retired segment files kept for reuse. Overwriting a file whose pages
    /// are in the page cache costs a copy; a new file's pages must first be
    /// allocated (on the VMs measured, 20 times slower). Old bytes past the
    /// new end are never referenced.
    free: Vec<PathBuf>,
}

impl Segments {
    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016}.seg"))
    }

    /// Segment `id` holds no referenced chunk any more, and that is durable.
    fn retire(&mut self, id: u64) -> std::io::Result<()> {
        self.live.remove(&id);
        self.files.remove(&id);
        let path = self.path(id);
        if self.free.len() < SEGMENT_POOL {
            self.free.push(path);
            Ok(())
        } else {
            std::fs::remove_file(path)
        }
    }

    fn open_file(&mut self, id: u64) -> std::io::Result<&File> {
        if !self.files.contains_key(&id) {
            let f = File::open(self.path(id))?;
            self.files.insert(id, f);
        }
        Ok(&self.files[&id])
    }

    /// Opens segment `id` for appends, reusing a retired segment file if
    /// there is one.
    fn start_new(&mut self, id: u64) -> std::io::Result<()> {
        let path = self.path(id);
        let f = match self.free.pop() {
            Some(old) => {
                std::fs::rename(&old, &path)?;
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)?
            }
            None => std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .mode(crate::private_fs::FILE_MODE)
                .open(&path)?,
        };
        // The new file's directory entry must survive a power cut too.
        File::open(&self.dir)?.sync_all()?;
        self.files.insert(id, f);
        self.current = id;
        self.current_len = 0;
        Ok(())
    }
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
}

/// Checkpoint key of the count of dead letters dropped by the bound.
const DEAD_DROPPED_KEY: &[u8] = b"dead-letter/dropped";

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
        let mut next_seq = 0;
        for item in chunks.iter() {
            let (k, v) = item.map_err(storage)?;
            let seq = seq_of(&k);
            let ptr = Pointer::decode(&v).ok_or_else(|| QueueError::Corrupt {
                dir: dir.to_path_buf(),
                seq,
                what: "unreadable pointer".into(),
            })?;
            *live.entry(ptr.segment).or_default() += 1;
            queued_bytes += u64::from(ptr.len);
            next_seq = seq + 1;
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
        Ok(Queue {
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
        })
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

    /// Bounds the bytes waiting for delivery. At the bound, a commit waits for
    /// room (sources pause, their logs are the buffer) or, with `drop_oldest`,
    /// the oldest undelivered chunks are dropped and counted.
    pub fn set_bound(&self, max_bytes: u64, drop_oldest: bool) {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
        self.drop_oldest.store(drop_oldest, Ordering::Relaxed);
    }

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
    fn dead_to_evict(&self, incoming: u64) -> Result<(Vec<IVec>, u64), QueueError> {
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
    fn dead_evicted(&self, dropped: usize, freed: u64, added: u64) -> Result<(), QueueError> {
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

    /// Makes waiting commits give up with [`QueueError::Closing`].
    pub fn start_closing(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Events dropped by `when_full = "drop_oldest"` since the queue was opened.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events.load(Ordering::Relaxed)
    }

    /// Waits until `incoming` more bytes fit under the bound (or drops the
    /// oldest chunks to make room, if so configured).
    fn wait_for_room(&self, incoming: u64) -> Result<(), QueueError> {
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
            if self.is_closing() {
                return Err(QueueError::Closing);
            }
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

    /// One second's pause of a commit on a full disk, logged once per commit.
    fn pause_on_full_disk(&self, warned: &mut bool, free: Option<u64>) -> Result<(), QueueError> {
        if self.is_closing() {
            return Err(QueueError::Closing);
        }
        if !*warned {
            tracing::error!(dir = %self.dir.display(), free_bytes = free, reserve_bytes = DISK_RESERVE_BYTES,
                "disk full: reading paused until space is freed");
            *warned = true;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        Ok(())
    }

    fn drop_oldest_chunk(&self) -> Result<(), QueueError> {
        let Some((k, v)) = self.chunks.first().map_err(|e| self.storage(e))? else {
            return Ok(());
        };
        let seq = seq_of(&k);
        let ptr = Pointer::decode(&v).ok_or_else(|| self.corrupt(seq, "unreadable pointer"))?;
        let acked = {
            let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
            read.in_flight.remove(&seq);
            if matches!(&read.cached, Some((s, _)) if *s == seq) {
                read.cached = None;
            }
            read.acked.remove(&seq)
        };
        let already: u32 = acked
            .map(|a| a.0.iter().map(|r| r.len() as u32).sum())
            .unwrap_or(0);
        let result: Result<(), TransactionError<()>> =
            (&self.chunks, &self.acks).transaction(|(chunks, acks)| {
                chunks.remove(&k)?;
                acks.remove(&k)?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
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

    fn sub_queued(&self, n: u64) {
        let _ = self
            .queued_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(n))
            });
    }

    /// Appends `events` and sets checkpoint `key` to `value` atomically, and
    /// returns once both are on disk.
    pub fn commit(&self, events: &EventBuf, key: &[u8], value: &[u8]) -> Result<(), QueueError> {
        self.commit_removing_dead(events, key, value, &[])
    }

    /// [`commit`](Self::commit), also removing the dead letters `dead` in
    /// the same transaction (what `dead-letter retry` puts back).
    fn commit_removing_dead(
        &self,
        events: &EventBuf,
        key: &[u8],
        value: &[u8],
        dead: &[u64],
    ) -> Result<(), QueueError> {
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
        self.wait_for_room(total)?;
        let mut warned = false;
        // The segment lock is not held while the disk is full, so deliveries
        // (and their acknowledgements, which free space) go on meanwhile.
        let (mut segments, segment, offset) = loop {
            // Segments reused in place need no new blocks, but sled's log
            // does: keep its reserve.
            let free = free_bytes(&self.dir);
            if free.is_some_and(|f| f < DISK_RESERVE_BYTES.saturating_add(total)) {
                self.pause_on_full_disk(&mut warned, free)?;
                continue;
            }
            let mut segments = self.segments.lock().unwrap_or_else(|p| p.into_inner());
            if segments.current_len >= SEGMENT_MAX_BYTES {
                let old = segments.current;
                if segments.live.get(&old).copied().unwrap_or(0) == 0 {
                    // Its pointers' removal must be durable before its bytes go, or
                    // a power cut could bring back pointers into a reused file.
                    self.sync()?;
                    segments.retire(old).map_err(|e| self.io(e))?;
                }
                segments.start_new(old + 1).map_err(|e| self.io(e))?;
            }
            let segment = segments.current;
            let offset = segments.current_len;
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
                        self.pause_on_full_disk(&mut warned, free)?;
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
            Err(TransactionError::Storage(e)) => return Err(self.storage(e)),
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
        self.queued_bytes.fetch_add(total, Ordering::Relaxed);
        self.committed_events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        self.appended.notify_one();
        Ok(())
    }

    /// Makes sled's state durable: its flush, then an fsync of its log file
    /// (sled 0.34's flush only calls `sync_file_range`).
    fn sync(&self) -> Result<(), QueueError> {
        self.db.flush().map_err(|e| self.storage(e))?;
        self.sled_file.sync_data().map_err(|e| self.io(e))
    }

    fn read_chunk(&self, seq: u64, ptr: &Pointer) -> Result<Chunk, QueueError> {
        let mut bytes = vec![0u8; ptr.len as usize];
        {
            let mut segments = self.segments.lock().unwrap_or_else(|p| p.into_inner());
            let file = segments.open_file(ptr.segment).map_err(|e| {
                self.corrupt(
                    seq,
                    format!("segment {} cannot be opened: {e}", ptr.segment),
                )
            })?;
            file.read_exact_at(&mut bytes, ptr.offset).map_err(|e| {
                self.corrupt(
                    seq,
                    format!("segment {} offset {}: {e}", ptr.segment, ptr.offset),
                )
            })?;
        }
        Chunk::check(bytes, ptr).map_err(|what| self.corrupt(seq, what))
    }

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
            let ptr = Pointer::decode(&v).ok_or_else(|| self.corrupt(seq, "unreadable pointer"))?;
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
                _ => {
                    let c = Arc::new(self.read_chunk(seq, &ptr)?);
                    read.cached = Some((seq, c.clone()));
                    c
                }
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
        for p in &batch.pieces {
            let Some(v) = self
                .chunks
                .get(p.seq.to_be_bytes())
                .map_err(|e| self.storage(e))?
            else {
                continue; // already gone
            };
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
        self.acked_events
            .fetch_add(batch.events as u64, Ordering::Relaxed);
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

    /// True when no event waits for delivery.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes of events waiting for delivery (whole chunks, as stored).
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Relaxed)
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
        self.commit_removing_dead(&events, b"dead-letter/retried-at", &n, &keys)?;
        self.dead_bytes.store(0, Ordering::Relaxed);
        Ok(letters.len())
    }

    /// Deletes every dead letter. Returns how many.
    pub fn dead_letter_purge(&self) -> Result<usize, QueueError> {
        let n = self.dead.len();
        self.dead.clear().map_err(|e| self.storage(e))?;
        self.dead_bytes.store(0, Ordering::Relaxed);
        self.sync()?;
        Ok(n)
    }

    /// Events set aside since this process opened the queue.
    pub fn dead_events(&self) -> u64 {
        self.dead_events.load(Ordering::Relaxed)
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

    #[test]
    fn delivered_segments_are_deleted_and_unreferenced_tails_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let segs = |d: &Path| std::fs::read_dir(d.join("segments")).unwrap().count();
        {
            let q = Queue::open(dir.path(), 8 << 20).unwrap();
            q.commit(&events(10, "a"), b"src", b"10").unwrap();
            q.close().unwrap();
        }
        // A crash after a segment append but before the sled commit leaves
        // bytes no pointer refers to.
        let tail = std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .last()
            .unwrap()
            .unwrap()
            .path();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&tail)
            .unwrap();
        std::io::Write::write_all(&mut f, b"garbage from an interrupted commit").unwrap();
        drop(f);
        let q = Queue::open(dir.path(), 8 << 20).unwrap();
        assert_eq!(
            segs(dir.path()),
            2,
            "the old segment and the new current one"
        );
        let b = q.peek_batch(100, usize::MAX).unwrap().unwrap();
        assert_eq!(b.events, 10);
        q.take(&b);
        q.ack(&b).unwrap();
        assert!(q.is_empty());
        assert_eq!(
            segs(dir.path()),
            2,
            "the delivered segment is kept for reuse"
        );
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn a_damaged_chunk_is_reported_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(dir.path(), 8 << 20).unwrap();
            q.commit(&events(3, "a"), b"src", b"3").unwrap();
        }
        let seg = std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&seg).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 0xff;
        std::fs::write(&seg, bytes).unwrap();
        let q = Queue::open(dir.path(), 8 << 20).unwrap();
        let e = q
            .peek_batch(10, usize::MAX)
            .expect_err("corruption detected")
            .to_string();
        assert!(e.contains("checksum"), "{e}");
    }

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
        let mut t = s.clone();
        t.remove(&(3..5));
        assert_eq!(t.0, vec![0..3, 5..10]);
        assert_eq!(RangeSet::decode(&s.encode()), s);
    }
}

//! The file source: finds the files a source's globs match, follows each one
//! through renames, truncation, deletion and compression, hands every record
//! of a chunk to its sink, and has the sink commit them together with the
//! file's new checkpoint.
//!
//! Files are known by identity ([`identity`]), not by path; lines are cut by
//! [`lines`]. Change notices come from `notify` on the directories that hold
//! matching files; a poll every `poll_interval` and a glob scan every
//! `glob_interval` are the fallback for file systems (and watch limits) that
//! miss them.
//!
//! The tailer runs on a thread of its own: file reads and the queue's fsync
//! are blocking calls and would stall an async runtime.

mod checkpoints;
pub mod discover;
pub(crate) mod gz;
pub mod handles;
pub(crate) mod identify;
pub mod identity;
pub mod lines;
pub mod open;
mod park;
pub(crate) mod read;
mod scan;
pub mod stream_index;
mod watch;

pub use self::discover::FileMatcher;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use flate2::read::MultiGzDecoder;
use notify::Watcher;
use tracing::{debug, info, warn};

use self::checkpoints::unix_now;
use self::gz::gzip_magic;
use self::identity::{Candidate, Checkpoint, FileId, Resolution, Tail, TAIL_BYTES};
use self::lines::{Line, LineCutter, Multiline};
use self::read::{end_of_last_line, read_full_at, tail_of_file};
use self::scan::stat;
use self::watch::Wake;
pub use super::SourceError;
use super::{ReadStats, RecordIn, Sink, SinkError, StreamSlot};
use crate::config::{SourceConfig, StartAt};
use crate::event::Timestamp;

/// Most bytes read from one file before the tailer moves on to the next, so
/// a busy file cannot starve the others.
pub(crate) const READ_CHUNK: usize = 4 << 20;
/// Event bytes one commit holds at most: a round stops cutting lines there
/// and the next round goes on, so 3-byte lines that each become a 300-byte
/// event cannot make one commit of hundreds of megabytes. Twice the read
/// chunk: ordinary lines (an event is about 1.3 times its line) never reach
/// it, so they keep one commit per chunk.
pub(crate) const COMMIT_MAX_EVENT_BYTES: usize = 2 * READ_CHUNK;
/// Paths refused or failing that are remembered, so each is logged once; a
/// user with a million links gets no more log lines than this.
const MAX_REPORTED: usize = 10_000;
/// A deleted file with more than this left unread after `rotate_wait` gets
/// one last read round, and the rest is dropped: a deleted transcript is
/// still read to its end (an agent cannot hide lines by deleting them),
/// a deleted 100 GB sparse file is not.
const DELETED_READ_MAX: u64 = 256 << 20;
/// How often checkpoints of vanished files are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Who a followed file is, once it has a fingerprint.
struct Ident {
    fingerprint: String,
    key: Vec<u8>,
    stream: String,
}

/// A `.gz` file: read once through a decoder, never tailed.
#[derive(Default)]
struct Gz {
    decoder: Option<Box<MultiGzDecoder<BufReader<File>>>>,
    /// Decoded bytes after `offset` not yet cut into lines.
    carry: Vec<u8>,
    /// The decoder reached the end; `carry` may still hold lines.
    decoded_all: bool,
    /// Read to its end and every line committed.
    done: bool,
    /// Size at which decoding last failed (a copy still being written):
    /// retried when the size changes.
    failed_at_size: Option<u64>,
}

/// A file being followed.
struct Tracked {
    path: PathBuf,
    /// None while parked to stay within `max_open_files` (see [`handles`]).
    file: Option<File>,
    /// Size and modification time at its last read, kept when it is parked
    /// (None: parked before any read), to tell whether it changed since.
    parked_stat: Option<(u64, Option<SystemTime>)>,
    modified: Option<SystemTime>,
    /// Birth time where the file system keeps one: tells a reused inode
    /// apart when a parked file is reopened.
    born: Option<SystemTime>,
    /// Its owner when it was opened: whose stream it can continue, and who
    /// is charged for it under fairness by owner.
    owner: u32,
    last_active: Instant,
    gz: Option<Gz>,
    ident: Option<Ident>,
    /// First byte not yet cut into lines (decoded bytes for `.gz`).
    offset: u64,
    /// The last checkpoint's position and tail, to notice a rewrite.
    committed: (u64, Tail),
    cutter: LineCutter,
    /// This file's own parser in the sink, from its identification on:
    /// state across lines (sessions, pending calls) belongs to one file,
    /// and is saved with its checkpoint.
    slot: Option<StreamSlot>,
    /// The file no longer matches at any path (renamed away or deleted).
    gone_since: Option<Instant>,
    /// Found by the first scan: `start_at` applies to it.
    at_startup: bool,
    /// Order in which files were found.
    seen_order: u64,
    /// Since when it has waited to see whether it is a copy (see settle_copy).
    copy_wait_since: Option<Instant>,
    size: u64,
    verified_size: u64,
}

impl Tracked {
    fn handle(&self) -> std::io::Result<&File> {
        self.file
            .as_ref()
            .ok_or_else(|| std::io::Error::other("file parked: no open handle"))
    }

    /// Descriptors it holds: its handle and a decoder's.
    fn descriptors(&self) -> usize {
        usize::from(self.file.is_some())
            + usize::from(self.gz.as_ref().is_some_and(|g| g.decoder.is_some()))
    }

    /// Whether `file`, just opened at this file's device and inode, is
    /// still this file: its birth time, else for a compressed file its
    /// magic and (once read whole) its size. A plain file's fingerprint and
    /// tail are checked at its next read.
    fn is_same_file(&self, file: &File) -> bool {
        let Ok(meta) = file.metadata() else {
            return false;
        };
        if let (Some(then), Ok(now)) = (self.born, meta.created()) {
            if then != now {
                return false;
            }
        }
        match &self.gz {
            Some(gz) => gzip_magic(file) && (!gz.done || meta.len() == self.size),
            None => true,
        }
    }

    /// Bytes or a record still waiting: a parked file like this is reopened
    /// at once, and an open one is parked last.
    fn has_work(&self) -> bool {
        match &self.gz {
            Some(gz) => !gz.done && gz.failed_at_size != Some(self.size),
            None => self.offset < self.size || self.cutter.has_open_record(),
        }
    }
}

/// What reading a file did.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Read,
    Idle,
}

enum ReadError {
    Io(std::io::Error),
    Store(SinkError),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

impl From<SinkError> for ReadError {
    fn from(e: SinkError) -> Self {
        ReadError::Store(e)
    }
}

pub struct FileSource {
    name: String,
    config: SourceConfig,
    matcher: FileMatcher,
    /// Parses, holds and commits what is read.
    sink: Box<dyn Sink>,
    multiline: Option<regex::bytes::Regex>,
    stats: Arc<ReadStats>,
    shutdown: Arc<AtomicBool>,
    tracked: HashMap<FileId, Tracked>,
    read_buf: Vec<u8>,
    scans: u64,
    /// Files found so far.
    found: u64,
    /// Paths whose last open failed, with the error kind already logged.
    failing: HashMap<PathBuf, std::io::ErrorKind>,
    /// Paths refused (links, FIFOs, ...), each logged once.
    refused: HashSet<PathBuf>,
    /// The `max_files` and directory caps were reported.
    cap_warned: bool,
    watcher: Option<notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
    watch_limit_warned: bool,
    last_sweep: Option<Instant>,
    max_open_files: usize,
    /// Descriptors the tracked files hold (see [`Tracked::descriptors`]).
    open_descriptors: usize,
    /// When parked files without known work were last looked at.
    parked_checked: Option<Instant>,
    /// "Too many open files" was reported.
    fd_exhaustion_warned: bool,
    /// A stream was named, or a file closed or forgotten, since the stream
    /// index was last published (see [`stream_index`]).
    streams_changed: bool,
    streams_published: Option<Instant>,
}

impl FileSource {
    pub fn new(
        config: SourceConfig,
        sink: Box<dyn Sink>,
        stats: Arc<ReadStats>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<FileSource, globset::Error> {
        // Validated at config load; a pattern that fails here is ignored.
        let multiline = config
            .multiline
            .as_ref()
            .and_then(|m| regex::bytes::Regex::new(&m.start_pattern).ok());
        let max_open_files = config
            .max_open_files
            .unwrap_or_else(|| handles::default_max_open_files(crate::ops::fd_limit(), 1));
        Ok(FileSource {
            name: config.name.get_ref().clone(),
            matcher: FileMatcher::new(&config)?,
            config,
            sink,
            multiline,
            stats,
            shutdown,
            tracked: HashMap::new(),
            read_buf: Vec::new(),
            scans: 0,
            found: 0,
            failing: HashMap::new(),
            refused: HashSet::new(),
            cap_warned: false,
            watcher: None,
            watched: HashSet::new(),
            watch_limit_warned: false,
            last_sweep: None,
            max_open_files,
            open_descriptors: 0,
            parked_checked: None,
            fd_exhaustion_warned: false,
            streams_changed: false,
            streams_published: None,
        })
    }

    /// Follows the files until shutdown is requested.
    pub fn run(mut self) -> Result<(), SourceError> {
        if crate::ops::test_hook("panic-source") {
            panic!("test hook panic-source: a source thread panics");
        }
        if crate::ops::test_hook("stall-sources") {
            // Like a read stuck on a dead network file system: deaf to shutdown.
            loop {
                std::thread::park();
            }
        }
        // Capacity 1 and try_send: notices coalesce instead of piling up.
        let (wake_tx, wake_rx) = mpsc::sync_channel::<Wake>(1);
        self.watcher = self.start_watcher(wake_tx);
        let mut last_scan: Option<Instant> = None;
        while !self.shutdown.load(Ordering::SeqCst) {
            self.stats.beat();
            if last_scan.is_none_or(|t| t.elapsed() >= self.config.glob_interval) {
                self.scan();
                last_scan = Some(Instant::now());
            }
            let progressed = self.read_round()?;
            if self
                .last_sweep
                .is_none_or(|t| t.elapsed() >= SWEEP_EVERY.min(self.config.checkpoint_retention))
            {
                self.sweep_checkpoints()?;
            }
            self.publish_streams(false);
            if !progressed {
                self.stats.caught_up.store(true, Ordering::SeqCst);
                // At most a second, so the loop (and its heartbeat) turns.
                let wait = self.config.poll_interval.min(Duration::from_secs(1));
                match wake_rx.recv_timeout(wait) {
                    Ok(wake) => {
                        let mut rescan = wake == Wake::Rescan;
                        while let Ok(w) = wake_rx.try_recv() {
                            rescan |= w == Wake::Rescan;
                        }
                        if rescan {
                            last_scan = None;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
                }
            } else {
                self.stats.caught_up.store(false, Ordering::SeqCst);
            }
        }
        self.publish_streams(true);
        debug!(source = %self.name, "file source stopped");
        Ok(())
    }

    /// One scan and one read round: what `run` does between waits. Returns
    /// true if anything was read. Tests drive the source with it.
    pub fn step(&mut self) -> Result<bool, SourceError> {
        // A step stands for a wait: parked files are looked at, as after a poll.
        self.parked_checked = None;
        self.scan();
        let progressed = self.read_round()?;
        self.sweep_checkpoints()?;
        self.publish_streams(true);
        Ok(progressed)
    }

    fn new_cutter(&self) -> LineCutter {
        let multiline = match (&self.multiline, &self.config.multiline) {
            (Some(start), Some(m)) => Some(Multiline {
                start: start.clone(),
                timeout: m.timeout,
            }),
            _ => None,
        };
        LineCutter::new(self.config.max_line_bytes.0 as usize, multiline)
    }

    /// Reads one chunk from every file; true if anything was read.
    fn read_round(&mut self) -> Result<bool, SourceError> {
        let mut progressed = false;
        let mut ids: Vec<FileId> = self.tracked.keys().copied().collect();
        // Oldest first: a file that went away is read to its end (and its
        // checkpoint written) before a compressed copy of it is identified.
        ids.sort_by_key(|id| self.tracked[id].seen_order);
        let mut finished = Vec::new();
        let rotate_wait = self.config.rotate_wait;
        self.count_descriptors();
        let check_parked = self
            .parked_checked
            .is_none_or(|t| t.elapsed() >= self.config.poll_interval);
        if check_parked {
            self.parked_checked = Some(Instant::now());
        }
        for id in ids {
            if self.shutdown.load(Ordering::SeqCst) {
                break;
            }
            // Making room for a file closes files that went away.
            let Some(t) = self.tracked.get(&id) else {
                continue;
            };
            let closing = t.gone_since.is_some_and(|g| g.elapsed() >= rotate_wait);
            // Deleted (not renamed) and past rotate_wait: one last read round
            // (which ends an open record at the file's end), then what is
            // still unread is dropped, so a deleted file (a sparse 100 GB
            // one included) does not cost a core until read to its end.
            let deleted = closing
                && t.size.saturating_sub(t.offset) > DELETED_READ_MAX
                && t.file
                    .as_ref()
                    .and_then(|f| f.metadata().ok())
                    .is_some_and(|m| m.nlink() == 0);
            let reopened = t.file.is_some()
                || self
                    .unpark(id, check_parked)
                    .map_err(|err| SourceError::Store {
                        source_name: self.name.clone(),
                        err,
                    })?;
            if !reopened {
                if closing {
                    finished.push(id);
                }
                continue;
            }
            let before = self.tracked.get(&id).map_or(0, Tracked::descriptors);
            let result = self.read_file(id, closing);
            if let Some(t) = self.tracked.get_mut(&id) {
                self.open_descriptors =
                    (self.open_descriptors + t.descriptors()).saturating_sub(before);
                if matches!(result, Ok(Progress::Read)) {
                    t.last_active = Instant::now();
                }
            }
            match result {
                Ok(Progress::Read) if deleted => {
                    progressed = true;
                    if let Some(t) = self.tracked.get(&id).filter(|t| t.offset < t.size) {
                        warn!(source = %self.name, path = %t.path.display(), unread_bytes = t.size - t.offset,
                            "file deleted before it was read to its end; its unread bytes are dropped (rotate_wait has passed)");
                    }
                    finished.push(id);
                }
                Ok(Progress::Read) => progressed = true,
                Ok(Progress::Idle) if closing => finished.push(id),
                Ok(Progress::Idle) => {}
                Err(ReadError::Io(e)) => {
                    let path = self.tracked.get(&id).map(|t| t.path.display().to_string());
                    warn!(source = %self.name, path = path.unwrap_or_default(), error = %e, "read failed; will retry");
                    if closing {
                        finished.push(id);
                    }
                }
                Err(ReadError::Store(err)) => {
                    return Err(SourceError::Store {
                        source_name: self.name.clone(),
                        err,
                    })
                }
            }
        }
        for id in finished {
            self.close(id).map_err(|err| SourceError::Store {
                source_name: self.name.clone(),
                err,
            })?;
        }
        let (position, lag) =
            self.tracked
                .values()
                .filter(|t| t.gz.is_none())
                .fold((0u64, 0u64), |(p, l), t| {
                    (
                        p.saturating_add(t.offset),
                        l.saturating_add(t.size.saturating_sub(t.offset)),
                    )
                });
        self.stats.position_bytes.store(position, Ordering::Relaxed);
        self.stats.lag_bytes.store(lag, Ordering::Relaxed);
        Ok(progressed)
    }

    fn count_descriptors(&mut self) {
        self.open_descriptors = self.tracked.values().map(Tracked::descriptors).sum();
    }
}

fn gone() -> ReadError {
    ReadError::Io(std::io::Error::other("file no longer tracked"))
}

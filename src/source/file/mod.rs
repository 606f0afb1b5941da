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

pub mod discover;
pub mod handles;
pub mod identity;
pub mod lines;
pub mod open;

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

use self::identity::{Candidate, Checkpoint, Resolution, Tail, TAIL_BYTES};
use self::lines::{Line, LineCutter, Multiline};
use super::{ReadStats, RecordIn, Sink, SinkError, StreamSlot};
use crate::config::{SourceConfig, StartAt};
use crate::event::Timestamp;

/// Most bytes read from one file before the tailer moves on to the next, so
/// a busy file cannot starve the others.
const READ_CHUNK: usize = 4 << 20;
/// Event bytes one commit holds at most: a round stops cutting lines there
/// and the next round goes on, so 3-byte lines that each become a 300-byte
/// event cannot make one commit of hundreds of megabytes. Twice the read
/// chunk: ordinary lines (an event is about 1.3 times its line) never reach
/// it, so they keep one commit per chunk.
const COMMIT_MAX_EVENT_BYTES: usize = 2 * READ_CHUNK;
/// Paths refused or failing that are remembered, so each is logged once; a
/// user with a million links gets no more log lines than this.
const MAX_REPORTED: usize = 10_000;
/// How often checkpoints of vanished files are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source `{source_name}`: {err}")]
    Store {
        source_name: String,
        #[source]
        err: SinkError,
    },
}

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
    tracked: HashMap<(u64, u64), Tracked>,
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
            if !progressed {
                self.stats.caught_up.store(true, Ordering::SeqCst);
                match wake_rx.recv_timeout(self.config.poll_interval) {
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
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(self.config.poll_interval)
                    }
                }
            } else {
                self.stats.caught_up.store(false, Ordering::SeqCst);
            }
        }
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
        Ok(progressed)
    }

    fn start_watcher(&self, wake: mpsc::SyncSender<Wake>) -> Option<notify::RecommendedWatcher> {
        use notify::event::{EventKind, ModifyKind};
        let handler = move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            let what = match event.kind {
                // A file appeared, went or was renamed: the globs may match differently.
                EventKind::Create(_)
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Name(_)) => Wake::Rescan,
                EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) | EventKind::Any => {
                    Wake::Read
                }
                // Opens, reads and closes, including our own: not news.
                _ => return,
            };
            // A full channel already holds a wake-up; a Rescan behind a Read is
            // caught by the periodic scan.
            let _ = wake.try_send(what);
        };
        match notify::recommended_watcher(handler) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(source = %self.name, error = %e, "no change notices; polling every {:?}", self.config.poll_interval);
                None
            }
        }
    }

    /// Watches `dir` (not recursively) unless it already is.
    fn watch(&mut self, dir: &Path) {
        if self.watched.contains(dir) || self.watch_limit_warned {
            return;
        }
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        match watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watched.insert(dir.to_path_buf());
            }
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                self.watch_limit_warned = true;
                warn!(source = %self.name, dir = %dir.display(),
                    "inotify watch limit reached (raise fs.inotify.max_user_watches); directories without a watch are polled every {:?}",
                    self.config.poll_interval);
            }
            Err(e) => {
                debug!(source = %self.name, dir = %dir.display(), error = %e, "cannot watch; polling it")
            }
        }
    }

    /// Matches the globs again: opens new files, notes files that went away.
    fn scan(&mut self) {
        self.scans += 1;
        let first = self.scans == 1;
        for dir in self.matcher.base_dirs() {
            if dir.is_dir() {
                self.watch(&dir);
            }
        }
        self.count_descriptors();
        let mut seen = HashSet::new();
        let found = self.matcher.walk();
        self.report_walk(&found);
        for path in found.files {
            let follow = self.config.follow_symlinks;
            let meta = match stat(&path, follow) {
                Ok(m) => m,
                Err(e) => {
                    self.open_failed(&path, &e);
                    continue;
                }
            };
            if !meta.is_file() {
                continue; // changed since the walk; the open would refuse it
            }
            let id = (meta.dev(), meta.ino());
            seen.insert(id);
            if self.tracked.get(&id).is_some_and(|t| {
                t.file.is_none() && t.born.is_some() && t.born != meta.created().ok()
            }) {
                // The file parked here was deleted and its inode reused.
                debug!(source = %self.name, path = %path.display(), "a parked file's inode holds another file now");
                self.forget(id);
            }
            if let Some(t) = self.tracked.get_mut(&id) {
                if t.path != path {
                    debug!(source = %self.name, from = %t.path.display(), to = %path.display(), "file renamed");
                    t.path = path;
                }
                t.gone_since = None;
                continue;
            }
            if let (Some(age), Ok(modified)) = (self.config.ignore_older, meta.modified()) {
                if SystemTime::now()
                    .duration_since(modified)
                    .is_ok_and(|d| d > age)
                {
                    continue;
                }
            }
            let base = self.matcher.base_of(&path);
            let matcher = &self.matcher;
            let opened = open::open_checked(&path, &base, follow, |p| matcher.excluded(p));
            match opened {
                Ok(Err(refusal)) => {
                    if self.refused.len() < MAX_REPORTED && self.refused.insert(path.clone()) {
                        warn!(source = %self.name, path = %path.display(), "not read: {refusal}");
                    }
                }
                Ok(Ok((file, opened_meta))) => {
                    let id = (opened_meta.dev(), opened_meta.ino());
                    if id != (meta.dev(), meta.ino()) {
                        // Replaced between the look and the open: the next
                        // scan sees the new file as it is.
                        continue;
                    }
                    self.failing.remove(&path);
                    self.refused.remove(&path);
                    if let Some(dir) = path.parent() {
                        let dir = dir.to_path_buf();
                        self.watch(&dir);
                    }
                    debug!(source = %self.name, path = %path.display(), "following file");
                    self.found += 1;
                    let cutter = self.new_cutter();
                    // Past the budget the file is parked at once: reads open
                    // it in turn, parking files read to their end.
                    let file = (self.open_descriptors < self.max_open_files).then_some(file);
                    self.open_descriptors += usize::from(file.is_some());
                    self.tracked.insert(
                        id,
                        Tracked {
                            path,
                            file,
                            parked_stat: None,
                            modified: None,
                            born: opened_meta.created().ok(),
                            last_active: Instant::now(),
                            gz: None,
                            ident: None,
                            offset: 0,
                            committed: (0, Tail::default()),
                            cutter,
                            slot: None,
                            gone_since: None,
                            at_startup: first,
                            seen_order: self.found,
                            copy_wait_since: None,
                            size: 0,
                            verified_size: 0,
                        },
                    );
                }
                Err(e) => self.open_failed(&path, &e),
            }
        }
        let now = Instant::now();
        for (id, t) in self.tracked.iter_mut() {
            if !seen.contains(id) && t.gone_since.is_none() {
                debug!(source = %self.name, path = %t.path.display(), "file no longer at a matching path; reading it to its end");
                t.gone_since = Some(now);
            }
        }
        self.stats
            .files
            .store(self.tracked.len() as u64, Ordering::Relaxed);
    }

    /// Warns once when a walk hit a cap, and once per path refused.
    fn report_walk(&mut self, found: &discover::Found) {
        if (found.files_capped || found.dirs_capped) && !self.cap_warned {
            self.cap_warned = true;
            warn!(source = %self.name, max_files = self.config.max_files, max_dirs = discover::MAX_DIRS_PER_SCAN,
                files_capped = found.files_capped, dirs_capped = found.dirs_capped,
                "the source's globs match more than it follows; files past the cap are left out (raise max_files, or narrow include)");
        }
        for (path, refusal) in &found.refused {
            if self.refused.len() < MAX_REPORTED && self.refused.insert(path.clone()) {
                warn!(source = %self.name, path = %path.display(), "not read: {refusal}");
            }
        }
    }

    /// Logs a failed open once per path and error kind; the next scan retries.
    fn open_failed(&mut self, path: &Path, e: &std::io::Error) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return; // gone between glob and open
        }
        if self.failing.len() >= MAX_REPORTED && !self.failing.contains_key(path) {
            return;
        }
        if self.failing.insert(path.to_path_buf(), e.kind()) != Some(e.kind()) {
            warn!(source = %self.name, path = %path.display(), error = %e, "cannot open file; retrying at every scan");
        }
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
        let mut ids: Vec<(u64, u64)> = self.tracked.keys().copied().collect();
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
        let lag: u64 = self
            .tracked
            .values()
            .filter(|t| t.gz.is_none())
            .map(|t| t.size.saturating_sub(t.offset))
            .sum();
        self.stats.lag_bytes.store(lag, Ordering::Relaxed);
        Ok(progressed)
    }

    fn count_descriptors(&mut self) {
        self.open_descriptors = self.tracked.values().map(Tracked::descriptors).sum();
    }

    /// Reopens a parked file that has work waiting or, when `check_all`,
    /// that changed since it was parked. False if it stays parked: unchanged,
    /// no longer at its path, or no room in the budget.
    fn unpark(&mut self, id: (u64, u64), check_all: bool) -> Result<bool, SinkError> {
        let Some(t) = self.tracked.get(&id) else {
            return Ok(false);
        };
        let known_work = t.parked_stat.is_none() || t.has_work();
        if !known_work && !check_all {
            return Ok(false);
        }
        let Ok(meta) = stat(&t.path, self.config.follow_symlinks) else {
            return Ok(false);
        };
        if (meta.dev(), meta.ino()) != id {
            return Ok(false); // the next scan finds where it went, or that it went
        }
        if !known_work && t.parked_stat == Some((meta.len(), meta.modified().ok())) {
            return Ok(false);
        }
        if !self.make_room(id)? {
            return Ok(false);
        }
        let file = match self.open_again(id) {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(false),
            Err(e) => {
                if e.raw_os_error() == Some(libc::EMFILE) && !self.fd_exhaustion_warned {
                    self.fd_exhaustion_warned = true;
                    warn!(source = %self.name, max_open_files = self.max_open_files,
                        "too many open files: lower max_open_files, or raise the descriptor limit (LimitNOFILE=)");
                }
                return Ok(false);
            }
        };
        let same = self.tracked.get(&id).is_some_and(|t| t.is_same_file(&file));
        if !same {
            self.follow_as_new(id);
        }
        let Some(t) = self.tracked.get_mut(&id) else {
            return Ok(false);
        };
        if !same {
            t.born = file.metadata().ok().and_then(|m| m.created().ok());
        }
        t.file = Some(file);
        t.parked_stat = None;
        t.last_active = Instant::now();
        if t.ident.is_some() && t.gz.is_none() {
            // Check on the next read that it is still the file it was
            // (fingerprint and tail), as after any change of size.
            t.verified_size = u64::MAX;
        }
        self.open_descriptors += 1;
        Ok(true)
    }

    /// Forgets what was known of file `id`: its inode now holds another
    /// file (the one parked was deleted), read from its start as new.
    fn follow_as_new(&mut self, id: (u64, u64)) {
        let cutter = self.new_cutter();
        let Some(t) = self.tracked.get_mut(&id) else {
            return;
        };
        if let Some(slot) = t.slot.take() {
            self.sink.close_stream(slot);
        }
        debug!(source = %self.name, path = %t.path.display(), "a parked file's inode holds another file now; following it as a new one");
        t.gz = None;
        t.ident = None;
        t.offset = 0;
        t.committed = (0, Tail::default());
        t.cutter = cutter;
        t.copy_wait_since = None;
        t.size = 0;
        t.verified_size = 0;
        // It appeared while the daemon ran: read from its start, and after
        // the files found before it (a copy after its original).
        t.at_startup = false;
        self.found += 1;
        t.seen_order = self.found;
    }

    /// Parks files until one more descriptor fits the budget; `keep` is the
    /// file about to open. Files that went away cannot be reopened, so they
    /// are not parked; when they are all that hold the budget, those read to
    /// their end are closed without waiting out `rotate_wait`. False when
    /// there is still no room: files that went away are still being read.
    fn make_room(&mut self, keep: (u64, u64)) -> Result<bool, SinkError> {
        if self.open_descriptors < self.max_open_files {
            return Ok(true);
        }
        let open: Vec<handles::OpenFile<(u64, u64)>> = self
            .tracked
            .iter()
            .filter(|(id, t)| **id != keep && t.file.is_some() && t.gone_since.is_none())
            .map(|(id, t)| handles::OpenFile {
                key: *id,
                busy: t.has_work(),
                last_active: t.last_active,
            })
            .collect();
        for id in handles::to_park(open, handles::park_batch(self.max_open_files)) {
            self.park(id);
        }
        if self.open_descriptors < self.max_open_files {
            return Ok(true);
        }
        let read_out: Vec<(u64, u64)> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.gone_since.is_some() && t.file.is_some() && !t.has_work())
            .map(|(id, _)| *id)
            .collect();
        for id in read_out {
            debug!(source = %self.name, "closing a file that went away before rotate_wait: its descriptor is needed");
            self.close(id)?;
        }
        self.count_descriptors();
        Ok(self.open_descriptors < self.max_open_files)
    }

    /// Closes a file's handles; it stays followed, by identity.
    fn park(&mut self, id: (u64, u64)) {
        let Some(t) = self.tracked.get_mut(&id) else {
            return;
        };
        let held = t.descriptors();
        if t.file.take().is_none() {
            return;
        }
        // As last read, not as now: a change since is still to be read.
        t.parked_stat = Some((t.size, t.modified));
        if let Some(gz) = t.gz.as_mut() {
            // Recreated by skipping what was read: costly, hence busy files last.
            gz.decoder = None;
        }
        self.open_descriptors = self.open_descriptors.saturating_sub(held);
        debug!(source = %self.name, path = %t.path.display(), "parked: closed to stay within max_open_files");
    }

    /// Opens the file `id` at its path again, with the checks of the first
    /// open; None if the path now holds another file or a refused one.
    fn open_again(&self, id: (u64, u64)) -> std::io::Result<Option<File>> {
        let Some(t) = self.tracked.get(&id) else {
            return Ok(None);
        };
        let base = self.matcher.base_of(&t.path);
        let matcher = &self.matcher;
        Ok(
            match open::open_checked(&t.path, &base, self.config.follow_symlinks, |p| {
                matcher.excluded(p)
            })? {
                Ok((file, meta)) if (meta.dev(), meta.ino()) == id => Some(file),
                Ok(_) => None,
                Err(refusal) => {
                    debug!(source = %self.name, path = %t.path.display(), "not reopened: {refusal}");
                    None
                }
            },
        )
    }

    /// Stops following a file, without a word: it is another file now.
    fn forget(&mut self, id: (u64, u64)) -> Option<Tracked> {
        let t = self.tracked.remove(&id)?;
        if let Some(slot) = t.slot {
            self.sink.close_stream(slot);
        }
        Some(t)
    }

    /// Stops following a file that went away and was read to its end.
    fn close(&mut self, id: (u64, u64)) -> Result<(), SinkError> {
        let Some(t) = self.forget(id) else {
            return Ok(());
        };
        info!(source = %self.name, path = %t.path.display(), "file rotated away or deleted and read to its end; closed");
        if let Some(ident) = &t.ident {
            if let Some(value) = self.sink.checkpoint(&ident.key)? {
                if let Some(mut cp) = Checkpoint::decode(&value) {
                    cp.closed_at = unix_now();
                    self.sink.put_checkpoint(&ident.key, &cp.encode())?;
                }
            }
        }
        self.stats
            .files
            .store(self.tracked.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn read_file(&mut self, id: (u64, u64), closing: bool) -> Result<Progress, ReadError> {
        let Some(t) = self.tracked.get_mut(&id) else {
            return Ok(Progress::Idle);
        };
        let meta = t.handle()?.metadata()?;
        let size = meta.len();
        t.size = size;
        t.modified = meta.modified().ok();
        // A file rewritten to the same size changes nothing but its bytes:
        // an idle file is checked too (two small reads from the page cache).
        let mut progress = Progress::Idle;
        if t.gz.is_none()
            && t.ident.is_some()
            && (size != t.verified_size || size <= t.offset)
            && self.rewritten(id, size)?
        {
            progress = Progress::Read;
        }
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        // Decided when the file is identified, not when it is opened: a
        // compressor's output is empty for a moment after its creation, and
        // a parked file's inode may since hold a compressed file.
        if t.ident.is_none() && t.gz.is_none() && t.handle().is_ok_and(gzip_magic) {
            t.gz = Some(Gz::default());
        }
        if t.gz.is_some() {
            return self.read_gz(id, size);
        }
        if t.ident.is_none() && !self.identify_plain(id, size, closing)? {
            return Ok(progress);
        }
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        if size <= t.offset {
            if closing && t.cutter.has_open_record() {
                return self.cut_and_commit(id, &[], true);
            }
            return self.flush_stale(id).map(
                |flushed| {
                    if flushed {
                        Progress::Read
                    } else {
                        progress
                    }
                },
            );
        }
        let chunk = READ_CHUNK.max(t.cutter.max_line() + 1);
        let want = ((size - t.offset) as usize).min(chunk);
        let mut buf = std::mem::take(&mut self.read_buf);
        buf.resize(want, 0);
        let n = read_full_at(t.handle()?, &mut buf, t.offset)?;
        buf.truncate(n);
        let at_end = closing && t.offset + n as u64 >= size;
        let result = self.cut_and_commit(id, &buf, at_end);
        self.read_buf = buf;
        result
    }

    /// Fingerprints a file and decides where to read it from. False while it
    /// has no first line yet.
    fn identify_plain(
        &mut self,
        id: (u64, u64),
        size: u64,
        closing: bool,
    ) -> Result<bool, ReadError> {
        let fp_bytes = self.config.fingerprint_bytes;
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        let mut start = vec![0u8; fp_bytes];
        let file = t.handle()?;
        let n = read_full_at(file, &mut start, 0)?;
        start.truncate(n);
        let Some(fp) = identity::fingerprint_of(&start, fp_bytes, closing) else {
            return Ok(false);
        };
        let mut tail_at = |offset: u64, len: u16| -> std::io::Result<Option<Tail>> {
            tail_of_file(file, offset, len)
        };
        let candidates = candidates(self.sink.as_ref(), &self.name, &fp)?;
        let file_id = file_identity(file, id);
        let resolution =
            identity::resolve(&self.name, &fp, id, &file_id, &candidates, &mut tail_at)?;
        let Some(resolution) = self.settle_copy(id, &fp, resolution) else {
            return Ok(false);
        };
        let key = identity::checkpoint_key(&self.name, &fp, id.0, id.1);
        // A checkpoint under this key that is not this stream's: the file was
        // rewritten while we were away, or its inode belonged to another file.
        let new_stream = match &resolution {
            Resolution::Resume(cp) => cp.stream.as_str(),
            Resolution::Fresh { stream } => stream.as_str(),
            Resolution::Copy { .. } => "",
        };
        retire(self.sink.as_ref(), &key, Some(new_stream))?;
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        let start_at_end = self.config.start_at == StartAt::End && t.at_startup;
        if let Some(old) = t.slot.take() {
            self.sink.close_stream(old);
        }
        t.cutter.resume(false);
        let stream = match resolution {
            Resolution::Resume(cp) | Resolution::Copy { checkpoint: cp, .. } => {
                // Formats that name the session in the file name (Codex) read it here.
                t.slot = Some(self.sink.open_stream(Some(&t.path), Some(&cp.parser_state)));
                t.offset = cp.offset;
                t.cutter.resume(cp.skipping);
                t.committed = (cp.offset, cp.tail);
                debug!(source = %self.name, path = %t.path.display(), fingerprint = %fp, offset = cp.offset, stream = %cp.stream, "file identified; resuming");
                cp.stream
            }
            Resolution::Fresh { stream } => {
                t.slot = Some(self.sink.open_stream(Some(&t.path), None));
                t.offset = if start_at_end {
                    end_of_last_line(t.handle()?, size)?
                } else {
                    0
                };
                t.committed = (0, Tail::default());
                debug!(source = %self.name, path = %t.path.display(), fingerprint = %fp, offset = t.offset, stream = %stream, "new file");
                stream
            }
        };
        t.verified_size = size;
        t.ident = Some(Ident {
            fingerprint: fp,
            key,
            stream,
        });
        if t.offset > 0 && t.committed.0 != t.offset {
            // Pin a start at the end, so a restart does not move it.
            self.sink.discard_held();
            self.commit(id)?;
        }
        Ok(true)
    }

    /// A file that looks like a copy of another continues that stream, unless
    /// the other is still followed at its path: then it waits `rotate_wait`
    /// (copytruncate truncates the original right after copying, a rotation
    /// into `.gz` deletes it), and a file whose original is still there after
    /// that merely starts the same way (syslog and messages): a new stream.
    /// None while waiting.
    fn settle_copy(
        &mut self,
        id: (u64, u64),
        fingerprint: &str,
        resolution: Resolution,
    ) -> Option<Resolution> {
        let Resolution::Copy {
            checkpoint,
            of,
            fresh,
        } = resolution
        else {
            if let Some(t) = self.tracked.get_mut(&id) {
                t.copy_wait_since = None;
            }
            return Some(resolution);
        };
        let rotate_wait = self.config.rotate_wait;
        let waited_out = self
            .tracked
            .get(&id)?
            .copy_wait_since
            .is_some_and(|since| since.elapsed() >= rotate_wait);
        let mut original_here = self.still_followed(id, of, fingerprint, &checkpoint);
        if original_here && waited_out {
            // Judge on what is there now, not on the last scan's view: a
            // tailer busy catching up may not have scanned since the
            // original was deleted or truncated.
            self.scan();
            original_here = self.still_followed(id, of, fingerprint, &checkpoint);
        }
        let t = self.tracked.get_mut(&id)?;
        if !original_here {
            t.copy_wait_since = None;
            return Some(Resolution::Resume(checkpoint));
        }
        let since = *t.copy_wait_since.get_or_insert_with(Instant::now);
        if since.elapsed() < rotate_wait {
            return None;
        }
        t.copy_wait_since = None;
        debug!(source = %self.name, path = %t.path.display(), "starts like a file still followed, but is not a rotated copy of it: a stream of its own");
        Some(Resolution::Fresh { stream: fresh })
    }

    /// Whether the file whose `copied` checkpoint the file `id` holds is
    /// still followed at a path the globs match. The device and inode `of`
    /// in the checkpoint's key are only a hint: a file deleted while the
    /// daemon was stopped (nothing held it open) gives its inode to the next
    /// file created, and a file truncated and rewritten in place keeps its
    /// inode but not its bytes. So the file found there must also be the
    /// checkpoint's stream, or hold its bytes.
    fn still_followed(
        &self,
        id: (u64, u64),
        of: Option<(u64, u64)>,
        fingerprint: &str,
        copied: &Checkpoint,
    ) -> bool {
        let Some((o, t)) = of
            .filter(|&o| o != id)
            .and_then(|o| Some((o, self.tracked.get(&o)?)))
        else {
            return false;
        };
        if t.gone_since.is_some() {
            return false;
        }
        // Parked and changed since: what was known of it may be stale (it
        // was truncated, or its inode holds another file now).
        let stale = t.file.is_none()
            && stat(&t.path, self.config.follow_symlinks)
                .map(|m| Some((m.len(), m.modified().ok())))
                .ok()
                != Some(t.parked_stat);
        match &t.ident {
            Some(ident) if !stale => ident.stream == copied.stream,
            // Not identified yet (found in the same scan), or parked and
            // changed: it is the original if it would resume the checkpoint,
            // as resolve() checks.
            _ if t.gz.is_none() => {
                // A parked file is opened for the look, and closed after it.
                let opened;
                let file = match &t.file {
                    Some(f) => f,
                    None => match self.open_again(o) {
                        Ok(Some(f)) => {
                            opened = f;
                            &opened
                        }
                        _ => return false,
                    },
                };
                let fp_bytes = self.config.fingerprint_bytes;
                let mut start = vec![0u8; fp_bytes];
                let same_start = read_full_at(file, &mut start, 0).is_ok_and(|n| {
                    identity::fingerprint_of(&start[..n], fp_bytes, false).as_deref()
                        == Some(fingerprint)
                });
                same_start
                    && tail_of_file(file, copied.offset, copied.tail.len)
                        .is_ok_and(|tail| tail == Some(copied.tail))
            }
            _ => false,
        }
    }

    /// Checks that a file that changed size is still the one being read: a
    /// file truncated, or truncated and rewritten past the old position,
    /// starts a new stream from its beginning.
    fn rewritten(&mut self, id: (u64, u64), size: u64) -> Result<bool, ReadError> {
        let fp_bytes = self.config.fingerprint_bytes;
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        let Some(ident) = &t.ident else {
            return Ok(false);
        };
        let shrank = size < t.offset;
        let changed = shrank || {
            let mut start = vec![0u8; fp_bytes];
            let file = t.handle()?;
            let n = read_full_at(file, &mut start, 0)?;
            start.truncate(n);
            let fp = identity::fingerprint_of(&start, fp_bytes, false);
            fp.as_deref() != Some(ident.fingerprint.as_str())
                || tail_of_file(file, t.committed.0, t.committed.1.len)? != Some(t.committed.1)
        };
        if !changed {
            t.verified_size = size;
            return Ok(false);
        }
        info!(source = %self.name, path = %t.path.display(), offset = t.offset, size, "file was truncated or rewritten; reading it again from the start as a new stream");
        // The checkpoint stays until the new stream's first commit replaces it
        // (resolve() then names the new stream after the old one). A copy of
        // the old content (copytruncate) found later must still recognise it,
        // so it is kept under a key of its own, as a closed file.
        retire(self.sink.as_ref(), &ident.key, None)?;
        t.ident = None;
        t.offset = 0;
        t.verified_size = 0;
        t.cutter.resume(false);
        Ok(true)
    }

    /// Runs `f` with the file's line cutter, a callback that hands each
    /// record it emits to the sink (which holds nothing before), and a test
    /// of whether the events held reached what one commit may hold.
    fn cut_with<R>(
        &mut self,
        id: (u64, u64),
        f: impl FnOnce(&mut LineCutter, &mut dyn FnMut(Line<'_>), &mut dyn FnMut() -> bool) -> R,
    ) -> Result<R, ReadError> {
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        let sink = self.sink.as_mut();
        sink.discard_held();
        let read_at = Timestamp::now();
        let Tracked {
            cutter,
            slot,
            ident,
            path,
            ..
        } = t;
        let slot = *slot.get_or_insert_with(|| sink.open_stream(Some(path), None));
        let stream = ident
            .as_ref()
            .map(|i| i.stream.as_str())
            .unwrap_or_default();
        let held = std::cell::Cell::new(0usize);
        let sink = std::cell::RefCell::new(sink);
        let mut emit = |line: Line<'_>| {
            let mut sink = sink.borrow_mut();
            sink.record(
                slot,
                RecordIn {
                    stream,
                    position: line.position,
                    bytes: line.bytes,
                    read_at,
                },
            );
            held.set(sink.held_bytes());
        };
        let mut full = || held.get() >= COMMIT_MAX_EVENT_BYTES;
        Ok(f(cutter, &mut emit, &mut full))
    }

    /// Emits a multiline record whose timeout passed; true if one was.
    fn flush_stale(&mut self, id: (u64, u64)) -> Result<bool, ReadError> {
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        if !t.cutter.has_open_record() {
            return Ok(false);
        }
        let flushed = self.cut_with(id, |cutter, sink, _| cutter.flush_if_stale(sink))?;
        if flushed {
            self.commit(id)?;
        }
        Ok(flushed)
    }

    /// Cuts `buf` (file bytes at the file's offset) into records, parses them
    /// and commits the events with the new checkpoint.
    fn cut_and_commit(
        &mut self,
        id: (u64, u64),
        buf: &[u8],
        at_end: bool,
    ) -> Result<Progress, ReadError> {
        let base = self.tracked.get(&id).ok_or_else(gone)?.offset;
        let (consumed, truncated) = self.cut_with(id, |cutter, sink, full| {
            let before = cutter.stats.truncated;
            let consumed = cutter.feed_until(buf, base, at_end, sink, full);
            (consumed, cutter.stats.truncated - before)
        })?;
        if truncated > 0 {
            self.stats
                .truncated_lines
                .fetch_add(truncated, Ordering::Relaxed);
        }
        if consumed == 0 && self.sink.held_bytes() == 0 {
            return self
                .flush_stale(id)
                .map(|f| if f { Progress::Read } else { Progress::Idle });
        }
        self.tracked.get_mut(&id).ok_or_else(gone)?.offset += consumed as u64;
        self.stats
            .bytes_read
            .fetch_add(consumed as u64, Ordering::Relaxed);
        self.commit(id)?;
        Ok(Progress::Read)
    }

    /// Has the sink commit the events it holds with the file's checkpoint.
    fn commit(&mut self, id: (u64, u64)) -> Result<(), ReadError> {
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        let Some(ident) = &t.ident else {
            return Ok(());
        };
        let position = t.cutter.safe_position(t.offset);
        let tail = match &t.gz {
            // A compressed file is never rewritten in place: no tail needed.
            Some(_) => Tail::default(),
            None => tail_of_file(t.handle()?, position, TAIL_BYTES as u16)?.unwrap_or_default(),
        };
        let complete = t.gz.as_ref().is_some_and(|g| g.done);
        let cp = Checkpoint {
            offset: position,
            skipping: t.cutter.skipping(),
            complete,
            tail,
            stream: ident.stream.clone(),
            closed_at: 0,
            disk_size: if complete { t.size } else { 0 },
            path: t.path.clone(),
            parser_state: t
                .slot
                .map(|slot| self.sink.stream_state(slot))
                .unwrap_or_default(),
        };
        self.sink.commit(&ident.key, &cp.encode())?;
        t.committed = (position, tail);
        Ok(())
    }

    /// Reads a compressed file: recognised by the fingerprint of its
    /// decompressed start, so a rotated copy of a file already read is not
    /// read again; a `.gz` never seen before is read whole (backfill).
    fn read_gz(&mut self, id: (u64, u64), size: u64) -> Result<Progress, ReadError> {
        let fp_bytes = self.config.fingerprint_bytes;
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        let gz = t.gz.as_mut().ok_or_else(gone)?;
        if gz.done || gz.failed_at_size == Some(size) {
            return Ok(Progress::Idle);
        }
        if t.ident.is_none() {
            let start = {
                let mut d = open_gz(t.handle()?)?;
                identity::read_start(&mut d, fp_bytes)
            };
            let start = match start {
                Ok(s) => s,
                Err(e) => return self.gz_failed(id, size, e),
            };
            let Some(fp) = identity::fingerprint_of(&start, fp_bytes, start.len() < fp_bytes)
            else {
                t.gz.as_mut().ok_or_else(gone)?.done = true;
                return Ok(Progress::Idle); // empty
            };
            let key = identity::checkpoint_key(&self.name, &fp, id.0, id.1);
            let candidates = candidates(self.sink.as_ref(), &self.name, &fp)?;
            let own_complete = candidates.iter().any(|c| {
                c.dev_ino == Some(id) && c.checkpoint.complete && c.checkpoint.disk_size == size
            });
            if own_complete {
                t.gz.as_mut().ok_or_else(gone)?.done = true;
                return Ok(Progress::Idle);
            }
            let file = t.handle()?;
            let mut tail_at = |offset: u64, len: u16| -> std::io::Result<Option<Tail>> {
                gz_tail(file, offset, len)
            };
            let file_id = file_identity(file, id);
            let resolution =
                match identity::resolve(&self.name, &fp, id, &file_id, &candidates, &mut tail_at) {
                    Ok(r) => r,
                    Err(e) => return self.gz_failed(id, size, e),
                };
            let Some(resolution) = self.settle_copy(id, &fp, resolution) else {
                return Ok(Progress::Idle);
            };
            let new_stream = match &resolution {
                Resolution::Resume(cp) => cp.stream.as_str(),
                Resolution::Fresh { stream } => stream.as_str(),
                Resolution::Copy { .. } => "",
            };
            retire(self.sink.as_ref(), &key, Some(new_stream))?;
            let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
            if let Some(old) = t.slot.take() {
                self.sink.close_stream(old);
            }
            let stream = match resolution {
                Resolution::Resume(cp) | Resolution::Copy { checkpoint: cp, .. } => {
                    t.slot = Some(self.sink.open_stream(Some(&t.path), Some(&cp.parser_state)));
                    t.offset = cp.offset;
                    t.cutter.resume(cp.skipping);
                    info!(source = %self.name, path = %t.path.display(), offset = cp.offset, "compressed file continues a stream already read; reading only what is new");
                    cp.stream
                }
                Resolution::Fresh { stream } => {
                    t.slot = Some(self.sink.open_stream(Some(&t.path), None));
                    t.offset = 0;
                    info!(source = %self.name, path = %t.path.display(), "compressed file never read; reading it whole");
                    stream
                }
            };
            t.ident = Some(Ident {
                fingerprint: fp,
                key,
                stream,
            });
        }
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        let Tracked { file, gz, .. } = t;
        let gz = gz.as_mut().ok_or_else(gone)?;
        if gz.decoder.is_none() && !gz.decoded_all {
            let file = file.as_ref().ok_or_else(gone)?;
            let mut d = Box::new(open_gz(file)?);
            let skip = t.offset;
            match std::io::copy(&mut (&mut d).take(skip), &mut std::io::sink()) {
                Ok(n) if n == skip => {}
                Ok(_) => {
                    // Shorter than the checkpoint: nothing new in it.
                    gz.done = true;
                    return Ok(Progress::Idle);
                }
                Err(e) => return self.gz_failed(id, size, e),
            }
            gz.decoder = Some(d);
            gz.carry.clear();
        }
        let mut buf = std::mem::take(&mut gz.carry);
        let have = buf.len();
        let mut n = 0;
        let mut at_end = gz.decoded_all;
        if !at_end {
            let chunk = READ_CHUNK.max(t.cutter.max_line() + 1);
            buf.resize(have + chunk, 0);
        }
        while have + n < buf.len() {
            let decoder = gz.decoder.as_mut().ok_or_else(gone)?;
            match decoder.read(&mut buf[have + n..]) {
                Ok(0) => {
                    at_end = true;
                    break;
                }
                Ok(r) => n += r,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    buf.truncate(have);
                    return self.gz_failed(id, size, e);
                }
            }
        }
        buf.truncate(have + n);
        if at_end {
            gz.decoded_all = true;
            gz.decoder = None;
        }
        let before = t.offset;
        let result = self.cut_and_commit(id, &buf, at_end);
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        let consumed = (t.offset - before) as usize;
        // What was not consumed (a partial line, or lines past what one
        // commit holds) waits for the next round.
        buf.drain(..consumed.min(buf.len()));
        let rest = buf.len();
        if let Some(gz) = t.gz.as_mut() {
            gz.carry = buf;
            if at_end && rest == 0 {
                gz.done = true;
            }
        }
        result?;
        if at_end && rest == 0 {
            // Record the file as read whole, so a restart need not decompress it.
            self.sink.discard_held();
            self.commit(id)?;
        }
        Ok(Progress::Read)
    }

    fn gz_failed(
        &mut self,
        id: (u64, u64),
        size: u64,
        e: std::io::Error,
    ) -> Result<Progress, ReadError> {
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        debug!(source = %self.name, path = %t.path.display(), error = %e, "cannot decompress (yet); retrying when the file changes");
        if let Some(gz) = t.gz.as_mut() {
            gz.decoder = None;
            gz.decoded_all = false;
            gz.carry.clear();
            gz.failed_at_size = Some(size);
        }
        Ok(Progress::Idle)
    }

    /// Marks checkpoints of files no longer followed with the time they were
    /// last seen, and forgets those gone longer than `checkpoint_retention`.
    fn sweep_checkpoints(&mut self) -> Result<(), SourceError> {
        self.last_sweep = Some(Instant::now());
        let err = |err| SourceError::Store {
            source_name: self.name.clone(),
            err,
        };
        let live: HashSet<&[u8]> = self
            .tracked
            .values()
            .filter_map(|t| t.ident.as_ref().map(|i| i.key.as_slice()))
            .collect();
        let now = unix_now();
        let retention = self.config.checkpoint_retention.as_secs();
        let all = self
            .sink
            .checkpoints_with_prefix(&identity::source_prefix(&self.name))
            .map_err(err)?;
        for (key, value) in all {
            if live.contains(&key[..]) {
                continue;
            }
            let Some(mut cp) = Checkpoint::decode(&value) else {
                continue;
            };
            if cp.closed_at == 0 {
                // Tracked but not yet identified files have no key in `live`,
                // and neither do files ignored by age: only mark, never drop.
                // An identified file on the key's inode is another file that
                // reused the inode of one deleted while we were stopped.
                let maybe_unidentified = self
                    .tracked
                    .iter()
                    .any(|(id, t)| t.ident.is_none() && identity::key_dev_ino(&key) == Some(*id));
                if !maybe_unidentified {
                    cp.closed_at = now;
                    self.sink.put_checkpoint(&key, &cp.encode()).map_err(err)?;
                }
            } else if now.saturating_sub(cp.closed_at) > retention {
                debug!(source = %self.name, key = %String::from_utf8_lossy(&key), "forgetting the checkpoint of a file gone longer than the retention");
                self.sink.remove_checkpoint(&key).map_err(err)?;
            }
        }
        Ok(())
    }
}

/// Keeps the checkpoint at `key` under a key of its own, as a closed file,
/// before a new stream of the same file replaces it: a copy of the old
/// content (copytruncate) found later must still recognise it.
/// `keep` names the stream about to be written under `key`: a checkpoint of
/// that same stream stays where it is. (A reused inode gives a new file the
/// key of a deleted one.)
fn retire(store: &dyn Sink, key: &[u8], keep: Option<&str>) -> Result<(), SinkError> {
    let Some(value) = store.checkpoint(key)? else {
        return Ok(());
    };
    let Some(mut cp) = Checkpoint::decode(&value) else {
        return Ok(());
    };
    if keep == Some(cp.stream.as_str()) {
        return Ok(());
    }
    let mut retired = key.to_vec();
    retired.extend_from_slice(
        format!(".{}", identity::short_hash(&[cp.stream.as_bytes()])).as_bytes(),
    );
    cp.closed_at = unix_now();
    store.put_checkpoint(&retired, &cp.encode())?;
    // Closed until the new stream's first commit: were we to stop before it,
    // the next start must not take the old position for this file's.
    store.put_checkpoint(key, &cp.encode())
}

/// Names a file for as long as it exists: device, inode and, where the file
/// system records it, birth time (which tells a reused inode apart).
fn file_identity(file: &File, (dev, ino): (u64, u64)) -> String {
    let born = file
        .metadata()
        .and_then(|m| m.created())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| format!("-{:x}", d.as_nanos()))
        .unwrap_or_default();
    format!("{dev:x}-{ino:x}{born}")
}

fn gone() -> ReadError {
    ReadError::Io(std::io::Error::other("file no longer tracked"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The stored checkpoints of a source's files with this fingerprint.
fn candidates(store: &dyn Sink, source: &str, fp: &str) -> Result<Vec<Candidate>, SinkError> {
    Ok(store
        .checkpoints_with_prefix(&identity::key_prefix(source, fp))?
        .into_iter()
        .filter_map(|(k, v)| {
            Some(Candidate {
                dev_ino: identity::key_dev_ino(&k),
                checkpoint: Checkpoint::decode(&v)?,
            })
        })
        .collect())
}

/// The metadata of what is at `path`: of a link's target only when links
/// are followed.
fn stat(path: &Path, follow_symlinks: bool) -> std::io::Result<std::fs::Metadata> {
    if follow_symlinks {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(r) => n += r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Tail of the `len` bytes before `offset`; None if the file is shorter.
fn tail_of_file(file: &File, offset: u64, len: u16) -> std::io::Result<Option<Tail>> {
    let len = u64::from(len).min(offset);
    let mut buf = vec![0u8; len as usize];
    let n = read_full_at(file, &mut buf, offset - len)?;
    // A full read reaches `offset`; only an empty tail needs the size.
    let long_enough = n as u64 == len && (len > 0 || file.metadata()?.len() >= offset);
    Ok(long_enough.then(|| Tail::of(&buf)))
}

/// Tail of the decompressed bytes before `offset`.
fn gz_tail(file: &File, offset: u64, len: u16) -> std::io::Result<Option<Tail>> {
    let len = u64::from(len).min(offset);
    let mut d = open_gz(file)?;
    let skipped = std::io::copy(&mut (&mut d).take(offset - len), &mut std::io::sink())?;
    if skipped < offset - len {
        return Ok(None);
    }
    let mut buf = Vec::with_capacity(len as usize);
    (&mut d).take(len).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 == len).then(|| Tail::of(&buf)))
}

fn open_gz(file: &File) -> std::io::Result<MultiGzDecoder<BufReader<File>>> {
    let f = file.try_clone()?;
    // try_clone shares the position: read from the start through our own handle.
    let f = reopen_at_start(f)?;
    Ok(MultiGzDecoder::new(BufReader::with_capacity(256 << 10, f)))
}

fn reopen_at_start(mut f: File) -> std::io::Result<File> {
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0))?;
    Ok(f)
}

fn gzip_magic(file: &File) -> bool {
    let mut magic = [0u8; 2];
    matches!(file.read_at(&mut magic, 0), Ok(2)) && magic == [0x1f, 0x8b]
}

/// Where `start_at = "end"` starts: after the last complete line.
fn end_of_last_line(file: &File, size: u64) -> std::io::Result<u64> {
    let window = size.min(64 << 10);
    let mut buf = vec![0u8; window as usize];
    let n = read_full_at(file, &mut buf, size - window)?;
    Ok(match memchr::memrchr(b'\n', &buf[..n]) {
        Some(i) => size - window + i as u64 + 1,
        None => size,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Read,
    Rescan,
}

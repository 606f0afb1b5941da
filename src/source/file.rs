//! The file source: finds the files a source's globs match, follows each from
//! its checkpoint, and commits the events of every chunk it reads together
//! with the new position.
//!
//! A file is identified by a fingerprint of its first line (at most
//! [`FINGERPRINT_MAX`] bytes), not by its path, so a renamed file keeps its
//! checkpoint and a new file at an old path starts from its beginning.
//! Change notices come from `notify`; a poll every `poll_interval` is the
//! fallback for file systems that miss them.
//!
//! The tailer runs on a thread of its own: file reads and the queue's fsync
//! are blocking calls and would stall an async runtime.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use globset::{Glob, GlobSet, GlobSetBuilder};
use notify::Watcher;
use tracing::{debug, info, warn};

use super::SourceStats;
use crate::config::SourceConfig;
use crate::event::Timestamp;
use crate::parse::{parse_counted, EventBuf, ParseStats, Parser, Record};
use crate::queue::{Queue, QueueError};

/// Most bytes read from one file before the tailer moves on to the next.
const READ_CHUNK: usize = 4 << 20;
/// The fingerprint covers the first line, or this many bytes if it is longer.
pub const FINGERPRINT_MAX: usize = 1024;
/// How long a file that disappeared from the globs stays open after its end.
const ROTATE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source `{source_name}`: {err}")]
    Queue {
        source_name: String,
        #[source]
        err: QueueError,
    },
}

/// A file being followed.
struct Tracked {
    path: PathBuf,
    file: File,
    /// Hex fingerprint, once the file has a first line.
    fingerprint: Option<String>,
    /// Stream identity: `<source>/<fingerprint>`.
    stream: String,
    offset: u64,
    /// The file no longer matches at its path (renamed or deleted).
    gone_since: Option<Instant>,
    /// This file's own parser: state across lines (sessions, pending calls)
    /// belongs to one file, and is saved with its checkpoint.
    parser: Box<dyn Parser>,
}

/// Checkpoint value: the offset (8 bytes, little-endian), then the path it was
/// last seen at, then, when the parser keeps state, a NUL byte and the state.
/// A Unix path holds no NUL, and checkpoints written before parsers had state
/// (offset and path only) decode with empty state.
pub fn encode_checkpoint(offset: u64, path: &Path, parser_state: &[u8]) -> Vec<u8> {
    let path = path.as_os_str().as_encoded_bytes();
    let mut v = Vec::with_capacity(8 + path.len() + 1 + parser_state.len());
    v.extend_from_slice(&offset.to_le_bytes());
    v.extend_from_slice(path);
    if !parser_state.is_empty() {
        v.push(0);
        v.extend_from_slice(parser_state);
    }
    v
}

pub fn decode_checkpoint_offset(value: &[u8]) -> Option<u64> {
    value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

/// The parser state stored in a checkpoint value; empty if it has none.
pub fn decode_checkpoint_state(value: &[u8]) -> &[u8] {
    let rest = value.get(8..).unwrap_or_default();
    match memchr::memchr(0, rest) {
        Some(i) => &rest[i + 1..],
        None => &[],
    }
}

pub fn checkpoint_key(source: &str, fingerprint: &str) -> Vec<u8> {
    format!("file/{source}/{fingerprint}").into_bytes()
}

/// Fingerprint of a file's start, or None while it has no complete first line
/// and is shorter than [`FINGERPRINT_MAX`].
fn fingerprint(file: &File) -> std::io::Result<Option<String>> {
    let mut buf = vec![0u8; FINGERPRINT_MAX];
    let mut n = 0;
    while n < buf.len() {
        let r = file.read_at(&mut buf[n..], n as u64)?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let end = match buf[..n].iter().position(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if n == FINGERPRINT_MAX => n,
        None => return Ok(None),
    };
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &buf[..end]);
    Ok(Some(id.simple().to_string()[..16].to_string()))
}

/// The include globs of a source, with what to leave out.
pub struct FileMatcher {
    include: Vec<String>,
    exclude: GlobSet,
}

impl FileMatcher {
    pub fn new(config: &SourceConfig) -> Result<FileMatcher, globset::Error> {
        let mut b = GlobSetBuilder::new();
        for pattern in &config.exclude {
            b.add(Glob::new(pattern)?);
        }
        Ok(FileMatcher {
            include: config.include.clone(),
            exclude: b.build()?,
        })
    }

    /// The regular files that match now, sorted.
    pub fn matching_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for pattern in &self.include {
            let Ok(paths) = glob::glob(pattern) else {
                continue; // validated at config load
            };
            for path in paths.flatten() {
                if self.exclude.is_match(&path) || !path.is_file() {
                    continue;
                }
                out.push(path);
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Directories to watch for changes: the fixed prefix of each glob.
    fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .include
            .iter()
            .map(|p| {
                let fixed: PathBuf = Path::new(p)
                    .components()
                    .take_while(|c| {
                        !c.as_os_str()
                            .to_string_lossy()
                            .contains(['*', '?', '[', '{'])
                    })
                    .collect();
                if fixed.as_os_str() == p.as_str() {
                    fixed.parent().map(Path::to_path_buf).unwrap_or(fixed)
                } else {
                    fixed
                }
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

pub struct FileSource {
    name: String,
    config: SourceConfig,
    matcher: FileMatcher,
    /// The factory of per-file parsers: each tracked file gets `fresh()` of it.
    parser: Box<dyn Parser>,
    queue: Arc<Queue>,
    stats: Arc<SourceStats>,
    shutdown: Arc<AtomicBool>,
    tracked: HashMap<(u64, u64), Tracked>,
    events: EventBuf,
    read_buf: Vec<u8>,
    parse_stats: ParseStats,
}

impl FileSource {
    pub fn new(
        config: SourceConfig,
        parser: Box<dyn Parser>,
        queue: Arc<Queue>,
        stats: Arc<SourceStats>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<FileSource, globset::Error> {
        Ok(FileSource {
            name: config.name.get_ref().clone(),
            matcher: FileMatcher::new(&config)?,
            config,
            parser,
            queue,
            stats,
            shutdown,
            tracked: HashMap::new(),
            events: EventBuf::default(),
            read_buf: Vec::new(),
            parse_stats: ParseStats::default(),
        })
    }

    /// Follows the files until shutdown is requested.
    pub fn run(mut self) -> Result<(), SourceError> {
        // Capacity 1 and try_send: notices coalesce instead of piling up.
        let (wake_tx, wake_rx) = mpsc::sync_channel::<Wake>(1);
        let _watcher = self.start_watcher(wake_tx);
        let mut last_scan: Option<Instant> = None;
        while !self.shutdown.load(Ordering::SeqCst) {
            if last_scan.is_none_or(|t| t.elapsed() >= self.config.glob_interval) {
                self.scan();
                last_scan = Some(Instant::now());
            }
            let progressed = self.read_round()?;
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
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                warn!(source = %self.name, error = %e, "no change notices; polling every {:?}", self.config.poll_interval);
                return None;
            }
        };
        for dir in self.matcher.watch_dirs() {
            if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::Recursive) {
                debug!(source = %self.name, dir = %dir.display(), error = %e, "cannot watch; polling it");
            }
        }
        Some(watcher)
    }

    /// Matches the globs again: opens new files, notes files that went away.
    fn scan(&mut self) {
        let mut seen = Vec::new();
        for path in self.matcher.matching_files() {
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(_) => continue, // gone between glob and stat
            };
            let id = (meta.dev(), meta.ino());
            seen.push(id);
            if let Some(t) = self.tracked.get_mut(&id) {
                t.path = path;
                t.gone_since = None;
                continue;
            }
            match File::open(&path) {
                Ok(file) => {
                    debug!(source = %self.name, path = %path.display(), "following file");
                    self.tracked.insert(
                        id,
                        Tracked {
                            path,
                            file,
                            fingerprint: None,
                            stream: String::new(),
                            offset: 0,
                            gone_since: None,
                            parser: self.parser.fresh(),
                        },
                    );
                }
                Err(e) => {
                    warn!(source = %self.name, path = %path.display(), error = %e, "cannot open file; will retry")
                }
            }
        }
        let now = Instant::now();
        for (id, t) in self.tracked.iter_mut() {
            if !seen.contains(id) && t.gone_since.is_none() {
                t.gone_since = Some(now);
            }
        }
    }

    /// Reads one chunk from every file; true if anything was read.
    fn read_round(&mut self) -> Result<bool, SourceError> {
        let mut progressed = false;
        let mut ids: Vec<(u64, u64)> = self.tracked.keys().copied().collect();
        ids.sort_by(|a, b| self.tracked[a].path.cmp(&self.tracked[b].path));
        let mut finished = Vec::new();
        for id in ids {
            if self.shutdown.load(Ordering::SeqCst) {
                break;
            }
            match self.read_file(id) {
                Ok(true) => progressed = true,
                Ok(false) => {
                    let t = &self.tracked[&id];
                    if t.gone_since.is_some_and(|g| g.elapsed() >= ROTATE_WAIT) {
                        finished.push(id);
                    }
                }
                Err(ReadError::Io(e)) => {
                    let t = &self.tracked[&id];
                    warn!(source = %self.name, path = %t.path.display(), error = %e, "read failed; will retry");
                }
                Err(ReadError::Queue(err)) => {
                    return Err(SourceError::Queue {
                        source_name: self.name.clone(),
                        err,
                    })
                }
            }
        }
        for id in finished {
            if let Some(t) = self.tracked.remove(&id) {
                info!(source = %self.name, path = %t.path.display(), "file rotated away and read to its end; closed");
            }
        }
        Ok(progressed)
    }

    fn read_file(&mut self, id: (u64, u64)) -> Result<bool, ReadError> {
        let Some(t) = self.tracked.get_mut(&id) else {
            return Ok(false);
        };
        let size = t.file.metadata().map_err(ReadError::Io)?.len();
        if t.fingerprint.is_none() {
            let Some(fp) = fingerprint(&t.file).map_err(ReadError::Io)? else {
                return Ok(false);
            };
            t.stream = format!("{}/{}", self.name, fp);
            let stored = self
                .queue
                .checkpoint(&checkpoint_key(&self.name, &fp))
                .map_err(ReadError::Queue)?;
            t.offset = stored
                .as_deref()
                .and_then(decode_checkpoint_offset)
                .unwrap_or(0);
            t.parser = self.parser.fresh();
            if t.offset > size {
                t.offset = 0;
            } else if let Some(value) = &stored {
                t.parser.load_state(decode_checkpoint_state(value));
            }
            debug!(source = %self.name, path = %t.path.display(), fingerprint = %fp, offset = t.offset, "file identified");
            t.fingerprint = Some(fp);
        }
        if size < t.offset {
            // Truncated in place (copytruncate): it is a new stream.
            info!(source = %self.name, path = %t.path.display(), "file shrank below the read position; reading it again from the start");
            t.fingerprint = None;
            t.offset = 0;
            return Ok(true);
        }
        if size == t.offset {
            return Ok(false);
        }
        let want = ((size - t.offset) as usize).min(READ_CHUNK);
        let buf = &mut self.read_buf;
        buf.resize(want, 0);
        let mut n = 0;
        while n < want {
            let r = t
                .file
                .read_at(&mut buf[n..], t.offset + n as u64)
                .map_err(ReadError::Io)?;
            if r == 0 {
                break;
            }
            n += r;
        }
        buf.truncate(n);
        let consumed = match memchr::memrchr(b'\n', buf) {
            Some(i) => i + 1,
            // A line longer than a whole chunk: take the chunk as a line rather
            // than buffer without bound.
            None if n == READ_CHUNK => n,
            None => return Ok(false), // a partial last line: wait for its newline
        };
        let read_at = Timestamp::now();
        self.events.clear();
        let mut pos = 0usize;
        while pos < consumed {
            let end = memchr::memchr(b'\n', &buf[pos..consumed])
                .map(|i| pos + i)
                .unwrap_or(consumed);
            let (line, repaired) = crate::parse::clean_line(&buf[pos..end]);
            if repaired {
                self.stats
                    .invalid_utf8_lines
                    .fetch_add(1, Ordering::Relaxed);
            }
            let line: &[u8] = &line;
            let rec = Record {
                stream: &t.stream,
                position: t.offset + pos as u64,
                line,
                read_at,
            };
            parse_counted(
                t.parser.as_mut(),
                &rec,
                &mut self.events,
                &mut self.parse_stats,
            );
            pos = end + 1;
        }
        let new_offset = t.offset + consumed as u64;
        let fp = t.fingerprint.as_deref().unwrap_or_default();
        self.queue
            .commit(
                &self.events,
                &checkpoint_key(&self.name, fp),
                &encode_checkpoint(new_offset, &t.path, &t.parser.save_state()),
            )
            .map_err(ReadError::Queue)?;
        t.offset = new_offset;
        self.stats
            .bytes_read
            .fetch_add(consumed as u64, Ordering::Relaxed);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut p) = self.stats.parse.lock() {
            *p = self.parse_stats.clone();
        }
        Ok(true)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Read,
    Rescan,
}

enum ReadError {
    Io(std::io::Error),
    Queue(QueueError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_carry_parser_state_and_old_ones_still_decode() {
        let path = Path::new("/var/log/agents/a.jsonl");
        let old = encode_checkpoint(1234, path, &[]);
        assert_eq!(decode_checkpoint_offset(&old), Some(1234));
        assert_eq!(decode_checkpoint_state(&old), b"");
        // Exactly the layout written before parser state existed.
        let mut legacy = 1234u64.to_le_bytes().to_vec();
        legacy.extend_from_slice(path.as_os_str().as_encoded_bytes());
        assert_eq!(old, legacy);
        let new = encode_checkpoint(99, path, b"{\"calls\":[]}\0x");
        assert_eq!(decode_checkpoint_offset(&new), Some(99));
        assert_eq!(decode_checkpoint_state(&new), b"{\"calls\":[]}\0x");
        assert_eq!(decode_checkpoint_state(b"short"), b"");
    }
}

//! Replay: the file source read once. Each file a source's globs (or the
//! operator's paths) match is read from its start to its end, plain or
//! `.gz`, and handed to the same stage as the live daemon's, then the
//! source ends. Nothing is followed.
//!
//! Every line gets the event id the live daemon gives it: a file is named
//! as the live source names it ([`identity::resolve`] against the stream
//! index the daemon publishes, see [`super::file::stream_index`]), so a
//! rotated copy read as `.gz` continues the stream of the file it was, and
//! a file the daemon never saw is named after its own identity, as the
//! daemon would name it. Replay keeps checkpoints of its own (in its own
//! state directory), so an interrupted replay resumes where it stopped.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::read::MultiGzDecoder;
use tracing::{debug, info, warn};

use super::file::gz::{gz_tail, gzip_magic, open_gz};
use super::file::identify::file_identity;
use super::file::identity::{self, Checkpoint, FileId, Resolution, Tail, TAIL_BYTES};
use super::file::lines::{Line, LineCutter, Multiline};
use super::file::open::{open_checked, Refusal};
use super::file::read::{read_full_at, tail_of_file};
use super::file::stream_index::StreamIndex;
use super::file::{FileMatcher, COMMIT_MAX_EVENT_BYTES, READ_CHUNK};
use super::{ReadStats, RecordIn, Sink, SinkError, SourceError, StreamSlot};
use crate::config::SourceConfig;
use crate::event::Timestamp;

/// What a replay has done so far, for its progress and its summary.
#[derive(Debug, Default)]
pub struct ReplayStats {
    /// Decoded bytes handed to the parser; `caught_up` once every file was read.
    pub read: Arc<ReadStats>,
    pub files_total: AtomicU64,
    /// Files read to their end (in this run or, for a resumed one, before).
    pub files_done: AtomicU64,
    /// Paths not read because they are links, FIFOs, devices, ...
    pub files_refused: AtomicU64,
    /// Bytes on disk (compressed for `.gz`) of every file, and of what was read.
    pub disk_bytes_total: AtomicU64,
    pub disk_bytes_done: AtomicU64,
    /// Files that could not be read, each with the reason.
    pub unreadable: Mutex<Vec<String>>,
    /// Files that went away between the walk and their turn (rotated out).
    pub files_gone: AtomicU64,
    /// More files matched than `max_files`, or the walk met its directory
    /// cap: some files were not replayed.
    pub walk_capped: AtomicBool,
}

impl ReplayStats {
    pub fn unreadable_files(&self) -> Vec<String> {
        self.unreadable
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default()
    }

    /// Every file was read (or found unreadable): the source has ended.
    pub fn is_finished(&self) -> bool {
        self.read.is_caught_up()
    }
}

enum FileError {
    Io(std::io::Error),
    Store(SinkError),
}

impl From<std::io::Error> for FileError {
    fn from(e: std::io::Error) -> Self {
        FileError::Io(e)
    }
}

impl From<SinkError> for FileError {
    fn from(e: SinkError) -> Self {
        FileError::Store(e)
    }
}

enum Outcome {
    Done,
    Refused(Refusal),
    Interrupted,
}

pub struct ReplaySource {
    name: String,
    config: SourceConfig,
    matcher: FileMatcher,
    /// The streams the live daemon named for this source (empty without one).
    live: StreamIndex,
    sink: Box<dyn Sink>,
    stats: Arc<ReplayStats>,
    shutdown: Arc<AtomicBool>,
    multiline: Option<Multiline>,
}

impl ReplaySource {
    pub fn new(
        config: SourceConfig,
        live: StreamIndex,
        sink: Box<dyn Sink>,
        stats: Arc<ReplayStats>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<ReplaySource, globset::Error> {
        // Validated at config load; a pattern that fails here is ignored.
        let multiline = config.multiline.as_ref().and_then(|m| {
            Some(Multiline {
                start: regex::bytes::Regex::new(&m.start_pattern).ok()?,
                timeout: m.timeout,
            })
        });
        Ok(ReplaySource {
            name: config.name.get_ref().clone(),
            matcher: FileMatcher::new(&config)?,
            config,
            live,
            sink,
            stats,
            shutdown,
            multiline,
        })
    }

    /// Reads every matching file once, in path order; returns when all were
    /// read or shutdown was requested. A file that cannot be read is
    /// counted and skipped; a store that fails ends the replay.
    pub fn run(mut self) -> Result<(), SourceError> {
        let found = self.matcher.walk();
        for (path, why) in &found.refused {
            warn!(source = %self.name, path = %path.display(), "not replayed: {why}");
        }
        self.stats
            .files_refused
            .store(found.refused.len() as u64, Ordering::Relaxed);
        if found.files_capped || found.dirs_capped {
            self.stats.walk_capped.store(true, Ordering::Relaxed);
        }
        if found.files_capped {
            warn!(source = %self.name, max_files = self.config.max_files, "more files match than max_files; replaying the first {} in path order", self.config.max_files);
        }
        if found.dirs_capped {
            warn!(source = %self.name, "the walk stopped at {} directories; files below the rest are not replayed", super::file::discover::MAX_DIRS_PER_SCAN);
        }
        let sizes: u64 = found
            .files
            .iter()
            .filter_map(|p| std::fs::symlink_metadata(p).ok())
            .map(|m| m.len())
            .sum();
        self.stats
            .files_total
            .store(found.files.len() as u64, Ordering::Relaxed);
        self.stats.disk_bytes_total.store(sizes, Ordering::Relaxed);
        info!(source = %self.name, files = found.files.len(), bytes = sizes, "replay started");
        for path in &found.files {
            if self.shutdown.load(Ordering::SeqCst) {
                return Ok(());
            }
            match self.replay_file(path) {
                Ok(Outcome::Done) => {
                    self.stats.files_done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Outcome::Interrupted) => return Ok(()),
                Ok(Outcome::Refused(why)) => {
                    warn!(source = %self.name, path = %path.display(), "not replayed: {why}");
                    self.stats.files_refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    info!(source = %self.name, path = %path.display(), "the file went away before its turn (rotated out?)");
                    self.stats.files_gone.fetch_add(1, Ordering::Relaxed);
                }
                Err(FileError::Io(e)) => {
                    warn!(source = %self.name, path = %path.display(), error = %e, "cannot read the file; replaying the others");
                    if let Ok(mut u) = self.stats.unreadable.lock() {
                        u.push(format!("{}: {e}", path.display()));
                    }
                }
                Err(FileError::Store(err)) => {
                    return Err(SourceError::Store {
                        source_name: self.name.clone(),
                        err,
                    })
                }
            }
        }
        self.stats.read.caught_up.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn replay_file(&mut self, path: &Path) -> Result<Outcome, FileError> {
        let base = self.matcher.base_of(path);
        let matcher = &self.matcher;
        let (file, meta) = match open_checked(path, &base, self.config.follow_symlinks, |p| {
            matcher.excluded(p)
        })? {
            Ok(opened) => opened,
            Err(why) => return Ok(Outcome::Refused(why)),
        };
        let size = meta.len();
        let id = FileId::of(&meta);
        let compressed = gzip_magic(&file);
        let fp_bytes = self.config.fingerprint_bytes;
        // A plain file nobody wrote to for `rotate_wait` is whole: its last
        // line counts even without a newline, as when the daemon closes a
        // file. One still written is read up to its last complete line, as
        // the daemon reads it, so no line gets its id with half its bytes.
        let quiet = compressed
            || meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age >= self.config.rotate_wait);
        let (start, whole) = if compressed {
            let start = identity::read_start(&mut open_gz(&file)?, fp_bytes)?;
            let whole = start.len() < fp_bytes;
            (start, whole)
        } else {
            let mut start = vec![0u8; fp_bytes];
            let n = read_full_at(&file, &mut start, 0)?;
            start.truncate(n);
            (start, quiet)
        };
        let Some(fp) = identity::fingerprint_of(&start, fp_bytes, whole) else {
            debug!(source = %self.name, path = %path.display(), "empty, or no complete first line yet");
            return Ok(Outcome::Done);
        };
        let key = identity::checkpoint_key(&self.name, &fp, id);
        let mut tail_at = |offset: u64, len: u16| {
            if compressed {
                gz_tail(&file, offset, len)
            } else {
                tail_of_file(&file, offset, len)
            }
        };
        let own = self
            .sink
            .checkpoint(&key)?
            .and_then(|v| Checkpoint::decode(&v));
        let resume = match own {
            Some(cp) if compressed && cp.complete && cp.disk_size == size => {
                debug!(source = %self.name, path = %path.display(), "replayed before; skipped");
                self.stats
                    .disk_bytes_done
                    .fetch_add(size, Ordering::Relaxed);
                return Ok(Outcome::Done);
            }
            // An empty tail proves nothing past the start of a plain file;
            // a file given to another owner is not the one replayed.
            Some(cp)
                if cp.owner.is_none_or(|o| o == meta.uid())
                    && (compressed || cp.offset == 0 || cp.tail.len > 0)
                    && tail_at(cp.offset, cp.tail.len)? == Some(cp.tail) =>
            {
                Some(cp)
            }
            _ => None,
        };
        let (stream, offset, skipping, state) = match resume {
            Some(cp) => {
                info!(source = %self.name, path = %path.display(), offset = cp.offset, "resuming an interrupted replay of the file");
                (cp.stream, cp.offset, cp.skipping, Some(cp.parser_state))
            }
            None => {
                let identity = file_identity(&file, id);
                let stream = self.live_stream_name(&fp, id, &identity, meta.uid(), &mut tail_at)?;
                (stream, 0, false, None)
            }
        };
        let file_reader = Counting {
            inner: file.try_clone()?,
            stats: self.stats.clone(),
        };
        let mut reader: Box<dyn Read> = if compressed {
            let mut file_reader = file_reader;
            file_reader.inner.rewind()?;
            let mut decoder = MultiGzDecoder::new(BufReader::with_capacity(256 << 10, file_reader));
            let skipped = std::io::copy(&mut (&mut decoder).take(offset), &mut std::io::sink())?;
            if skipped < offset {
                // Shorter than our checkpoint: nothing more to read in it.
                return Ok(Outcome::Done);
            }
            Box::new(decoder)
        } else {
            let mut file_reader = file_reader;
            file_reader.inner.seek(std::io::SeekFrom::Start(offset))?;
            self.stats
                .disk_bytes_done
                .fetch_add(offset, Ordering::Relaxed);
            // What was there at open: a file still written is read again later.
            Box::new(file_reader.take(size.saturating_sub(offset)))
        };
        let read_at = meta
            .modified()
            .map(timestamp_of)
            .unwrap_or_else(|_| Timestamp::now());
        let mut reading = Reading {
            key,
            stream,
            path: path.to_path_buf(),
            owner: meta.uid(),
            file: &file,
            size,
            compressed,
            slot: self
                .sink
                .open_stream(Some(path), Some(meta.uid()), state.as_deref()),
            cutter: LineCutter::new(
                self.config.max_line_bytes.0 as usize,
                self.multiline.clone(),
            ),
            position: offset,
            read_at,
            quiet,
        };
        reading.cutter.resume(skipping);
        let outcome = self.read_to_end(&mut reading, &mut reader);
        self.sink.close_stream(reading.slot);
        outcome
    }

    /// The name the live source gives (or would give) this file's stream.
    fn live_stream_name(
        &self,
        fp: &str,
        id: FileId,
        identity: &str,
        owner: u32,
        tail_at: &mut dyn FnMut(u64, u16) -> std::io::Result<Option<Tail>>,
    ) -> std::io::Result<String> {
        let candidates = self.live.candidates(fp);
        Ok(
            match identity::resolve(&self.name, fp, id, identity, owner, candidates, tail_at)? {
                Resolution::Resume(cp) => cp.stream,
                // The same bytes as a file the daemon read: its copy (rotated,
                // compressed), unless that file is still there, unchanged,
                // beside it (then the daemon took this one for a file of its
                // own that merely starts the same way).
                Resolution::Copy {
                    checkpoint,
                    of,
                    fresh,
                } => {
                    let original_here = of.is_some_and(|o| {
                        o != id
                            && std::fs::symlink_metadata(&checkpoint.path)
                                .is_ok_and(|m| FileId::of(&m) == o)
                    });
                    if original_here {
                        fresh
                    } else {
                        checkpoint.stream
                    }
                }
                Resolution::Fresh { stream } => stream,
            },
        )
    }

    /// Cuts the file into records chunk by chunk, committing each chunk's
    /// events with the file's replay checkpoint.
    fn read_to_end(
        &mut self,
        r: &mut Reading<'_>,
        reader: &mut dyn Read,
    ) -> Result<Outcome, FileError> {
        let chunk = READ_CHUNK.max(r.cutter.max_line() + 1);
        let mut buf: Vec<u8> = Vec::with_capacity(chunk);
        let mut at_end = false;
        loop {
            if self.shutdown.load(Ordering::SeqCst) {
                return Ok(Outcome::Interrupted);
            }
            while !at_end && buf.len() < chunk {
                let have = buf.len();
                buf.resize(chunk, 0);
                match reader.read(&mut buf[have..]) {
                    Ok(0) => {
                        buf.truncate(have);
                        at_end = true;
                    }
                    Ok(n) => buf.truncate(have + n),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(have),
                    Err(e) => return Err(FileError::Io(e)),
                }
            }
            let consumed = self.cut(r, &buf, at_end && r.quiet);
            r.position += consumed as u64;
            buf.drain(..consumed);
            let complete = at_end && buf.is_empty() && !r.cutter.has_open_record();
            self.commit(r, complete)?;
            // A file still written ends at its last complete line; its
            // checkpoint stays before the rest.
            if complete || (at_end && consumed == 0) {
                return Ok(Outcome::Done);
            }
        }
    }

    /// Hands the records of `buf` (file bytes at the read position) to the
    /// sink until it holds what one commit may; returns the bytes consumed.
    fn cut(&mut self, r: &mut Reading<'_>, buf: &[u8], at_end: bool) -> usize {
        let room = COMMIT_MAX_EVENT_BYTES.min(self.sink.commit_room());
        let sink = RefCell::new(self.sink.as_mut());
        sink.borrow_mut().discard_held();
        let held = Cell::new(0usize);
        let (slot, stream, read_at) = (r.slot, r.stream.as_str(), r.read_at);
        let mut emit = |line: Line<'_>| {
            let mut sink = sink.borrow_mut();
            sink.record(
                slot,
                RecordIn {
                    stream,
                    position: line.position,
                    bytes: line.bytes,
                    read_at,
                    metadata: None,
                    fields: &[],
                },
            );
            held.set(sink.held_bytes());
        };
        // At least one record a commit, however little room there is.
        let mut full = || held.get() > 0 && held.get() >= room;
        let truncated_before = r.cutter.stats.truncated;
        let consumed = r
            .cutter
            .feed_until(buf, r.position, at_end, &mut emit, &mut full);
        let truncated = r.cutter.stats.truncated - truncated_before;
        let read = &self.stats.read;
        read.truncated_lines.fetch_add(truncated, Ordering::Relaxed);
        read.bytes_read
            .fetch_add(consumed as u64, Ordering::Relaxed);
        consumed
    }

    fn commit(&mut self, r: &Reading<'_>, complete: bool) -> Result<(), FileError> {
        let position = r.cutter.safe_position(r.position);
        let tail = if r.compressed {
            Tail::default()
        } else {
            tail_of_file(r.file, position, TAIL_BYTES as u16)?.ok_or_else(|| {
                std::io::Error::other(
                    "the file shrank while it was replayed (truncated or rewritten); \
                     replay it again to read it as a new file",
                )
            })?
        };
        let cp = Checkpoint {
            offset: position,
            skipping: r.cutter.skipping(),
            complete,
            tail,
            stream: r.stream.clone(),
            closed_at: 0,
            disk_size: if complete { r.size } else { 0 },
            path: r.path.clone(),
            owner: Some(r.owner),
            parser_state: self.sink.stream_state(r.slot),
        };
        self.sink.commit(&r.key, &cp.encode())?;
        Ok(())
    }
}

/// One file being replayed.
struct Reading<'a> {
    key: Vec<u8>,
    stream: String,
    path: PathBuf,
    owner: u32,
    file: &'a File,
    size: u64,
    compressed: bool,
    slot: StreamSlot,
    cutter: LineCutter,
    /// First byte not yet cut into lines (decoded bytes for `.gz`).
    position: u64,
    /// The time of lines that carry none: the file's modification time,
    /// the latest they can have been written.
    read_at: Timestamp,
    /// Nothing will be added: a last line without a newline is whole.
    quiet: bool,
}

/// Counts the bytes read from disk, for the progress of compressed files.
struct Counting {
    inner: File,
    stats: Arc<ReplayStats>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.stats
            .disk_bytes_done
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn timestamp_of(t: SystemTime) -> Timestamp {
    let micros = t
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Timestamp::from_unix_micros(micros)
}

impl super::Source for ReplaySource {
    fn run_until_shutdown(self: Box<Self>) -> Result<(), SourceError> {
        self.run()
    }
}

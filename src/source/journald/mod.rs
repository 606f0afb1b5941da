//! The journald source: reads the journal through a `journalctl` child
//! (`--output=json --follow`, the source's filters), the way Vector does,
//! without linking libsystemd. Each entry's `MESSAGE` is a record for the
//! source's parser, its time the event time of last resort, its unit, pid
//! and the like the events' `metadata.journald`. The position is the
//! journal's cursor, committed with the events in one transaction; event
//! ids derive from the cursor's sequence numbers, so a re-read after a
//! crash sends only ids already known.
//!
//! Filters run in journalctl, so every entry read moves the cursor, and a
//! commit follows within a second: a restart never re-reads a long stretch
//! the filters dropped. A cursor the journal no longer holds (vacuumed) is
//! reported, naming the gap, and reading goes on from the oldest entry
//! after it. journalctl exiting is restarted with backoff from the cursor.

pub mod child;
pub mod entry;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use self::child::{Journalctl, Line, Start};
use self::entry::Entry;
use super::{ReadStats, RecordIn, Sink, SourceError, StreamSlot};
use crate::config::SourceConfig;
use crate::event::Timestamp;
use crate::ops::users::UserNames;

/// Event bytes one commit holds at most, as for files.
const COMMIT_MAX_EVENT_BYTES: usize = 8 << 20;
/// Longest a read entry waits for its commit.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// How long a read waits for output before looking at shutdown again.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// A pause in journalctl's output this long commits what was read.
const PAUSE: Duration = Duration::from_millis(10);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Bytes of an output line beyond `max_line_bytes`: the entry's other fields.
const FIELDS_ALLOWANCE: usize = 64 << 10;
/// Metadata key of what the journal says of an entry.
const METADATA_KEY: &str = "journald";
const CHECKPOINT_VERSION: u8 = 1;

pub struct JournaldSource {
    name: String,
    config: SourceConfig,
    sink: Box<dyn Sink>,
    stats: Arc<ReadStats>,
    shutdown: Arc<AtomicBool>,
    key: Vec<u8>,
    /// Names of the entries' `_UID`s.
    users: UserNames,
    /// When the last entry read was written: published at its commit.
    read_written_at: Option<Timestamp>,
}

/// How one run of journalctl ended.
struct RunEnd {
    entries: u64,
}

impl JournaldSource {
    pub fn new(
        config: SourceConfig,
        sink: Box<dyn Sink>,
        stats: Arc<ReadStats>,
        shutdown: Arc<AtomicBool>,
    ) -> JournaldSource {
        let name = config.name.get_ref().clone();
        JournaldSource {
            key: checkpoint_key(&name),
            name,
            config,
            sink,
            stats,
            shutdown,
            users: UserNames::default(),
            read_written_at: None,
        }
    }

    /// Reads the journal until shutdown is requested.
    pub fn run(mut self) -> Result<(), SourceError> {
        let store = |err| SourceError::Store {
            source_name: self.name.clone(),
            err,
        };
        let saved = self.sink.checkpoint(&self.key).map_err(store)?;
        let (mut cursor, state) = match saved.as_deref().map(decode_checkpoint) {
            Some(Some((cursor, state))) => (Some(cursor), Some(state)),
            Some(None) => {
                warn!(source = %self.name, "the journal checkpoint is unreadable; starting as a new source");
                (None, None)
            }
            None => (None, None),
        };
        match child::access(&self.config, &|| self.stats.beat()) {
            Ok(child::Access::Readable) => {}
            Ok(child::Access::NoFiles) => {
                warn!(source = %self.name, "no journal files yet; following for new ones")
            }
            Ok(child::Access::Denied(why)) => {
                return Err(self.fatal(format!("cannot read the journal: {why}")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(self.not_found()),
            Err(e) => {
                warn!(source = %self.name, error = %e, "cannot ask journalctl whether the journal is readable")
            }
        }
        let slot = self.sink.open_stream(None, None, state.as_deref());
        let mut backoff = BACKOFF_FIRST;
        while !self.shutdown.load(Ordering::SeqCst) {
            if let Some(c) = &cursor {
                // A loss is said here; journalctl then starts where the
                // entry was, at the oldest entry after it still present.
                self.cursor_present(c)?;
            }
            let start = match &cursor {
                Some(c) => Start::AfterCursor(c.clone()),
                None => Start::for_new_source(&self.config),
            };
            let mut journal = match Journalctl::spawn(&self.config, &start) {
                Ok(j) => j,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(self.not_found()),
                Err(e) => {
                    warn!(source = %self.name, error = %e, "cannot start journalctl; retrying in {backoff:?}");
                    self.pause(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            debug!(source = %self.name, ?start, "journalctl started");
            let end = self.follow(&mut journal, slot, &mut cursor)?;
            let said = journal.stderr_text();
            let status = journal.finish();
            if self.shutdown.load(Ordering::SeqCst) {
                break;
            }
            if end.entries > 0 {
                backoff = BACKOFF_FIRST;
            }
            let status = status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string());
            warn!(source = %self.name, %status, stderr = %said, "journalctl exited; restarting from the cursor in {backoff:?}");
            self.pause(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.sink.close_stream(slot);
        debug!(source = %self.name, "journald source stopped");
        Ok(())
    }

    /// Reads entries until journalctl's output ends or shutdown; commits
    /// what it read. Only the queue failing is an error.
    fn follow(
        &mut self,
        journal: &mut Journalctl,
        slot: StreamSlot,
        cursor: &mut Option<String>,
    ) -> Result<RunEnd, SourceError> {
        let max = (self.config.max_line_bytes.0 as usize).saturating_add(FIELDS_ALLOWANCE);
        let mut line = Vec::new();
        let mut entries = 0u64;
        let mut pending = false;
        let mut oldest_pending = Instant::now();
        let mut bad_lines = 0u64;
        let mut stream = String::new();
        let mut stream_of: Option<String> = None;
        // journalctl starts at the cursor's own entry, already committed.
        let mut already_read = cursor.clone();
        let mut room = COMMIT_MAX_EVENT_BYTES.min(self.sink.commit_room());
        loop {
            self.stats.beat();
            if self.shutdown.load(Ordering::SeqCst) {
                break;
            }
            // A commit (two fsyncs) per pipe-full would cap the rate: commit
            // when the output pauses, at the size bound, or after a second.
            let due = pending
                && (oldest_pending.elapsed() >= COMMIT_EVERY || self.sink.held_bytes() >= room);
            if due {
                self.commit(slot, cursor.as_deref())?;
                pending = false;
                room = COMMIT_MAX_EVENT_BYTES.min(self.sink.commit_room());
            }
            let wait = if pending { PAUSE } else { IDLE_WAIT };
            let read = match journal.read_line(&mut line, max, wait) {
                Ok(read) => read,
                Err(e) => {
                    warn!(source = %self.name, error = %e, "reading journalctl's output failed");
                    break;
                }
            };
            match read {
                Line::Whole => {}
                Line::Nothing => {
                    if pending {
                        self.commit(slot, cursor.as_deref())?;
                        pending = false;
                    }
                    self.stats.caught_up.store(true, Ordering::SeqCst);
                    continue;
                }
                Line::TooLong => {
                    self.stats.truncated_lines.fetch_add(1, Ordering::Relaxed);
                    warn!(source = %self.name, max_bytes = max, "a journal entry longer than max_line_bytes was skipped");
                    continue;
                }
                Line::End => break,
            }
            self.stats.caught_up.store(false, Ordering::SeqCst);
            self.stats
                .bytes_read
                .fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
            let entry = match Entry::parse(&line, &mut self.users) {
                Ok(entry) => entry,
                Err(e) => {
                    bad_lines += 1;
                    if bad_lines == 1 {
                        warn!(source = %self.name, error = %e, "journalctl wrote a line that is not an entry; skipped (further ones at debug level)");
                    } else {
                        debug!(source = %self.name, error = %e, "not an entry; skipped");
                    }
                    continue;
                }
            };
            if let Some(last) = already_read.take() {
                if entry.cursor == last {
                    continue;
                }
            }
            // The stream's name changes with the journal's numbering only.
            let (seqnum_id, position) = entry::seqnum_of(&entry.cursor);
            if stream_of.as_deref() != Some(seqnum_id.unwrap_or("")) {
                stream_of = Some(seqnum_id.unwrap_or("").to_string());
                stream = entry::stream_and_position(&self.name, &entry.cursor).0;
            }
            if !pending {
                oldest_pending = Instant::now();
            }
            self.sink.record(
                slot,
                RecordIn {
                    stream: &stream,
                    position,
                    bytes: &entry.message,
                    read_at: entry.written_at.unwrap_or_else(Timestamp::now),
                    metadata: Some((METADATA_KEY, &entry.metadata)),
                    fields: &entry.fields,
                },
            );
            *cursor = Some(entry.cursor);
            self.read_written_at = entry.written_at.or(self.read_written_at);
            entries += 1;
            pending = true;
        }
        if pending {
            self.commit(slot, cursor.as_deref())?;
        }
        Ok(RunEnd { entries })
    }

    /// Commits the events held with the cursor of the last entry read.
    fn commit(&mut self, slot: StreamSlot, cursor: Option<&str>) -> Result<(), SourceError> {
        let Some(cursor) = cursor else {
            return Ok(());
        };
        let value = encode_checkpoint(cursor, &self.sink.stream_state(slot));
        self.sink
            .commit(&self.key, &value)
            .map_err(|err| SourceError::Store {
                source_name: self.name.clone(),
                err,
            })?;
        if let Some(t) = self.read_written_at {
            self.stats
                .position_written_at
                .store(t.unix_micros, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether the journal still holds the entry at `cursor`. If not, says
    /// once what was lost. A journalctl that cannot tell is taken to say yes:
    /// the cursor is then tried as it is.
    fn cursor_present(&self, cursor: &str) -> Result<bool, SourceError> {
        let present = match child::first_cursor_at(&self.config, cursor, &|| self.stats.beat()) {
            Ok(Some(first)) => first == cursor,
            Ok(None) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(self.not_found()),
            Err(e) => {
                debug!(source = %self.name, error = %e, "cannot check the cursor; using it as it is");
                true
            }
        };
        if !present {
            warn!(source = %self.name, %cursor,
                "the journal no longer holds the last entry read (vacuumed or rotated away): entries written after it and removed since are lost; reading on from the oldest entry after it");
        } else {
            info!(source = %self.name, "resuming the journal after the last entry read");
        }
        Ok(present)
    }

    fn not_found(&self) -> SourceError {
        self.fatal(child::not_found_message(&self.config))
    }

    fn fatal(&self, message: String) -> SourceError {
        SourceError::Fatal {
            source_name: self.name.clone(),
            message,
        }
    }

    /// Sleeps `d`, waking for shutdown.
    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.shutdown.load(Ordering::SeqCst) && Instant::now() < until {
            self.stats.beat();
            std::thread::sleep(Duration::from_millis(50).min(d));
        }
    }
}

/// The one checkpoint of a journald source.
pub fn checkpoint_key(source: &str) -> Vec<u8> {
    format!("journald/{source}").into_bytes()
}

fn encode_checkpoint(cursor: &str, parser_state: &[u8]) -> Vec<u8> {
    let len = u32::try_from(cursor.len()).unwrap_or(u32::MAX);
    let mut v = Vec::with_capacity(5 + cursor.len() + parser_state.len());
    v.push(CHECKPOINT_VERSION);
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&cursor.as_bytes()[..len as usize]);
    v.extend_from_slice(parser_state);
    v
}

/// The cursor and parser state of a checkpoint; None if it is not one.
fn decode_checkpoint(v: &[u8]) -> Option<(String, Vec<u8>)> {
    let (&version, rest) = v.split_first()?;
    if version != CHECKPOINT_VERSION {
        return None;
    }
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let cursor = rest.get(4..4usize.checked_add(len)?)?;
    let state = rest.get(4 + len..)?;
    Some((
        std::str::from_utf8(cursor).ok()?.to_string(),
        state.to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_refuse_garbage() {
        let v = encode_checkpoint("s=1;i=2", b"{\"state\":1}");
        assert_eq!(
            decode_checkpoint(&v),
            Some(("s=1;i=2".to_string(), b"{\"state\":1}".to_vec()))
        );
        assert_eq!(decode_checkpoint(b""), None);
        assert_eq!(decode_checkpoint(&[1, 255, 255, 255, 255, b'x']), None);
        assert_eq!(decode_checkpoint(&[2, 0, 0, 0, 0]), None);
    }
}

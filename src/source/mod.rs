//! Sources: where records come from and what a position in them is.
//!
//! A source reads records and knows where each one is; it does not parse
//! them and does not write to the queue. It hands every record, tagged with
//! its stream and position, to a [`Sink`] (the shared stage of
//! `crate::stage`, which parses, redacts, bounds and commits), and asks the
//! sink to commit what it was handed together with the stream's checkpoint:
//! one transaction, so a restart resumes exactly after what was committed.
//! Checkpoint values are the source's own bytes; only the source reads them.

pub mod file;
pub mod journald;
pub mod preflight;
pub mod replay;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::event::{Metadata, Timestamp};

/// A stream's parser in the sink, from [`Sink::open_stream`] until
/// [`Sink::close_stream`]. Never reused: a record for a closed stream is an
/// error in the source, and reaches no other stream's parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamSlot(pub u64);

/// One record handed to the sink.
#[derive(Debug, Clone, Copy)]
pub struct RecordIn<'a> {
    /// Names the stream (source and, for files, fingerprint): with
    /// `position` it is what every event id is derived from.
    pub stream: &'a str,
    /// Where the record starts in its stream (a byte offset for files).
    pub position: u64,
    /// The record as read: any bytes (the sink repairs bad UTF-8).
    pub bytes: &'a [u8],
    /// The event time of last resort: when the record was read, or when its
    /// source says it was written (a journal entry's timestamp).
    pub read_at: Timestamp,
    /// What the source knows of the record (a journal entry's unit, pid,
    /// ...), and the key of every event's metadata it goes under.
    pub metadata: Option<(&'static str, &'a Metadata<'a>)>,
    /// The same by name, for parsers that test and copy them (rules).
    pub fields: &'a [(&'static str, String)],
}

/// A stored checkpoint: its key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The checkpoint store or the queue refused a commit or a read.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SinkError(pub Box<dyn std::error::Error + Send + Sync>);

/// Where a source's records go: parsed into events that are held until the
/// source commits them with its checkpoint. Implemented by `crate::stage`;
/// tests may implement it to watch a source alone.
pub trait Sink: Send {
    /// Makes ready the parser of a new stream: fresh, told its origin (some
    /// formats name the session in the file name) and its owner's uid (a
    /// file's), and given the state saved with the stream's last
    /// checkpoint, if any.
    fn open_stream(
        &mut self,
        origin: Option<&Path>,
        owner: Option<u32>,
        state: Option<&[u8]>,
    ) -> StreamSlot;
    /// Forgets a stream's parser.
    fn close_stream(&mut self, slot: StreamSlot);
    /// Parses one record of the stream; its events are held until `commit`.
    fn record(&mut self, slot: StreamSlot, record: RecordIn<'_>);
    /// Bytes of events held: a source stops cutting records at a bound, so
    /// one commit stays reasonable whatever the records expand to.
    fn held_bytes(&self) -> usize;
    /// The most bytes of events one commit may hold now: a source ends its
    /// read round there (at its own bound if lower). On a nearly full disk
    /// this is what fits above the queue's reserve, so commits get smaller
    /// instead of waiting for a room they will never have; a single record
    /// is still committed whole (it waits until it fits).
    fn commit_room(&self) -> usize {
        usize::MAX
    }
    /// Drops the events held (a commit of a position alone follows).
    fn discard_held(&mut self);
    /// The stream's parser state, to be saved in its checkpoint.
    fn stream_state(&self, slot: StreamSlot) -> Vec<u8>;
    /// Commits the events held and `checkpoint` under `key` in one
    /// transaction, then holds nothing.
    fn commit(&mut self, key: &[u8], checkpoint: &[u8]) -> Result<(), SinkError>;
    fn checkpoint(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SinkError>;
    fn checkpoints_with_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, SinkError>;
    /// Writes a checkpoint alone (a file closed or retired): no events.
    fn put_checkpoint(&self, key: &[u8], value: &[u8]) -> Result<(), SinkError>;
    fn remove_checkpoint(&self, key: &[u8]) -> Result<(), SinkError>;
    /// Replaces a file published beside the store for other processes
    /// (the streams a file source named, for `replay`). Nothing by default.
    fn publish(&self, _name: &str, _bytes: &[u8]) -> Result<(), SinkError> {
        Ok(())
    }
}

/// What a source counts as it reads, for `status`, the demo and tests.
#[derive(Debug, Default)]
pub struct ReadStats {
    pub bytes_read: AtomicU64,
    /// Records cut to `max_line_bytes`.
    pub truncated_lines: AtomicU64,
    /// Files followed now.
    pub files: AtomicU64,
    /// The read positions in every followed plain file, summed.
    pub position_bytes: AtomicU64,
    /// Bytes between the read position and the end of every followed file.
    pub lag_bytes: AtomicU64,
    /// Set when a full pass over every file found nothing new to read.
    pub caught_up: AtomicBool,
    /// Bumped each time the source's loop turns (at least once a second
    /// while it runs, idle or not): the watchdog's sign of life.
    pub heartbeat: AtomicU64,
    /// Raised while a commit of this source waits for room in a full queue
    /// or for disk space: paused by design, not stuck.
    pub waiting_for_room: AtomicBool,
    /// When the record at the committed position was written, in Unix
    /// microseconds (0: not known); journald sets it, for the cursor's age.
    pub position_written_at: std::sync::atomic::AtomicI64,
}

impl ReadStats {
    pub fn beat(&self) {
        self.heartbeat.fetch_add(1, Ordering::Relaxed);
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::SeqCst)
    }
}

/// A source ended: its store failed, or it cannot read at all.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source `{source_name}`: {err}")]
    Store {
        source_name: String,
        #[source]
        err: SinkError,
    },
    #[error("source `{source_name}`: {message}")]
    Fatal {
        source_name: String,
        message: String,
    },
}

/// A source: reads on a thread of its own until shutdown is requested.
pub trait Source: Send {
    fn run_until_shutdown(self: Box<Self>) -> Result<(), SourceError>;
}

impl Source for file::FileSource {
    fn run_until_shutdown(self: Box<Self>) -> Result<(), SourceError> {
        self.run()
    }
}

impl Source for journald::JournaldSource {
    fn run_until_shutdown(self: Box<Self>) -> Result<(), SourceError> {
        self.run()
    }
}

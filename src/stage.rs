//! The shared stage between a source and the queue: every source hands its
//! records here. It keeps one parser per stream (state across lines belongs
//! to one stream and is saved with its checkpoint), repairs bad UTF-8, runs
//! the parser (presets and rules redact and bound what they copy), adds
//! each stream's provenance (the host, a file's path and owner: see
//! [`provenance`]), holds the events, and commits them with the source's
//! checkpoint in one queue transaction (design.md invariant 1). A dry run
//! (`replay --dry-run`) commits nothing. It runs on the source's own
//! thread: a record costs a call, not a hand-off.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Config, SourceConfig, SourceKind, UserIdFrom};
use crate::event::TimeWindow;
use crate::parse::{clean_line, parse_counted, EventBuf, ParseStats, Parser, Record};
use crate::queue::{Queue, RoomWait};
use crate::source::file::FileSource;
use crate::source::journald::JournaldSource;
use crate::source::{KeyValue, ReadStats, RecordIn, Sink, SinkError, Source, StreamSlot};

pub mod provenance;
#[cfg(test)]
mod tests;

use self::provenance::Provenance;
use crate::event::StreamMetadata;

/// Counters of one source: what it read, and what the stage made of it.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Kept by the source itself.
    pub read: Arc<ReadStats>,
    pub commits: AtomicU64,
    /// Lines that were not valid UTF-8 and had bad bytes replaced.
    pub invalid_utf8_lines: AtomicU64,
    pub parse: Mutex<ParseStats>,
}

impl SourceStats {
    pub fn lines(&self) -> u64 {
        self.parse.lock().map(|p| p.lines).unwrap_or(0)
    }

    pub fn snapshot(&self) -> ParseStats {
        self.parse.lock().map(|p| p.clone()).unwrap_or_default()
    }

    pub fn is_caught_up(&self) -> bool {
        self.read.is_caught_up()
    }
}

/// Where a stage commits: the queue, or (a dry run) nowhere, with the
/// checkpoints kept in memory so the source reads as it would.
enum Store {
    Queue(Arc<Queue>),
    DryRun(Mutex<BTreeMap<Vec<u8>, Vec<u8>>>),
}

/// The stage of one source.
pub struct Stage {
    store: Store,
    /// The parser every stream's own parser is a `fresh()` copy of.
    factory: Box<dyn Parser>,
    parsers: HashMap<u64, Box<dyn Parser>>,
    next_slot: u64,
    events: EventBuf,
    parse_stats: ParseStats,
    stats: Arc<SourceStats>,
    /// What each stream's events carry besides their line (host, path,
    /// owner); None adds nothing.
    provenance: Option<Provenance>,
    stream_metadata: HashMap<u64, Arc<StreamMetadata>>,
    /// Each stream's path and owner, to render its entries again when the
    /// host changes (kept only with a provenance).
    stream_origins: HashMap<u64, (Option<PathBuf>, Option<u32>)>,
    /// The stream whose entries `events` carries now.
    metadata_of: Option<u64>,
    /// Where `user_id` comes from when the source takes it from a fact the
    /// kernel vouches for (`user_id_from`): a file's owner, a journal
    /// entry's `_UID`. What a line claims then goes to metadata.
    user_from: Option<UserIdFrom>,
    /// Each file stream's owner's name, with `user_from = FileOwner`.
    stream_users: HashMap<u64, Arc<str>>,
    /// The configured user, for journal entries without `_UID`, and the
    /// user the journal's parser was last given (None: the configured).
    default_user: String,
    journal_user: Option<Arc<str>>,
    /// The source's stop flag: a commit waiting for room gives up on it.
    stop: Option<Arc<AtomicBool>>,
}

impl Stage {
    pub fn new(factory: Box<dyn Parser>, queue: Arc<Queue>, stats: Arc<SourceStats>) -> Stage {
        Stage::with_store(Store::Queue(queue), factory, stats)
    }

    /// A stage that parses and counts but commits nothing (`replay
    /// --dry-run`): events are dropped at each commit, checkpoints are kept
    /// in memory for the run.
    pub fn dry_run(factory: Box<dyn Parser>, stats: Arc<SourceStats>) -> Stage {
        Stage::with_store(Store::DryRun(Mutex::new(BTreeMap::new())), factory, stats)
    }

    fn with_store(store: Store, factory: Box<dyn Parser>, stats: Arc<SourceStats>) -> Stage {
        Stage {
            store,
            factory,
            parsers: HashMap::new(),
            next_slot: 0,
            events: EventBuf::default(),
            parse_stats: ParseStats::default(),
            stats,
            provenance: None,
            stream_metadata: HashMap::new(),
            stream_origins: HashMap::new(),
            metadata_of: None,
            user_from: None,
            stream_users: HashMap::new(),
            default_user: String::new(),
            journal_user: None,
            stop: None,
        }
    }

    /// Holds events to `max` bytes of JSON each (see [`crate::parse::bound`]).
    pub fn with_max_event_bytes(mut self, max: usize) -> Stage {
        self.events = EventBuf::with_max_event_bytes(max).with_window(self.events.window());
        self
    }

    /// Adds the host and each file's path and owner to the metadata of
    /// every event.
    pub fn with_provenance(mut self, provenance: Provenance) -> Stage {
        self.provenance = Some(provenance);
        self
    }

    /// Gives a commit waiting for room the source's stop flag to end on.
    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> Stage {
        self.stop = Some(stop);
        self
    }

    /// Makes each file's owner (or each journal entry's `_UID`) the
    /// `user_id` of its events, over what the line claims (with a
    /// provenance, which resolves owners).
    pub fn with_user_id_from(mut self, from: Option<UserIdFrom>) -> Stage {
        self.user_from = from;
        self
    }

    /// The source's configured user (its own, else `[defaults]`): what an
    /// entry without `_UID` is of under `journal_uid`.
    pub fn with_default_user(mut self, user: &str) -> Stage {
        self.default_user = user.to_string();
        self
    }

    /// Keeps only the events whose time falls in `window` (replay's
    /// `--since` and `--until`).
    pub fn with_window(mut self, window: Option<TimeWindow>) -> Stage {
        self.events = self.events.with_window(window);
        self
    }
}

fn store_error(e: crate::queue::QueueError) -> SinkError {
    SinkError(Box::new(e))
}

impl Sink for Stage {
    fn open_stream(
        &mut self,
        origin: Option<&Path>,
        owner: Option<u32>,
        state: Option<&[u8]>,
    ) -> StreamSlot {
        let mut parser = self.factory.fresh();
        if let Some(path) = origin {
            parser.set_origin(path);
        }
        if let Some(state) = state {
            parser.load_state(state);
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        self.parsers.insert(slot, parser);
        if self.user_from == Some(UserIdFrom::JournalUid) {
            // A fresh parser has the configured user: no entry's yet.
            self.journal_user = None;
            self.events.set_trusted_user(None);
        }
        if let Some(provenance) = self.provenance.as_mut() {
            if let (Some(UserIdFrom::FileOwner), Some(uid)) = (self.user_from, owner) {
                let user: Arc<str> = provenance.owner(uid).into();
                if let Some(parser) = self.parsers.get_mut(&slot) {
                    parser.set_user(&user);
                }
                self.stream_users.insert(slot, user);
            }
            let entries = provenance.for_stream(origin, owner);
            if !entries.is_empty() {
                self.stream_metadata.insert(slot, Arc::new(entries));
            }
            self.stream_origins
                .insert(slot, (origin.map(Path::to_path_buf), owner));
        }
        StreamSlot(slot)
    }

    fn close_stream(&mut self, slot: StreamSlot) {
        self.parsers.remove(&slot.0);
        self.stream_metadata.remove(&slot.0);
        self.stream_origins.remove(&slot.0);
        self.stream_users.remove(&slot.0);
        if self.metadata_of == Some(slot.0) {
            self.metadata_of = None;
            self.events.set_stream_metadata(None);
            self.events.set_trusted_user(None);
        }
    }

    fn record(&mut self, slot: StreamSlot, record: RecordIn<'_>) {
        let Some(parser) = self.parsers.get_mut(&slot.0) else {
            debug_assert!(false, "a record for a closed stream");
            return;
        };
        if !record.fields.is_empty() {
            parser.set_record_fields(record.fields);
        }
        if self.user_from == Some(UserIdFrom::JournalUid) {
            // journald sets `_UID` from the writer's credentials.
            let user = record
                .fields
                .iter()
                .find(|(name, _)| *name == "user")
                .map(|(_, user)| user.as_str());
            if self.journal_user.as_deref() != user {
                parser.set_user(user.unwrap_or(&self.default_user));
                self.journal_user = user.map(Arc::from);
                self.events.set_trusted_user(self.journal_user.clone());
            }
        }
        if let Some(provenance) = self.provenance.as_mut() {
            if provenance.refresh_host() {
                // A reload found the host renamed: every stream's entries.
                for (slot, (path, owner)) in &self.stream_origins {
                    let entries = provenance.for_stream(path.as_deref(), *owner);
                    if entries.is_empty() {
                        self.stream_metadata.remove(slot);
                    } else {
                        self.stream_metadata.insert(*slot, Arc::new(entries));
                    }
                }
                self.metadata_of = None;
            }
        }
        if self.metadata_of != Some(slot.0) {
            self.metadata_of = Some(slot.0);
            self.events
                .set_stream_metadata(self.stream_metadata.get(&slot.0).cloned());
            if self.user_from == Some(UserIdFrom::FileOwner) {
                self.events
                    .set_trusted_user(self.stream_users.get(&slot.0).cloned());
            }
        }
        if let Some((key, metadata)) = record.metadata {
            // Without a provenance there is no redaction to screen with:
            // left out rather than copied unscreened.
            let screened = self
                .provenance
                .as_ref()
                .and_then(|p| p.redaction().screen_record_metadata(key, metadata));
            self.events.set_record_metadata(screened.map(|m| (key, m)));
        }
        let (line, repaired) = clean_line(record.bytes);
        if repaired {
            self.stats
                .invalid_utf8_lines
                .fetch_add(1, Ordering::Relaxed);
        }
        let rec = Record {
            stream: record.stream,
            position: record.position,
            line: &line,
            read_at: record.read_at,
        };
        parse_counted(
            parser.as_mut(),
            &rec,
            &mut self.events,
            &mut self.parse_stats,
        );
        if record.metadata.is_some() {
            self.events.set_record_metadata(None);
        }
        if !record.fields.is_empty() {
            if let Some(parser) = self.parsers.get_mut(&slot.0) {
                parser.set_record_fields(&[]);
            }
        }
    }

    fn held_bytes(&self) -> usize {
        self.events.bytes.len()
    }

    fn discard_held(&mut self) {
        self.events.clear();
    }

    fn stream_state(&self, slot: StreamSlot) -> Vec<u8> {
        self.parsers
            .get(&slot.0)
            .map(|p| p.save_state())
            .unwrap_or_default()
    }

    fn commit(&mut self, key: &[u8], checkpoint: &[u8]) -> Result<(), SinkError> {
        match &self.store {
            Store::Queue(queue) => {
                let wait = RoomWait {
                    stop: self.stop.as_deref(),
                    waiting: Some(&self.stats.read.waiting_for_room),
                };
                queue
                    .commit_waiting(&self.events, key, checkpoint, wait)
                    .map_err(store_error)?
            }
            Store::DryRun(_) => self.put_checkpoint(key, checkpoint)?,
        }
        self.events.clear();
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut p) = self.stats.parse.lock() {
            p.clone_from(&self.parse_stats);
        }
        Ok(())
    }

    fn commit_room(&self) -> usize {
        match &self.store {
            // Chunk headers add a few bytes an event: keep a quarter spare.
            Store::Queue(queue) => queue.room_above_reserve().map_or(usize::MAX, |room| {
                usize::try_from(room / 4 * 3).unwrap_or(usize::MAX)
            }),
            Store::DryRun(_) => usize::MAX,
        }
    }

    fn checkpoint(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SinkError> {
        match &self.store {
            Store::Queue(queue) => Ok(queue
                .checkpoint(key)
                .map_err(store_error)?
                .map(|v| v.to_vec())),
            Store::DryRun(memory) => Ok(lock(memory).get(key).cloned()),
        }
    }

    fn checkpoints_with_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, SinkError> {
        match &self.store {
            Store::Queue(queue) => Ok(queue
                .checkpoints_with_prefix(prefix)
                .map_err(store_error)?
                .into_iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect()),
            Store::DryRun(memory) => Ok(lock(memory)
                .range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()),
        }
    }

    fn put_checkpoint(&self, key: &[u8], value: &[u8]) -> Result<(), SinkError> {
        match &self.store {
            Store::Queue(queue) => queue.put_checkpoint(key, value).map_err(store_error),
            Store::DryRun(memory) => {
                lock(memory).insert(key.to_vec(), value.to_vec());
                Ok(())
            }
        }
    }

    fn remove_checkpoint(&self, key: &[u8]) -> Result<(), SinkError> {
        match &self.store {
            Store::Queue(queue) => queue.remove_checkpoint(key).map_err(store_error),
            Store::DryRun(memory) => {
                lock(memory).remove(key);
                Ok(())
            }
        }
    }

    fn publish(&self, name: &str, bytes: &[u8]) -> Result<(), SinkError> {
        match &self.store {
            Store::Queue(queue) => queue.publish(name, bytes).map_err(store_error),
            Store::DryRun(_) => Ok(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What `config` adds to every event: the host unless `[defaults]
/// host_metadata = false`, and each file's path and owner, screened by
/// the config's redaction and `metadata_allow`.
pub fn provenance(config: &Config) -> Provenance {
    let host = config
        .defaults
        .host_metadata
        .then(provenance::Host::current);
    Provenance::new(host, Arc::new(crate::parse::Redaction::from_config(config)))
}

/// The file source `source` of `config`, reading into `queue` through its
/// own stage (the config's parser, redaction and event bound).
pub fn file_source(
    config: &Config,
    source: &SourceConfig,
    queue: Arc<Queue>,
    stats: Arc<SourceStats>,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<FileSource> {
    let parser = crate::parse::build(config, source)?;
    let stage = Stage::new(parser, queue, stats.clone())
        .with_max_event_bytes(config.redaction.event_bound(&config.delivery))
        .with_provenance(provenance(config))
        .with_user_id_from(source.user_id_from)
        .with_stop(shutdown.clone());
    Ok(FileSource::new(
        source.clone(),
        Box::new(stage),
        stats.read.clone(),
        shutdown,
    )?)
}

/// The source `source` of `config`, of whatever type, reading into `queue`
/// through its own stage.
pub fn source(
    config: &Config,
    source: &SourceConfig,
    queue: Arc<Queue>,
    stats: Arc<SourceStats>,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<Box<dyn Source>> {
    Ok(match source.kind {
        SourceKind::File => Box::new(file_source(config, source, queue, stats, shutdown)?),
        SourceKind::Journald => {
            let parser = crate::parse::build(config, source)?;
            let stage = Stage::new(parser, queue, stats.clone())
                .with_max_event_bytes(config.redaction.event_bound(&config.delivery))
                .with_provenance(provenance(config))
                .with_user_id_from(source.user_id_from)
                .with_default_user(&crate::parse::EventContext::for_source(config, source).user_id)
                .with_stop(shutdown.clone());
            Box::new(JournaldSource::new(
                source.clone(),
                Box::new(stage),
                stats.read.clone(),
                shutdown,
            ))
        }
    })
}

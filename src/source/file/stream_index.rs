//! The index of the streams a live file source has named, published beside
//! its queue for `replay`: sled locks the live daemon's checkpoints, and a
//! rotated copy of a file the daemon read (`app.log.1.gz`) continues the
//! stream of that file, which only the daemon's checkpoints know. With this
//! index a replay gives the copy's lines the ids the daemon gave them.
//!
//! The index holds each checkpoint without its parser state (a replay reads
//! every file from its start). It is written when the source identifies,
//! closes or forgets a file, at most every [`PUBLISH_EVERY`], and at stop:
//! a file met by the daemon in the last few seconds before a replay may be
//! missing from it, and then its copy is named as a file of its own.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::identity::{self, Candidate, Checkpoint};
use super::FileSource;

/// Least time between two publications of a source's index.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(5);
/// Largest index a replay reads: a million checkpoints of ordinary paths.
const MAX_INDEX_BYTES: u64 = 512 << 20;
const MAGIC: &[u8] = b"thoth-ingest streams 1\n";

/// The name the index of source `source` is published under.
pub fn published_name(source: &str) -> String {
    format!("streams-{source}")
}

/// The index of a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StreamIndexError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a stream index of this version, or damaged ({what})")]
    Damaged {
        path: std::path::PathBuf,
        what: &'static str,
    },
}

/// Encodes checkpoints (key and value) as an index: the magic, then for
/// each a length-prefixed key and checkpoint, then a CRC-32 of it all.
pub fn encode(entries: &[(Vec<u8>, Checkpoint)]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for (key, cp) in entries {
        let mut cp = cp.clone();
        cp.parser_state.clear();
        let value = cp.encode();
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(&value);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes an index; `what` says why not.
pub fn decode(bytes: &[u8]) -> Result<Vec<(Vec<u8>, Checkpoint)>, &'static str> {
    let body_len = bytes.len().checked_sub(4).ok_or("too short")?;
    let (body, crc) = bytes.split_at(body_len);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "too short")?);
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch");
    }
    let mut rest = body.strip_prefix(MAGIC).ok_or("unknown header")?;
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, &'static str> {
        let (len, tail) = rest.split_at_checked(4).ok_or("cut short")?;
        let len = u32::from_le_bytes(len.try_into().map_err(|_| "cut short")?) as usize;
        let (item, tail) = tail.split_at_checked(len).ok_or("cut short")?;
        *rest = tail;
        Ok(item.to_vec())
    };
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let key = take(&mut rest)?;
        let value = take(&mut rest)?;
        let cp = Checkpoint::decode(&value).ok_or("unreadable checkpoint")?;
        entries.push((key, cp));
    }
    Ok(entries)
}

/// Reads the index source `source` published in `published` (the folder
/// of files the daemon's store publishes); None if there is none (the
/// daemon never ran this source, or is older than the index).
pub fn read(published: &Path, source: &str) -> Result<Option<StreamIndex>, StreamIndexError> {
    let path = published.join(published_name(source));
    let io = |source| StreamIndexError::Io {
        path: path.clone(),
        source,
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mut bytes = Vec::new();
    use std::io::Read;
    file.take(MAX_INDEX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_INDEX_BYTES {
        return Err(StreamIndexError::Damaged {
            path,
            what: "larger than any index the daemon writes",
        });
    }
    let entries = decode(&bytes).map_err(|what| StreamIndexError::Damaged {
        path: path.clone(),
        what,
    })?;
    Ok(Some(StreamIndex::new(source, entries)))
}

/// A live source's streams, as its index published them, by fingerprint.
#[derive(Debug, Clone, Default)]
pub struct StreamIndex {
    by_fingerprint: HashMap<String, Vec<Candidate>>,
    len: usize,
}

impl StreamIndex {
    pub fn new(source: &str, entries: Vec<(Vec<u8>, Checkpoint)>) -> StreamIndex {
        let prefix = identity::source_prefix(source);
        let mut by_fingerprint: HashMap<String, Vec<Candidate>> = HashMap::new();
        let len = entries.len();
        for (key, checkpoint) in entries {
            // `file/<source>/<fingerprint>/<dev>-<ino>`
            let Some(fingerprint) = key
                .strip_prefix(prefix.as_slice())
                .and_then(|rest| rest.split(|&b| b == b'/').next())
                .and_then(|fp| std::str::from_utf8(fp).ok())
            else {
                continue;
            };
            by_fingerprint
                .entry(fingerprint.to_string())
                .or_default()
                .push(Candidate {
                    file_id: identity::key_file_id(&key),
                    checkpoint,
                });
        }
        StreamIndex {
            by_fingerprint,
            len,
        }
    }

    /// Streams in the index.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The checkpoints of the source's files with this fingerprint, as
    /// [`identity::resolve`] takes them.
    pub fn candidates(&self, fingerprint: &str) -> &[Candidate] {
        self.by_fingerprint
            .get(fingerprint)
            .map_or(&[], Vec::as_slice)
    }
}

impl FileSource {
    /// Publishes the index if a stream was named or a file closed or
    /// forgotten since the last publication, at most every
    /// [`PUBLISH_EVERY`] unless `now` (at stop). A failure is logged and
    /// retried: it only costs a replay the ids of rotated copies.
    pub(super) fn publish_streams(&mut self, now: bool) {
        if !self.streams_changed
            || (!now
                && self
                    .streams_published
                    .is_some_and(|t| t.elapsed() < PUBLISH_EVERY))
        {
            return;
        }
        self.streams_published = Some(Instant::now());
        let entries = match self
            .sink
            .checkpoints_with_prefix(&identity::source_prefix(&self.name))
        {
            Ok(all) => all
                .into_iter()
                .filter_map(|(k, v)| Some((k, Checkpoint::decode(&v)?)))
                .collect::<Vec<_>>(),
            Err(e) => {
                warn!(source = %self.name, error = %e, "cannot read the checkpoints to publish the stream index for replay; will retry");
                return;
            }
        };
        match self
            .sink
            .publish(&published_name(&self.name), &encode(&entries))
        {
            Ok(()) => {
                self.streams_changed = false;
                debug!(source = %self.name, streams = entries.len(), "stream index published");
            }
            Err(e) => {
                warn!(source = %self.name, error = %e, "cannot publish the stream index for replay; will retry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_round_trips_without_parser_state_and_damage_is_refused() {
        let cp = Checkpoint {
            offset: 42,
            stream: "s/f/1-2".into(),
            path: "/var/log/a.log".into(),
            parser_state: b"state".to_vec(),
            ..Checkpoint::default()
        };
        let key = identity::checkpoint_key("s", "f", identity::FileId::new(1, 2));
        let bytes = encode(&[(key.clone(), cp.clone())]);
        let decoded = decode(&bytes).expect("decodes");
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].0, key);
        assert_eq!(decoded[0].1.stream, "s/f/1-2");
        assert!(decoded[0].1.parser_state.is_empty());
        let index = StreamIndex::new("s", decoded);
        assert_eq!(index.len(), 1);
        assert_eq!(index.candidates("f").len(), 1);
        assert!(index.candidates("g").is_empty());

        let mut torn = bytes.clone();
        torn.truncate(bytes.len() - 9);
        assert!(decode(&torn).is_err());
        let mut flipped = bytes;
        flipped[MAGIC.len() + 2] ^= 1;
        assert_eq!(decode(&flipped).unwrap_err(), "checksum mismatch");
        assert!(decode(b"").is_err());
    }
}

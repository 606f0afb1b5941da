//! Who a file is: one routine, for plain and compressed files alike,
//! fingerprints its first line, finds the stored checkpoints it may
//! continue ([`super::identity::resolve`]), waits out a copy whose original
//! may still be there, and starts the file's stream where it resumes. A
//! file that changed under the reader (truncated or rewritten) is noticed
//! here and read again as a new stream.

use super::gz::{gz_tail, open_gz};
use super::*;

/// How a file's bytes are read: as they are, or through gzip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Body {
    Plain,
    Compressed,
}

/// What identifying a file came to.
pub(super) enum Identified {
    /// Its stream and position are set: read on.
    Yes,
    /// No complete first line yet (for a compressed file: empty).
    NoFirstLine,
    /// Maybe a copy of a file still followed: decided after `rotate_wait`.
    Waiting,
    /// A compressed file whose own checkpoint says it was read whole.
    ReadWhole,
    /// Its start or its tail could not be read (for a compressed file: a
    /// copy still being written, retried when its size changes).
    Unreadable(std::io::Error),
}

impl FileSource {
    /// Fingerprints a file and decides where to read it from: its own
    /// checkpoint, the one of the file it is a copy or compressed rotation
    /// of, or a new stream (from its start, or for a plain file found at
    /// start-up with `start_at = "end"`, after its last line). `closing`: a
    /// plain file that went away has no more bytes to wait for.
    pub(super) fn identify(
        &mut self,
        id: FileId,
        size: u64,
        body: Body,
        closing: bool,
    ) -> Result<Identified, ReadError> {
        let fp_bytes = self.config.fingerprint_bytes;
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        let file = t.handle()?;
        let (start, complete) = match body {
            Body::Plain => {
                let mut start = vec![0u8; fp_bytes];
                let n = read_full_at(file, &mut start, 0)?;
                start.truncate(n);
                (start, closing)
            }
            Body::Compressed => match identity::read_start(&mut open_gz(file)?, fp_bytes) {
                // Decoded to its end before the fingerprint's length: whole.
                Ok(start) => {
                    let whole = start.len() < fp_bytes;
                    (start, whole)
                }
                Err(e) => return Ok(Identified::Unreadable(e)),
            },
        };
        let Some(fp) = identity::fingerprint_of(&start, fp_bytes, complete) else {
            return Ok(Identified::NoFirstLine);
        };
        let key = identity::checkpoint_key(&self.name, &fp, id);
        let candidates = candidates(self.sink.as_ref(), &self.name, &fp)?;
        if body == Body::Compressed
            && candidates.iter().any(|c| {
                c.file_id == Some(id) && c.checkpoint.complete && c.checkpoint.disk_size == size
            })
        {
            return Ok(Identified::ReadWhole);
        }
        let file_id = file_identity(file, id);
        let owner = t.owner;
        let resolved = match body {
            Body::Plain => identity::resolve(
                &self.name,
                &fp,
                id,
                &file_id,
                owner,
                &candidates,
                &mut |offset, len| tail_of_file(file, offset, len),
            ),
            Body::Compressed => identity::resolve(
                &self.name,
                &fp,
                id,
                &file_id,
                owner,
                &candidates,
                &mut |offset, len| gz_tail(file, offset, len),
            ),
        };
        let resolution = match resolved {
            Ok(resolution) => resolution,
            Err(e) => return Ok(Identified::Unreadable(e)),
        };
        let Some(resolution) = self.settle_copy(id, &fp, resolution) else {
            return Ok(Identified::Waiting);
        };
        // A checkpoint under this key that is not this stream's: the file was
        // rewritten while we were away, or its inode belonged to another file.
        let new_stream = match &resolution {
            Resolution::Resume(cp) => cp.stream.as_str(),
            Resolution::Fresh { stream } => stream.as_str(),
            Resolution::Copy { .. } => "",
        };
        retire(self.sink.as_ref(), &key, Some(new_stream))?;
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        let start_at_end =
            body == Body::Plain && self.config.start_at == StartAt::End && t.at_startup;
        if let Some(old) = t.slot.take() {
            self.sink.close_stream(old);
        }
        let owner = Some(t.owner);
        t.cutter.resume(false);
        let stream = match resolution {
            Resolution::Resume(cp) | Resolution::Copy { checkpoint: cp, .. } => {
                // Formats that name the session in the file name (Codex) read it here.
                t.slot = Some(
                    self.sink
                        .open_stream(Some(&t.path), owner, Some(&cp.parser_state)),
                );
                t.offset = cp.offset;
                t.cutter.resume(cp.skipping);
                t.committed = (cp.offset, cp.tail);
                match body {
                    Body::Plain => {
                        debug!(source = %self.name, path = %t.path.display(), fingerprint = %fp, offset = cp.offset, stream = %cp.stream, "file identified; resuming")
                    }
                    Body::Compressed => {
                        info!(source = %self.name, path = %t.path.display(), offset = cp.offset, "compressed file continues a stream already read; reading only what is new")
                    }
                }
                cp.stream
            }
            Resolution::Fresh { stream } => {
                t.slot = Some(self.sink.open_stream(Some(&t.path), owner, None));
                t.offset = if start_at_end {
                    end_of_last_line(t.handle()?, size)?
                } else {
                    0
                };
                t.committed = (0, Tail::default());
                match body {
                    Body::Plain => {
                        debug!(source = %self.name, path = %t.path.display(), fingerprint = %fp, offset = t.offset, stream = %stream, "new file")
                    }
                    Body::Compressed => {
                        info!(source = %self.name, path = %t.path.display(), "compressed file never read; reading it whole")
                    }
                }
                stream
            }
        };
        t.verified_size = size;
        self.streams_changed = true;
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
        Ok(Identified::Yes)
    }

    /// A file that looks like a copy of another continues that stream, unless
    /// the other is still followed at its path: then it waits `rotate_wait`
    /// (copytruncate truncates the original right after copying, a rotation
    /// into `.gz` deletes it), and a file whose original is still there after
    /// that merely starts the same way (syslog and messages): a new stream.
    /// None while waiting.
    pub(super) fn settle_copy(
        &mut self,
        id: FileId,
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
    pub(super) fn still_followed(
        &self,
        id: FileId,
        of: Option<FileId>,
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
    pub(super) fn rewritten(&mut self, id: FileId, size: u64) -> Result<bool, ReadError> {
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
}

/// Keeps the checkpoint at `key` under a key of its own, as a closed file,
/// before a new stream of the same file replaces it: a copy of the old
/// content (copytruncate) found later must still recognise it.
/// `keep` names the stream about to be written under `key`: a checkpoint of
/// that same stream stays where it is. (A reused inode gives a new file the
/// key of a deleted one.)
pub(super) fn retire(store: &dyn Sink, key: &[u8], keep: Option<&str>) -> Result<(), SinkError> {
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
pub(crate) fn file_identity(file: &File, FileId { dev, ino }: FileId) -> String {
    let born = file
        .metadata()
        .and_then(|m| m.created())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| format!("-{:x}", d.as_nanos()))
        .unwrap_or_default();
    format!("{dev:x}-{ino:x}{born}")
}

/// The stored checkpoints of a source's files with this fingerprint.
pub(super) fn candidates(
    store: &dyn Sink,
    source: &str,
    fp: &str,
) -> Result<Vec<Candidate>, SinkError> {
    Ok(store
        .checkpoints_with_prefix(&identity::key_prefix(source, fp))?
        .into_iter()
        .filter_map(|(k, v)| {
            Some(Candidate {
                file_id: identity::key_file_id(&k),
                checkpoint: Checkpoint::decode(&v)?,
            })
        })
        .collect())
}

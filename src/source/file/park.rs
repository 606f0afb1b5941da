//! Staying within `max_open_files`: files are parked (their handles closed)
//! least busy first and reopened, with the checks of the first open, when
//! they have work or changed; a reopened inode that holds another file now
//! is followed as a new one. Also where a file stops being followed.

use super::*;

impl FileSource {
    /// Reopens a parked file that has work waiting or, when `check_all`,
    /// that changed since it was parked. False if it stays parked: unchanged,
    /// no longer at its path, or no room in the budget.
    pub(super) fn unpark(&mut self, id: FileId, check_all: bool) -> Result<bool, SinkError> {
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
        if FileId::of(&meta) != id {
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
    pub(super) fn follow_as_new(&mut self, id: FileId) {
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
    pub(super) fn make_room(&mut self, keep: FileId) -> Result<bool, SinkError> {
        if self.open_descriptors < self.max_open_files {
            return Ok(true);
        }
        let open: Vec<handles::OpenFile<FileId>> = self
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
        let read_out: Vec<FileId> = self
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
    pub(super) fn park(&mut self, id: FileId) {
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
    pub(super) fn open_again(&self, id: FileId) -> std::io::Result<Option<File>> {
        let Some(t) = self.tracked.get(&id) else {
            return Ok(None);
        };
        let base = self.matcher.base_of(&t.path);
        let matcher = &self.matcher;
        Ok(
            match open::open_checked(&t.path, &base, self.config.follow_symlinks, |p| {
                matcher.excluded(p)
            })? {
                Ok((file, meta)) if FileId::of(&meta) == id => Some(file),
                Ok(_) => None,
                Err(refusal) => {
                    debug!(source = %self.name, path = %t.path.display(), "not reopened: {refusal}");
                    None
                }
            },
        )
    }

    /// Stops following a file, without a word: it is another file now.
    pub(super) fn forget(&mut self, id: FileId) -> Option<Tracked> {
        let t = self.tracked.remove(&id)?;
        if let Some(slot) = t.slot {
            self.sink.close_stream(slot);
        }
        Some(t)
    }

    /// Stops following a file that went away and was read to its end.
    pub(super) fn close(&mut self, id: FileId) -> Result<(), SinkError> {
        let Some(t) = self.forget(id) else {
            return Ok(());
        };
        info!(source = %self.name, path = %t.path.display(), "file rotated away or deleted and read to its end; closed");
        if let Some(ident) = &t.ident {
            if let Some(value) = self.sink.checkpoint(&ident.key)? {
                if let Some(mut cp) = Checkpoint::decode(&value) {
                    cp.closed_at = unix_now();
                    self.sink.put_checkpoint(&ident.key, &cp.encode())?;
                    self.streams_changed = true;
                }
            }
        }
        self.stats
            .files
            .store(self.tracked.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

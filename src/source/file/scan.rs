//! The glob scan: finds the files a source's globs match, opens the new
//! ones with the checks of [`super::open`], follows renames by identity, and
//! notes files that no longer match at any path. Refusals and failed opens
//! are logged once per path.

use super::*;

impl FileSource {
    /// Matches the globs again: opens new files, notes files that went away.
    pub(super) fn scan(&mut self) {
        self.scans += 1;
        let first = self.scans == 1;
        for dir in self.matcher.base_dirs() {
            if dir.is_dir() {
                self.watch(&dir);
            }
        }
        self.count_descriptors();
        let mut seen = HashSet::new();
        let stats = self.stats.clone();
        let found = self.matcher.walk_beating(&|| stats.beat());
        self.report_walk(&found);
        for path in found.files {
            stats.beat();
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
            let id = FileId::of(&meta);
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
                    let id = FileId::of(&opened_meta);
                    if id != FileId::of(&meta) {
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
                            owner: opened_meta.uid(),
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
    pub(super) fn report_walk(&mut self, found: &discover::Found) {
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
    pub(super) fn open_failed(&mut self, path: &Path, e: &std::io::Error) {
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
}

/// The metadata of what is at `path`: of a link's target only when links
/// are followed.
pub(super) fn stat(path: &Path, follow_symlinks: bool) -> std::io::Result<std::fs::Metadata> {
    if follow_symlinks {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    }
}

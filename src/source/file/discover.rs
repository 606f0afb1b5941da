//! Finds the files a source's `include` globs match, minus its `exclude`
//! globs, walking directories that users write to as a hostile place: no
//! symbolic link is followed unless the source opts in (and then only to a
//! target with the link's owner), no directory is expanded twice for the same
//! part of a pattern (so links such as `a -> .` cannot loop), and a walk
//! stops at a bounded number of files and directories.
//!
//! A pattern is matched one path component at a time, as a shell does: the
//! fixed directory it starts with (the operator's, trusted, links allowed),
//! then literal names, single-component globs, and `**` for any depth.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobMatcher, GlobSet, GlobSetBuilder};

use super::open::{file_kind, Refusal};

/// Directories one scan of one source may read: a user who makes a million
/// directories slows the scan down to this, not the daemon to a halt.
pub const MAX_DIRS_PER_SCAN: usize = 100_000;
/// Refused paths one walk reports (each is logged once anyway).
const MAX_REFUSED: usize = 1_000;

/// One part of a pattern below its fixed directory.
enum Part {
    Literal(OsString),
    Glob(GlobMatcher),
    /// `**`: zero or more directories.
    AnyDirs,
}

struct Pattern {
    base: PathBuf,
    parts: Vec<Part>,
}

/// What one walk found.
#[derive(Debug, Default)]
pub struct Found {
    /// Matching paths that are (or, with links followed, lead to) regular
    /// files, sorted, at most `max_files`.
    pub files: Vec<PathBuf>,
    /// More files matched than `max_files`.
    pub files_capped: bool,
    /// The walk read `MAX_DIRS_PER_SCAN` directories and stopped.
    pub dirs_capped: bool,
    /// Paths that matched but are not read: links not followed, links to
    /// another owner's file, FIFOs, sockets, devices. (Links to directories
    /// met on the way are skipped silently: home directories hold many.)
    pub refused: Vec<(PathBuf, Refusal)>,
}

/// The include globs of a source, with what to leave out.
pub struct FileMatcher {
    patterns: Vec<Pattern>,
    exclude: GlobSet,
    follow_symlinks: bool,
    max_files: usize,
}

/// `~/` at the start of a pattern is the home directory of the daemon's user.
fn expand_home(pattern: &str) -> String {
    match (pattern.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest).to_string_lossy().into_owned(),
        _ => pattern.to_string(),
    }
}

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

impl Pattern {
    fn new(pattern: &str) -> Result<Pattern, globset::Error> {
        let path = Path::new(pattern);
        let mut base = PathBuf::new();
        let mut parts = Vec::new();
        for c in path.components() {
            let text = c.as_os_str().to_string_lossy();
            match c {
                Component::Normal(name) if !parts.is_empty() || has_glob_chars(&text) => {
                    parts.push(if text == "**" {
                        Part::AnyDirs
                    } else if has_glob_chars(&text) {
                        Part::Glob(Glob::new(&text)?.compile_matcher())
                    } else {
                        Part::Literal(name.to_os_string())
                    });
                }
                _ => base.push(c),
            }
        }
        if parts.is_empty() {
            // A literal path: its directory is the base, its name the part.
            if let Some(name) = base.file_name().map(|n| n.to_os_string()) {
                base.pop();
                parts.push(Part::Literal(name));
            }
        }
        Ok(Pattern { base, parts })
    }
}

impl FileMatcher {
    pub fn new(config: &crate::config::SourceConfig) -> Result<FileMatcher, globset::Error> {
        let mut exclude = GlobSetBuilder::new();
        for pattern in &config.exclude {
            exclude.add(Glob::new(&expand_home(pattern))?);
        }
        let patterns = config
            .include
            .iter()
            .map(|p| Pattern::new(&expand_home(p)))
            .collect::<Result<_, _>>()?;
        Ok(FileMatcher {
            patterns,
            exclude: exclude.build()?,
            follow_symlinks: config.follow_symlinks,
            max_files: config.max_files,
        })
    }

    /// Whether `exclude` leaves this path out.
    pub fn excluded(&self, path: &Path) -> bool {
        self.exclude.is_match(path)
    }

    /// The paths that match now (see [`Found`]). Unreadable directories on
    /// the way are skipped, and tried again on the next walk.
    pub fn walk(&self) -> Found {
        self.walk_beating(&|| {})
    }

    /// [`walk`](Self::walk), calling `beat` at each directory it reads: a
    /// walk over slow or huge trees is a sign of life, not a stall.
    pub fn walk_beating(&self, beat: &dyn Fn()) -> Found {
        let mut found = Found::default();
        let mut dirs_read = 0usize;
        for pattern in &self.patterns {
            self.walk_pattern(pattern, &mut found, &mut dirs_read, beat);
        }
        found.files.sort();
        found.files.dedup();
        if found.files.len() > self.max_files {
            found.files.truncate(self.max_files);
            found.files_capped = true;
        }
        found
    }

    /// The paths that match now, sorted.
    pub fn matching_files(&self) -> Vec<PathBuf> {
        self.walk().files
    }

    /// The fixed directory of the pattern that found `path` (the longest
    /// that holds it): links above it are the operator's own.
    pub fn base_of(&self, path: &Path) -> PathBuf {
        self.patterns
            .iter()
            .map(|p| &p.base)
            .filter(|b| path.starts_with(b))
            .max_by_key(|b| b.as_os_str().len())
            .cloned()
            .unwrap_or_else(|| path.parent().map(Path::to_path_buf).unwrap_or_default())
    }

    /// The fixed directory each pattern starts with: watched so that new
    /// files (and new subdirectories) there are noticed at once.
    pub fn base_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.patterns.iter().map(|p| p.base.clone()).collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    fn walk_pattern(
        &self,
        pattern: &Pattern,
        found: &mut Found,
        dirs_read: &mut usize,
        beat: &dyn Fn(),
    ) {
        let Ok(base) = std::fs::metadata(&pattern.base) else {
            return;
        };
        if !base.is_dir() || pattern.parts.is_empty() {
            return;
        }
        // (device, inode, part): a directory is expanded once per part of
        // the pattern, however many links lead to it.
        let mut expanded: HashSet<(u64, u64, usize)> = HashSet::new();
        let mut stack = vec![(pattern.base.clone(), 0usize, (base.dev(), base.ino()))];
        while let Some((dir, i, id)) = stack.pop() {
            if !expanded.insert((id.0, id.1, i)) {
                continue;
            }
            let last = i + 1 == pattern.parts.len();
            match &pattern.parts[i] {
                Part::Literal(name) => {
                    let child = dir.join(name);
                    self.visit(&child, i, last, false, found, &mut stack);
                }
                Part::Glob(_) | Part::AnyDirs => {
                    if *dirs_read >= MAX_DIRS_PER_SCAN {
                        found.dirs_capped = true;
                        return;
                    }
                    *dirs_read += 1;
                    beat();
                    if matches!(pattern.parts[i], Part::AnyDirs) {
                        if last {
                            // `dir/**` matches everything below: nothing to
                            // match at this level but its entries.
                        } else {
                            // Zero directories: the next part applies here.
                            stack.push((dir.clone(), i + 1, id));
                        }
                    }
                    let Ok(entries) = std::fs::read_dir(&dir) else {
                        continue;
                    };
                    for entry in entries.flatten() {
                        if self.past_caps(found) {
                            return; // one directory of a million files
                        }
                        let child = entry.path();
                        match &pattern.parts[i] {
                            Part::Glob(m) => {
                                if m.is_match(entry.file_name()) {
                                    self.visit(&child, i, last, false, found, &mut stack);
                                }
                            }
                            _ => self.visit(&child, i, last, true, found, &mut stack),
                        }
                    }
                }
            }
            if self.past_caps(found) {
                return;
            }
        }
    }

    /// Far past what is kept: stop reading (`walk` reports the file cap).
    fn past_caps(&self, found: &mut Found) -> bool {
        if found.refused.len() > MAX_REFUSED {
            found.refused.truncate(MAX_REFUSED);
        }
        found.files.len() > self.max_files.saturating_mul(2)
    }

    /// `child` was reached by part `i` (`last`: the pattern's last part). A
    /// directory goes on with part `i + 1`, or, under `**` (`stay`), with
    /// part `i` again; a file matches only at the last part.
    fn visit(
        &self,
        child: &Path,
        i: usize,
        last: bool,
        stay: bool,
        found: &mut Found,
        stack: &mut Vec<(PathBuf, usize, (u64, u64))>,
    ) {
        let meta = match self.entry_meta(child) {
            Ok(meta) => meta,
            Err(refusal) => {
                if let Some(refusal) = refusal.filter(|_| last && !self.excluded(child)) {
                    found.refused.push((child.to_path_buf(), refusal));
                }
                return;
            }
        };
        if meta.is_dir() {
            let next = if stay { i } else { i + 1 };
            if stay || !last {
                stack.push((child.to_path_buf(), next, (meta.dev(), meta.ino())));
            }
        } else if last {
            self.matched_file(child, &meta, found);
        }
    }

    /// `path` matched a whole pattern.
    fn matched_file(&self, path: &Path, meta: &std::fs::Metadata, found: &mut Found) {
        if self.excluded(path) {
            return;
        }
        if meta.is_file() {
            found.files.push(path.to_path_buf());
        } else {
            found
                .refused
                .push((path.to_path_buf(), Refusal::NotRegular(file_kind(meta))));
        }
    }

    /// What `path` is, without following a link unless links are followed
    /// and the link's owner owns its target too.
    /// Err(None): gone since the directory was read, or a dangling link.
    fn entry_meta(&self, path: &Path) -> Result<std::fs::Metadata, Option<Refusal>> {
        let meta = std::fs::symlink_metadata(path).map_err(|_| None)?;
        if !meta.file_type().is_symlink() {
            return Ok(meta);
        }
        if !self.follow_symlinks {
            return Err(Some(Refusal::Link));
        }
        let target = std::fs::metadata(path).map_err(|_| None)?;
        if target.uid() != meta.uid() {
            return Err(Some(Refusal::OwnerMismatch {
                link_uid: meta.uid(),
                target_uid: target.uid(),
            }));
        }
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn matcher(include: &[String], follow: bool) -> FileMatcher {
        FileMatcher {
            patterns: include.iter().map(|p| Pattern::new(p).unwrap()).collect(),
            exclude: GlobSet::empty(),
            follow_symlinks: follow,
            max_files: 10_000,
        }
    }

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x\n").unwrap();
    }

    #[test]
    fn patterns_match_component_by_component() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for f in [
            "home/alice/.claude/projects/p1/a.jsonl",
            "home/alice/.claude/projects/p1/deep/b.jsonl",
            "home/bob/.claude/projects/c.jsonl",
            "home/bob/.claude/other/d.jsonl",
            "home/bob/.claude/projects/e.txt",
        ] {
            touch(&root.join(f));
        }
        let m = matcher(
            &[format!(
                "{}/home/*/.claude/projects/**/*.jsonl",
                root.display()
            )],
            false,
        );
        let names: Vec<String> = m
            .matching_files()
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            vec![
                "home/alice/.claude/projects/p1/a.jsonl",
                "home/alice/.claude/projects/p1/deep/b.jsonl",
                "home/bob/.claude/projects/c.jsonl",
            ]
        );
        let literal = matcher(
            &[format!(
                "{}/home/bob/.claude/projects/c.jsonl",
                root.display()
            )],
            false,
        );
        assert_eq!(literal.matching_files().len(), 1);
        assert_eq!(
            literal.base_dirs(),
            vec![root.join("home/bob/.claude/projects")]
        );
    }

    #[test]
    fn links_are_not_followed_unless_asked_and_owners_match_and_loops_end() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        touch(&root.join("logs/real.log"));
        touch(&root.join("secret/creds.log"));
        symlink(root.join("secret/creds.log"), root.join("logs/link.log")).unwrap();
        symlink(root.join("secret"), root.join("logs/dirlink")).unwrap();
        symlink(".", root.join("logs/a")).unwrap();
        symlink(".", root.join("logs/b")).unwrap();
        let pattern = [format!("{}/logs/**/*.log", root.display())];

        let found = matcher(&pattern, false).walk();
        assert_eq!(found.files, vec![root.join("logs/real.log")]);
        assert_eq!(
            found.refused,
            vec![(root.join("logs/link.log"), Refusal::Link)],
            "the matching link is reported, the directory links are not"
        );

        // Followed (same owner here): each file once, through however many
        // loops; the walk ends.
        let found = matcher(&pattern, true).walk();
        assert!(found.files.contains(&root.join("logs/real.log")));
        assert!(found.files.contains(&root.join("logs/link.log")));
        assert!(!found.dirs_capped);
        assert!(found.files.len() <= 4, "{:?}", found.files);
    }
}

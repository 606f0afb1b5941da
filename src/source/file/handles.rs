//! The descriptor budget of a file source: how many of the files it follows
//! keep an open handle, and which to close when another must open.
//!
//! A user can make as many matching files as they like, and each open one
//! costs a descriptor the flusher's sockets and the queue also need. So a
//! source keeps at most `max_open_files` handles; past that the least
//! recently active files are parked (closed) and reopened by their identity
//! (device, inode, then fingerprint) when they change. A parked file that is
//! renamed to a path the globs no longer match, or deleted, before it is
//! reopened takes with it what was written after its last read: that is the
//! price of the bound, so the files parked first are those read to their
//! end longest ago.

use std::time::Instant;

/// Descriptors left to everything but the followed files: the flusher's
/// connections, the queue's segments and index, the change watcher, stdio.
pub const RESERVED_DESCRIPTORS: u64 = 128;
/// A source keeps at least this many files open, whatever the limit says.
pub const MIN_OPEN_FILES: usize = 16;

/// The `max_open_files` of a source whose config names none: the descriptor
/// limit less the reserve, shared evenly among `file_sources`.
pub fn default_max_open_files(fd_limit: u64, file_sources: usize) -> usize {
    let spare = fd_limit.saturating_sub(RESERVED_DESCRIPTORS);
    let share = spare / (file_sources.max(1) as u64);
    usize::try_from(share)
        .unwrap_or(usize::MAX)
        .max(MIN_OPEN_FILES)
}

/// What eviction knows of an open file.
#[derive(Debug, Clone, Copy)]
pub struct OpenFile<K> {
    pub key: K,
    /// Bytes or a record still waiting to be read: parked last.
    pub busy: bool,
    pub last_active: Instant,
}

/// How many to park at once when the budget is full: a batch, so a source
/// walking many more files than its budget does not search for the least
/// recent file before every open.
pub fn park_batch(max_open: usize) -> usize {
    (max_open / 8).max(1)
}

/// The keys of the `count` files to park first: idle before busy, then the
/// least recently active.
pub fn to_park<K: Copy>(mut open: Vec<OpenFile<K>>, count: usize) -> Vec<K> {
    let order = |f: &OpenFile<K>| (f.busy, f.last_active);
    if count < open.len() {
        open.select_nth_unstable_by_key(count, order);
        open.truncate(count);
    }
    open.into_iter().map(|f| f.key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_default_leaves_the_reserve_and_shares_the_rest() {
        assert_eq!(default_max_open_files(256, 1), 128);
        assert_eq!(default_max_open_files(1024 + 128, 4), 256);
        assert_eq!(default_max_open_files(64, 1), MIN_OPEN_FILES);
        assert!(default_max_open_files(u64::MAX, 0) > 1 << 40);
    }

    #[test]
    fn idle_files_are_parked_before_busy_ones_and_oldest_first() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let files = vec![
            OpenFile {
                key: 'a',
                busy: true,
                last_active: at(0),
            },
            OpenFile {
                key: 'b',
                busy: false,
                last_active: at(5),
            },
            OpenFile {
                key: 'c',
                busy: false,
                last_active: at(1),
            },
            OpenFile {
                key: 'd',
                busy: true,
                last_active: at(9),
            },
        ];
        let mut two = to_park(files.clone(), 2);
        two.sort();
        assert_eq!(two, vec!['b', 'c']);
        let mut three = to_park(files.clone(), 3);
        three.sort();
        assert_eq!(three, vec!['a', 'b', 'c']);
        assert_eq!(to_park(files, 9).len(), 4);
    }
}

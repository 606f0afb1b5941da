//! Sources: where records come from and what a position in them is.
//!
//! A source reads its input, runs the parser, and hands events and its new
//! position to the queue in one commit. It never writes a checkpoint by itself.

pub mod file;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::parse::ParseStats;

/// Counters a source keeps for `status`, the demo and tests.
#[derive(Debug, Default)]
pub struct SourceStats {
    pub bytes_read: AtomicU64,
    pub commits: AtomicU64,
    /// Lines that were not valid UTF-8 and had bad bytes replaced.
    pub invalid_utf8_lines: AtomicU64,
    /// Records cut to `max_line_bytes`.
    pub truncated_lines: AtomicU64,
    /// Files followed now.
    pub files: AtomicU64,
    /// Bytes between the read position and the end of every followed file.
    pub lag_bytes: AtomicU64,
    /// Set when a full pass over every file found nothing new to read.
    pub caught_up: AtomicBool,
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
        self.caught_up.load(Ordering::SeqCst)
    }
}

//! Cuts the bytes of a file into records: lines split on `\n`, over-long lines
//! cut to `max_line_bytes`, and, when configured, continuation lines joined to
//! the record their start line began.
//!
//! It keeps just enough state to resume exactly: whether it is skipping the
//! rest of a cut line, and the multiline record still open. The position it
//! reports as safe to checkpoint is never past the start of that open record,
//! so a restart rebuilds it from the file.

use std::time::{Duration, Instant};

use regex::bytes::Regex;

/// A record ready for the parser.
#[derive(Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// Byte offset of the record's first byte in the file.
    pub position: u64,
    /// The record without its final newline (a trailing `\r` is still there;
    /// the line cleaner strips it).
    pub bytes: &'a [u8],
}

/// Counters kept while cutting lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LineStats {
    /// Records cut to `max_line_bytes`.
    pub truncated: u64,
}

#[derive(Clone)]
pub struct Multiline {
    pub start: Regex,
    pub timeout: Duration,
}

/// A multiline record still collecting continuation lines.
struct Open {
    position: u64,
    bytes: Vec<u8>,
    truncated: bool,
    last_line_at: Instant,
}

pub struct LineCutter {
    max_line: usize,
    multiline: Option<Multiline>,
    /// Inside the rest of a line whose first `max_line` bytes were emitted.
    skipping: bool,
    open: Option<Open>,
    /// Scratch for emitting a record that ends at a buffer's edge.
    scratch: Vec<u8>,
    pub stats: LineStats,
}

impl LineCutter {
    pub fn new(max_line: usize, multiline: Option<Multiline>) -> LineCutter {
        LineCutter {
            max_line: max_line.max(1),
            multiline,
            skipping: false,
            open: None,
            scratch: Vec::new(),
            stats: LineStats::default(),
        }
    }

    /// State restored from a checkpoint taken at a line boundary or inside a
    /// cut line.
    pub fn resume(&mut self, skipping: bool) {
        self.skipping = skipping;
        self.open = None;
    }

    /// True when the checkpoint position is inside a cut line.
    pub fn skipping(&self) -> bool {
        self.skipping && self.open.is_none()
    }

    /// The most bytes one call to [`LineCutter::feed`] needs to make progress.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Cuts `buf` (file bytes starting at offset `base`) into records and
    /// passes each to `emit`. Returns how many bytes were consumed: complete
    /// lines, or a cut line's bytes. A last line without its newline is left
    /// for the next call, unless `at_end` says no more bytes will come.
    pub fn feed(
        &mut self,
        buf: &[u8],
        base: u64,
        at_end: bool,
        emit: &mut dyn FnMut(Line<'_>),
    ) -> usize {
        self.feed_until(buf, base, at_end, emit, &mut || false)
    }

    /// [`LineCutter::feed`], stopping before the next line once `full()`
    /// says the consumer holds enough: what one commit holds stays bounded
    /// whatever the lines expand to. The rest of `buf` is not consumed.
    pub fn feed_until(
        &mut self,
        buf: &[u8],
        base: u64,
        at_end: bool,
        emit: &mut dyn FnMut(Line<'_>),
        full: &mut dyn FnMut() -> bool,
    ) -> usize {
        let mut pos = 0usize;
        while pos < buf.len() {
            if full() {
                return pos;
            }
            let rest = &buf[pos..];
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    if self.skipping {
                        self.skipping = false;
                    } else {
                        let line = &rest[..i];
                        self.line(base + pos as u64, line, emit);
                    }
                    pos += i + 1;
                }
                None => {
                    if self.skipping {
                        pos = buf.len();
                    } else if rest.len() >= self.max_line {
                        self.line(base + pos as u64, rest, emit);
                        self.skipping = !at_end;
                        pos = buf.len();
                    } else if at_end {
                        self.line(base + pos as u64, rest, emit);
                        pos = buf.len();
                    }
                    break;
                }
            }
        }
        if at_end {
            self.skipping = false;
            self.flush_open(emit);
        }
        pos
    }

    /// The checkpoint position given that `consumed_to` bytes were consumed:
    /// the start of an open multiline record, if one is open.
    pub fn safe_position(&self, consumed_to: u64) -> u64 {
        match &self.open {
            Some(o) => o.position,
            None => consumed_to,
        }
    }

    /// Emits the open multiline record if no line joined it for the timeout.
    pub fn flush_if_stale(&mut self, emit: &mut dyn FnMut(Line<'_>)) -> bool {
        let stale = match (&self.open, &self.multiline) {
            (Some(o), Some(m)) => o.last_line_at.elapsed() >= m.timeout,
            _ => false,
        };
        if stale {
            self.flush_open(emit);
        }
        stale
    }

    pub fn has_open_record(&self) -> bool {
        self.open.is_some()
    }

    fn flush_open(&mut self, emit: &mut dyn FnMut(Line<'_>)) {
        if let Some(o) = self.open.take() {
            if o.truncated {
                self.stats.truncated += 1;
            }
            emit(Line {
                position: o.position,
                bytes: &o.bytes,
            });
        }
    }

    /// One complete line (without newline) at `position`.
    fn line(&mut self, position: u64, line: &[u8], emit: &mut dyn FnMut(Line<'_>)) {
        let Some(m) = &self.multiline else {
            let cut = line.len() > self.max_line;
            if cut {
                self.stats.truncated += 1;
            }
            emit(Line {
                position,
                bytes: &line[..line.len().min(self.max_line)],
            });
            return;
        };
        let body = strip_cr(line);
        if m.start.is_match(body) {
            self.flush_open(emit);
            let cut = line.len() > self.max_line;
            self.open = Some(Open {
                position,
                bytes: line[..line.len().min(self.max_line)].to_vec(),
                truncated: cut,
                last_line_at: Instant::now(),
            });
            return;
        }
        match &mut self.open {
            Some(o) => {
                let room = self.max_line.saturating_sub(o.bytes.len());
                if room > 0 {
                    // Joined records keep one `\n` between lines, without `\r`.
                    let prev = strip_cr(&o.bytes).len();
                    o.bytes.truncate(prev);
                    o.bytes.push(b'\n');
                    let room = room.saturating_sub(1);
                    o.bytes.extend_from_slice(&line[..line.len().min(room)]);
                    o.truncated |= line.len() > room;
                } else {
                    o.truncated = true;
                }
                o.last_line_at = Instant::now();
            }
            None => {
                // A continuation with no start line before it stands alone.
                self.scratch.clear();
                self.scratch
                    .extend_from_slice(&line[..line.len().min(self.max_line)]);
                if line.len() > self.max_line {
                    self.stats.truncated += 1;
                }
                emit(Line {
                    position,
                    bytes: &self.scratch,
                });
            }
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(c: &mut LineCutter, buf: &[u8], base: u64, at_end: bool) -> (usize, Vec<(u64, String)>) {
        let mut out = Vec::new();
        let n = c.feed(buf, base, at_end, &mut |l| {
            out.push((l.position, String::from_utf8_lossy(l.bytes).into_owned()))
        });
        (n, out)
    }

    #[test]
    fn complete_lines_only_until_the_end() {
        let mut c = LineCutter::new(100, None);
        let (n, out) = cut(&mut c, b"a\nbb\r\ncc", 10, false);
        assert_eq!(n, 6);
        assert_eq!(out, vec![(10, "a".into()), (12, "bb\r".into())]);
        let (n, out) = cut(&mut c, b"cc", 16, true);
        assert_eq!(n, 2);
        assert_eq!(out, vec![(16, "cc".into())]);
    }

    #[test]
    fn long_lines_are_cut_and_the_rest_skipped_across_calls() {
        let mut c = LineCutter::new(4, None);
        let (n, out) = cut(&mut c, b"abcdefgh", 0, false);
        assert_eq!((n, out), (8, vec![(0, "abcd".into())]));
        assert!(c.skipping());
        let (n, out) = cut(&mut c, b"ijk\nxy\n", 8, false);
        assert_eq!((n, out), (7, vec![(12, "xy".into())]));
        let (_, out) = cut(&mut c, b"123456\n", 15, false);
        assert_eq!(out, vec![(15, "1234".into())]);
        assert_eq!(c.stats.truncated, 2);
        assert!(!c.skipping());
    }

    #[test]
    fn multiline_joins_continuations_and_checkpoints_at_the_open_record() {
        let start = Regex::new(r"^\d").unwrap();
        let mut c = LineCutter::new(
            1000,
            Some(Multiline {
                start,
                timeout: Duration::from_secs(3600),
            }),
        );
        let (n, out) = cut(
            &mut c,
            b"orphan\n1 boom\n  at a\r\n  at b\n2 next\n",
            0,
            false,
        );
        assert_eq!(n, 36);
        assert_eq!(
            out,
            vec![(0, "orphan".into()), (7, "1 boom\n  at a\n  at b".into())]
        );
        assert_eq!(c.safe_position(36), 29);
        let (_, out) = cut(&mut c, b"", 36, true);
        assert_eq!(out, vec![(29, "2 next".into())]);
        assert_eq!(c.safe_position(36), 36);
    }

    #[test]
    fn stale_multiline_records_are_flushed() {
        let mut c = LineCutter::new(
            1000,
            Some(Multiline {
                start: Regex::new("^S").unwrap(),
                timeout: Duration::ZERO,
            }),
        );
        cut(&mut c, b"S one\n cont\n", 0, false);
        let mut out = Vec::new();
        assert!(c.flush_if_stale(&mut |l| out.push(l.bytes.to_vec())));
        assert_eq!(out, vec![b"S one\n cont".to_vec()]);
        assert!(!c.has_open_record());
    }
}

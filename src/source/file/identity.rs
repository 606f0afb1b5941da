//! What a file is, independent of its path: its fingerprint, its checkpoint,
//! and the decision, for a file seen for the first time, whether it continues
//! a stream already read (renamed, copied, compressed) or starts a new one.
//!
//! The fingerprint is the first line (or the first `fingerprint_bytes` if that
//! line is longer). Device and inode break ties between files that share a
//! first line; the bytes just before a checkpoint (the "tail") tell a copy of
//! a file we read from a different file that merely starts the same way, and
//! a file rewritten in place from the one we were reading.

use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Bytes before a checkpoint position that must match for a file to be the
/// one the checkpoint was taken in.
pub const TAIL_BYTES: u64 = 128;

/// Checksum of the bytes just before a position. `len` 0 matches anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tail {
    pub len: u16,
    pub crc: u32,
}

impl Tail {
    pub fn of(bytes: &[u8]) -> Tail {
        Tail {
            len: bytes.len() as u16,
            crc: crc32fast::hash(bytes),
        }
    }
}

/// Hex fingerprint of a file's start: its first line including the newline,
/// or its first `max` bytes. None while the file has neither (empty files
/// and half-written first lines wait, so they cannot collide), unless
/// `complete` says the file will not grow (then whatever is there counts).
pub fn fingerprint_of(start: &[u8], max: usize, complete: bool) -> Option<String> {
    let start = &start[..start.len().min(max)];
    let end = match memchr::memchr(b'\n', start) {
        Some(i) => i + 1,
        None if start.len() == max => max,
        None if complete && !start.is_empty() => start.len(),
        None => return None,
    };
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &start[..end]);
    Some(id.simple().to_string()[..16].to_string())
}

/// A short, stable hash for derived stream names.
pub fn short_hash(parts: &[&[u8]]) -> String {
    let mut all = Vec::new();
    for p in parts {
        all.extend_from_slice(&(p.len() as u64).to_le_bytes());
        all.extend_from_slice(p);
    }
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &all);
    id.simple().to_string()[..8].to_string()
}

/// The prefix of every checkpoint key of one source's files with one
/// fingerprint.
pub fn key_prefix(source: &str, fingerprint: &str) -> Vec<u8> {
    format!("file/{source}/{fingerprint}/").into_bytes()
}

pub fn source_prefix(source: &str) -> Vec<u8> {
    format!("file/{source}/").into_bytes()
}

/// A file while it exists: its device and inode. Outlives renames; a file
/// deleted gives its inode to the next one created, which is why birth time
/// and the fingerprint are checked too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn new(dev: u64, ino: u64) -> FileId {
        FileId { dev, ino }
    }

    pub fn of(meta: &std::fs::Metadata) -> FileId {
        FileId::new(meta.dev(), meta.ino())
    }
}

/// Checkpoint key of one file: source, fingerprint, device and inode.
pub fn checkpoint_key(source: &str, fingerprint: &str, id: FileId) -> Vec<u8> {
    let FileId { dev, ino } = id;
    format!("file/{source}/{fingerprint}/{dev}-{ino}").into_bytes()
}

/// The file named by a checkpoint key.
pub fn key_file_id(key: &[u8]) -> Option<FileId> {
    let last = key.rsplit(|&b| b == b'/').next()?;
    let s = std::str::from_utf8(last).ok()?;
    let (d, i) = s.split_once('-')?;
    Some(FileId::new(d.parse().ok()?, i.parse().ok()?))
}

/// Version 3 added the file's owner; version 2 checkpoints decode with
/// `owner: None`.
const VERSION: u8 = 3;
const VERSION_WITHOUT_OWNER: u8 = 2;
const FLAG_SKIPPING: u8 = 1;
const FLAG_COMPLETE: u8 = 2;
const FLAG_OWNER: u8 = 4;

/// Where a file was left, and what is needed to recognise it again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// First byte not yet handed to the parser (in the decompressed stream
    /// for a `.gz` file).
    pub offset: u64,
    /// `offset` is inside a line that was cut at `max_line_bytes`.
    pub skipping: bool,
    /// A compressed file read to its end: nothing more will come.
    pub complete: bool,
    pub tail: Tail,
    /// The stream name that event ids are derived from. A copy or compressed
    /// rotation of a file inherits it, so lines read twice keep their ids.
    pub stream: String,
    /// Unix seconds when the file stopped being followed; 0 while followed.
    pub closed_at: u64,
    /// Size of the file on disk when `complete` was set.
    pub disk_size: u64,
    pub path: PathBuf,
    /// The uid that owned the file (None in checkpoints older than
    /// version 3). A stream continues only in a file of the same owner,
    /// so a user who copies another's file cannot take its event ids.
    pub owner: Option<u32>,
    pub parser_state: Vec<u8>,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let path = self.path.as_os_str().as_encoded_bytes();
        let mut v =
            Vec::with_capacity(48 + self.stream.len() + path.len() + self.parser_state.len());
        v.push(VERSION);
        v.extend_from_slice(&self.offset.to_le_bytes());
        let mut flags = 0;
        if self.skipping {
            flags |= FLAG_SKIPPING;
        }
        if self.complete {
            flags |= FLAG_COMPLETE;
        }
        if self.owner.is_some() {
            flags |= FLAG_OWNER;
        }
        v.push(flags);
        v.extend_from_slice(&self.tail.len.to_le_bytes());
        v.extend_from_slice(&self.tail.crc.to_le_bytes());
        v.extend_from_slice(&self.closed_at.to_le_bytes());
        v.extend_from_slice(&self.disk_size.to_le_bytes());
        v.extend_from_slice(&self.owner.unwrap_or(0).to_le_bytes());
        v.extend_from_slice(&(self.stream.len() as u16).to_le_bytes());
        v.extend_from_slice(self.stream.as_bytes());
        v.extend_from_slice(&(path.len() as u32).to_le_bytes());
        v.extend_from_slice(path);
        v.extend_from_slice(&self.parser_state);
        v
    }

    /// None for anything this version did not write.
    pub fn decode(v: &[u8]) -> Option<Checkpoint> {
        let mut r = Cursor(v);
        let version = r.take(1)?[0];
        if version != VERSION && version != VERSION_WITHOUT_OWNER {
            return None;
        }
        let offset = r.u64()?;
        let flags = r.take(1)?[0];
        let tail_len = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        let tail_crc = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
        let closed_at = r.u64()?;
        let disk_size = r.u64()?;
        let owner = match version {
            VERSION => Some(u32::from_le_bytes(r.take(4)?.try_into().ok()?))
                .filter(|_| flags & FLAG_OWNER != 0),
            _ => None,
        };
        let stream_len = u16::from_le_bytes(r.take(2)?.try_into().ok()?) as usize;
        let stream = String::from_utf8(r.take(stream_len)?.to_vec()).ok()?;
        let path_len = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        let path = PathBuf::from(std::ffi::OsString::from_vec(r.take(path_len)?.to_vec()));
        Some(Checkpoint {
            offset,
            skipping: flags & FLAG_SKIPPING != 0,
            complete: flags & FLAG_COMPLETE != 0,
            tail: Tail {
                len: tail_len,
                crc: tail_crc,
            },
            stream,
            closed_at,
            disk_size,
            path,
            owner,
            parser_state: r.0.to_vec(),
        })
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// A stored checkpoint that shares a new file's fingerprint.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub file_id: Option<FileId>,
    pub checkpoint: Checkpoint,
}

/// How to read a file seen for the first time.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Continue from a checkpoint: this file's own, or that of the file it is
    /// a copy or compressed rotation of.
    Resume(Checkpoint),
    /// The same bytes as another file up to its checkpoint: a copy (or a
    /// compressed rotation) that continues that stream, unless the other
    /// file `of` is still being followed and is not rotated away soon (then
    /// the two merely start the same way, and this one is `fresh`).
    Copy {
        checkpoint: Checkpoint,
        of: Option<FileId>,
        fresh: String,
    },
    /// A new stream under this name, read from `start_at`.
    Fresh { stream: String },
}

/// Decides what a newly identified file is. `file_identity` names the file
/// for as long as it exists (device, inode, birth time); `owner` is the
/// uid that owns it; `tail_at(offset)` returns the tail of the file's bytes
/// before `offset`, or None if it is shorter.
///
/// Only checkpoints of files with the same owner are candidates: a user
/// who copies another user's file (or one renamed out of the globs while
/// it is still written) holds the same bytes, but continuing that stream
/// would give their lines the other user's next event ids, and the server
/// keeps only the first event of an id. A file's own checkpoint (same
/// device and inode, still followed) is continued whatever its owner now:
/// only root can chown, and a restore that does must not re-send the file
/// under new ids. Checkpoints written before owners
/// were recorded (`owner: None`) still match, so an upgrade does not read
/// rotated files again.
pub fn resolve(
    source: &str,
    fingerprint: &str,
    file_id: FileId,
    file_identity: &str,
    owner: u32,
    candidates: &[Candidate],
    tail_at: &mut dyn FnMut(u64, u16) -> std::io::Result<Option<Tail>>,
) -> std::io::Result<Resolution> {
    let same_owner = |c: &Candidate| c.checkpoint.owner.is_none_or(|o| o == owner);
    // Its own checkpoint, taken while it was followed: resume unless it was
    // rewritten (then it is a new generation of the stream).
    let own = candidates
        .iter()
        .position(|c| c.file_id == Some(file_id) && c.checkpoint.closed_at == 0);
    let mut rewritten = None;
    if let Some(i) = own {
        let cp = &candidates[i].checkpoint;
        if tail_at(cp.offset, cp.tail.len)? == Some(cp.tail) {
            return Ok(Resolution::Resume(cp.clone()));
        }
        rewritten = Some(next_generation(source, fingerprint, &cp.stream, cp.offset));
    }
    // A copy, a compressed rotation, a file moved across file systems, or a
    // reused inode: the same bytes up to a checkpoint mean the same stream.
    // This holds even when the inode still has an open checkpoint of its
    // own: its file may have been deleted while we were stopped, and the
    // copy made since (copytruncate) took the freed inode.
    let mut by_offset: Vec<&Candidate> = candidates
        .iter()
        .enumerate()
        .filter(|(i, c)| Some(*i) != own && same_owner(c))
        .map(|(_, c)| c)
        .collect();
    by_offset.sort_by_key(|c| std::cmp::Reverse(c.checkpoint.offset));
    for c in by_offset {
        let cp = &c.checkpoint;
        if cp.tail.len == 0 && cp.offset > 0 {
            continue; // nothing to compare: not evidence of a copy
        }
        if tail_at(cp.offset, cp.tail.len)? == Some(cp.tail) {
            let mut checkpoint = cp.clone();
            checkpoint.closed_at = 0;
            checkpoint.complete = false;
            return Ok(Resolution::Copy {
                checkpoint,
                of: c.file_id.filter(|_| cp.closed_at == 0),
                fresh: fresh_name(source, fingerprint, file_identity, candidates),
            });
        }
    }
    Ok(Resolution::Fresh {
        stream: rewritten
            .unwrap_or_else(|| fresh_name(source, fingerprint, file_identity, candidates)),
    })
}

/// The name of a new stream: after the file's identity, so that two files
/// that start the same way (syslog and messages), or a new file on a reused
/// inode, never share event ids.
pub fn fresh_name(
    source: &str,
    fingerprint: &str,
    file_identity: &str,
    candidates: &[Candidate],
) -> String {
    let name = format!("{source}/{fingerprint}/{file_identity}");
    if candidates.iter().all(|c| c.checkpoint.stream != name) {
        return name;
    }
    let mut names: Vec<&[u8]> = candidates
        .iter()
        .map(|c| c.checkpoint.stream.as_bytes())
        .collect();
    names.sort();
    format!("{name}.{}", short_hash(&names))
}

/// Name of the stream that follows `stream` after its file was truncated or
/// rewritten at `offset`: fresh event ids, the same on every restart.
pub fn next_generation(source: &str, fingerprint: &str, stream: &str, offset: u64) -> String {
    format!(
        "{source}/{fingerprint}.{}",
        short_hash(&[stream.as_bytes(), &offset.to_le_bytes()])
    )
}

/// Reads up to `max` bytes from the start of a stream.
pub fn read_start(r: &mut dyn Read, max: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(max.min(64 << 10));
    r.take(max as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(offset: u64, tail: &[u8], stream: &str, closed: bool) -> Checkpoint {
        Checkpoint {
            offset,
            tail: Tail::of(tail),
            stream: stream.into(),
            closed_at: if closed { 99 } else { 0 },
            path: "/x".into(),
            ..Checkpoint::default()
        }
    }

    fn tails(content: &'static [u8]) -> impl FnMut(u64, u16) -> std::io::Result<Option<Tail>> {
        move |off, len| {
            let off = off as usize;
            if off > content.len() {
                return Ok(None);
            }
            let from = off.saturating_sub(len as usize);
            Ok(Some(Tail::of(&content[from..off])))
        }
    }

    /// `resolve` in source `s`, fingerprint `f`, for the file `(dev, ino)`
    /// (named after it) holding `content`.
    fn resolve_in(
        (dev, ino): (u64, u64),
        candidates: &[Candidate],
        content: &'static [u8],
    ) -> Resolution {
        let name = format!("{dev}-{ino}");
        let id = FileId::new(dev, ino);
        resolve("s", "f", id, &name, 1000, candidates, &mut tails(content))
            .expect("tails never fail")
    }

    #[test]
    fn checkpoint_round_trips() {
        let c = Checkpoint {
            offset: 12345,
            skipping: true,
            complete: true,
            tail: Tail { len: 7, crc: 99 },
            stream: "src/abcdef".into(),
            closed_at: 1_700_000_000,
            disk_size: 77,
            path: "/var/log/a b.log".into(),
            owner: Some(1001),
            parser_state: b"{\"s\":1}\0x".to_vec(),
        };
        assert_eq!(Checkpoint::decode(&c.encode()), Some(c.clone()));
        let unowned = Checkpoint {
            owner: None,
            ..c.clone()
        };
        assert_eq!(Checkpoint::decode(&unowned.encode()), Some(unowned));
        assert_eq!(Checkpoint::decode(b""), None);
        assert_eq!(Checkpoint::decode(&[2, 1, 2]), None);
        assert_eq!(Checkpoint::decode(&[1; 40]), None);
    }

    #[test]
    fn fingerprints_wait_for_a_first_line_and_empty_files_have_none() {
        assert_eq!(fingerprint_of(b"", 64, false), None);
        assert_eq!(fingerprint_of(b"", 64, true), None);
        assert_eq!(fingerprint_of(b"partial", 64, false), None);
        assert!(fingerprint_of(b"partial", 64, true).is_some());
        let a = fingerprint_of(b"head\nA\n", 64, false);
        assert_eq!(a, fingerprint_of(b"head\nB\n", 64, false));
        assert_ne!(a, fingerprint_of(b"other\n", 64, false));
        assert!(fingerprint_of(&[b'x'; 64], 64, false).is_some());
        assert_eq!(
            key_file_id(&checkpoint_key("s", "f", FileId::new(8, 1234))),
            Some(FileId::new(8, 1234))
        );
    }

    #[test]
    fn own_checkpoint_resumes_unless_rewritten() {
        let mine = Candidate {
            file_id: Some(FileId::new(1, 5)),
            checkpoint: cp(14, b"head\nline one\n", "s/f", false),
        };
        let r = resolve_in(
            (1, 5),
            std::slice::from_ref(&mine),
            b"head\nline one\nline two\n",
        );
        assert_eq!(r, Resolution::Resume(mine.checkpoint.clone()));
        // Same first line, other bytes before the offset: rewritten in place.
        let r = resolve_in(
            (1, 5),
            std::slice::from_ref(&mine),
            b"head\nLINE ONE\nline two\n",
        );
        assert_eq!(
            r,
            Resolution::Fresh {
                stream: next_generation("s", "f", "s/f", 14)
            }
        );
    }

    #[test]
    fn copies_inherit_and_look_alikes_get_their_own_stream() {
        let original = Candidate {
            file_id: Some(FileId::new(1, 5)),
            checkpoint: cp(14, b"head\nline one\n", "s/f", false),
        };
        // A copy (copytruncate, or .gz) holds the same bytes up to the offset.
        let r = resolve_in(
            (1, 6),
            std::slice::from_ref(&original),
            b"head\nline one\nmore\n",
        );
        assert_eq!(
            r,
            Resolution::Copy {
                checkpoint: original.checkpoint.clone(),
                of: Some(FileId::new(1, 5)),
                fresh: "s/f/1-6".into()
            }
        );
        // Same first line, different content: syslog vs messages.
        let r = resolve_in(
            (1, 7),
            std::slice::from_ref(&original),
            b"head\nsomething else\n",
        );
        let Resolution::Fresh { stream } = r else {
            panic!("expected a fresh stream")
        };
        assert_eq!(stream, "s/f/1-7");
        // No candidate at all: named after the file.
        let r = resolve_in((1, 8), &[], b"head\n");
        assert_eq!(
            r,
            Resolution::Fresh {
                stream: "s/f/1-8".into()
            }
        );
    }

    #[test]
    fn a_copy_on_the_inode_of_a_file_deleted_while_stopped_continues_the_original() {
        // f1 was deleted while the daemon was stopped (its checkpoint still
        // open), then copytruncate copied f0 into the freed inode.
        let deleted = Candidate {
            file_id: Some(FileId::new(1, 5)),
            checkpoint: cp(14, b"head\nother one\n", "s/f1", false),
        };
        let original = Candidate {
            file_id: Some(FileId::new(1, 6)),
            checkpoint: cp(14, b"head\nline one\n", "s/f0", false),
        };
        let r = resolve_in(
            (1, 5),
            &[deleted.clone(), original.clone()],
            b"head\nline one\nmore\n",
        );
        let Resolution::Copy { checkpoint, of, .. } = r else {
            panic!("expected the copy of f0, got {r:?}")
        };
        assert_eq!(checkpoint.stream, "s/f0");
        assert_eq!(of, Some(FileId::new(1, 6)));
        // Neither matches: still the next generation of the inode's stream.
        let r = resolve_in((1, 5), &[deleted, original], b"head\nnew content\n");
        assert_eq!(
            r,
            Resolution::Fresh {
                stream: next_generation("s", "f", "s/f1", 14)
            }
        );
    }

    #[test]
    fn a_copy_by_another_owner_is_a_stream_of_its_own() {
        // Bob's file (uid 1001), renamed away while he writes; Alice (the
        // resolving owner, 1000) copies it and appends.
        let mut bobs = cp(14, b"head\nline one\n", "s/f", false);
        bobs.owner = Some(1001);
        let original = Candidate {
            file_id: Some(FileId::new(1, 5)),
            checkpoint: bobs,
        };
        let r = resolve_in(
            (1, 6),
            std::slice::from_ref(&original),
            b"head\nline one\nalice\n",
        );
        assert_eq!(
            r,
            Resolution::Fresh {
                stream: "s/f/1-6".into()
            }
        );
        // Its own inode, chowned by root (a restore), keeps its stream.
        let r = resolve_in(
            (1, 5),
            std::slice::from_ref(&original),
            b"head\nline one\nalice\n",
        );
        assert!(matches!(r, Resolution::Resume(_)), "{r:?}");
        // Alice's own checkpoint is continued.
        let mut hers = original.clone();
        hers.checkpoint.owner = Some(1000);
        let r = resolve_in(
            (1, 6),
            std::slice::from_ref(&hers),
            b"head\nline one\nalice\n",
        );
        assert!(matches!(r, Resolution::Copy { .. }), "{r:?}");
    }

    #[test]
    fn a_reused_inode_is_not_taken_for_the_closed_file() {
        let gone = Candidate {
            file_id: Some(FileId::new(1, 5)),
            checkpoint: cp(14, b"head\nline one\n", "s/f", true),
        };
        let r = resolve_in((1, 5), std::slice::from_ref(&gone), b"head\nnew content\n");
        assert_eq!(
            r,
            Resolution::Fresh {
                stream: "s/f/1-5".into()
            }
        );
        // Without a birth time to tell them apart, the names still differ.
        let gone = Candidate {
            file_id: Some(FileId::new(1, 5)),
            checkpoint: cp(14, b"head\nline one\n", "s/f/1-5", true),
        };
        let r = resolve_in((1, 5), std::slice::from_ref(&gone), b"head\nnew content\n");
        assert!(
            matches!(r, Resolution::Fresh { ref stream } if stream.starts_with("s/f/1-5.")),
            "{r:?}"
        );
    }
}

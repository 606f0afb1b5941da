//! The segment files the event bytes live in: appends with `pwritev`, one
//! file open for appends, retired files kept for reuse or deleted, and a
//! chunk read back from its segment.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::chunk::{Chunk, Pointer};
use super::{Queue, QueueError};

/// A segment file is closed for appends past this size.
pub(super) const SEGMENT_MAX_BYTES: u64 = 32 << 20;
/// Retired segment files kept for reuse.
pub(super) const SEGMENT_POOL: usize = 2;

/// `pwritev` until every slice is written.
pub(super) fn write_all_vectored_at(
    file: &File,
    mut slices: &mut [std::io::IoSlice<'_>],
    mut offset: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    while !slices.is_empty() {
        let count = slices.len().min(1024) as libc::c_int;
        // SAFETY: IoSlice is ABI-compatible with iovec, the slices outlive the
        // call, and the fd is open for the duration of the borrow of `file`.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                slices.as_ptr() as *const libc::iovec,
                count,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        offset += n as u64;
        std::io::IoSlice::advance_slices(&mut slices, n as usize);
    }
    Ok(())
}

/// The segment files: one open for appends, the rest read until every chunk
/// in them is acknowledged, then deleted.
pub(super) struct Segments {
    pub(super) dir: PathBuf,
    /// Open handles, the current one included.
    pub(super) files: BTreeMap<u64, File>,
    pub(super) current: u64,
    pub(super) current_len: u64,
    /// Chunks still referenced, per segment.
    pub(super) live: BTreeMap<u64, u64>,
    /// Retired segment files kept for reuse. Overwriting a file whose pages
    /// are in the page cache costs a copy; a new file's pages must first be
    /// allocated (on the VMs measured, 20 times slower). Old bytes past the
    /// new end are never referenced.
    pub(super) free: Vec<PathBuf>,
}

impl Segments {
    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016}.seg"))
    }

    /// Segment `id` holds no referenced chunk any more, and that is durable.
    pub(super) fn retire(&mut self, id: u64) -> std::io::Result<()> {
        self.live.remove(&id);
        self.files.remove(&id);
        let path = self.path(id);
        if !path.exists() {
            return Ok(()); // gone already (damage set aside): nothing to reuse
        }
        if self.free.len() < SEGMENT_POOL {
            self.free.push(path);
            Ok(())
        } else {
            std::fs::remove_file(path)
        }
    }

    pub(super) fn open_file(&mut self, id: u64) -> std::io::Result<&File> {
        if !self.files.contains_key(&id) {
            let f = crate::private_fs::open_private(&self.path(id), false)?;
            self.files.insert(id, f);
        }
        Ok(&self.files[&id])
    }

    /// Opens segment `id` for appends, reusing a retired segment file if
    /// there is one.
    pub(super) fn start_new(&mut self, id: u64) -> std::io::Result<()> {
        let path = self.path(id);
        let f = match self.free.pop() {
            Some(old) => {
                std::fs::rename(&old, &path)?;
                crate::private_fs::open_private(&path, true)?
            }
            None => crate::private_fs::create_private(&path)?,
        };
        // The new file's directory entry must survive a power cut too.
        File::open(&self.dir)?.sync_all()?;
        self.files.insert(id, f);
        self.current = id;
        self.current_len = 0;
        Ok(())
    }
}

impl Queue {
    pub(super) fn read_chunk(&self, seq: u64, ptr: &Pointer) -> Result<Chunk, QueueError> {
        let mut bytes = vec![0u8; ptr.len as usize];
        {
            let mut segments = self.segments.lock().unwrap_or_else(|p| p.into_inner());
            // A segment gone or cut short is damage; any other error may
            // pass, and the chunk is read again later.
            let file = segments
                .open_file(ptr.segment)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => self.corrupt(seq, "its segment file is gone"),
                    _ => self.io(e),
                })?;
            file.read_exact_at(&mut bytes, ptr.offset)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => {
                        self.corrupt(seq, "its segment file is shorter than the chunk")
                    }
                    _ => self.io(e),
                })?;
        }
        Chunk::check(bytes, ptr).map_err(|what| self.corrupt(seq, what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use super::super::tests::events;

    #[test]
    fn delivered_segments_are_deleted_and_unreferenced_tails_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let segs = |d: &Path| std::fs::read_dir(d.join("segments")).unwrap().count();
        {
            let q = Queue::open(dir.path(), 8 << 20).unwrap();
            q.commit(&events(10, "a"), b"src", b"10").unwrap();
            q.close().unwrap();
        }
        // A crash after a segment append but before the sled commit leaves
        // bytes no pointer refers to.
        let tail = std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .last()
            .unwrap()
            .unwrap()
            .path();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&tail)
            .unwrap();
        std::io::Write::write_all(&mut f, b"garbage from an interrupted commit").unwrap();
        drop(f);
        let q = Queue::open(dir.path(), 8 << 20).unwrap();
        assert_eq!(
            segs(dir.path()),
            2,
            "the old segment and the new current one"
        );
        let b = q.peek_batch(100, usize::MAX).unwrap().unwrap();
        assert_eq!(b.events, 10);
        q.take(&b);
        q.ack(&b).unwrap();
        assert!(q.is_empty());
        assert_eq!(
            segs(dir.path()),
            2,
            "the delivered segment is kept for reuse"
        );
        assert_eq!(q.queued_bytes(), 0);
    }
}

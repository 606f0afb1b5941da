//! A full disk under the state directory: recognising ENOSPC in whatever
//! error carries it, the space kept in reserve for sled's log, and the pause
//! a commit takes until space is freed.

use std::path::Path;

use super::{Queue, QueueError};

impl QueueError {
    /// The file system holding the state is full (ENOSPC), whether the
    /// segment files or sled's log met it: a pause, not a failure.
    pub fn is_disk_full(&self) -> bool {
        match self {
            QueueError::Io { source, .. } => is_io_disk_full(source),
            QueueError::Storage { source, .. } => is_disk_full(source),
            _ => false,
        }
    }
}

/// Whether an error, or a link of a chain of errors, is a full disk under
/// the state directory. Wrappers that forward `source()` (`transparent`)
/// skip the QueueError itself, so sled's and the OS's errors count too.
pub fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(q) = e.downcast_ref::<QueueError>() {
        return q.is_disk_full();
    }
    if let Some(sled::Error::Io(io)) = e.downcast_ref::<sled::Error>() {
        return is_io_disk_full(io);
    }
    e.downcast_ref::<std::io::Error>()
        .is_some_and(is_io_disk_full)
}

fn is_io_disk_full(e: &std::io::Error) -> bool {
    // sled wraps the OS error in one of its own, which keeps the kind.
    e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == std::io::ErrorKind::StorageFull
}

/// Space kept free on the state's file system: commits pause below it, so
/// that sled's log (pointers, checkpoints, acks) meets a full disk after the
/// segment files do, and deliveries can still be acknowledged.
pub const DISK_RESERVE_BYTES: u64 = 4 << 20;

/// Free space above the reserve past which [`Queue::room_above_reserve`]
/// does not look at the current segment (more than any commit holds).
const ROOMY_BYTES: u64 = 64 << 20;

/// Bytes available to an unprivileged writer on the file system of `dir`.
pub(super) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes only into the struct it is given.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

impl Queue {
    /// Bytes a commit may take now without meeting the reserve (None: the
    /// file system does not say): the free space above it, and the part of
    /// the current segment file that can be written again without new
    /// blocks (past its end of data, or all of it once every chunk in it
    /// is delivered).
    pub fn room_above_reserve(&self) -> Option<u64> {
        let free = free_bytes(&self.dir)?.saturating_sub(DISK_RESERVE_BYTES);
        if free >= ROOMY_BYTES {
            return Some(free); // the usual case: no lock taken
        }
        let segments = self.segments.lock().unwrap_or_else(|p| p.into_inner());
        let current = segments.current;
        let on_disk = segments
            .files
            .get(&current)
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        let delivered = segments.live.get(&current).copied().unwrap_or(0) == 0;
        let reusable = if delivered {
            on_disk
        } else {
            on_disk.saturating_sub(segments.current_len)
        };
        Some(free.saturating_add(reusable))
    }

    /// One second's pause of a commit on a full disk, logged once per commit.
    pub(super) fn pause_on_full_disk(
        &self,
        warned: &mut bool,
        free: Option<u64>,
        wait: &mut super::bound::Waiting<'_>,
    ) -> Result<(), QueueError> {
        if self.is_closing() || wait.stopped() {
            return Err(QueueError::Closing);
        }
        wait.mark();
        if !*warned {
            tracing::error!(dir = %self.dir.display(), free_bytes = free, reserve_bytes = DISK_RESERVE_BYTES,
                "disk full: reading paused until space is freed");
            *warned = true;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        Ok(())
    }
}

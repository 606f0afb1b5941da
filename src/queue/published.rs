//! Files the daemon publishes beside its queue for other processes of the
//! same user to read while it runs: sled locks the index, so `replay` learns
//! the streams the live daemon named from here (see
//! `source::file::stream_index`). Each file is replaced whole (written
//! beside, then renamed), so a reader sees the old version or the new one.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::{Queue, QueueError};

/// The folder of published files in a state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("published")
}

impl Queue {
    /// Replaces the published file `name` with `bytes`. Not fsynced: it is a
    /// hint that a crash may leave one version old, never torn.
    pub fn publish(&self, name: &str, bytes: &[u8]) -> Result<(), QueueError> {
        let io = |source| QueueError::Io {
            dir: self.dir.clone(),
            source,
        };
        let folder = dir(&self.dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(crate::private_fs::DIR_MODE)
            .create(&folder)
            .map_err(io)?;
        // One writer per name: a fixed scratch name leaves nothing behind
        // however often a crash interrupts it.
        let scratch = folder.join(format!(".{name}.new"));
        let mut file = crate::private_fs::create_private(&scratch).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        drop(file);
        std::fs::rename(&scratch, folder.join(name)).map_err(io)?;
        Ok(())
    }
}

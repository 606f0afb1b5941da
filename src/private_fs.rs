//! Keeps the daemon's own files private (design invariant 8): the umask
//! every file is created under, the modes of the state directory and all it
//! holds, and the checks on the API key's file.
//!
//! The state holds every user's queued events; the key file holds the
//! tenant's key. Both must be the daemon user's alone, also when an older
//! version, an operator or a package left them with looser modes.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::warn;

/// Mode of the state directory and every directory in it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in the state directory.
pub const FILE_MODE: u32 = 0o600;

/// Sets the process's umask to 077, so that whatever the daemon and its
/// libraries (sled) create is readable by its user only. Called first thing
/// in `main`, before any thread exists.
pub fn restrict_umask() {
    // SAFETY: umask(2) only changes this process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// A bad mode on the key's file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error(
        "{path}: the API key file is writable by every user (mode {mode:04o}): anyone could \
         replace the key the daemon sends; make it the daemon user's alone (chmod 600)"
    )]
    WorldWritable { path: PathBuf, mode: u32 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checks the mode of the file the API key is read from: writable by others
/// is refused (the key could be swapped), readable by group or others is
/// allowed with a warning (systemd credentials and 0640 root:thoth-ingest
/// files are common set-ups).
pub fn check_key_file(path: &Path) -> Result<(), KeyFileError> {
    let meta = std::fs::metadata(path).map_err(|source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(KeyFileError::WorldWritable {
            path: path.to_path_buf(),
            mode,
        });
    }
    if mode & 0o044 != 0 {
        warn!(path = %path.display(), mode = format!("{mode:04o}"),
            "the API key file is readable by other users; chmod 600 it (or 640 with a group only the daemon is in)");
    }
    Ok(())
}

/// Creates `dir` (and its parents) if missing, mode 0700, and makes it and
/// everything in it private: directories 0700, files 0600. Symlinks inside
/// are not followed and left as they are. Returns how many modes it had to
/// fix; a warning says so once.
pub fn secure_state_dir(dir: &Path) -> std::io::Result<usize> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mut fixed = Vec::new();
    secure_tree(dir, &mut fixed)?;
    if let Some(first) = fixed.first() {
        warn!(dir = %dir.display(), fixed = fixed.len(), first = %first.display(),
            "state files were readable by other users; made them private (directories 0700, files 0600)");
    }
    Ok(fixed.len())
}

fn secure_tree(path: &Path, fixed: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    let want = if meta.is_dir() {
        DIR_MODE
    } else if meta.is_file() {
        FILE_MODE
    } else {
        return Ok(()); // a symlink or a special file: chmod would follow or mean nothing
    };
    if meta.mode() & 0o7777 != want {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(want)).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot make {} private: {e}", path.display()),
            )
        })?;
        fixed.push(path.to_path_buf());
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            secure_tree(&entry?.path(), fixed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn loose_state_is_made_private_and_links_are_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir_all(state.join("segments")).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        let seg = state.join("segments/0001.seg");
        std::fs::write(&seg, b"events").unwrap();
        std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o644)).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"x").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, state.join("link")).unwrap();

        assert!(secure_state_dir(&state).unwrap() >= 3);
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("segments")), 0o700);
        assert_eq!(mode(&seg), 0o600);
        assert_eq!(mode(&outside), 0o644, "a link's target is not touched");
        assert_eq!(secure_state_dir(&state).unwrap(), 0, "nothing left to fix");

        let fresh = tmp.path().join("a/b/state");
        secure_state_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }

    #[test]
    fn key_files_writable_by_others_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("key");
        std::fs::write(&key, "thoth_test_x").unwrap();
        for (m, ok) in [(0o600, true), (0o640, true), (0o644, true), (0o666, false)] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(m)).unwrap();
            assert_eq!(check_key_file(&key).is_ok(), ok, "mode {m:o}");
        }
        let err = check_key_file(&key).unwrap_err().to_string();
        assert!(err.contains("writable by every user"), "{err}");
    }
}

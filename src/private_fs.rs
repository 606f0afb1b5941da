//! Keeps the daemon's own files private (design invariant 8): the umask
//! every file is created under, the modes of the state directory and all it
//! holds, and the checks on the API key's file.
//!
//! The state holds every user's queued events; the key file holds the
//! tenant's key. Both must be the daemon user's alone, also when an older
//! version, an operator or a package left them with looser modes.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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

/// Creates `dir` (and its parents) if missing, mode 0700, checks that no
/// one else controls it, and makes it and everything in it private:
/// directories 0700, files 0600. Returns how many modes it had to fix; a
/// warning says so once.
///
/// Refused (an error that says what and how to fix it): a state directory
/// not owned by the daemon's user; a directory above it that a user other
/// than root and the daemon's owns, or that others may write without the
/// sticky bit (they could swap the state directory for their own); a link
/// on the configured path owned by such a user; inside it, a symbolic link
/// or an entry another user owns (a planted `segments/…seg` link would
/// make the daemon write chunks over whatever it points at).
pub fn secure_state_dir(dir: &Path) -> std::io::Result<usize> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    check_state_dir_path(dir)?;
    let mut fixed = Vec::new();
    secure_tree(dir, &mut fixed)?;
    if let Some(first) = fixed.first() {
        warn!(dir = %dir.display(), fixed = fixed.len(), first = %first.display(),
            "state files were readable by other users; made them private (directories 0700, files 0600)");
    }
    Ok(fixed.len())
}

/// Whether `dir` exists and passes the ownership rules of
/// [`secure_state_dir`]: what may be written into before the queue has
/// opened it (the admin endpoint's address).
pub fn state_dir_is_trusted(dir: &Path) -> bool {
    dir.is_dir() && check_state_dir_path(dir).is_ok()
}

/// This process's effective uid: who the state must belong to.
fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

fn refused(path: &Path, why: String) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "state directory refused: {}: {why}; choose a state directory (state.dir) that only \
             root and the daemon's user control, e.g. /var/lib/thoth-ingest",
            crate::ops::shown_path(path)
        ),
    )
}

/// The ownership rules of [`secure_state_dir`] for the path itself and
/// every directory above it (the way OpenSSH's StrictModes judges a path).
fn check_state_dir_path(dir: &Path) -> std::io::Result<()> {
    let me = effective_uid();
    let trusted = |uid: u32| uid == 0 || uid == me;
    // Links on the path as configured: a link someone else owns could be
    // pointed elsewhere at any time.
    let mut prefix = PathBuf::new();
    for part in dir.components() {
        prefix.push(part);
        if let Ok(meta) = std::fs::symlink_metadata(&prefix) {
            if meta.file_type().is_symlink() && !trusted(meta.uid()) {
                return Err(refused(
                    &prefix,
                    format!("a symbolic link owned by uid {}", meta.uid()),
                ));
            }
        }
    }
    let real = dir.canonicalize()?;
    let meta = std::fs::metadata(&real)?;
    if meta.uid() != me {
        return Err(refused(
            &real,
            format!(
                "owned by uid {}, not by the daemon's user (uid {me})",
                meta.uid()
            ),
        ));
    }
    for above in real.ancestors().skip(1) {
        let meta = std::fs::metadata(above)?;
        if !trusted(meta.uid()) {
            return Err(refused(
                above,
                format!(
                    "a directory above it is owned by uid {}, who could replace it",
                    meta.uid()
                ),
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(refused(
                above,
                format!(
                    "a directory above it may be written by other users (mode {mode:04o}, \
                     without the sticky bit), who could replace it"
                ),
            ));
        }
    }
    Ok(())
}

fn secure_tree(path: &Path, fixed: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Err(refused(
            path,
            "a symbolic link inside it (the daemon never makes one: someone else did; \
             remove it)"
                .into(),
        ));
    }
    if meta.uid() != 0 && meta.uid() != effective_uid() {
        return Err(refused(
            path,
            format!(
                "an entry inside it is owned by uid {} (someone else wrote into the state); \
                 remove it",
                meta.uid()
            ),
        ));
    }
    let want = if meta.is_dir() {
        DIR_MODE
    } else if meta.is_file() {
        FILE_MODE
    } else {
        return Ok(()); // the admin socket: chmod would mean nothing
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

/// Creates `path` as a new private file (0600), never through a link and
/// never into a file someone placed there: `O_CREAT | O_EXCL | O_NOFOLLOW`.
/// A file already at the name (ours, left by a crash) is removed first:
/// removing a link removes the link, not its target.
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(path)?;
            open()
        }
        other => other,
    }
}

/// Opens an existing file of the state for reading and writing, refusing a
/// symbolic link at its name.
pub fn open_private(path: &Path, write: bool) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn loose_state_is_made_private_and_planted_links_are_refused() {
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
        assert!(secure_state_dir(&state).unwrap() >= 3);
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("segments")), 0o700);
        assert_eq!(mode(&seg), 0o600);
        assert_eq!(secure_state_dir(&state).unwrap(), 0, "nothing left to fix");
        // A link inside (planted: the daemon makes none) is refused, and
        // its target is not touched.
        std::os::unix::fs::symlink(&outside, state.join("segments/0002.seg")).unwrap();
        let e = secure_state_dir(&state).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(mode(&outside), 0o644, "a link's target is not touched");
        std::fs::remove_file(state.join("segments/0002.seg")).unwrap();

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

    #[test]
    fn a_state_directory_others_control_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = secure_state_dir(&open.join("state")).unwrap_err();
        assert!(
            e.to_string().contains("may be written by other users"),
            "{e}"
        );
        // With the sticky bit (/tmp), others cannot replace what is ours.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        secure_state_dir(&open.join("state")).unwrap();
        if effective_uid() != 0 {
            return; // the cases below need another owner: root makes them
        }
        // Made by someone else first (a careless /tmp path).
        let theirs = open.join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let e = secure_state_dir(&theirs).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        // Something of theirs inside ours.
        let planted = open.join("state/segments");
        std::fs::create_dir_all(&planted).unwrap();
        std::fs::write(planted.join("0001.seg"), b"x").unwrap();
        std::os::unix::fs::chown(planted.join("0001.seg"), Some(65534), None).unwrap();
        let e = secure_state_dir(&open.join("state")).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    }

    #[test]
    fn private_files_are_created_new_and_never_through_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, b"root's").unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_private(&link, true).is_err(), "a link is not opened");
        let mut f = create_private(&link).unwrap();
        std::io::Write::write_all(&mut f, b"ours").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"root's");
        assert_eq!(std::fs::read(&link).unwrap(), b"ours");
        assert_eq!(mode(&link), FILE_MODE);
    }
}

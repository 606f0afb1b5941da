//! Opens a file the walk found as one a hostile user may swap under us
//! between the walk and the open: no symbolic link is followed (unless the
//! source follows links, and then only to a target its link's owner owns),
//! and nothing but a regular file is kept. The open is non-blocking, so a
//! FIFO swapped in cannot hang the tailer; the type is checked on the
//! descriptor, not on the path. A hard link to someone else's file, made in
//! a directory of another owner, is refused whatever
//! `fs.protected_hardlinks` says (with the sysctl at 0 any user can link
//! any file they can see, `/etc/shadow` or another user's 0600 transcript).

use std::fs::{File, Metadata};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Why a matching path was not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A symbolic link on the way, and the source does not follow links.
    Link,
    /// A followed link whose target has another owner than the link.
    OwnerMismatch { link_uid: u32, target_uid: u32 },
    /// Not a regular file: a FIFO, socket, device or directory.
    NotRegular(&'static str),
    /// The link led to a path the source's `exclude` leaves out.
    Excluded(PathBuf),
    /// A file with more than one name whose owner is not its directory's:
    /// a hard link someone else may have made to a file not theirs.
    ForeignHardLink {
        links: u64,
        file_uid: u32,
        dir_uid: u32,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Link => write!(
                f,
                "a symbolic link is on its path, and the source does not follow links (follow_symlinks = false)"
            ),
            Refusal::OwnerMismatch {
                link_uid,
                target_uid,
            } => write!(
                f,
                "a symbolic link owned by uid {link_uid} leads to a file owned by uid {target_uid}: not followed"
            ),
            Refusal::NotRegular(kind) => write!(f, "not a regular file but a {kind}"),
            Refusal::Excluded(real) => {
                write!(f, "leads to {}, which `exclude` leaves out", real.display())
            }
            Refusal::ForeignHardLink {
                links,
                file_uid,
                dir_uid,
            } => write!(
                f,
                "a file with {links} hard links owned by uid {file_uid} in a directory owned by uid {dir_uid}: \
                 it may be a link to a file its directory's owner may not read"
            ),
        }
    }
}

/// What a file that is not a regular file is, for messages.
pub fn file_kind(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

/// A file with more than one link is kept only if its owner also owns the
/// directory it was found in: the one place a link can be made by someone
/// other than the file's owner is a directory they can write, and a file
/// linked there from elsewhere keeps its own owner; and in a directory
/// others may write (a shared 1777 one), anyone may have made the link.
/// Logrotate's and the agents' own files live in their owner's private
/// directories, so they pass.
fn foreign_hard_link(meta: &Metadata, found_at: &Path) -> std::io::Result<Option<Refusal>> {
    if meta.nlink() <= 1 {
        return Ok(None);
    }
    let Some(dir) = found_at.parent() else {
        return Ok(None);
    };
    let dir_meta = std::fs::metadata(dir)?;
    let dir_uid = dir_meta.uid();
    // A directory others may write (a shared 1777 one) lets anyone link
    // anything into it, whoever owns both.
    let shared = dir_meta.mode() & 0o022 != 0;
    Ok(
        (dir_uid != meta.uid() || shared).then_some(Refusal::ForeignHardLink {
            links: meta.nlink(),
            file_uid: meta.uid(),
            dir_uid,
        }),
    )
}

/// Opens `path`, found by a walk that started at the operator's directory
/// `base` (links in `base` itself are the operator's and are allowed).
/// `excluded` says whether a path is left out, for where a link leads.
pub fn open_checked(
    path: &Path,
    base: &Path,
    follow_links: bool,
    excluded: impl Fn(&Path) -> bool,
) -> std::io::Result<Result<(File, Metadata), Refusal>> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if !follow_links {
        flags |= libc::O_NOFOLLOW;
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) && !follow_links => {
            return Ok(Err(Refusal::Link))
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Err(Refusal::NotRegular(file_kind(&meta))));
    }
    // Where the descriptor really is: a directory on the way swapped for a
    // link after the walk shows here (O_NOFOLLOW guards the last name only).
    let Ok(real) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) else {
        // No /proc: the walk's checks stand.
        if let Some(refusal) = foreign_hard_link(&meta, path)? {
            return Ok(Err(refusal));
        }
        return Ok(Ok((file, meta)));
    };
    if let Some(refusal) = foreign_hard_link(&meta, &real)? {
        return Ok(Err(refusal));
    }
    let expected = base
        .canonicalize()
        .ok()
        .zip(path.strip_prefix(base).ok())
        .map(|(b, rel)| b.join(rel));
    if expected.as_deref() == Some(real.as_path()) {
        return Ok(Ok((file, meta)));
    }
    if !follow_links {
        return Ok(Err(Refusal::Link));
    }
    let link = std::fs::symlink_metadata(path)?;
    if link.file_type().is_symlink() && link.uid() != meta.uid() {
        return Ok(Err(Refusal::OwnerMismatch {
            link_uid: link.uid(),
            target_uid: meta.uid(),
        }));
    }
    if excluded(&real) {
        return Ok(Err(Refusal::Excluded(real)));
    }
    Ok(Ok((file, meta)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_fifos_and_directories_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("logs");
        std::fs::create_dir(&base).unwrap();
        std::fs::write(base.join("real.log"), b"x\n").unwrap();
        std::fs::write(tmp.path().join("secret"), b"s\n").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), base.join("link.log")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), base.join("up")).unwrap();
        let fifo = base.join("fifo.log");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let none = |_: &Path| false;

        assert!(open_checked(&base.join("real.log"), &base, false, none)
            .unwrap()
            .is_ok());
        assert_eq!(
            open_checked(&base.join("link.log"), &base, false, none)
                .unwrap()
                .err(),
            Some(Refusal::Link)
        );
        // A directory on the way that is a link.
        assert_eq!(
            open_checked(&base.join("up/secret"), &base, false, none)
                .unwrap()
                .err(),
            Some(Refusal::Link)
        );
        // Opened without blocking, refused on its descriptor.
        assert_eq!(
            open_checked(&fifo, &base, false, none).unwrap().err(),
            Some(Refusal::NotRegular("FIFO"))
        );
        // Followed when asked (same owner here), but not into an exclusion.
        assert!(open_checked(&base.join("link.log"), &base, true, none)
            .unwrap()
            .is_ok());
        let secret = |p: &Path| p.ends_with("secret");
        assert!(matches!(
            open_checked(&base.join("link.log"), &base, true, secret).unwrap(),
            Err(Refusal::Excluded(_))
        ));
    }

    #[test]
    fn a_hard_link_to_a_file_of_another_owner_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("logs");
        std::fs::create_dir(&base).unwrap();
        std::fs::write(base.join("own.log"), b"x\n").unwrap();
        // A second name of one's own file in one's own directory is fine.
        std::fs::hard_link(base.join("own.log"), base.join("own-too.log")).unwrap();
        let none = |_: &Path| false;
        assert!(open_checked(&base.join("own-too.log"), &base, false, none)
            .unwrap()
            .is_ok());
        // The file given to another owner (as if linked from elsewhere).
        if std::os::unix::fs::chown(base.join("own.log"), Some(65534), None).is_err() {
            eprintln!("not root: the foreign link case is covered by tests/it/isolation.rs");
            return;
        }
        assert!(matches!(
            open_checked(&base.join("own-too.log"), &base, false, none)
                .unwrap()
                .err(),
            Some(Refusal::ForeignHardLink {
                links: 2,
                file_uid: 65534,
                ..
            })
        ));
        // One name only: a file given to another owner in the directory
        // is not a link someone made (logs written by a service user).
        std::fs::remove_file(base.join("own.log")).unwrap();
        assert!(open_checked(&base.join("own-too.log"), &base, false, none)
            .unwrap()
            .is_ok());
    }
}

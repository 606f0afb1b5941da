//! A full disk pauses reading and is retried; it neither loses nor
//! duplicates events, and the daemon does not exit. The state directory is a
//! small tmpfs, filled up by this test; mounting needs root (CAP_SYS_ADMIN),
//! so without it the test fails and says so.

mod common;

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> std::io::Result<Tmpfs> {
        std::fs::create_dir_all(at)?;
        let target = CString::new(at.as_os_str().as_bytes()).unwrap();
        let options = CString::new(format!("size={size}")).unwrap();
        // SAFETY: every pointer is a valid NUL-terminated string for the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: as above; MNT_DETACH lets a still-open file not block it.
        unsafe {
            libc::umount2(target.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Small writes into the last partial page, too.
    while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
    written
}

#[test]
fn a_full_disk_pauses_and_resumes_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _tmpfs = match Tmpfs::mount(&state, "32m") {
        Ok(m) => m,
        Err(e) => panic!(
            "this test needs root (CAP_SYS_ADMIN) to mount a tmpfs as the state directory: {e}"
        ),
    };
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_config(dir.path(), &receiver.addr, "");
    let log = dir.path().join("logs/a.jsonl");
    append_lines(&log, 0..1000);
    let mut daemon = start_daemon(&config);
    wait_seqs(&receiver, 1000, Duration::from_secs(30));

    let filler = state.join("filler");
    let filled = fill(&filler);
    append_lines(&log, 1000..6000);
    std::thread::sleep(Duration::from_secs(3));
    let while_full = stored_seqs(&receiver).len();
    eprintln!("disk full ({filled} bytes of filler): {while_full} of 6000 lines delivered");
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon exited on a full disk"
    );
    assert!(while_full < 6000, "nothing was held back by the full disk");

    std::fs::remove_file(&filler).unwrap();
    let seqs = wait_seqs(&receiver, 6000, Duration::from_secs(30));
    assert_eq!(seqs, (0..6000).collect());
    assert!(terminate(&mut daemon).success());
    let ids = ids_by_seq(&receiver.stored());
    assert!(
        ids.values().all(|i| i.len() == 1),
        "an event changed its id"
    );
}

//! A full disk pauses the pipeline and is retried; it neither loses nor
//! duplicates events, and the daemon does not exit: when lines are read onto
//! a full disk, when sled's own log meets it while deliveries are being
//! acknowledged, and when the daemon starts on it. The state directory is a
//! small tmpfs, filled up by each test; mounting needs root (CAP_SYS_ADMIN),
//! so without it the tests fail and say so.

use crate::common;

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

fn mount_state(state: &Path) -> Tmpfs {
    match Tmpfs::mount(state, "32m") {
        Ok(m) => m,
        Err(e) => panic!(
            "this test needs root (CAP_SYS_ADMIN) to mount a tmpfs as the state directory: {e}"
        ),
    }
}

/// Starts a daemon whose log goes to `daemon.err` in `dir`.
fn start_logged(config: &Path, dir: &Path) -> (Daemon, PathBuf) {
    let stderr = dir.join("daemon.err");
    let err_file = std::fs::File::create(&stderr).unwrap();
    let daemon = start_daemon_cmd(config, |c| {
        c.env("THOTH_API_KEY", KEY).stderr(err_file);
    });
    (daemon, stderr)
}

/// Asserts the daemon is still up and logged "disk full"; returns its log.
fn still_up_and_disk_full_logged(daemon: &mut Daemon, stderr: &Path) -> String {
    let text = std::fs::read_to_string(stderr).unwrap();
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon exited on a full disk:\n{text}"
    );
    assert!(
        text.contains("disk full"),
        "no disk-full error logged:\n{text}"
    );
    text
}

/// Waits for lines `0..n`, stops the daemon, and checks that no line
/// arrived under two event ids.
fn all_arrive_once(receiver: &ReceiverProc, daemon: &mut Daemon, n: u64) {
    let seqs = wait_seqs(receiver, n as usize, Duration::from_secs(60));
    assert_eq!(seqs, (0..n).collect());
    assert!(terminate(daemon).success());
    let ids = ids_by_seq(&receiver.stored());
    assert!(
        ids.values().all(|i| i.len() == 1),
        "an event changed its id"
    );
}

/// A receiver, a config for one file source, and a state directory on a
/// 32 MiB tmpfs. Fields drop in order: the receiver, then the mount.
struct Setup {
    receiver: ReceiverProc,
    _tmpfs: Tmpfs,
    config: PathBuf,
    state: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
}

fn setup(receiver_args: &[&str], delivery: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let tmpfs = mount_state(&state);
    let receiver = ReceiverProc::start(dir.path(), receiver_args);
    let config = write_config_with(dir.path(), &receiver.addr, delivery);
    Setup {
        receiver,
        _tmpfs: tmpfs,
        config,
        log: dir.path().join("logs/a.jsonl"),
        state,
        dir,
    }
}

#[test]
fn a_full_disk_pauses_and_resumes_without_loss() {
    let s = setup(&[], "");
    append_lines(&s.log, 0..1000);
    let (mut daemon, stderr) = start_logged(&s.config, s.dir.path());
    wait_seqs(&s.receiver, 1000, Duration::from_secs(30));

    let filler = s.state.join("filler");
    let filled = fill(&filler);
    append_lines(&s.log, 1000..6000);
    wait_log(&stderr, "disk full", Duration::from_secs(30));
    still_up_and_disk_full_logged(&mut daemon, &stderr);
    let while_full = stored_seqs(&s.receiver).len();
    eprintln!("disk full ({filled} bytes of filler): {while_full} of 6000 lines delivered");
    assert!(while_full < 6000, "nothing was held back by the full disk");

    std::fs::remove_file(&filler).unwrap();
    all_arrive_once(&s.receiver, &mut daemon, 6000);
}

#[test]
fn a_daemon_started_on_a_full_disk_waits_for_room_instead_of_exiting() {
    let s = setup(&[], "");
    // A fixed admin port: a full disk has no room to name a chosen one.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&s.config, text).unwrap();
    let admin = thoth_ingest::config::AdminListen::Tcp(([127, 0, 0, 1], port).into());
    // A first run leaves a queue and checkpoints for the second to open.
    append_lines(&s.log, 0..1000);
    let mut daemon = start_daemon(&s.config);
    wait_seqs(&s.receiver, 1000, Duration::from_secs(30));
    assert!(terminate(&mut daemon).success());

    let filler = s.state.join("filler");
    fill(&filler);
    append_lines(&s.log, 1000..3000);
    let (mut daemon, stderr) = start_logged(&s.config, s.dir.path());
    wait_log(&stderr, "disk full", Duration::from_secs(30));
    let text = still_up_and_disk_full_logged(&mut daemon, &stderr);
    let while_full = stored_seqs(&s.receiver).len();
    eprintln!("started on a full disk: {while_full} of 3000 lines delivered\n{text}");
    // The admin endpoint is up and says why the daemon is not ready.
    let get = |path: &str| thoth_ingest::admin::client::get(&admin, path);
    let start = std::time::Instant::now();
    while get("/healthz").is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no admin endpoint"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, why) = get("/readyz").unwrap();
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("waits for disk space"), "{why}");
    let status = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&s.config)
        .arg("status")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&status.stderr);
    assert_eq!(status.status.code(), Some(1), "{said}");
    assert!(
        said.contains("503") && said.contains("disk space"),
        "{said}"
    );

    std::fs::remove_file(&filler).unwrap();
    let start = std::time::Instant::now();
    while !matches!(get("/readyz"), Ok((200, _))) {
        assert!(start.elapsed() < Duration::from_secs(30), "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    all_arrive_once(&s.receiver, &mut daemon, 3000);
}

#[test]
fn a_disk_that_fills_while_deliveries_are_acknowledged_loses_nothing() {
    // A slow receiver and small batches: acknowledgements (sled writes) keep
    // coming while the disk is full.
    let s = setup(&["--latency", "100ms"], "batch_max_events = 50");
    append_lines(&s.log, 0..6000);
    let (mut daemon, stderr) = start_logged(&s.config, s.dir.path());
    wait_seqs(&s.receiver, 200, Duration::from_secs(30));
    let filler = s.state.join("filler");
    fill(&filler);
    append_lines(&s.log, 6000..8000);
    wait_log(&stderr, "disk full", Duration::from_secs(30));
    let text = still_up_and_disk_full_logged(&mut daemon, &stderr);
    let while_full = stored_seqs(&s.receiver).len();
    eprintln!(
        "disk filled during delivery: {while_full} of 8000 lines delivered while full\n{text}"
    );
    std::fs::remove_file(&filler).unwrap();
    all_arrive_once(&s.receiver, &mut daemon, 8000);
}

/// Issue 32, item 6: with 12 MiB free (the reserve is 4 MiB) and more
/// events to queue than that, commits shrink to what fits and segments
/// whose chunks are delivered are rewritten in place: every line arrives,
/// though the disk never gets more room.
#[test]
fn a_nearly_full_disk_still_delivers_more_than_it_has_room_for() {
    let s = setup(&[], "batch_max_events = 500");
    append_lines(&s.log, 0..100);
    let (mut daemon, stderr) = start_logged(&s.config, s.dir.path());
    wait_seqs(&s.receiver, 100, Duration::from_secs(30));
    let filler = s.state.join("filler");
    let filled = fill(&filler);
    let leave = 12u64 << 20;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(filled.saturating_sub(leave))
        .unwrap();
    // About 60 MB of events: five times the room.
    let n = 200_000;
    append_lines(&s.log, 100..n);
    let seqs = wait_seqs(&s.receiver, n as usize, Duration::from_secs(240));
    assert_eq!(
        seqs.len() as u64,
        n,
        "{}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    assert!(daemon.try_wait().unwrap().is_none());
    all_arrive_once(&s.receiver, &mut daemon, n);
}

//! Running as a service: the daemon's own logs in the form the journal
//! wants (no colour codes, no timestamps, a syslog priority per line) or as
//! JSON lines; the service manager's notifications and the watchdog over a
//! real notify socket; the unit's checks; the Debian package.

use crate::common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Runs the daemon until it has logged that it stopped, with stderr in
/// `log`; `setup` adds to its command. Returns what it wrote there.
fn daemon_log(dir: &Path, log: &Path, setup: impl FnOnce(&mut std::process::Command)) -> String {
    let rx = ReceiverProc::start(dir, &[]);
    let config = write_config(dir, &rx.addr, "");
    let file = std::fs::File::create(log).unwrap();
    let mut daemon = start_daemon_cmd(&config, |c| {
        c.env("THOTH_API_KEY", KEY)
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .env_remove("THOTH_INGEST_LOG_FORMAT")
            .stderr(Stdio::from(file));
        setup(c);
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("configuration loaded")
    {
        assert!(Instant::now() < deadline, "the daemon logged nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(terminate(&mut daemon).success());
    std::fs::read_to_string(log).unwrap()
}

#[test]
fn under_the_journal_lines_carry_a_priority_and_no_colour_or_time() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    std::fs::write(&log, "").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    // What systemd sets: the device and inode of the journal's stream,
    // which here is the file stderr goes to.
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let text = daemon_log(dir.path(), &log, |c| {
        c.env("JOURNAL_STREAM", &stream);
    });
    assert!(!text.is_empty());
    assert!(!text.contains('\x1b'), "colour codes: {text:?}");
    for line in text.lines() {
        let (prefix, rest) = line.split_at(3);
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].contains(&prefix),
            "no priority: {line:?}"
        );
        // No timestamp of its own: the journal stamps each line.
        assert!(
            !rest.trim_start().starts_with("20"),
            "a timestamp: {line:?}"
        );
    }
    assert!(text.contains("<6>") && text.contains("INFO"), "{text}");
}

#[test]
fn a_stream_that_is_not_the_journals_gets_plain_text_without_colour() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    // A JOURNAL_STREAM inherited by a process whose stderr went elsewhere.
    let text = daemon_log(dir.path(), &log, |c| {
        c.env("JOURNAL_STREAM", "1:1");
    });
    assert!(
        !text.contains('\x1b'),
        "colour codes off a terminal: {text:?}"
    );
    let first = text.lines().next().unwrap();
    assert!(first.starts_with("20"), "timestamped text: {first:?}");
}

#[test]
fn log_format_json_writes_one_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let text = daemon_log(dir.path(), &log, |c| {
        c.arg("--log-format").arg("json");
    });
    let mut saw_loaded = false;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
        saw_loaded |= v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("configuration loaded"));
    }
    assert!(saw_loaded, "{text}");
}

fn notifying_daemon(dir: &Path, sock: &NotifySocket, hook: Option<&str>) -> (Daemon, ReceiverProc) {
    let rx = ReceiverProc::start(dir, &[]);
    let config = write_config(dir, &rx.addr, "");
    append_lines(&dir.join("logs/a.jsonl"), 0..10);
    let daemon = start_daemon_cmd(&config, |c| {
        c.env("THOTH_API_KEY", KEY)
            .env("NOTIFY_SOCKET", &sock.path)
            .env("WATCHDOG_USEC", "4000000")
            .env_remove("WATCHDOG_PID");
        if let Some(h) = hook {
            c.env("THOTH_INGEST_TEST_HOOK", h);
        }
    });
    (daemon, rx)
}

/// Over a real notify socket: READY=1 with a STATUS= line once the state is
/// open and the sources run, WATCHDOG=1 at half of WATCHDOG_USEC while the
/// pipeline lives, RELOADING=1 then READY=1 around a SIGHUP, STOPPING=1 at
/// SIGTERM.
#[test]
fn the_service_manager_hears_ready_status_watchdog_reload_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let sock = NotifySocket::bind(dir.path());
    let (mut daemon, rx) = notifying_daemon(dir.path(), &sock, None);
    let mut seen = Vec::new();
    let ready = sock
        .wait_for("READY=1", Duration::from_secs(20), &mut seen)
        .expect("READY=1");
    assert!(ready.contains("STATUS="), "{ready}");
    wait_seqs(&rx, 10, Duration::from_secs(30));
    let status = sock
        .wait_for("STATUS=", Duration::from_secs(15), &mut seen)
        .expect("STATUS=");
    assert!(status.contains("events queued"), "{status}");
    // Pings at about 2 s: three within 8 s.
    let start = Instant::now();
    for _ in 0..3 {
        sock.wait_for("WATCHDOG=1", Duration::from_secs(4), &mut seen)
            .unwrap_or_else(|| panic!("no WATCHDOG=1; seen {seen:?}"));
    }
    assert!(start.elapsed() < Duration::from_secs(8));
    signal(&daemon, libc::SIGHUP);
    sock.wait_for("RELOADING=1", Duration::from_secs(10), &mut seen)
        .expect("RELOADING=1");
    sock.wait_for("READY=1", Duration::from_secs(10), &mut seen)
        .expect("READY=1 after the reload");
    signal(&daemon, libc::SIGTERM);
    sock.wait_for("STOPPING=1", Duration::from_secs(10), &mut seen)
        .expect("STOPPING=1");
    assert!(terminate(&mut daemon).success());
}

/// A pipeline whose source is stuck (a test hook parks its thread, as a read
/// on a dead network file system would) stops pinging: systemd then kills
/// and restarts it.
#[test]
fn a_stalled_pipeline_stops_pinging_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let sock = NotifySocket::bind(dir.path());
    let (mut daemon, _rx) = notifying_daemon(dir.path(), &sock, Some("stall-sources"));
    let mut seen = Vec::new();
    sock.wait_for("READY=1", Duration::from_secs(20), &mut seen)
        .expect("READY=1");
    // The first check only records; at most that one ping may come.
    let _ = sock.wait_for("WATCHDOG=1", Duration::from_secs(3), &mut seen);
    let mut later = Vec::new();
    assert_eq!(
        sock.wait_for("WATCHDOG=1", Duration::from_secs(8), &mut later),
        None,
        "a stuck source, yet pings: {later:?}"
    );
    // The stalled source is deaf to SIGTERM: kill it.
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}

/// The shipped unit: `systemd-analyze verify` is clean (with the binary at
/// the path the unit names replaced by this build), and `systemd-analyze
/// security` puts its exposure at 1.6 or less.
#[test]
fn the_unit_verifies_and_is_sandboxed() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/thoth-ingest.service");
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (systemd) is needed to check the unit");
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("thoth-ingest.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    assert!(exposure <= 1.6, "exposure {exposure}:\n{text}");

    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&unit).unwrap();
    let bin = Path::new(BIN).canonicalize().unwrap();
    let copy = dir.path().join("thoth-ingest.service");
    std::fs::write(
        &copy,
        text.replace("/usr/bin/thoth-ingest", &bin.display().to_string()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--no-pager"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze (systemd) is needed to check the unit");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// `packaging/build-deb.sh`: the package of this build, its contents and
/// modes, control fields and scripts, and an install and a purge in a
/// throwaway root (the script installs cargo-deb when it is missing).
#[test]
fn the_debian_package_builds_installs_and_purges() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/build-deb.sh");
    let out = std::process::Command::new(&script)
        .arg("--no-cargo-build")
        .output()
        .expect("packaging/build-deb.sh runs (bash, dpkg, unshare)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "build-deb failed:\n{said}");
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(deb.ends_with(".deb") && Path::new(&deb).is_file(), "{deb}");
    assert!(said.contains("install and purge checked"), "{said}");
}

/// SIGTERM in the middle of a backlog (a small budget holds it back): the
/// daemon stops within the unit's TimeoutStopSec with exit status 0, and
/// the next start delivers the rest; every line arrives, each under one id.
#[test]
fn sigterm_mid_backlog_exits_0_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rx = ReceiverProc::start(dir.path(), &[]);
    let config = write_config_with(
        dir.path(),
        &rx.addr,
        "budget = { requests = 4, per = \"1s\" }\nbatch_max_events = 50",
    );
    append_lines(&dir.path().join("logs/a.jsonl"), 0..5000);
    let mut daemon = start_daemon(&config);
    wait_seqs(&rx, 400, Duration::from_secs(30));
    let asked = Instant::now();
    let status = terminate(&mut daemon);
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        asked.elapsed() < Duration::from_secs(40),
        "took {:?}",
        asked.elapsed()
    );
    let before = stored_seqs(&rx).len();
    assert!(before < 5000, "no backlog left to test: {before}");
    let mut daemon = start_daemon(&config);
    wait_seqs(&rx, 5000, Duration::from_secs(120));
    assert!(terminate(&mut daemon).success());
    let ids = ids_by_seq(&rx.stored());
    assert_eq!(ids.len(), 5000);
    assert!(
        ids.values().all(|set| set.len() == 1),
        "a line arrived under two ids"
    );
}

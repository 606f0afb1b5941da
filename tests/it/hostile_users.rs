//! A local user against the daemon (issue 10): the real binary runs as root,
//! the user's files are made by uid 65534 through `setpriv` (util-linux).
//! Links to root-only files and directories, link loops and FIFOs in a home
//! directory; the daemon's own state and key file modes.

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const USER: u32 = 65534;

fn setpriv() -> &'static Path {
    let p = Path::new("/usr/bin/setpriv");
    assert!(
        p.exists(),
        "this test needs setpriv (util-linux) to act as an unprivileged user"
    );
    p
}

/// Runs `cmd args` as the unprivileged user; panics if it fails.
fn as_user(cmd: &str, args: &[&str]) {
    let status = Command::new(setpriv())
        .args([
            &format!("--reuid={USER}"),
            &format!("--regid={USER}"),
            "--clear-groups",
            "--",
            cmd,
        ])
        .args(args)
        .status()
        .expect("run setpriv");
    assert!(status.success(), "as uid {USER}: {cmd} {args:?}: {status}");
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// A config over `home/*/projects/**/*.jsonl` under `dir`.
fn home_config(dir: &Path, receiver: &str) -> PathBuf {
    let config = write_config(dir, receiver, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("include = [\"{}/*.jsonl\"]", dir.join("logs").display()),
        &format!(
            "include = [\"{}/home/*/projects/**/*.jsonl\"]",
            dir.display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// Starts the daemon with its stderr in `dir/daemon.err`.
fn start_logged(config: &Path, dir: &Path) -> (Daemon, PathBuf) {
    let err = dir.join("daemon.err");
    let file = std::fs::File::create(&err).unwrap();
    let daemon = start_daemon_cmd(config, |c| {
        c.env("THOTH_API_KEY", KEY).stderr(file);
    });
    (daemon, err)
}

#[test]
fn links_loops_and_fifos_in_a_home_directory_do_not_reach_root_files_or_stall() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Root's secrets: a file and a directory only root can read.
    let secret_dir = root.join("root-only");
    std::fs::create_dir(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("secret.jsonl"), line(9001)).unwrap();
    std::fs::set_permissions(
        secret_dir.join("secret.jsonl"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(&secret_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // The user's home, made by the user.
    let projects = root.join("home/alice/projects");
    std::fs::create_dir_all(&projects).unwrap();
    std::os::unix::fs::chown(root.join("home/alice"), Some(USER), Some(USER)).unwrap();
    std::os::unix::fs::chown(&projects, Some(USER), Some(USER)).unwrap();
    let p = |name: &str| projects.join(name).display().to_string();
    as_user("mkdir", &[&p("p1")]);
    as_user("touch", &[&p("p1/good.jsonl")]);
    append_lines(&projects.join("p1/good.jsonl"), 1..2);
    as_user(
        "ln",
        &[
            "-s",
            &secret_dir.join("secret.jsonl").display().to_string(),
            &p("creds.jsonl"),
        ],
    );
    as_user(
        "ln",
        &["-s", &secret_dir.display().to_string(), &p("rootdir")],
    );
    as_user("ln", &["-s", ".", &p("a")]);
    as_user("ln", &["-s", ".", &p("b")]);
    as_user("mkfifo", &[&p("pipe.jsonl")]);

    let receiver = ReceiverProc::start(root, &[]);
    let config = home_config(root, &receiver.addr);
    let (mut daemon, err) = start_logged(&config, root);
    wait_seqs(&receiver, 1, Duration::from_secs(20));
    // A file the user makes later: its arrival proves scans went on past
    // the links and the FIFO.
    as_user("touch", &[&p("p1/later.jsonl")]);
    append_lines(&projects.join("p1/later.jsonl"), 2..3);
    let seqs = wait_seqs(&receiver, 2, Duration::from_secs(20));
    assert_eq!(
        seqs.into_iter().collect::<Vec<_>>(),
        vec![1, 2],
        "root's secret (9001) must never arrive"
    );
    let start = Instant::now();
    let status = terminate(&mut daemon);
    assert!(status.success(), "{status}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?}",
        start.elapsed()
    );
    let log = std::fs::read_to_string(&err).unwrap();
    assert!(
        log.contains("creds.jsonl") && log.contains("symbolic link"),
        "the link is reported:\n{log}"
    );
    assert!(
        log.contains("pipe.jsonl") && log.contains("FIFO"),
        "the FIFO is reported:\n{log}"
    );
    assert_eq!(
        log.matches("creds.jsonl").count(),
        1,
        "once, not at every scan:\n{log}"
    );
}

#[test]
fn state_is_made_private_and_a_world_writable_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let receiver = ReceiverProc::start(root, &[]);
    let config = write_config(root, &receiver.addr, "");
    append_lines(&root.join("logs/a.jsonl"), 0..10);
    // A state directory left readable by everyone, with a file in it.
    let state = root.join("state");
    std::fs::create_dir_all(state.join("segments")).unwrap();
    for d in [&state, &state.join("segments")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(state.join("stray"), b"x").unwrap();
    std::fs::set_permissions(state.join("stray"), std::fs::Permissions::from_mode(0o644)).unwrap();
    // The key from a file readable by others: a warning, and it works.
    let key = root.join("api-key");
    std::fs::write(&key, KEY).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = root.join("daemon.err");
    let mut daemon = start_daemon_cmd(&config, |c| {
        c.env("THOTH_API_KEY_FILE", &key)
            .stderr(std::fs::File::create(&err).unwrap());
    });
    wait_seqs(&receiver, 10, Duration::from_secs(20));
    assert!(terminate(&mut daemon).success());
    let log = std::fs::read_to_string(&err).unwrap();
    assert!(log.contains("readable by other users"), "{log}");
    assert!(log.contains("made them private"), "{log}");
    let mut checked = 0;
    let mut stack = vec![state.clone()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if meta.is_file() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        checked += 1;
    }
    assert!(
        checked >= 5,
        "segments and sled's files were checked: {checked}"
    );

    // Writable by others: refused before anything starts.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env_remove("THOTH_API_KEY")
        .env("THOTH_API_KEY_FILE", &key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("writable by every user"), "{stderr}");
}

/// Peak resident memory of a process, in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn a_flood_of_tiny_lines_and_a_4_mib_line_keep_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let receiver = ReceiverProc::start(root, &["--limit", "100000"]);
    let config = write_config(root, &receiver.addr, "");
    // 1 MiB of `{}` lines: each 3-byte line becomes a ~300-byte event.
    let tiny = "{}\n".repeat((1 << 20) / 3);
    std::fs::write(root.join("logs/tiny.jsonl"), &tiny).unwrap();
    // One 4 MiB line (cut to max_line_bytes), then a line after it.
    let mut big = b"{\"content\":\"".to_vec();
    big.resize(4 << 20, b'y');
    big.extend_from_slice(b"\"}\n");
    std::fs::write(root.join("logs/big.jsonl"), &big).unwrap();
    append_lines(&root.join("logs/big.jsonl"), 0..1);
    // The user's files, as a user would leave them.
    for f in ["tiny.jsonl", "big.jsonl"] {
        std::os::unix::fs::chown(root.join("logs").join(f), Some(USER), Some(USER)).unwrap();
    }
    let (mut daemon, _err) = start_logged(&config, root);
    let want = (1 << 20) / 3 + 1;
    let start = Instant::now();
    while receiver.stats().unique_event_ids < want as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "only {:?} of {want} events arrived",
            receiver.stats().unique_event_ids
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let peak = peak_rss_kib(daemon.id());
    assert!(terminate(&mut daemon).success());
    eprintln!("peak RSS of the daemon: {} MiB", peak / 1024);
    assert!(
        peak < 64 * 1024,
        "peak RSS {} MiB, bound 64 MiB",
        peak / 1024
    );
}

/// SIGTERM ends the process within `shutdown_timeout` plus the 5 s backstop
/// even when a source is stuck (the test hook parks every source thread, as
/// a read on a dead network file system would).
#[test]
fn sigterm_ends_the_daemon_in_bounded_time_even_with_a_stuck_source() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_config_with(dir.path(), &receiver.addr, "shutdown_timeout = \"1s\"");
    let err = dir.path().join("daemon.err");
    let mut daemon = start_daemon_cmd(&config, |c| {
        c.env("THOTH_API_KEY", KEY)
            .env("THOTH_INGEST_TEST_HOOK", "stall-sources")
            .stderr(std::fs::File::create(&err).unwrap());
    });
    // The queue is open, so the sources are being started.
    let opened = Instant::now();
    while !dir.path().join("state/index/db").exists() {
        assert!(
            opened.elapsed() < Duration::from_secs(20),
            "the daemon never opened its state"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let status = terminate(&mut daemon);
    let took = start.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_secs(9),
        "SIGTERM took {took:?}; bound: 1 s + 5 s"
    );
    let log = std::fs::read_to_string(&err).unwrap();
    assert!(log.contains("source did not stop"), "{log}");
}

/// Descriptors the process holds now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// 600 files of a user under a hard limit of 256 descriptors: every line of
/// every file arrives, once, also lines added later to files the daemon had
/// to close, and delivery never runs out of descriptors.
#[test]
fn six_hundred_files_under_a_limit_of_256_descriptors_are_all_delivered() {
    use std::os::unix::process::CommandExt;
    const FILES: u64 = 600;
    const LINES: u64 = 5;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let receiver = ReceiverProc::start(root, &["--limit", "100000"]);
    let config = write_config(root, &receiver.addr, "");
    let logs = root.join("logs");
    std::os::unix::fs::chown(&logs, Some(USER), Some(USER)).unwrap();
    // The user makes the files; file i holds the seqs 10i .. 10i+LINES.
    let paths: Vec<String> = (0..FILES)
        .map(|i| logs.join(format!("f{i:03}.jsonl")).display().to_string())
        .collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    as_user("touch", &paths);
    for i in 0..FILES {
        append_lines(&logs.join(format!("f{i:03}.jsonl")), 10 * i..10 * i + LINES);
    }
    let err = root.join("daemon.err");
    let mut daemon = start_daemon_cmd(&config, |c| {
        c.env("THOTH_API_KEY", KEY)
            .stderr(std::fs::File::create(&err).unwrap());
        // SAFETY: setrlimit is async-signal-safe; it runs in the child.
        unsafe {
            c.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 256,
                    rlim_max: 256,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let first = (FILES * LINES) as usize;
    wait_seqs(&receiver, first, Duration::from_secs(120));
    let held = open_fds(daemon.id());
    // A line more in every file: most were closed to stay in the budget.
    for i in 0..FILES {
        append_lines(
            &logs.join(format!("f{i:03}.jsonl")),
            10 * i + LINES..10 * i + LINES + 1,
        );
    }
    let all = (FILES * (LINES + 1)) as usize;
    let seqs = wait_seqs(&receiver, all, Duration::from_secs(120));
    assert!(terminate(&mut daemon).success());
    let want: std::collections::BTreeSet<u64> = (0..FILES)
        .flat_map(|i| 10 * i..10 * i + LINES + 1)
        .collect();
    assert_eq!(seqs, want);
    let ids = ids_by_seq(&receiver.stored());
    assert!(
        ids.values().all(|s| s.len() == 1),
        "one id per line: {:?}",
        ids.iter().find(|(_, s)| s.len() > 1)
    );
    let log = std::fs::read_to_string(&err).unwrap();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(!log.contains("too many open files"), "{log}");
    eprintln!("descriptors held while following {FILES} files: {held}");
    assert!(held < 256, "{held} descriptors");
}

/// A line whose event would be 300 KB (a tool input an agent could log)
/// arrives as one event under `max_event_bytes`, its long value cut and the
/// cut named in `metadata._truncated`; the lines around it are untouched.
#[test]
fn an_event_over_max_event_bytes_arrives_cut_and_marked() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let receiver = ReceiverProc::start(root, &[]);
    let config = write_config(root, &receiver.addr, "");
    let log = root.join("logs/a.jsonl");
    append_lines(&log, 0..1);
    let big = format!(
        r#"{{"timestamp":"2026-11-28T10:00:00.000Z","tool":"bash","content":"big","seq":1,"input":{{"command":"{}"}}}}"#,
        "y".repeat(300_000)
    ) + "\n";
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, big.as_bytes()))
        .unwrap();
    append_lines(&log, 2..3);
    let mut daemon = start_daemon(&config);
    wait_seqs(&receiver, 3, Duration::from_secs(30));
    assert!(terminate(&mut daemon).success());
    let events = receiver.stored();
    assert_eq!(events.len(), 3);
    let cut = events
        .iter()
        .find(|e| e["metadata"]["seq"] == 1)
        .expect("the big line's event");
    let len = serde_json::to_vec(cut).unwrap().len();
    assert!(len <= 64 << 10, "{len} bytes");
    let command = cut["metadata"]["input"]["command"].as_str().unwrap();
    assert!(
        command.len() > 32 << 10,
        "a useful prefix is kept: {}",
        command.len()
    );
    let mark = &cut["metadata"]["_truncated"];
    assert_eq!(
        mark["fields"],
        serde_json::json!(["metadata.input.command"])
    );
    assert!(mark["event_bytes"].as_u64().unwrap() > 300_000, "{mark}");
    for e in events.iter().filter(|e| e["metadata"]["seq"] != 1) {
        assert!(e["metadata"].get("_truncated").is_none(), "{e}");
    }
}

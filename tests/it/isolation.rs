//! The audited cannot blind the audit (issue 32): the real binary runs as
//! root over `home/*/projects/**/*.jsonl`, two users (uids from `setpriv`)
//! write their files and try to take each other's ids or read each other's
//! files; a server that echoes the request head tries to get the key into
//! logs, `/status` and dead letters.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use thoth_ingest::admin::client;
use thoth_ingest::config::AdminListen;

const ALICE: u32 = 65533;
const BOB: u32 = 65534;

/// Runs `cmd args` as `uid` through setpriv; panics if it fails.
fn as_uid(uid: u32, cmd: &str, args: &[&str]) {
    let setpriv = Path::new("/usr/bin/setpriv");
    assert!(
        setpriv.exists(),
        "this test needs setpriv (util-linux) to act as an unprivileged user"
    );
    let status = Command::new(setpriv)
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--",
            cmd,
        ])
        .args(args)
        .status()
        .expect("run setpriv");
    assert!(status.success(), "as uid {uid}: {cmd} {args:?}: {status}");
}

/// Appends `line(seq)` to `path` as `uid` (the file is theirs to write).
fn append_as(uid: u32, path: &Path, seq: u64) {
    as_uid(
        uid,
        "sh",
        &[
            "-c",
            &format!(
                "printf '%s\\n' '{}' >> '{}'",
                line(seq).trim_end(),
                path.display()
            ),
        ],
    );
}

/// `root/home/<name>/projects`, made and owned by `uid`; `root` and `home`
/// are root's and open to all.
fn home(root: &Path, name: &str, uid: u32) -> PathBuf {
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let projects = root.join("home").join(name).join("projects");
    std::fs::create_dir_all(&projects).unwrap();
    for dir in [root.join("home").join(name), projects.clone()] {
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
    }
    projects
}

/// A config over `home/*/projects/**/*.jsonl` under `dir`, rotated files
/// followed for `rotate_wait`.
fn home_config(dir: &Path, receiver: &str, extra: &str) -> PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"{header}[[sources]]
name = "homes"
type = "file"
include = ["{dir}/home/*/projects/**/*.jsonl"]
parser = "json"
poll_interval = "50ms"
user_id_from = "file_owner"
{extra}
"#,
            header = config_header(dir, receiver),
            dir = dir.display(),
        ),
    )
    .unwrap();
    config
}

fn start_logged(config: &Path, dir: &Path) -> (Daemon, PathBuf) {
    let err = dir.join("daemon.err");
    let file = std::fs::File::create(&err).unwrap();
    let daemon = start_daemon_cmd(config, |c| {
        c.env("THOTH_API_KEY", KEY).stderr(file);
    });
    (daemon, err)
}

/// Item 2: Bob's file is renamed out of the globs while he keeps writing;
/// Alice copies it into her tree and appends. Her line and Bob's next line
/// sit at the same offset of what used to be one stream: they must not
/// share an event id (the server keeps only the first of an id).
#[test]
fn a_copy_of_another_users_file_never_takes_their_event_ids() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bobs = home(root, "bob", BOB);
    let alices = home(root, "alice", ALICE);
    let receiver = ReceiverProc::start(root, &[]);
    let config = home_config(root, &receiver.addr, "rotate_wait = \"30s\"");
    let session = bobs.join("session.jsonl");
    as_uid(BOB, "touch", &[&session.display().to_string()]);
    std::fs::set_permissions(&session, std::fs::Permissions::from_mode(0o644)).unwrap();
    for seq in 0..3 {
        append_as(BOB, &session, seq);
    }
    let (mut daemon, err) = start_logged(&config, root);
    wait_seqs(&receiver, 3, Duration::from_secs(20));
    // Renamed out of the globs: still read to its end for rotate_wait.
    let renamed = bobs.join("session.old");
    as_uid(
        BOB,
        "mv",
        &[
            &session.display().to_string(),
            &renamed.display().to_string(),
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    let copy = alices.join("copy.jsonl");
    as_uid(
        ALICE,
        "cp",
        &[&renamed.display().to_string(), &copy.display().to_string()],
    );
    append_as(ALICE, &copy, 200);
    std::thread::sleep(Duration::from_millis(500));
    append_as(BOB, &renamed, 100);
    let seqs = wait_seqs(&receiver, 5, Duration::from_secs(20));
    assert!(
        seqs.contains(&100) && seqs.contains(&200),
        "both users' lines arrive: {seqs:?}\n{}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    let events = receiver.stored();
    let by_seq = ids_by_seq(&events);
    assert_ne!(by_seq[&100], by_seq[&200], "one id for two users' lines");
    let owner_of = |seq: u64| {
        events
            .iter()
            .find(|e| e["metadata"]["seq"] == seq)
            .map(|e| e["user_id"].clone())
    };
    assert_ne!(owner_of(100), owner_of(200), "{events:?}");
    assert!(terminate(&mut daemon).success());
}

/// Item 3: a hard link in Alice's tree to Bob's 0600 transcript, and to a
/// root-only file, is refused (with `fs.protected_hardlinks = 0` Alice can
/// make them herself; root makes them here, which the daemon cannot tell
/// apart, so the test runs whatever the sysctl says). Her own files, and
/// a second name of her own file, are read.
#[test]
fn hard_links_to_files_of_other_owners_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bobs = home(root, "bob", BOB);
    let alices = home(root, "alice", ALICE);
    let secret = bobs.join("secret.jsonl");
    as_uid(BOB, "touch", &[&secret.display().to_string()]);
    append_as(BOB, &secret, 1);
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Bob's directory is closed to the daemon's glob by a name that does
    // not match: only the link could reach the file.
    let hidden = bobs.parent().unwrap().join("private");
    std::fs::create_dir(&hidden).unwrap();
    std::os::unix::fs::chown(&hidden, Some(BOB), Some(BOB)).unwrap();
    let hidden_secret = hidden.join("secret.jsonl");
    std::fs::rename(&secret, &hidden_secret).unwrap();
    let shadow = root.join("shadow.jsonl");
    std::fs::write(&shadow, line(2)).unwrap();
    std::fs::set_permissions(&shadow, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::hard_link(&hidden_secret, alices.join("bobs.jsonl")).unwrap();
    std::fs::hard_link(&shadow, alices.join("shadow.jsonl")).unwrap();
    let own = alices.join("own.jsonl");
    as_uid(ALICE, "touch", &[&own.display().to_string()]);
    append_as(ALICE, &own, 3);
    as_uid(
        ALICE,
        "ln",
        &[
            &own.display().to_string(),
            &alices.join("own-again.jsonl").display().to_string(),
        ],
    );
    let receiver = ReceiverProc::start(root, &[]);
    let config = home_config(root, &receiver.addr, "");
    let (mut daemon, err) = start_logged(&config, root);
    let log = wait_log(&err, "hard links", Duration::from_secs(20));
    assert!(
        log.contains("bobs.jsonl") && log.contains("shadow.jsonl"),
        "{log}"
    );
    // A line Alice adds later proves the scans went on.
    append_as(ALICE, &own, 4);
    let seqs = wait_seqs(&receiver, 2, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    let seqs = stored_seqs(&receiver)
        .union(&seqs)
        .copied()
        .collect::<Vec<_>>();
    assert_eq!(seqs, vec![3, 4], "only Alice's own lines: {seqs:?}");
    assert!(terminate(&mut daemon).success());
}

/// The address the daemon's admin endpoint bound.
fn admin_address(dir: &Path) -> AdminListen {
    let file = dir.join("state/admin.addr");
    for _ in 0..400 {
        if let Some(addr) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|a| a.trim().parse().ok())
        {
            return AdminListen::Tcp(addr);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no admin address in {}", file.display());
}

/// Item 9: a server that echoes the request head, in a 500's body, in a
/// 429's headers and in a 400's JSON message, gets the key into nothing the
/// daemon keeps: not its log, not `/status`, not the dead letter.
#[test]
fn a_server_that_echoes_the_request_head_gets_the_key_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let script = root.join("script.jsonl");
    std::fs::write(
        &script,
        [
            r#"{"status": 500, "body": "<pre>you sent:\r\n{head}</pre>"}"#,
            r#"{"status": 429, "headers": [["Retry-After", "{head}"], ["X-RateLimit-Remaining", "{head}"], ["X-RateLimit-Reset", "1"]]}"#,
            r#"{"status": 503, "body": "{\"error\": {\"code\": \"ECHO\", \"message\": \"{head_json}\", \"requestId\": \"{head_json}\"}}"}"#,
            r#"{"status": 400, "body": "{\"error\": {\"code\": \"INVALID_REQUEST\", \"message\": \"bad: {head_json}\", \"requestId\": \"req_1\"}}"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let receiver = ReceiverProc::start(root, &["--script", script.to_str().unwrap()]);
    let config = write_config_with(root, &receiver.addr, "max_backoff = \"1s\"");
    append_lines(&root.join("logs/a.jsonl"), 0..1);
    let (mut daemon, err) = start_logged(&config, root);
    // The 400 sets the one event aside; the next line is delivered.
    let log = wait_log(&err, "set aside", Duration::from_secs(60));
    append_lines(&root.join("logs/a.jsonl"), 1..2);
    wait_seqs(&receiver, 1, Duration::from_secs(30));
    let at = admin_address(root);
    let (code, status) = client::get(&at, "/status").expect("GET /status");
    assert_eq!(code, 200, "{status}");
    let (_, metrics) = client::get(&at, "/metrics").expect("GET /metrics");
    assert!(terminate(&mut daemon).success());
    let log = std::fs::read_to_string(&err).unwrap_or(log);
    let dead = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["dead-letter", "list"])
        .output()
        .unwrap();
    let dead = String::from_utf8_lossy(&dead.stdout).into_owned();
    assert!(dead.contains("INVALID_REQUEST"), "{dead}");
    for (what, text) in [
        ("log", &log),
        ("/status", &status),
        ("/metrics", &metrics),
        ("dead letters", &dead),
    ] {
        assert!(!text.contains(KEY), "the key is in {what}: {text}");
        assert!(
            !text.contains("integration"),
            "part of the key is in {what}: {text}"
        );
    }
    assert!(
        log.contains("REDACTED"),
        "the echoes reached the log, scrubbed: {log}"
    );
    // The state directory holds nothing of it either.
    let grep = Command::new("grep")
        .args(["-r", "-l", "-a", KEY])
        .arg(root.join("state"))
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "the key is on disk: {}",
        String::from_utf8_lossy(&grep.stdout)
    );
}

/// Item 8: a raw SIGHUP (no `validate` first) that adds a journald source
/// whose `journalctl` is missing is refused; the daemon keeps running its
/// old sources.
#[test]
fn a_reload_with_a_source_that_cannot_start_keeps_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let receiver = ReceiverProc::start(root, &[]);
    let config = write_config(root, &receiver.addr, "");
    let path = root.join("logs/a.jsonl");
    append_lines(&path, 0..5);
    let (mut daemon, err) = start_logged(&config, root);
    wait_seqs(&receiver, 5, Duration::from_secs(20));
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[[sources]]\nname = \"journal\"\ntype = \"journald\"\njournalctl_path = \"/nonexistent/journalctl\"\n",
    );
    std::fs::write(&config, text).unwrap();
    signal(&daemon, libc::SIGHUP);
    let log = wait_log(&err, "reload refused", Duration::from_secs(20));
    assert!(log.contains("journalctl not found"), "{log}");
    append_lines(&path, 5..10);
    let seqs = wait_seqs(&receiver, 10, Duration::from_secs(20));
    assert_eq!(seqs, (0..10).collect());
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon ended: {}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    assert!(terminate(&mut daemon).success());
}

/// Item 11: a file name with a newline and a terminal escape cannot forge
/// a log line or reach a terminal raw, in the log or in `validate`.
#[test]
fn file_names_with_newlines_and_escapes_are_shown_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let receiver = ReceiverProc::start(root, &[]);
    let config = write_config(root, &receiver.addr, "");
    let forged = "x\n2026-01-01T00:00:00.000000Z ERROR forged \x1b[2J.jsonl";
    // A FIFO: refused with a warning that names it.
    let fifo = root.join("logs").join(forged);
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path in our temporary directory.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // A regular file of the same kind of name, for `validate`'s list.
    std::fs::write(
        root.join("logs").join(forged.replacen('x', "y", 1)),
        line(1),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("validate")
        .env("THOTH_API_KEY", KEY)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("y\\n2026"), "{shown}");
    for format in ["text", "journal"] {
        let err = root.join(format!("{format}.err"));
        let file = std::fs::File::create(&err).unwrap();
        let mut daemon = start_daemon_cmd(&config, |c| {
            c.env("THOTH_API_KEY", KEY)
                .env("THOTH_INGEST_LOG_FORMAT", format)
                .stderr(file);
        });
        let log = wait_log(&err, "not read", Duration::from_secs(20));
        assert!(terminate(&mut daemon).success());
        assert!(log.contains("x\\n2026"), "{log}");
        assert!(!log.contains('\x1b'), "{log}");
        assert!(
            !log.lines().any(|l| l.starts_with("2026-01-01")),
            "a forged line: {log}"
        );
    }
    assert!(!shown.contains('\x1b'), "{shown}");
}

/// Item 4: a state directory someone else made (a careless `/tmp` path),
/// or one with a link planted in it, is refused at start with a message
/// that says why; the link's target is not written.
#[test]
fn a_state_directory_others_control_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let receiver = ReceiverProc::start(root, &[]);
    let config = write_config(root, &receiver.addr, "");
    append_lines(&root.join("logs/a.jsonl"), 0..3);
    let run = || {
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("THOTH_API_KEY", KEY)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    // Made by another user before the daemon's first start.
    let state = root.join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(BOB), Some(BOB)).unwrap();
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("state directory refused") && err.contains("owned by uid 65534"),
        "{err}"
    );
    // Ours, but with a link planted where the next segment will go.
    std::fs::remove_dir(&state).unwrap();
    let victim = root.join("root-only");
    std::fs::write(&victim, b"precious\n").unwrap();
    std::fs::create_dir_all(state.join("segments")).unwrap();
    std::os::unix::fs::symlink(&victim, state.join("segments/0000000000000000.seg")).unwrap();
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
    // Removed as the message says: the daemon starts and delivers.
    std::fs::remove_file(state.join("segments/0000000000000000.seg")).unwrap();
    let mut daemon = start_daemon(&config);
    wait_seqs(&receiver, 3, Duration::from_secs(20));
    assert!(terminate(&mut daemon).success());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
}

/// Item 10: under `user_id_from = "file_owner"`, a line that names another
/// user is of the file's owner; the claim is kept in
/// `metadata.claimed_user_id`.
#[test]
fn a_line_that_claims_another_user_is_of_its_files_owner() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let alices = home(root, "alice", ALICE);
    let session = alices.join("s.jsonl");
    as_uid(ALICE, "touch", &[&session.display().to_string()]);
    let claim = r#"{"seq":1,"content":"as root","user_id":"root"}"#;
    as_uid(
        ALICE,
        "sh",
        &[
            "-c",
            &format!("printf '%s\\n' '{claim}' >> '{}'", session.display()),
        ],
    );
    append_as(ALICE, &session, 2);
    let receiver = ReceiverProc::start(root, &[]);
    let config = home_config(root, &receiver.addr, "");
    let (mut daemon, _err) = start_logged(&config, root);
    wait_seqs(&receiver, 2, Duration::from_secs(20));
    assert!(terminate(&mut daemon).success());
    let events = receiver.stored();
    let by = |seq: u64| {
        events
            .iter()
            .find(|e| e["metadata"]["seq"] == seq)
            .cloned()
            .expect("event")
    };
    let (claimed, plain) = (by(1), by(2));
    assert_eq!(claimed["user_id"], plain["user_id"], "{claimed}");
    assert_ne!(claimed["user_id"], "root", "{claimed}");
    assert_eq!(claimed["metadata"]["claimed_user_id"], "root", "{claimed}");
    assert!(
        plain["metadata"].get("claimed_user_id").is_none(),
        "{plain}"
    );
}

/// Item 11: a proxy that answers 413 to every request, even of one small
/// event, holds delivery (and says so) instead of setting every event
/// aside; once it lets requests through, everything arrives.
#[test]
fn a_413_for_one_small_event_holds_delivery_instead_of_dead_lettering() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let tight = ReceiverProc::start_at(root, &listen, &["--max-body", "100"]);
    let config = write_config_with(root, &tight.addr, "max_backoff = \"2s\"");
    append_lines(&root.join("logs/a.jsonl"), 0..200);
    let (mut daemon, err) = start_logged(&config, root);
    let log = wait_log(
        &err,
        "413 for a request of one small event",
        Duration::from_secs(30),
    );
    assert!(log.contains("client_max_body_size"), "{log}");
    std::thread::sleep(Duration::from_secs(3));
    let refused = tight.stats().status.get(&413).copied().unwrap_or(0);
    drop(tight);
    assert!(refused <= 20, "held, not hammered: {refused} 413s");
    let receiver = ReceiverProc::start_at(root, &listen, &[]);
    let seqs = wait_seqs(&receiver, 200, Duration::from_secs(60));
    assert_eq!(seqs, (0..200).collect());
    assert!(terminate(&mut daemon).success());
    let queue = open_queue(&root.join("state"));
    assert_eq!(queue.dead_letters(), 0, "nothing was set aside");
}

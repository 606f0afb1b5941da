//! Where events come from: every event names the host (`metadata.host`,
//! `metadata.machine_id`), and a file's events its path and owner
//! (`metadata.source_path`, `metadata.file_owner`); `user_id_from =
//! "file_owner"` makes the owner the event's user. Files are written by two
//! users through `setpriv`, as agents of two people would write them.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn config(dir: &Path, receiver: &str, defaults: &str, redaction: &str, source: &str) -> PathBuf {
    let logs = dir.join("logs");
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            r#"{header}[defaults]
{defaults}
[redaction]
{redaction}
[[sources]]
name = "homes"
type = "file"
include = ["{logs}/*.jsonl"]
parser = "json"
poll_interval = "50ms"
{source}
"#,
            header = config_header(dir, receiver),
            logs = logs.display(),
        ),
    )
    .unwrap();
    path
}

/// Writes `text` to `path` as user `uid` (through setpriv), so the file is
/// that user's.
fn write_as(uid: u32, path: &Path, text: &str) {
    let mut child = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "sh",
            "-c",
            "cat > \"$0\"",
        ])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) is needed to write files as other users");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "setpriv failed");
}

fn user_name(uid: u32) -> String {
    let out = Command::new("id")
        .args(["-nu", &uid.to_string()])
        .output()
        .expect("id");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// Two files, of uid 65534 (seqs 0..50) and uid 1 (50..100).
fn two_users_files(dir: &Path) -> [(u32, PathBuf); 2] {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // The users write in the directory: it is theirs too (a test's /tmp).
    let mut perm = std::fs::metadata(&logs).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o777);
    std::fs::set_permissions(&logs, perm).unwrap();
    let a = logs.join("a.jsonl");
    let b = logs.join("b.jsonl");
    write_as(65534, &a, &(0..50).map(line).collect::<String>());
    write_as(1, &b, &(50..100).map(line).collect::<String>());
    [(65534, a), (1, b)]
}

fn run_daemon(config: &Path, rx: &ReceiverProc, n: usize) -> Vec<serde_json::Value> {
    let mut daemon = start_daemon(config);
    wait_seqs(rx, n, Duration::from_secs(60));
    assert!(terminate(&mut daemon).success());
    rx.stored()
}

#[test]
fn events_name_the_host_the_file_and_its_owner_who_is_their_user() {
    let dir = tempfile::tempdir().unwrap();
    let files = two_users_files(dir.path());
    let rx = ReceiverProc::start(dir.path(), &[]);
    let cfg = config(
        dir.path(),
        &rx.addr,
        "",
        "",
        "user_id_from = \"file_owner\"",
    );
    let events = run_daemon(&cfg, &rx, 100);
    let machine_id = std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|m| m.trim().to_string())
        .filter(|m| m.len() == 32);
    for e in &events {
        let seq = e["metadata"]["seq"].as_u64().unwrap();
        let (uid, path) = &files[usize::from(seq >= 50)];
        let owner = user_name(*uid);
        assert_eq!(e["metadata"]["host"], hostname().as_str(), "{e}");
        match &machine_id {
            Some(id) => assert_eq!(e["metadata"]["machine_id"], id.as_str()),
            None => assert!(e["metadata"].get("machine_id").is_none()),
        }
        assert_eq!(
            e["metadata"]["source_path"],
            path.display().to_string().as_str()
        );
        assert_eq!(e["metadata"]["file_owner"], owner.as_str(), "{e}");
        assert_eq!(e["user_id"], owner.as_str(), "{e}");
    }
    assert_ne!(user_name(65534), user_name(1));
}

#[test]
fn host_metadata_off_and_metadata_allow_leave_them_out() {
    let dir = tempfile::tempdir().unwrap();
    two_users_files(dir.path());
    let rx = ReceiverProc::start(dir.path(), &[]);
    let cfg = config(dir.path(), &rx.addr, "host_metadata = false", "", "");
    for e in run_daemon(&cfg, &rx, 100) {
        assert!(e["metadata"].get("host").is_none(), "{e}");
        assert!(e["metadata"].get("machine_id").is_none(), "{e}");
        assert!(e["metadata"]["source_path"].is_string(), "{e}");
        assert_eq!(e["user_id"], "system", "the config's user by default");
    }

    let dir = tempfile::tempdir().unwrap();
    two_users_files(dir.path());
    let rx = ReceiverProc::start(dir.path(), &[]);
    let cfg = config(
        dir.path(),
        &rx.addr,
        "",
        "metadata_allow = [\"seq\", \"host\"]",
        "",
    );
    for e in run_daemon(&cfg, &rx, 100) {
        let keys: Vec<&String> = e["metadata"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["seq", "host"], "{e}");
    }
}

/// Sets the host name of the calling process's UTS namespace.
fn set_hostname(name: &str) -> std::io::Result<()> {
    // SAFETY: sethostname(2) reads `len` bytes of `name`.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A host renamed while the daemon runs: events read after a reload
/// (SIGHUP) carry the new name, events before it the old one. The daemon
/// runs in a UTS namespace of its own, renamed through `nsenter`.
#[test]
fn a_reload_reads_the_host_name_again() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join("a.jsonl");
    append_lines(&log, 0..50);
    let rx = ReceiverProc::start(dir.path(), &[]);
    let cfg = config(dir.path(), &rx.addr, "", "", "");
    let mut daemon = start_daemon_cmd(&cfg, |c| {
        c.env("THOTH_API_KEY", KEY);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWUTS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                set_hostname("thoth-before")
            });
        }
    });
    wait_seqs(&rx, 50, Duration::from_secs(60));
    let status = Command::new("nsenter")
        .args([
            "--target",
            &daemon.id().to_string(),
            "--uts",
            "python3",
            "-c",
        ])
        .arg("import socket; socket.sethostname('thoth-after')")
        .status()
        .expect("nsenter (util-linux) and python3 are needed to rename the daemon's host");
    assert!(status.success(), "nsenter failed");
    signal(&daemon, libc::SIGHUP);
    // Lines one by one until one is read after the reload; all before it
    // carry the old name, all after it the new one.
    let mut next = 50;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        append_lines(&log, next..next + 1);
        next += 1;
        wait_seqs(&rx, next as usize, Duration::from_secs(30));
        let renamed = rx
            .stored()
            .iter()
            .any(|e| e["metadata"]["host"] == "thoth-after");
        if renamed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reload never renamed the host"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    append_lines(&log, next..next + 20);
    wait_seqs(&rx, next as usize + 20, Duration::from_secs(30));
    assert!(terminate(&mut daemon).success());
    let mut hosts: Vec<(u64, String)> = rx
        .stored()
        .iter()
        .map(|e| {
            (
                e["metadata"]["seq"].as_u64().unwrap(),
                e["metadata"]["host"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    hosts.sort();
    let first_after = hosts.iter().position(|(_, h)| h == "thoth-after").unwrap();
    assert!(first_after >= 50, "renamed before the reload");
    assert!(hosts[..first_after]
        .iter()
        .all(|(_, h)| h == "thoth-before"));
    assert!(hosts[first_after..].iter().all(|(_, h)| h == "thoth-after"));
    assert!(hosts.len() >= 71);
}

//! The journald source against real journal files (tests/fixtures/journal/,
//! made by its make.sh with systemd-journal-remote), read by the machine's
//! own journalctl. The oracle is journalctl itself: the cursors it lists
//! for the source's filters are the entries that must arrive, once each.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn journalctl() -> &'static str {
    let found = Command::new("journalctl").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "these tests need journalctl (systemd) on the PATH"
    );
    "journalctl"
}

/// A fixture's journal files, decompressed into `dir`.
fn journal_dir(fixture: &str, files: &[&str], dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/journal")
        .join(fixture);
    std::fs::create_dir_all(dir).unwrap();
    for file in files {
        add_journal_file(&src, file, dir);
    }
    dir.to_path_buf()
}

fn add_journal_file(src: &Path, file: &str, dir: &Path) {
    let gz = std::fs::File::open(src.join(format!("{file}.gz")))
        .unwrap_or_else(|e| panic!("fixture {}/{file}.gz: {e}", src.display()));
    let mut out = std::fs::File::create(dir.join(file)).unwrap();
    std::io::copy(&mut flate2::read::GzDecoder::new(gz), &mut out).unwrap();
}

/// The entries journalctl lists with `args`: cursor -> MESSAGE, as JSON.
fn entries(dir: &Path, args: &[&str]) -> BTreeMap<String, serde_json::Value> {
    let out = Command::new(journalctl())
        .arg(format!("--directory={}", dir.display()))
        .args(["--output=json", "--all", "--no-pager"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "journalctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["__CURSOR"].as_str().unwrap().to_string(),
                v["MESSAGE"].clone(),
            )
        })
        .collect()
}

/// Cursors of entries whose MESSAGE is a JSON object: what the json parser
/// makes an event of.
fn json_message_cursors(entries: &BTreeMap<String, serde_json::Value>) -> BTreeSet<String> {
    entries
        .iter()
        .filter(|(_, m)| {
            // Bytes when not UTF-8 or holding control characters (a newline).
            let text = match m {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(bytes) => {
                    let bytes: Vec<u8> = bytes
                        .iter()
                        .filter_map(|b| b.as_u64())
                        .map(|b| b as u8)
                        .collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                }
                _ => return false,
            };
            serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v.is_object())
        })
        .map(|(c, _)| c.clone())
        .collect()
}

/// Asserts two sets of cursors are equal, naming the differences only.
fn assert_same_cursors(got: &BTreeSet<String>, expected: &BTreeSet<String>, what: &str) {
    let missing: Vec<_> = expected.difference(got).collect();
    let extra: Vec<_> = got.difference(expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} missing {missing:?}, {} extra {extra:?}",
        missing.len(),
        extra.len()
    );
}

/// A rules parser that makes one event of every entry: every cursor the
/// source reads shows at the receiver.
const EVERY_ENTRY: &str = r#"parser = "every-entry"

[parsers.every-entry]
format = "regex"
pattern = '(?s)^(?P<all>.*)$'

[[parsers.every-entry.rules]]
name = "all"
event_type = "TOOL_CALL_POST"
content = "${all}"
"#;

/// The pid of `parent`'s child named `name`, from /proc.
fn child_named(parent: u32, name: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // pid (comm) state ppid ...
        let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        let ppid: u32 = rest.split(' ').nth(1)?.parse().ok()?;
        (ppid == parent && comm == name).then_some(pid)
    })
}

/// Copies a journal file in as a journal does: under a temporary name, then
/// renamed.
fn add_file_atomically(fixture: &str, file: &str, dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/journal")
        .join(fixture);
    let tmp = dir.join(".incoming");
    std::fs::create_dir_all(&tmp).unwrap();
    add_journal_file(&src, file, &tmp);
    std::fs::rename(tmp.join(file), dir.join(file)).unwrap();
}

fn write_journald_config(dir: &Path, receiver: &str, journal: &Path, extra: &str) -> PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"{header}[[sources]]
name = "journal"
type = "journald"
directory = "{journal}"
{extra}
"#,
            header = config_header(dir, receiver),
            journal = journal.display(),
        ),
    )
    .unwrap();
    config
}

/// Event ids by the cursor of the entry they came from.
fn ids_by_cursor(receiver: &ReceiverProc) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in receiver.stored() {
        let cursor = e["metadata"]["journald"]["cursor"]
            .as_str()
            .expect("metadata.journald.cursor")
            .to_string();
        out.entry(cursor)
            .or_default()
            .insert(e["event_id"].as_str().unwrap().to_string());
    }
    out
}

fn wait_cursors(receiver: &ReceiverProc, n: usize) -> BTreeMap<String, BTreeSet<String>> {
    let start = Instant::now();
    loop {
        let got = ids_by_cursor(receiver);
        if got.len() >= n || start.elapsed() > Duration::from_secs(60) {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn reads_the_filtered_entries_once_with_their_journal_fields() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal_dir("basic", &["basic.journal"], &dir.path().join("journal"));
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_journald_config(
        dir.path(),
        &receiver.addr,
        &journal,
        "parser = \"json\"\nunits = [\"agent.service\"]",
    );
    let listed = entries(&journal, &["--unit=agent.service"]);
    let expected = json_message_cursors(&listed);
    assert!(
        expected.len() >= 50,
        "fixture too small: {}",
        expected.len()
    );
    let mut daemon = start_daemon(&config);
    let got = wait_cursors(&receiver, expected.len());
    let cursors: BTreeSet<String> = got.keys().cloned().collect();
    assert_same_cursors(
        &cursors,
        &expected,
        "the events are exactly the unit's JSON entries",
    );
    assert!(got.values().all(|ids| ids.len() == 1), "one id per entry");
    let event = &receiver.stored()[0];
    let meta = &event["metadata"]["journald"];
    assert_eq!(meta["systemd_unit"], "agent.service");
    assert_eq!(meta["hostname"], "fixture-host");
    assert!(meta["pid"].as_str().is_some_and(|p| !p.is_empty()));
    // `_UID` and its name, resolved on this machine as a file's owner is.
    assert_eq!(meta["uid"], "1000");
    let name = std::process::Command::new("id")
        .args(["-nu", "1000"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "1000".to_string());
    assert_eq!(meta["user"], name.as_str());
    // occurred_at is the entry's __REALTIME_TIMESTAMP (the messages carry none).
    assert!(
        event["occurred_at"]
            .as_str()
            .unwrap()
            .starts_with("2023-11-1"),
        "{}",
        event["occurred_at"]
    );
    // The cursor's age is the age of the last entry committed (written in
    // November 2023), in /status and /metrics.
    let addr: std::net::SocketAddr = std::fs::read_to_string(dir.path().join("state/admin.addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let at = thoth_ingest::config::AdminListen::Tcp(addr);
    let (_, body) = thoth_ingest::admin::client::get(&at, "/status").unwrap();
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let age = report["sources"][0]["cursor_age_seconds"].as_f64().unwrap();
    assert!(age > 365.0 * 86_400.0, "cursor age {age} s");
    let (_, metrics) = thoth_ingest::admin::client::get(&at, "/metrics").unwrap();
    assert!(
        metrics.contains("thoth_ingest_journald_cursor_age_seconds{source=\"journal\"} "),
        "{metrics}"
    );
    assert!(terminate(&mut daemon).success());

    // `parse --source` on journalctl's output previews the same events,
    // under the same ids.
    let listing = Command::new(journalctl())
        .arg(format!("--directory={}", journal.display()))
        .args([
            "--output=json",
            "--all",
            "--no-pager",
            "--unit=agent.service",
        ])
        .output()
        .unwrap();
    let mut preview = Command::new(BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "parse",
            "--source",
            "journal",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = preview.stdin.take().unwrap();
        stdin.write_all(&listing.stdout).unwrap();
    }
    let preview = preview.wait_with_output().unwrap();
    assert!(preview.status.success());
    let previewed: BTreeSet<String> = String::from_utf8_lossy(&preview.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let sent: BTreeSet<String> = got.values().flatten().cloned().collect();
    assert_eq!(previewed, sent, "parse --source shows what the daemon sent");

    // A restart resumes after the cursor: nothing is sent again.
    let before = receiver.stats().accepted_events;
    let mut daemon = start_daemon(&config);
    std::thread::sleep(Duration::from_secs(3));
    assert!(terminate(&mut daemon).success());
    assert_eq!(
        receiver.stats().accepted_events,
        before,
        "nothing re-read after a restart"
    );
}

#[test]
fn kill_9_in_the_middle_loses_nothing_and_resends_only_known_ids() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal_dir("basic", &["basic.journal"], &dir.path().join("journal"));
    // Slow answers: the kill lands while batches are still out.
    let receiver = ReceiverProc::start(dir.path(), &["--latency", "300ms"]);
    let config = write_journald_config(dir.path(), &receiver.addr, &journal, "parser = \"json\"");
    let expected = json_message_cursors(&entries(&journal, &[]));
    let mut daemon = start_daemon(&config);
    wait_cursors(&receiver, 1);
    daemon.kill().unwrap(); // SIGKILL
    daemon.wait().unwrap();
    let mut daemon = start_daemon(&config);
    let got = wait_cursors(&receiver, expected.len());
    assert!(terminate(&mut daemon).success());
    let cursors: BTreeSet<String> = got.keys().cloned().collect();
    assert_same_cursors(&cursors, &expected, "every JSON entry arrived");
    let twice: Vec<_> = got.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(twice.is_empty(), "entries under two ids: {twice:?}");
}

#[test]
fn a_missing_journalctl_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal_dir("basic", &["basic.journal"], &dir.path().join("journal"));
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_journald_config(
        dir.path(),
        &receiver.addr,
        &journal,
        r#"journalctl_path = "/nonexistent/journalctl""#,
    );
    let out = Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "run"])
        .env("THOTH_API_KEY", KEY)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the daemon must not run without journalctl"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("journalctl not found at `/nonexistent/journalctl`"),
        "{stderr}"
    );
}

#[test]
fn journalctl_killed_under_the_daemon_is_restarted_and_new_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal_dir("two-files", &["part1.journal"], &dir.path().join("journal"));
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_journald_config(dir.path(), &receiver.addr, &journal, EVERY_ENTRY);
    let first: BTreeSet<String> = entries(&journal, &[]).into_keys().collect();
    let mut daemon = start_daemon(&config);
    let got = wait_cursors(&receiver, first.len());
    assert_same_cursors(&got.keys().cloned().collect(), &first, "the first file");
    let journalctl = child_named(daemon.id(), "journalctl").expect("the daemon's journalctl");
    // SAFETY: kill(2) on a pid this test found as the daemon's child.
    unsafe {
        libc::kill(journalctl, libc::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(300));
    add_file_atomically("two-files", "part2.journal", &journal);
    let all: BTreeSet<String> = entries(&journal, &[]).into_keys().collect();
    assert_eq!(all.len(), 300);
    let got = wait_cursors(&receiver, all.len());
    assert!(terminate(&mut daemon).success());
    assert_same_cursors(
        &got.keys().cloned().collect(),
        &all,
        "both files, after journalctl was killed",
    );
    assert!(got.values().all(|ids| ids.len() == 1), "one id per entry");
    let restarted = child_named(daemon.id(), "journalctl");
    assert_ne!(restarted, Some(journalctl));
}

#[test]
fn a_vacuumed_cursor_is_reported_and_no_entry_after_it_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal_dir("two-files", &["part1.journal"], &dir.path().join("journal"));
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_journald_config(dir.path(), &receiver.addr, &journal, EVERY_ENTRY);
    let first: BTreeSet<String> = entries(&journal, &[]).into_keys().collect();
    let mut daemon = start_daemon(&config);
    wait_cursors(&receiver, first.len());
    assert!(terminate(&mut daemon).success());
    // Vacuumed while the daemon was stopped: the file of its cursor is gone.
    std::fs::remove_file(journal.join("part1.journal")).unwrap();
    add_file_atomically("two-files", "part2.journal", &journal);
    let second: BTreeSet<String> = entries(&journal, &[]).into_keys().collect();
    let log = dir.path().join("daemon.log");
    let mut daemon = start_daemon_cmd(&config, |c| {
        c.env("THOTH_API_KEY", KEY)
            .stderr(std::fs::File::create(&log).unwrap());
    });
    let got = wait_cursors(&receiver, first.len() + second.len());
    assert!(terminate(&mut daemon).success());
    let all: BTreeSet<String> = first.union(&second).cloned().collect();
    // journalctl's --after-cursor would skip the oldest entry left here.
    assert_same_cursors(
        &got.keys().cloned().collect(),
        &all,
        "every entry of both files",
    );
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        said.matches("no longer holds the last entry read").count(),
        1,
        "one warning names the gap: {said}"
    );
}

#[test]
fn match_and_priority_filters_are_journalctls() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal_dir("basic", &["basic.journal"], &dir.path().join("journal"));
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let extra = format!(
        "matches = [\"_SYSTEMD_UNIT=mcp-github.service\"]\npriority = \"err\"\n{EVERY_ENTRY}"
    );
    let config = write_journald_config(dir.path(), &receiver.addr, &journal, &extra);
    let expected: BTreeSet<String> = entries(
        &journal,
        &["_SYSTEMD_UNIT=mcp-github.service", "--priority=err"],
    )
    .into_keys()
    .collect();
    assert!(
        !expected.is_empty() && expected.len() < 40,
        "{}",
        expected.len()
    );
    let mut daemon = start_daemon(&config);
    let got = wait_cursors(&receiver, expected.len());
    // Nothing else trickles in after the expected ones.
    std::thread::sleep(Duration::from_millis(1500));
    let got_after = ids_by_cursor(&receiver);
    assert!(terminate(&mut daemon).success());
    assert_eq!(got.len(), got_after.len());
    assert_same_cursors(
        &got_after.keys().cloned().collect(),
        &expected,
        "the unit's errors only",
    );
}

#[test]
fn rules_test_and_copy_the_entry_fields() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal_dir("basic", &["basic.journal"], &dir.path().join("journal"));
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let rules = r#"parser = "errors"

[parsers.errors]
format = "regex"
pattern = '(?s)^(?P<all>.*)$'

[[parsers.errors.rules]]
name = "errors"
when = { field = "journald.priority", equals = "3" }
event_type = "TOOL_CALL_POST"
tool_name = "${journald.syslog_identifier}"
content = "${journald.systemd_unit}: ${all}"

[[parsers.errors.rules]]
name = "the rest"
drop = true
"#;
    let config = write_journald_config(dir.path(), &receiver.addr, &journal, rules);
    let expected: BTreeSet<String> = entries(&journal, &["PRIORITY=3"]).into_keys().collect();
    assert!(
        !expected.is_empty() && expected.len() < 20,
        "{}",
        expected.len()
    );
    let mut daemon = start_daemon(&config);
    let got = wait_cursors(&receiver, expected.len());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(terminate(&mut daemon).success());
    assert_same_cursors(
        &got.keys().cloned().collect(),
        &expected,
        "the PRIORITY=3 entries",
    );
    assert_eq!(
        ids_by_cursor(&receiver).len(),
        expected.len(),
        "nothing else"
    );
    for e in receiver.stored() {
        let unit = e["metadata"]["journald"]["systemd_unit"].as_str().unwrap();
        let content = e["content"].as_str().unwrap();
        assert!(content.starts_with(&format!("{unit}: ")), "{content}");
        assert_eq!(
            e["tool_name"],
            e["metadata"]["journald"]["syslog_identifier"]
        );
    }
}

#[test]
fn a_journal_the_daemons_user_may_not_read_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let setpriv = Path::new("/usr/bin/setpriv");
    assert!(
        setpriv.exists(),
        "this test needs setpriv (util-linux) to run the daemon as an unprivileged user"
    );
    // SAFETY: getuid(2) has no preconditions.
    assert_eq!(
        unsafe { libc::getuid() },
        0,
        "this test switches to uid 65534 with setpriv: run it as root"
    );
    let dir = tempfile::tempdir().unwrap();
    // Sticky, as /tmp: the daemon's user may make its state here, and no
    // other user may replace it (a state directory under a 0777 directory
    // is refused).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    // Journal files root alone may read, as in /var/log/journal for a user
    // outside systemd-journal.
    let journal = journal_dir("basic", &["basic.journal"], &dir.path().join("journal"));
    std::fs::set_permissions(
        journal.join("basic.journal"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_journald_config(dir.path(), &receiver.addr, &journal, EVERY_ENTRY);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            BIN,
        ])
        .args(["--config", config.to_str().unwrap(), "run"])
        .env("THOTH_API_KEY", KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the daemon must not run blind: {stderr}"
    );
    assert!(
        stderr.contains("cannot read the journal") && stderr.contains("systemd-journal"),
        "{stderr}"
    );
    // validate says so too, and says what root can read.
    let validate = |as_nobody: bool| {
        let mut cmd = if as_nobody {
            let mut c = Command::new(setpriv);
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                BIN,
            ]);
            c
        } else {
            Command::new(BIN)
        };
        cmd.args(["--config", config.to_str().unwrap(), "validate"])
            .env("THOTH_API_KEY", KEY)
            .output()
            .unwrap()
    };
    let out = validate(true);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("valid"),
        "no \"valid\" before an invalid source"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("source `journal`: cannot read journal directory"),
        "{said}"
    );
    let out = validate(false);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("readable, 300 entries match now"), "{said}");
}

#[test]
fn start_at_end_reads_only_what_comes_after_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal_dir("two-files", &["part1.journal"], &dir.path().join("journal"));
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let extra = format!("start_at = \"end\"\n{EVERY_ENTRY}");
    let config = write_journald_config(dir.path(), &receiver.addr, &journal, &extra);
    let before: BTreeSet<String> = entries(&journal, &[]).into_keys().collect();
    let mut daemon = start_daemon(&config);
    std::thread::sleep(Duration::from_secs(2));
    add_file_atomically("two-files", "part2.journal", &journal);
    let after: BTreeSet<String> = entries(&journal, &[])
        .into_keys()
        .filter(|c| !before.contains(c))
        .collect();
    let got = wait_cursors(&receiver, after.len());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(terminate(&mut daemon).success());
    assert_eq!(ids_by_cursor(&receiver).len(), got.len());
    assert_same_cursors(
        &got.keys().cloned().collect(),
        &after,
        "only the entries written after the start",
    );
}

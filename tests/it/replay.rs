//! `thoth-ingest replay` against the local receiver: every event of a
//! directory of plain and gzip files delivered once, with the ids a live
//! daemon gives the same lines (also for a rotated copy read as `.gz`);
//! resumed after kill -9 without loss; `--since`/`--until` and `--dry-run`;
//! a non-zero exit for an unreadable file and for refused events.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A config for source `agents` over `logs/*.jsonl` and `logs/*.jsonl.gz`,
/// state in `state/`; `delivery` and `extra` are added to their tables.
fn config(dir: &Path, receiver: &str, delivery: &str, extra: &str) -> PathBuf {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = dir.join(format!("config-{}.toml", receiver.replace([':', '.'], "-")));
    std::fs::write(
        &path,
        format!(
            r#"{header}{delivery}
{extra}
[[sources]]
name = "agents"
type = "file"
include = ["{logs}/*.jsonl", "{logs}/*.jsonl.gz"]
parser = "json"
poll_interval = "50ms"
"#,
            header = config_header(dir, receiver),
            logs = logs.display(),
        ),
    )
    .unwrap();
    path
}

fn lines(range: std::ops::Range<u64>) -> String {
    range.map(line).collect()
}

fn write_gz(path: &Path, text: &str) {
    let f = std::fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap();
}

/// 3 plain and 2 gzip files, 100,000 lines, seqs 0..100,000.
fn five_files(logs: &Path) {
    std::fs::create_dir_all(logs).unwrap();
    let bounds = [0u64, 15_000, 35_000, 60_000, 80_000, 100_000];
    for (i, w) in bounds.windows(2).enumerate() {
        let text = lines(w[0]..w[1]);
        if i < 3 {
            std::fs::write(logs.join(format!("plain-{i}.jsonl")), text).unwrap();
        } else {
            write_gz(&logs.join(format!("old-{i}.jsonl.gz")), &text);
        }
    }
}

fn replay_cmd(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .arg("replay")
        .args(args)
        .env("THOTH_API_KEY", KEY)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn run_replay(config: &Path, args: &[&str]) -> Output {
    let out = replay_cmd(config, args).output().expect("run replay");
    eprintln!("replay stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// seq -> its one event id, asserting there is exactly one per seq.
fn one_id_per_seq(events: &[serde_json::Value]) -> BTreeMap<u64, String> {
    ids_by_seq(events)
        .into_iter()
        .map(|(seq, ids)| {
            assert_eq!(ids.len(), 1, "seq {seq} arrived under several ids: {ids:?}");
            (seq, ids.into_iter().next().unwrap())
        })
        .collect()
}

#[test]
fn replay_delivers_every_event_once_with_the_live_daemons_ids() {
    let dir = tempfile::tempdir().unwrap();
    five_files(&dir.path().join("logs"));

    // The live daemon over the same files.
    let live_rx = ReceiverProc::start(dir.path(), &[]);
    let live_config = config(dir.path(), &live_rx.addr, "", "");
    let mut daemon = start_daemon(&live_config);
    live_rx.wait_unique(100_000, Duration::from_secs(120));
    let live_ids = one_id_per_seq(&live_rx.stored());
    assert_eq!(live_ids.len(), 100_000);

    // The replay, while the daemon runs, to a receiver of its own.
    let replay_dir = dir.path().join("replay-rx");
    std::fs::create_dir_all(&replay_dir).unwrap();
    let rx = ReceiverProc::start(&replay_dir, &[]);
    let replay_config = config(dir.path(), &rx.addr, "", "");
    let out = run_replay(&replay_config, &["--source", "agents"]);
    assert_eq!(out.status.code(), Some(0), "replay failed");
    let stats = rx.stats();
    assert_eq!(stats.unique_event_ids, 100_000, "{stats:?}");
    assert_eq!(
        stats.accepted_events, 100_000,
        "each event delivered once: {stats:?}"
    );
    let replay_ids = one_id_per_seq(&rx.stored());
    assert_eq!(replay_ids, live_ids, "replay ids differ from the live ones");
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("5 of 5 files read, 100000 lines, 100000 events"),
        "{summary}"
    );
    assert!(terminate(&mut daemon).success());
    assert_eq!(live_rx.stats().accepted_events, 100_000);

    // Run again: every file was replayed, nothing is sent twice.
    let out = run_replay(&replay_config, &["--source", "agents"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(rx.stats().accepted_events, 100_000);
    // --restart reads everything again, under the same ids.
    let out = run_replay(&replay_config, &["--source", "agents", "--restart"]);
    assert_eq!(out.status.code(), Some(0));
    let stats = rx.stats();
    assert_eq!(stats.accepted_events, 200_000, "{stats:?}");
    assert_eq!(stats.unique_event_ids, 100_000, "{stats:?}");
}

#[test]
fn a_replay_killed_and_resumed_loses_nothing_and_repeats_only_ids_already_sent() {
    let dir = tempfile::tempdir().unwrap();
    five_files(&dir.path().join("logs"));
    let rx = ReceiverProc::start(dir.path(), &[]);
    // Slow delivery (10,000 events/s) and a small queue: the kill lands
    // while files are still being read and batches are in flight.
    let cfg = config(
        dir.path(),
        &rx.addr,
        "budget = { requests = 10, per = \"1s\" }\nbatch_max_events = 1000",
        "[queue]\nmax_bytes = \"4MiB\"",
    );
    let mut child = replay_cmd(&cfg, &["--source", "agents"])
        .stderr(Stdio::null())
        .spawn()
        .expect("start replay");
    let start = Instant::now();
    while rx.stats().unique_event_ids < 25_000 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "replay too slow: {:?}",
            rx.stats()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("kill -9");
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before: BTreeSet<String> = rx
        .stored()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        before.len() < 100_000,
        "the kill came too late to test a resume"
    );

    let out = run_replay(&cfg, &["--source", "agents"]);
    assert_eq!(out.status.code(), Some(0), "resumed replay failed");
    let events = rx.stored();
    let by_seq = one_id_per_seq(&events);
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (0..100_000).collect::<Vec<_>>(),
        "lines lost"
    );
    let mut seen = BTreeSet::new();
    for e in &events {
        let id = e["event_id"].as_str().unwrap().to_string();
        if !seen.insert(id.clone()) {
            assert!(
                before.contains(&id),
                "{id} was sent twice but had not arrived before the kill"
            );
        }
    }
}

#[test]
fn a_rotated_gz_copy_the_daemon_never_saw_gets_the_ids_of_the_file_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let rx = ReceiverProc::start(dir.path(), &[]);
    let cfg = config(dir.path(), &rx.addr, "", "");
    let app = logs.join("app.jsonl");
    std::fs::write(&app, lines(0..1000)).unwrap();
    let mut daemon = start_daemon(&cfg);
    rx.wait_unique(1000, Duration::from_secs(60));
    assert!(terminate(&mut daemon).success());
    let live_ids = one_id_per_seq(&rx.stored());

    // While the daemon is down the file grows, and logrotate compresses it
    // into a folder the source's globs do not match.
    append_lines(&app, 1000..1500);
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    write_gz(
        &archive.join("app.jsonl.1.gz"),
        &std::fs::read_to_string(&app).unwrap(),
    );
    std::fs::remove_file(&app).unwrap();

    let replay_dir = dir.path().join("replay-rx");
    std::fs::create_dir_all(&replay_dir).unwrap();
    let rx2 = ReceiverProc::start(&replay_dir, &[]);
    let cfg2 = config(dir.path(), &rx2.addr, "", "");
    let archive_arg = archive.display().to_string();
    let out = run_replay(&cfg2, &["--source", "agents", &archive_arg]);
    assert_eq!(out.status.code(), Some(0));
    let replayed = one_id_per_seq(&rx2.stored());
    assert_eq!(replayed.len(), 1500);
    for (seq, id) in &live_ids {
        assert_eq!(replayed.get(seq), Some(id), "seq {seq}: not the live id");
    }
    let distinct: BTreeSet<&String> = replayed.values().collect();
    assert_eq!(distinct.len(), 1500);
}

/// Lines at 10:00, 11:00, ... 14:00 on 2026-11-28, 100 each.
fn hourly_lines() -> String {
    let mut text = String::new();
    for hour in 10..15u64 {
        for i in 0..100u64 {
            let seq = hour * 1000 + i;
            text.push_str(
                &line(seq).replace("2026-11-28T10:00:00", &format!("2026-11-28T{hour}:00:00")),
            );
        }
    }
    text
}

#[test]
fn since_and_until_filter_on_event_time_and_a_dry_run_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("day.jsonl"), hourly_lines()).unwrap();
    let rx = ReceiverProc::start(dir.path(), &[]);
    let cfg = config(dir.path(), &rx.addr, "", "");

    let out = run_replay(&cfg, &["--source", "agents", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("500 lines, 500 events"));
    assert_eq!(rx.stats().requests, 0, "a dry run sent something");

    let out = run_replay(
        &cfg,
        &[
            "--source",
            "agents",
            "--since",
            "2026-11-28T11:00:00Z",
            "--until",
            "2026-11-28T13:00:00Z",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("200 events (300 more outside"),
        "summary"
    );
    let seqs = stored_seqs(&rx);
    let expected: BTreeSet<u64> = (11..13u64)
        .flat_map(|h| (0..100).map(move |i| h * 1000 + i))
        .collect();
    assert_eq!(seqs, expected);

    // An age: everything in the sample is older than a day.
    let out = run_replay(
        &cfg,
        &["--source", "agents", "--restart", "--since", "1day"],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stored_seqs(&rx).len(), 200);
    let bad = run_replay(&cfg, &["--source", "agents", "--since", "yesterday-ish"]);
    assert_eq!(bad.status.code(), Some(2), "clap's usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("neither an RFC 3339 time"));
}

#[test]
fn an_unreadable_file_or_a_refused_event_makes_the_exit_status_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("good.jsonl"), lines(0..10)).unwrap();
    // Gzip's magic, then garbage: the decoder fails.
    let mut bad = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    bad.extend_from_slice(&[0xff; 64]);
    std::fs::write(logs.join("broken.jsonl.gz"), &bad).unwrap();
    let rx = ReceiverProc::start(dir.path(), &[]);
    let cfg = config(dir.path(), &rx.addr, "", "");
    let out = run_replay(&cfg, &["--source", "agents"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unreadable:") && stderr.contains("broken.jsonl.gz"),
        "{stderr}"
    );
    assert_eq!(
        stored_seqs(&rx).len(),
        10,
        "the good file is delivered anyway"
    );

    // A server that refuses the one event of a batch: a dead letter.
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("one.jsonl"), lines(0..1)).unwrap();
    let script = dir.path().join("script.jsonl");
    std::fs::write(
        &script,
        r#"{"status": 400, "body": "{\"error\":{\"code\":\"VALIDATION_ERROR\",\"message\":\"events[0]: invalid event\"}}"}"#.to_string() + "\n",
    )
    .unwrap();
    let script_arg = script.display().to_string();
    let rx = ReceiverProc::start(dir.path(), &["--script", &script_arg]);
    let cfg = config(dir.path(), &rx.addr, "", "");
    let out = run_replay(&cfg, &["--source", "agents"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("1 dead-lettered"), "{stderr}");
    let listed = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["dead-letter", "--state-dir"])
        .arg(dir.path().join("state/replay"))
        .arg("list")
        .output()
        .unwrap();
    assert!(listed.status.success());
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("VALIDATION_ERROR"), "{listed}");
}

#[test]
fn a_preset_replays_given_paths_and_bad_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let other = dir.path().join("copied-from-elsewhere");
    std::fs::create_dir_all(other.join("deep")).unwrap();
    std::fs::write(other.join("a.log"), lines(0..5)).unwrap();
    write_gz(&other.join("deep/b.log.gz"), &lines(5..9));
    let rx = ReceiverProc::start(dir.path(), &[]);
    let cfg = config(dir.path(), &rx.addr, "", "");
    let other_arg = other.display().to_string();
    let out = run_replay(&cfg, &["--preset", "json", &other_arg]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stored_seqs(&rx), (0..9).collect());

    for (args, needle) in [
        (vec!["--preset", "json"], "needs the files"),
        (vec!["--preset", "nope", &other_arg], "unknown preset"),
        (vec!["--source", "nope"], "no source `nope`"),
    ] {
        let out = run_replay(&cfg, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}: expected {needle:?}"
        );
    }
    let state = dir.path().join("state").display().to_string();
    let out = run_replay(&cfg, &["--source", "agents", "--state-dir", &state]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("daemon's own state directory"));
}

#[test]
fn a_file_still_written_is_read_to_its_last_complete_line_and_the_rest_later() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let rx = ReceiverProc::start(dir.path(), &[]);
    let cfg = config(dir.path(), &rx.addr, "", "");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("rotate_wait = \"2s\"\n");
    std::fs::write(&cfg, text).unwrap();
    let app = logs.join("app.jsonl");
    let line10 = line(10);
    let (head, rest) = line10.split_at(40);
    std::fs::write(&app, lines(0..10) + head).unwrap();

    let out = run_replay(&cfg, &["--source", "agents"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stored_seqs(&rx), (0..10).collect());

    // The writer finishes the line, adds one, and goes quiet.
    let mut f = std::fs::OpenOptions::new().append(true).open(&app).unwrap();
    f.write_all(rest.as_bytes()).unwrap();
    f.write_all(line(11).trim_end().as_bytes()).unwrap();
    drop(f);
    std::thread::sleep(Duration::from_millis(2100));
    let out = run_replay(&cfg, &["--source", "agents"]);
    assert_eq!(out.status.code(), Some(0));
    let events = rx.stored();
    let by_seq = one_id_per_seq(&events);
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (0..12).collect::<Vec<_>>()
    );
    assert_eq!(events.len(), 12, "each line once");
}

//! SIGHUP reloads the configuration: a daemon held back by a refused key
//! retries at once with the key it reads again, instead of after the slow
//! 15 s retry; a config that does not load changes nothing.

use crate::common;

use std::time::{Duration, Instant};

use common::*;

const RIGHT: &str = "thoth_test_right_key";
const WRONG: &str = "thoth_test_wrong_key";

#[test]
fn sighup_reloads_the_key_file_and_retries_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &["--api-key", RIGHT]);
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, format!("{WRONG}\n")).unwrap();
    let config = write_config(dir.path(), &receiver.addr, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[api]\n",
        &format!("[api]\napi_key_file = \"{}\"\n", key_file.display()),
    );
    std::fs::write(&config, text).unwrap();
    append_lines(&dir.path().join("logs/a.jsonl"), 0..2000);
    let mut daemon = start_daemon_cmd(&config, |_| {});

    // The wrong key is refused; the daemon holds back for its slow retry.
    let start = Instant::now();
    while !receiver.stats().status.contains_key(&401) {
        assert!(start.elapsed() < Duration::from_secs(20), "no 401 seen");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let refused = receiver.stats().status.get(&401).copied().unwrap_or(0);
    assert_eq!(receiver.stats().status.get(&202), None);

    // A config that does not load is refused and changes nothing.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, "[api\n").unwrap();
    signal(&daemon, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "a bad reload stopped the daemon"
    );
    std::fs::write(&config, good).unwrap();

    // The right key, then SIGHUP: delivery resumes well before the 15 s retry.
    std::fs::write(&key_file, format!("{RIGHT}\n")).unwrap();
    let reloaded = Instant::now();
    signal(&daemon, libc::SIGHUP);
    let seqs = wait_seqs(&receiver, 2000, Duration::from_secs(10));
    let took = reloaded.elapsed();
    eprintln!(
        "reload: {} events delivered {took:?} after SIGHUP ({refused} 401s before)",
        seqs.len()
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    let stats = receiver.stats();
    assert!(
        stats.status.get(&401).copied().unwrap_or(0) <= refused + 1,
        "401s after the reload: {stats:?}"
    );
    assert!(terminate(&mut daemon).success());
}

/// SIGHUP with a new set of sources: one kept as it was reads on, one
/// removed stops reading, one added starts, one changed goes on from its
/// position with its new settings; no line is lost or sent twice.
#[test]
fn sighup_adds_removes_and_changes_sources_keeping_positions() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = dir.path().join("config.toml");
    // seqs: kept 0.., changed 10_000.., removed 20_000.., added 30_000..
    std::fs::write(
        &config,
        sources_config(
            dir.path(),
            &receiver.addr,
            &[
                ("kept", "kept", ""),
                ("changed", "changed", "user_id = \"before\""),
                ("removed", "removed", ""),
            ],
        ),
    )
    .unwrap();
    let file = |folder: &str| dir.path().join(folder).join("a.jsonl");
    append_lines(&file("kept"), 0..100);
    append_lines(&file("changed"), 10_000..10_100);
    append_lines(&file("removed"), 20_000..20_100);
    std::fs::create_dir_all(dir.path().join("added")).unwrap();
    append_lines(&file("added"), 30_000..30_100);
    let mut daemon = start_daemon(&config);
    wait_seqs(&receiver, 300, Duration::from_secs(30));

    std::fs::write(
        &config,
        sources_config(
            dir.path(),
            &receiver.addr,
            &[
                ("kept", "kept", ""),
                ("changed", "changed", "user_id = \"after\""),
                ("added", "added", ""),
            ],
        ),
    )
    .unwrap();
    signal(&daemon, libc::SIGHUP);
    // The added source's existing lines arrive: the reload is applied.
    wait_seqs(&receiver, 400, Duration::from_secs(30));
    append_lines(&file("kept"), 100..200);
    append_lines(&file("changed"), 10_100..10_200);
    append_lines(&file("removed"), 20_100..20_200);
    append_lines(&file("added"), 30_100..30_200);
    wait_seqs(&receiver, 700, Duration::from_secs(30));
    // Time for the removed source to show it still reads, if it did.
    std::thread::sleep(Duration::from_secs(1));
    assert!(terminate(&mut daemon).success());

    let by_seq = arrivals(&receiver);
    let expect: Vec<u64> = (0..200)
        .chain(10_000..10_200)
        .chain(20_000..20_100)
        .chain(30_000..30_200)
        .collect();
    assert_eq!(by_seq.keys().copied().collect::<Vec<_>>(), expect);
    for (seq, agents) in &by_seq {
        assert_eq!(agents.len(), 1, "seq {seq} arrived {} times", agents.len());
    }
    // The changed source's new settings apply to what it reads after.
    assert_eq!(by_seq[&10_050], ["before"]);
    assert_eq!(by_seq[&10_150], ["after"]);
}

/// A reload whose config does not load keeps the running one, sources
/// included, and says why with the file and line.
#[test]
fn an_invalid_reload_keeps_the_running_sources() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_config(dir.path(), &receiver.addr, "");
    let log = dir.path().join("logs/a.jsonl");
    append_lines(&log, 0..50);
    let stderr = dir.path().join("stderr.log");
    let mut daemon = start_daemon_cmd(&config, |c| {
        c.env("THOTH_API_KEY", KEY)
            .stderr(std::fs::File::create(&stderr).unwrap());
    });
    wait_seqs(&receiver, 50, Duration::from_secs(30));
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        good.replace("parser = \"json\"", "parser = \"no-such\""),
    )
    .unwrap();
    signal(&daemon, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    let said = loop {
        let said = std::fs::read_to_string(&stderr).unwrap();
        if said.contains("reload") {
            break said;
        }
        assert!(Instant::now() < deadline, "the refused reload said nothing");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        said.contains(&format!("{}:", config.display())) && said.contains("no-such"),
        "{said}"
    );
    append_lines(&log, 50..100);
    wait_seqs(&receiver, 100, Duration::from_secs(30));
    assert!(terminate(&mut daemon).success());
}

/// Waits until a line of the log at `path` holds every one of `needles`;
/// panics with the log after `timeout`.
fn wait_log_line(path: &std::path::Path, needles: &[&str], timeout: Duration) {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().any(|l| needles.iter().all(|n| l.contains(n))) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "no line with {needles:?} within {timeout:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// With the queue full and delivery refused, every source's commit waits
/// for room. The watchdog still hears from the daemon (paused by design is
/// not stuck); a reload stops the removed and changed sources at once
/// (their waiting commits give up, nothing committed) and starts the
/// changed and added ones; once delivery resumes every line of a kept,
/// changed or added source arrives once, and the removed source's lines
/// arrive as a prefix, each once.
#[test]
fn a_reload_under_a_full_queue_stops_and_starts_sources_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &["--api-key", RIGHT]);
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, format!("{WRONG}\n")).unwrap();
    let config = dir.path().join("config.toml");
    let write = |sources: &[(&str, &str, &str)]| {
        let text = sources_config(dir.path(), &receiver.addr, sources)
            .replace(
                "[api]\n",
                &format!("[api]\napi_key_file = \"{}\"\n", key_file.display()),
            )
            .replace("[state]\n", "[queue]\nmax_bytes = \"64KiB\"\n[state]\n");
        std::fs::write(&config, text).unwrap();
    };
    write(&[
        ("kept", "kept", ""),
        ("changed", "changed", "user_id = \"before\""),
        ("removed", "removed", ""),
    ]);
    let file = |folder: &str| dir.path().join(folder).join("a.jsonl");
    std::fs::create_dir_all(dir.path().join("added")).unwrap();
    append_lines(&file("added"), 30_000..30_100);
    append_lines(&file("kept"), 0..3000);
    let log = dir.path().join("stderr.log");
    let sock = NotifySocket::bind(dir.path());
    let mut daemon = start_daemon_cmd(&config, |c| {
        c.env("RUST_LOG", "thoth_ingest=info")
            .env("NOTIFY_SOCKET", &sock.path)
            .env("WATCHDOG_USEC", "2000000")
            .env_remove("WATCHDOG_PID")
            .stderr(std::fs::File::create(&log).unwrap());
    });
    // The first commit goes in whole (an empty queue takes any commit)
    // and is refused delivery; every commit after it waits for room.
    let start = Instant::now();
    while !receiver.stats().status.contains_key(&401) {
        assert!(start.elapsed() < Duration::from_secs(20), "no 401 seen");
        std::thread::sleep(Duration::from_millis(20));
    }
    append_lines(&file("changed"), 10_000..10_500);
    append_lines(&file("removed"), 20_000..20_500);
    append_lines(&file("kept"), 3000..3100);
    // Each source's waiting commit says so once.
    let start = Instant::now();
    while std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("queue full")
        .count()
        < 3
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not every source waits"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Pings at about 1 s go on while every source waits for room.
    let mut seen = Vec::new();
    let pings = Instant::now();
    for _ in 0..4 {
        sock.wait_for("WATCHDOG=1", Duration::from_secs(3), &mut seen)
            .unwrap_or_else(|| panic!("no WATCHDOG=1 while paused; seen {seen:?}"));
    }
    assert!(pings.elapsed() < Duration::from_secs(6), "{seen:?}");

    write(&[
        ("kept", "kept", ""),
        ("changed", "changed", "user_id = \"after\""),
        ("added", "added", ""),
    ]);
    signal(&daemon, libc::SIGHUP);
    let bound = Duration::from_secs(5);
    wait_log_line(&log, &["source stopped by the reload", "removed"], bound);
    wait_log_line(&log, &["source started by the reload", "changed"], bound);
    wait_log_line(&log, &["source started by the reload", "added"], bound);
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon ended");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("still stopping"), "{text}");

    std::fs::write(&key_file, format!("{RIGHT}\n")).unwrap();
    signal(&daemon, libc::SIGHUP);
    let expect: std::collections::BTreeSet<u64> = (0..3100)
        .chain(10_000..10_500)
        .chain(30_000..30_100)
        .collect();
    let start = Instant::now();
    while !stored_seqs(&receiver).is_superset(&expect) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of {} lines arrived",
            stored_seqs(&receiver).intersection(&expect).count(),
            expect.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(terminate(&mut daemon).success());

    let by_seq = arrivals(&receiver);
    for (seq, users) in &by_seq {
        assert_eq!(users.len(), 1, "seq {seq} arrived {} times", users.len());
    }
    let removed: Vec<u64> = by_seq
        .keys()
        .copied()
        .filter(|s| (20_000..30_000).contains(s))
        .collect();
    assert_eq!(
        removed,
        (20_000..20_000 + removed.len() as u64).collect::<Vec<_>>(),
        "the removed source's lines are not a prefix"
    );
    let others: Vec<u64> = by_seq
        .keys()
        .copied()
        .filter(|s| !(20_000..30_000).contains(s))
        .collect();
    assert_eq!(others, expect.into_iter().collect::<Vec<_>>());
    // The changed source committed nothing before the reload (the queue
    // was full): all of it went through its new self.
    assert!(
        (10_000..10_500).all(|s| by_seq[&s] == ["after"]),
        "changed: {:?}",
        (10_000..10_500)
            .map(|s| &by_seq[&s][0])
            .collect::<std::collections::BTreeSet<_>>()
    );
    eprintln!("removed source: {} of 500 lines arrived", removed.len());
}

//! The error table of thoth-api.md against the receiver: flaky servers, a
//! poison event, 413, a refused key, an outage. Nothing is ever lost.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use thoth_ingest::queue::Queue;

#[test]
fn flaky_server_every_event_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &["--fail-ratio", "0.2", "--latency", "50ms"]);
    let config = write_config_with(
        dir.path(),
        &receiver.addr,
        "max_backoff = \"1s\"\nbatch_max_events = 100",
    );
    append_lines(&dir.path().join("logs/a.jsonl"), 0..5000);
    let mut daemon = start_daemon(&config);
    let seqs = wait_seqs(&receiver, 5000, Duration::from_secs(120));
    assert_eq!(seqs, (0..5000).collect());
    let stats = receiver.stats();
    assert!(
        stats.status.get(&500).copied().unwrap_or(0) > 0,
        "the receiver failed some requests: {stats:?}"
    );
    assert!(terminate(&mut daemon).success());
}

#[test]
fn one_poison_event_is_dead_lettered_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &["--reject-content", "POISON"]);
    let config = write_config_with(dir.path(), &receiver.addr, "linger = \"2s\"");
    let config_text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("linger = \"100ms\"\n", "");
    std::fs::write(&config, config_text).unwrap();
    let path = dir.path().join("logs/a.jsonl");
    append_lines(&path, 0..137);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"seq\":137,\"content\":\"POISON here\"}\n")
            .unwrap();
    }
    append_lines(&path, 138..500);
    let log = dir.path().join("daemon.err");
    let mut daemon = start_daemon_cmd(&config, |c| {
        c.env("THOTH_API_KEY", KEY)
            .stderr(std::fs::File::create(&log).unwrap());
    });
    let seqs = wait_seqs(&receiver, 499, Duration::from_secs(60));
    wait_log(&log, "it is set aside", Duration::from_secs(30));
    let dead_letter = |verb: &str| {
        std::process::Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .args(["dead-letter", verb])
            .output()
            .unwrap()
    };
    let locked = dead_letter("list");
    assert_eq!(locked.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&locked.stderr).contains("in use by another thoth-ingest process")
    );
    assert!(terminate(&mut daemon).success());
    let listed = dead_letter("list");
    assert_eq!(listed.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("POISON") && stdout.contains("INVALID_REQUEST"),
        "{stdout}"
    );
    assert!(!seqs.contains(&137));
    assert_eq!(seqs.len(), 499);
    let stats = receiver.stats();
    // One request for the whole batch, then at most 2·log2(500) to isolate it.
    assert!(
        stats.requests <= 1 + 18,
        "{} requests to isolate one bad event: {stats:?}",
        stats.requests
    );
    assert_eq!(stats.unique_event_ids, 499);
    let queue = Queue::open(&dir.path().join("state"), 8 << 20).unwrap();
    let dead = queue.dead_letter_list().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (_, letter) = &dead[0];
    assert_eq!(letter.status, 400);
    assert_eq!(letter.code, "INVALID_REQUEST");
    assert!(letter.message.contains("POISON"), "{letter:?}");
    assert!(letter.request_id.starts_with("req_"));
    assert!(letter.event.contains("POISON here"));
    assert!(queue.is_empty(), "nothing else waits");
    drop(queue);
    // Purge, on a copy of this state (one dead letter): it is deleted, and
    // not put back in the queue.
    let copy = dir.path().join("state-copy");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(dir.path().join("state"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(cp.success());
    let copy_config = dir.path().join("copy.toml");
    std::fs::write(
        &copy_config,
        std::fs::read_to_string(&config).unwrap().replace(
            &format!("{:?}", dir.path().join("state").display().to_string()),
            &format!("{:?}", copy.display().to_string()),
        ),
    )
    .unwrap();
    let purged = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&copy_config)
        .args(["dead-letter", "purge"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&purged.stdout);
    assert!(said.contains("1 dead letter(s) deleted"), "{said}");
    let purged_queue = Queue::open(&copy, 8 << 20).unwrap();
    assert_eq!(purged_queue.dead_letters(), 0);
    assert!(purged_queue.is_empty(), "purged, not queued again");
    drop(purged_queue);
    let queue = Queue::open(&dir.path().join("state"), 8 << 20).unwrap();
    assert_eq!(queue.dead_letter_retry().unwrap(), 1);
    assert_eq!(
        queue.peek_batch(10, usize::MAX).unwrap().map(|b| b.events),
        Some(1),
        "back in the queue"
    );
    assert_eq!(queue.dead_letters(), 0);
    drop(queue);
    let purged = dead_letter("purge");
    assert!(String::from_utf8_lossy(&purged.stdout).contains("0 dead letter(s) deleted"));
}

#[test]
fn batches_shrink_on_413_and_everything_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &["--max-body", "60000"]);
    let config = write_config(dir.path(), &receiver.addr, "");
    append_lines(&dir.path().join("logs/a.jsonl"), 0..3000);
    let mut daemon = start_daemon(&config);
    let seqs = wait_seqs(&receiver, 3000, Duration::from_secs(60));
    assert_eq!(seqs, (0..3000).collect());
    let stats = receiver.stats();
    assert!(
        stats.status.get(&413).copied().unwrap_or(0) >= 1,
        "{stats:?}"
    );
    // 500 events of ~600 bytes halve 3 times to fit 60 kB: one 413 per
    // level, plus one per level for the other request already in flight
    // (max_in_flight = 2) — not one per batch.
    let too_large = stats.status.get(&413).copied().unwrap_or(0);
    assert!(
        too_large <= 6,
        "batches shrink once, not per request: {stats:?}"
    );
    assert!(terminate(&mut daemon).success());
}

#[test]
fn gzip_bodies_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_config_with(dir.path(), &receiver.addr, "compression = \"gzip\"");
    append_lines(&dir.path().join("logs/a.jsonl"), 0..2000);
    let mut daemon = start_daemon(&config);
    let seqs = wait_seqs(&receiver, 2000, Duration::from_secs(60));
    assert_eq!(seqs.len(), 2000);
    let stats = receiver.stats();
    assert_eq!(
        stats.gzip_requests, stats.requests,
        "every body was gzipped: {stats:?}"
    );
    assert!(terminate(&mut daemon).success());
}

#[test]
fn refused_key_for_20s_then_accepted_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &["--refuse-keys-for", "20s"]);
    let config = write_config(dir.path(), &receiver.addr, "");
    append_lines(&dir.path().join("logs/a.jsonl"), 0..1000);
    let started = Instant::now();
    let mut daemon = start_daemon(&config);
    std::thread::sleep(Duration::from_secs(3));
    append_lines(&dir.path().join("logs/a.jsonl"), 1000..2000);
    let seqs = wait_seqs(&receiver, 2000, Duration::from_secs(90));
    assert_eq!(seqs, (0..2000).collect());
    assert!(started.elapsed() >= Duration::from_secs(20));
    let stats = receiver.stats();
    let refused = stats.status.get(&401).copied().unwrap_or(0);
    assert!(
        (1..=6).contains(&refused),
        "retried slowly while refused: {refused} 401s"
    );
    assert!(terminate(&mut daemon).success());
}

#[test]
fn receiver_down_for_60s_while_writing_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let receiver = ReceiverProc::start_at(dir.path(), &listen, &[]);
    let config = write_config_with(dir.path(), &receiver.addr, "max_backoff = \"5s\"");
    let log = dir.path().join("logs/a.jsonl");
    append_lines(&log, 0..2000);
    let mut daemon = start_daemon(&config);
    wait_seqs(&receiver, 2000, Duration::from_secs(60));
    drop(receiver); // down
    let down = Instant::now();
    let mut seq = 2000;
    while down.elapsed() < Duration::from_secs(60) {
        append_lines(&log, seq..seq + 200);
        seq += 200;
        std::thread::sleep(Duration::from_millis(500));
    }
    let receiver = ReceiverProc::start_at(dir.path(), &listen, &[]);
    let seqs = wait_seqs(&receiver, seq as usize, Duration::from_secs(60));
    assert_eq!(seqs, (0..seq).collect());
    assert!(terminate(&mut daemon).success());
}

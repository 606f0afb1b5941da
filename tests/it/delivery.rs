//! End-to-end: the real binary follows a file and delivers every line to the
//! receiver, exactly once by event id, across kill -9 restarts.

use crate::common;

use std::io::Write;
use std::time::Duration;

use common::*;
use rand::Rng;

#[test]
fn ten_thousand_lines_in_bursts_all_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_config(dir.path(), &receiver.addr, "");
    let mut daemon = start_daemon(&config);
    let mut file = std::fs::File::create(dir.path().join("logs/agent.jsonl")).unwrap();
    for burst in 0..20u64 {
        let mut chunk = String::new();
        for i in 0..500 {
            chunk.push_str(&line(burst * 500 + i));
        }
        file.write_all(chunk.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    let stats = receiver.wait_unique(10_000, Duration::from_secs(60));
    assert_eq!(stats.unique_event_ids, 10_000);
    let status = terminate(&mut daemon);
    assert!(
        status.success(),
        "daemon exit status after SIGTERM: {status}"
    );
    let by_seq = ids_by_seq(&receiver.stored());
    assert_eq!(by_seq.len(), 10_000);
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (0..10_000).collect::<Vec<_>>()
    );
    assert!(by_seq.values().all(|ids| ids.len() == 1));
}

#[test]
fn kill_9_five_times_while_writing_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_config(dir.path(), &receiver.addr, "");
    let path = dir.path().join("logs/agent.jsonl");
    let total: u64 = 30_000;
    let writer = std::thread::spawn(move || {
        let mut file = std::fs::File::create(&path).unwrap();
        let mut rng = rand::thread_rng();
        let mut seq = 0;
        while seq < total {
            let burst = rng.gen_range(1..400).min(total - seq);
            let mut chunk = String::new();
            for i in seq..seq + burst {
                chunk.push_str(&line(i));
            }
            file.write_all(chunk.as_bytes()).unwrap();
            seq += burst;
            std::thread::sleep(Duration::from_millis(rng.gen_range(10..60)));
        }
    });
    let mut rng = rand::thread_rng();
    let mut daemon = start_daemon(&config);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..1200)));
        daemon.kill().unwrap(); // SIGKILL
        daemon.wait().unwrap();
        daemon = start_daemon(&config);
    }
    writer.join().unwrap();
    let stats = receiver.wait_unique(total, Duration::from_secs(120));
    let status = terminate(&mut daemon);
    assert!(
        status.success(),
        "daemon exit status after SIGTERM: {status}"
    );
    assert_eq!(
        stats.unique_event_ids, total,
        "nothing lost, nothing invented: {stats:?}"
    );
    let by_seq = ids_by_seq(&receiver.stored());
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (0..total).collect::<Vec<_>>()
    );
    for (seq, ids) in &by_seq {
        assert_eq!(
            ids.len(),
            1,
            "line {seq} was delivered under several ids: {ids:?}"
        );
    }
    eprintln!(
        "crash test: {} events accepted, {} duplicates re-sent under their first id",
        stats.accepted_events, stats.duplicate_events
    );
}

#[test]
fn bad_lines_are_skipped_or_repaired_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_config(dir.path(), &receiver.addr, "");
    let mut daemon = start_daemon(&config);
    let mut bytes = Vec::new();
    bytes.extend_from_slice(line(0).as_bytes());
    bytes.extend_from_slice(b"not json at all\n");
    bytes.extend_from_slice(b"{\"truncated\": \n");
    bytes.extend_from_slice(b"\n");
    bytes.extend_from_slice(b"{\"seq\":1,\"content\":\"bad \xff\xfe byte\"}\r\n");
    bytes.extend_from_slice(b"[1,2,3]\n");
    bytes.extend_from_slice(line(2).as_bytes());
    bytes.extend_from_slice(b"{\"seq\":3,\"content\":\"no newline yet\"}");
    std::fs::write(dir.path().join("logs/bad.jsonl"), &bytes).unwrap();
    let stats = receiver.wait_unique(3, Duration::from_secs(30));
    // A barrier: a line written after, to another file, delivered. The
    // unterminated line was read before it, and would have come first.
    append_lines(&dir.path().join("logs/after.jsonl"), 100..101);
    let seqs = wait_seqs(&receiver, 4, Duration::from_secs(30));
    assert_eq!(
        seqs,
        [0, 1, 2, 100].into(),
        "the unterminated last line waits for its newline"
    );
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("logs/bad.jsonl"))
        .unwrap();
    f.write_all(b"\n").unwrap();
    let stats_after = receiver.wait_unique(5, Duration::from_secs(30));
    assert_eq!(stats.rejected_events + stats_after.rejected_events, 0);
    let events = receiver.stored();
    let repaired = events
        .iter()
        .find(|e| e["metadata"]["seq"] == 1)
        .expect("repaired line delivered");
    assert_eq!(repaired["content"], "bad \u{fffd}\u{fffd} byte");
    assert!(terminate(&mut daemon).success());
}

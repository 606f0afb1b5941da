//! A restart of the file source in the middle of a Codex rollout queues
//! exactly the events an uninterrupted run queues: the session, the model and
//! the pending calls travel in the checkpoint beside the offset.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thoth_ingest::config::Config;
use thoth_ingest::queue::Queue;
use thoth_ingest::stage::SourceStats;

fn config(state: &Path, logs: &Path) -> Config {
    common::in_process_config(
        state,
        "codex",
        &[logs.join("*.jsonl").display().to_string()],
        "codex",
        r#"poll_interval = "20ms""#,
    )
}

/// Runs the source until it has read everything there is, then stops it.
fn run_source_until_caught_up(config: &Config) {
    let queue = Arc::new(Queue::open(&config.state.dir, 8 << 20).unwrap());
    let stats = Arc::new(SourceStats::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let source = common::first_file_source(config, queue.clone(), stats.clone(), shutdown.clone());
    let handle = std::thread::spawn(move || source.run());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(stats.is_caught_up() && stats.commits.load(Ordering::SeqCst) > 0) {
        assert!(Instant::now() < deadline, "source never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
    shutdown.store(true, Ordering::SeqCst);
    handle.join().unwrap().unwrap();
    queue.close().unwrap();
}

/// Every event in the queue, in order.
fn queued_events(config: &Config) -> Vec<serde_json::Value> {
    let queue = Queue::open(&config.state.dir, 8 << 20).unwrap();
    let batch = queue.peek_batch(100_000, usize::MAX).unwrap().unwrap();
    let events: Vec<serde_json::Value> = serde_json::from_slice(&batch.body).unwrap();
    queue.close().unwrap();
    events
}

/// The events without what names their copy of the fixture: the id (the
/// file's inode) and the file's path.
fn without_ids(mut events: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    for e in &mut events {
        if let Some(o) = e.as_object_mut() {
            o.remove("event_id");
            if let Some(m) = o.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                m.remove("source_path");
            }
        }
    }
    events
}

#[test]
fn a_restart_mid_file_queues_the_events_of_an_uninterrupted_run() {
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/codex/rollout.jsonl"),
    )
    .unwrap();
    // Cut after the first function_call (line 7): its output, the session id
    // and the model must all come from the checkpoint after the restart.
    let cut = fixture
        .match_indices('\n')
        .nth(6)
        .map(|(i, _)| i + 1)
        .unwrap();

    let whole = tempfile::tempdir().unwrap();
    std::fs::create_dir(whole.path().join("logs")).unwrap();
    std::fs::write(whole.path().join("logs/rollout.jsonl"), &fixture).unwrap();
    let whole_config = config(&whole.path().join("state"), &whole.path().join("logs"));
    run_source_until_caught_up(&whole_config);
    let expected = queued_events(&whole_config);
    assert_eq!(expected.len(), 16);

    let split = tempfile::tempdir().unwrap();
    std::fs::create_dir(split.path().join("logs")).unwrap();
    let log = split.path().join("logs/rollout.jsonl");
    std::fs::write(&log, &fixture[..cut]).unwrap();
    let split_config = config(&split.path().join("state"), &split.path().join("logs"));
    run_source_until_caught_up(&split_config);
    assert_eq!(
        queued_events(&split_config).len(),
        1,
        "the PRE before the cut"
    );
    std::fs::write(&log, &fixture).unwrap(); // the agent goes on writing
    run_source_until_caught_up(&split_config);
    let got = queued_events(&split_config);

    // Event ids name the file (its inode), so two copies of a fixture differ
    // there; everything else must be equal, and ids unique.
    let ids: std::collections::HashSet<_> = got.iter().map(|e| e["event_id"].clone()).collect();
    assert_eq!(ids.len(), got.len(), "an event id used twice");
    assert_eq!(without_ids(got.clone()), without_ids(expected));
    let post = &got[2];
    assert_eq!(post["event_type"], "TOOL_CALL_POST");
    assert_eq!(
        post["tool_name"], "shell",
        "name of a call made before the restart"
    );
    assert_eq!(post["session_id"], "5973b6c0-94b8-487b-a530-2aeb6098ae0e");
    assert_eq!(post["metadata"]["model"], "gpt-5-codex");
}

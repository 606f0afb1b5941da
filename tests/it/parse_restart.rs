//! A restart of the file source in the middle of a file queues exactly the
//! events an uninterrupted run queues: the session, the model, the pending
//! calls and the sessions' tool histories travel in the checkpoint beside
//! the offset.

use crate::common;

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
    assert_eq!(
        post["session_tool_calls"],
        serde_json::json!(["shell"]),
        "the history of a call made before the restart"
    );
}

/// The events without what differs between two copies of one fixture: the
/// id and path (the file), and the stream in an MCP session's name.
fn comparable(events: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    let mut events = without_ids(events);
    for e in &mut events {
        if let Some(s) = e["session_id"].as_str().and_then(|s| s.split_once('@')) {
            e["session_id"] = s.0.into();
        }
    }
    events
}

/// Reads `text` as file `name` with `parser`: whole, then cut after line
/// `cut` with the source stopped and restarted in between. Returns the
/// queued events of each.
fn whole_and_cut(
    parser: &str,
    name: &str,
    text: &str,
    extra: &str,
    cut: Option<usize>,
) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs").join(name);
    let config = common::in_process_config(
        &dir.path().join("state"),
        "agents",
        &[dir.path().join("logs/*").display().to_string()],
        parser,
        &format!("poll_interval = \"20ms\"\n{extra}"),
    );
    if let Some(cut) = cut {
        std::fs::write(&log, &text[..cut]).unwrap();
        run_source_until_caught_up(&config);
    }
    std::fs::write(&log, text).unwrap();
    run_source_until_caught_up(&config);
    queued_events(&config)
}

/// For every preset and a rules parser with `session_history = true`, a
/// restart after each line of the fixture queues the events of an
/// uninterrupted run, `session_tool_calls` included: the history travels
/// in the checkpoint.
#[test]
fn a_restart_after_any_line_keeps_the_session_tool_history() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let rules = std::fs::read_to_string(fixtures.join("rules/config.toml")).unwrap();
    let json_agent = &rules[rules.find("[parsers.json-agent]").unwrap()..];
    let my_agent = &rules[rules.find("[parsers.my-agent]").unwrap()..];
    let my_agent = &my_agent[..my_agent.find("[parsers.json-agent]").unwrap()];
    for (parser, file, extra) in [
        ("claude-code", "claude-code/session.jsonl", ""),
        ("codex", "codex/rollout.jsonl", ""),
        (
            "mcp-claude-desktop",
            "mcp-claude-desktop/mcp-server-github.log",
            "",
        ),
        ("otel-genai", "otel-genai/records.jsonl", ""),
        ("json-agent", "rules/json-agent.jsonl", json_agent),
        ("my-agent", "rules/my-agent.log", my_agent),
    ] {
        let text = std::fs::read_to_string(fixtures.join(file)).unwrap();
        let name = Path::new(file).file_name().unwrap().to_str().unwrap();
        let expected = comparable(whole_and_cut(parser, name, &text, extra, None));
        let longest = expected
            .iter()
            .filter_map(|e| e["session_tool_calls"].as_array())
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        assert!(longest >= 1, "{parser}: the fixture builds no history");
        let cuts: Vec<usize> = text
            .match_indices('\n')
            .map(|(i, _)| i + 1)
            .filter(|&i| i < text.len())
            .collect();
        for (line, cut) in cuts.into_iter().enumerate() {
            let got = comparable(whole_and_cut(parser, name, &text, extra, Some(cut)));
            assert_eq!(got, expected, "{parser}: restarted after line {}", line + 1);
        }
    }
}

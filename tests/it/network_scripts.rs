//! Random hostile answers against the real binary (issue 11). Each case
//! draws a script for the receiver's `--script` mode: any status from 200 to
//! 599, redirects to another port, absurd and negative rate numbers, HTML
//! and empty bodies, answers slower than the daemon's timeout, connections
//! cut before or in the middle of the answer; then the receiver answers
//! healthily. Oracle: the daemon never panics or exits, every line arrives
//! under exactly one event id, and nothing reaches the other port (the
//! redirects' target, also set as the proxy).
//!
//! `THOTH_SCRIPT_CASES` sets the number of scripts (CI runs the default).

use crate::common;

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::json;

const LINES: u64 = 30;
const DEFAULT_CASES: u32 = 6;

/// A port that must never be reached: counts every connection (and reads
/// what comes, so a client does not block on it).
struct Elsewhere {
    addr: String,
    connections: Arc<AtomicUsize>,
}

impl Elsewhere {
    fn start() -> Elsewhere {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                count.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut s) = stream {
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                    let _ = s.read(&mut [0u8; 4096]);
                }
            }
        });
        Elsewhere { addr, connections }
    }
}

fn header() -> impl Strategy<Value = (String, String)> {
    let huge = "18446744073709551615".to_string();
    prop_oneof![
        Just(("Retry-After".into(), huge.clone())),
        Just(("Retry-After".into(), "-5".into())),
        Just(("Retry-After".into(), "1e9".into())),
        Just(("Retry-After".into(), "Fri, 31 Dec 9999 23:59:59 GMT".into())),
        (0u64..4).prop_map(|s| ("Retry-After".into(), s.to_string())),
        Just(("X-RateLimit-Reset".into(), huge.clone())),
        Just(("X-RateLimit-Reset".into(), "-1".into())),
        (0u64..5).prop_map(|s| ("X-RateLimit-Reset".into(), (now() + s).to_string())),
        Just(("X-RateLimit-Remaining".into(), huge.clone())),
        Just(("X-RateLimit-Remaining".into(), "-3".into())),
        (0u64..3).prop_map(|r| ("X-RateLimit-Remaining".into(), r.to_string())),
        Just(("X-RateLimit-Limit".into(), "0".into())),
        Just(("X-RateLimit-Limit".into(), huge)),
        (1u64..50).prop_map(|l| ("X-RateLimit-Limit".into(), l.to_string())),
        Just(("Content-Type".into(), "text/html".into())),
    ]
}

fn body() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("<html><body><h1>502 Bad Gateway</h1></body></html>".into()),
        Just("{\"error\": ".into()),
        Just("not json at all \u{0} \u{1b}[31m".into()),
        Just(format!("<html>{}</html>", "x".repeat(100_000))),
    ]
}

/// One scripted answer, as a line of the script.
fn step(elsewhere: String) -> impl Strategy<Value = serde_json::Value> {
    let close = prop_oneof![
        6 => Just(serde_json::Value::Null),
        1 => Just(json!("no_answer")),
        1 => Just(json!("mid_answer")),
    ];
    let delay = prop_oneof![4 => Just(0u64), 1 => 100u64..1500];
    let status = prop_oneof![
        2 => 200u16..=599,
        1 => prop::sample::select(vec![301u16, 302, 303, 307, 308]),
        1 => prop::sample::select(vec![400u16, 401, 403, 413, 429, 500, 502, 503, 504]),
    ];
    (
        status,
        prop::collection::vec(header(), 0..4),
        body(),
        delay,
        any::<bool>(),
        close,
        any::<bool>(),
    )
        .prop_map(
            move |(status, mut headers, body, delay_ms, accept, close, pass)| {
                if pass {
                    // The receiver's own answer, perhaps slow or cut.
                    return json!({"delay_ms": delay_ms, "close": close});
                }
                if (300..400).contains(&status) {
                    headers.push((
                        "Location".into(),
                        format!("http://{elsewhere}/v1/events/batch"),
                    ));
                }
                json!({
                    "status": status,
                    "headers": headers,
                    "body": body,
                    "delay_ms": delay_ms,
                    // A 2xx says the events were taken: the server keeps them.
                    "accept": accept || (200..300).contains(&status),
                    "close": close,
                })
            },
        )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs the daemon against one script; Err names what broke.
fn run_script(script: &[serde_json::Value], elsewhere: &Elsewhere) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let script_path = dir.path().join("script.jsonl");
    let text: String = script.iter().map(|s| format!("{s}\n")).collect();
    std::fs::write(&script_path, &text).unwrap();
    let receiver = ReceiverProc::start(
        dir.path(),
        &[
            "--script",
            script_path.to_str().unwrap(),
            "--limit",
            "100000",
        ],
    );
    let config = write_config_with(
        dir.path(),
        &receiver.addr,
        "batch_max_events = 5\nmax_backoff = \"1s\"",
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[admin]", "timeout = \"1s\"\n[admin]"),
    )
    .unwrap();
    append_lines(&dir.path().join("logs/a.jsonl"), 0..LINES);
    let log_path = dir.path().join("daemon.err");
    let err = std::fs::File::create(&log_path).unwrap();
    let proxy = format!("http://{}", elsewhere.addr);
    let mut daemon = start_daemon_cmd(&config, |c| {
        c.env("THOTH_API_KEY", KEY)
            .env("HTTP_PROXY", &proxy)
            .env("http_proxy", &proxy)
            .env("ALL_PROXY", &proxy)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .stderr(err);
    });
    let start = Instant::now();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // Lines are added until every step of the script has answered a request.
    let mut lines = LINES;
    let outcome = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break Err(format!("the daemon exited ({status}):\n{}", log()));
        }
        let seqs = stored_seqs(&receiver);
        if seqs.len() as u64 == lines {
            if receiver.stats().scripted >= script.len() as u64 {
                break Ok(());
            }
            append_lines(&dir.path().join("logs/a.jsonl"), lines..lines + 5);
            lines += 5;
        }
        if start.elapsed() > Duration::from_secs(90) {
            break Err(format!(
                "{} of {lines} lines delivered after 90 s; receiver {:?}\n{}",
                seqs.len(),
                receiver.stats(),
                log()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    outcome?;
    if !terminate(&mut daemon).success() {
        return Err(format!("the daemon did not stop cleanly:\n{}", log()));
    }
    let ids = ids_by_seq(&receiver.stored());
    if ids.keys().copied().ne(0..lines) {
        return Err(format!("lines delivered: {:?}", ids.keys()));
    }
    if let Some((seq, set)) = ids.iter().find(|(_, set)| set.len() != 1) {
        return Err(format!("line {seq} arrived under ids {set:?}"));
    }
    let log = log();
    if log.contains("panicked") {
        return Err(format!("a panic:\n{log}"));
    }
    Ok(())
}

#[test]
fn random_hostile_answers_never_lose_an_event_or_leak_the_key() {
    let cases = std::env::var("THOTH_SCRIPT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let elsewhere = Elsewhere::start();
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let ran = AtomicUsize::new(0);
    let steps = AtomicUsize::new(0);
    let strategy = prop::collection::vec(step(elsewhere.addr.clone()), 1..12);
    let result = runner.run(&strategy, |script| {
        ran.fetch_add(1, Ordering::SeqCst);
        steps.fetch_add(script.len(), Ordering::SeqCst);
        elsewhere.connections.store(0, Ordering::SeqCst);
        run_script(&script, &elsewhere).map_err(TestCaseError::fail)?;
        let leaked = elsewhere.connections.load(Ordering::SeqCst);
        prop_assert_eq!(leaked, 0, "connections to the other port");
        Ok(())
    });
    eprintln!(
        "{} scripts run ({} steps in all)",
        ran.load(Ordering::SeqCst),
        steps.load(Ordering::SeqCst)
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

//! The admin endpoint and `thoth-ingest status`, against the real binary
//! and the local receiver: each endpoint, readiness that says why, the
//! counters agreeing with what the receiver counted, `status` with the
//! daemon running and stopped, and the drain ETA against a measured drain.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use thoth_ingest::admin::client;
use thoth_ingest::config::AdminListen;

/// The address the daemon bound, once it has.
fn admin_address(dir: &Path) -> AdminListen {
    let file = dir.join("state/admin.addr");
    let start = Instant::now();
    loop {
        if let Some(addr) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|a| a.trim().parse().ok())
        {
            return AdminListen::Tcp(addr);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no admin address in {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get(at: &AdminListen, path: &str) -> (u16, String) {
    client::get(at, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn report(at: &AdminListen) -> serde_json::Value {
    let (code, body) = get(at, "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The value of a metric line `name{labels} value` (the first match of
/// `name` followed by `labels`, which may be empty).
fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let want = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(want.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// `thoth-ingest status` with `args`: its exit code and stdout.
fn status_command(config: &Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("status")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Each endpoint answers, and `status` reads the running daemon, then the
/// report it left once stopped.
#[test]
fn endpoints_and_status_with_the_daemon_running_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_config(dir.path(), &receiver.addr, "");
    let log = dir.path().join("logs/a.jsonl");
    append_lines(&log, 0..299);
    // One line with a secret in it, for the redaction counter.
    let secret = line(299).replace(
        "line 299",
        "token ghp_0123456789abcdefghijklmnopqrstuvwxyzAB",
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, secret.as_bytes()))
        .unwrap();
    let mut daemon = start_daemon(&config);
    let at = admin_address(dir.path());
    wait_seqs(&receiver, 300, Duration::from_secs(30));

    assert_eq!(get(&at, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(&at, "/readyz"), (200, "ready\n".to_string()));
    let start = Instant::now();
    let r = loop {
        let r = report(&at);
        if r["delivery"]["delivered_events"] == 300 {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{r}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(r["running"], true);
    assert_eq!(r["sources"][0]["name"], "agents");
    assert_eq!(r["sources"][0]["lines"], 300);
    assert_eq!(r["sources"][0]["events"], 300);
    assert_eq!(r["sources"][0]["files"], 1);
    let size = std::fs::metadata(&log).unwrap().len();
    assert_eq!(r["sources"][0]["position_bytes"], size);
    assert_eq!(r["sources"][0]["lag_bytes"], 0);
    assert_eq!(r["queue"]["events"], 0);
    assert_eq!(r["queue"]["events_queued"], 300);
    let (code, text) = get(&at, "/metrics");
    assert_eq!(code, 200);
    for (name, labels, value) in [
        (
            "thoth_ingest_source_lines_read_total",
            "source=\"agents\"",
            300.0,
        ),
        (
            "thoth_ingest_source_events_total",
            "source=\"agents\"",
            300.0,
        ),
        ("thoth_ingest_delivered_events_total", "", 300.0),
        ("thoth_ingest_events_queued_total", "", 300.0),
        ("thoth_ingest_queue_events", "", 0.0),
        ("thoth_ingest_source_files", "source=\"agents\"", 1.0),
        ("thoth_ingest_ready", "", 1.0),
        (
            "thoth_ingest_redactions_total",
            "detector=\"github-token\"",
            1.0,
        ),
    ] {
        assert_eq!(metric(&text, name, labels), Some(value), "{name}:\n{text}");
    }
    assert!(
        text.contains("# TYPE thoth_ingest_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains("thoth_ingest_build_info{version=\""),
        "{text}"
    );
    let (code, page) = get(&at, "/nothing-here");
    assert_eq!(code, 404, "{page}");

    let (code, shown) = status_command(&config, &[]);
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains("running") && shown.contains("ready"),
        "{shown}"
    );
    assert!(
        shown.contains("agents") && shown.contains("nothing waits"),
        "{shown}"
    );

    assert!(terminate(&mut daemon).success());
    let (code, shown) = status_command(&config, &[]);
    assert_eq!(code, 3, "{shown}");
    assert!(shown.contains("STOPPED"), "{shown}");
    let (code, json) = status_command(&config, &["--json"]);
    assert_eq!(code, 3, "{json}");
    let r: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(r["running"], false);
    assert_eq!(r["delivery"]["delivered_events"], 300);
}

/// With the key refused, events wait and no batch goes: past stuck_after
/// /readyz answers 503 saying so, and `status` exits 1 with the reason.
#[test]
fn readiness_fails_with_the_reason_when_delivery_is_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &["--api-key", "thoth_test_other"]);
    let config = write_config(dir.path(), &receiver.addr, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[admin]\n", "[admin]\nstuck_after = \"2s\"\n");
    std::fs::write(&config, text).unwrap();
    append_lines(&dir.path().join("logs/a.jsonl"), 0..50);
    // Timed from before the start: the daemon's clock for `stuck_after`
    // starts with it, and on a loaded machine the admin endpoint may take a
    // while to come up.
    let start = Instant::now();
    let mut daemon = start_daemon(&config);
    let at = admin_address(dir.path());
    let (code, why) = loop {
        let answer = get(&at, "/readyz");
        if answer.0 != 200 {
            break answer;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "still ready");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "not ready too soon"
    );
    assert_eq!(code, 503);
    assert!(
        why.contains("50 events wait and no batch was accepted"),
        "{why}"
    );
    assert_eq!(get(&at, "/healthz").0, 200, "alive all the same");
    let (code, shown) = status_command(&config, &[]);
    assert_eq!(code, 1, "{shown}");
    assert!(
        shown.contains("NOT READY") && shown.contains("no batch was accepted"),
        "{shown}"
    );
    assert!(
        shown.contains("401"),
        "the last error names the answer: {shown}"
    );
    assert!(terminate(&mut daemon).success());
}

/// After a run with 5xx and 429s, the daemon's counters say what the
/// receiver counted: events accepted, requests by status, 429s; and each
/// refused request's events went again once (the retries).
#[test]
fn the_counters_agree_with_the_receiver_after_retries_and_429s() {
    let dir = tempfile::tempdir().unwrap();
    // A 500, a 429, a 503 and a 429 first, then 3 requests per 2 s (more
    // 429s).
    let script = dir.path().join("script.jsonl");
    let too_many = r#"{"status": 429, "headers": [["Retry-After", "1"]]}"#;
    std::fs::write(
        &script,
        format!("{{\"status\": 500}}\n{too_many}\n{{\"status\": 503}}\n{too_many}\n"),
    )
    .unwrap();
    let receiver = ReceiverProc::start(
        dir.path(),
        &[
            "--limit",
            "3",
            "--window",
            "2s",
            "--script",
            script.to_str().unwrap(),
        ],
    );
    let config = write_config_with(dir.path(), &receiver.addr, "batch_max_events = 100");
    append_lines(&dir.path().join("logs/a.jsonl"), 0..1500);
    let mut daemon = start_daemon(&config);
    let at = admin_address(dir.path());
    wait_seqs(&receiver, 1500, Duration::from_secs(90));
    // The daemon counts an answer once it has read it: wait for the last.
    let start = Instant::now();
    let text = loop {
        let (_, text) = get(&at, "/metrics");
        if metric(&text, "thoth_ingest_delivered_events_total", "") == Some(1500.0)
            && metric(&text, "thoth_ingest_requests_in_flight", "") == Some(0.0)
        {
            break text;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let stats = receiver.stats();
    assert_eq!(stats.accepted_events, 1500, "{stats:?}");
    assert!(
        stats.status.get(&429).copied().unwrap_or(0) > 0,
        "no 429: {stats:?}"
    );
    assert!(
        stats.status.get(&500).copied().unwrap_or(0) > 0,
        "no 500: {stats:?}"
    );
    let mut requests = 0.0;
    for (code, n) in &stats.status {
        let class = format!("{}xx", code / 100);
        let labels = format!("status=\"{code}\",class=\"{class}\"");
        assert_eq!(
            metric(&text, "thoth_ingest_requests_total", &labels),
            Some(*n as f64),
            "status {code}:\n{text}"
        );
        requests += *n as f64;
    }
    assert_eq!(stats.requests as f64, requests, "{stats:?}");
    assert_eq!(
        metric(&text, "thoth_ingest_rate_limited_total", ""),
        Some(stats.status[&429] as f64)
    );
    let refused = stats.status[&429] + stats.status[&500] + stats.status[&503];
    assert_eq!(
        metric(&text, "thoth_ingest_retries_total", ""),
        Some(refused as f64),
        "{text}"
    );
    assert!(terminate(&mut daemon).success());
}

/// A backlog behind a small budget: the ETA `status` gives is within 20%
/// of the time the backlog then takes to reach the receiver.
#[test]
fn the_drain_eta_is_within_a_fifth_of_the_measured_drain() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &["--limit", "100000"]);
    let config = write_config_with(
        dir.path(),
        &receiver.addr,
        "budget = { requests = 10, per = \"1s\" }\nbatch_max_events = 50",
    );
    let lines = 6000u64;
    append_lines(&dir.path().join("logs/a.jsonl"), 0..lines);
    let mut daemon = start_daemon(&config);
    let at = admin_address(dir.path());
    // Once every line is queued (the drain has begun), ask.
    let start = Instant::now();
    let (asked, r) = loop {
        let asked = Instant::now();
        let r = report(&at);
        if r["queue"]["events_queued"] == lines {
            break (asked, r);
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{r}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let waiting = r["queue"]["events"].as_u64().unwrap();
    let eta = r["drain"]["eta_seconds"].as_f64().unwrap();
    assert!(
        waiting >= lines / 2,
        "the backlog drained too far already: {r}"
    );
    wait_seqs(&receiver, lines as usize, Duration::from_secs(60));
    let measured = asked.elapsed().as_secs_f64();
    eprintln!("drain of {waiting} events: ETA {eta:.1} s, measured {measured:.1} s");
    assert!(
        (eta - measured).abs() <= measured * 0.2,
        "ETA {eta:.1} s, measured {measured:.1} s: {r}"
    );
    assert!(terminate(&mut daemon).success());
}

/// `listen = "unix:PATH"`: the endpoint on a socket (a stale one from an
/// earlier run replaced), which `status` finds through the config.
#[test]
fn the_endpoint_serves_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let socket = dir.path().join("admin.sock");
    // What a killed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let config = write_config(dir.path(), &receiver.addr, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"unix:{}\"", socket.display()),
    );
    std::fs::write(&config, text).unwrap();
    append_lines(&dir.path().join("logs/a.jsonl"), 0..20);
    let mut daemon = start_daemon(&config);
    wait_seqs(&receiver, 20, Duration::from_secs(30));
    let at = AdminListen::Unix(socket.clone());
    let start = Instant::now();
    while client::get(&at, "/healthz").is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no socket served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&at, "/readyz").0, 200);
    std::fs::remove_file(dir.path().join("state/admin.addr")).unwrap();
    let (code, shown) = status_command(&config, &["--json"]);
    assert_eq!(code, 0, "{shown}");
    let r: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(r["running"], true);
    assert!(terminate(&mut daemon).success());
}

/// Forty clients that connect and say nothing: events still flow, the
/// server closes each idle connection after its 10 s, and the endpoint
/// answers again once it has.
#[test]
fn idle_connections_hold_neither_the_daemon_nor_the_endpoint() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_config(dir.path(), &receiver.addr, "");
    let log = dir.path().join("logs/a.jsonl");
    append_lines(&log, 0..10);
    let mut daemon = start_daemon(&config);
    let at = admin_address(dir.path());
    wait_seqs(&receiver, 10, Duration::from_secs(30));
    let AdminListen::Tcp(addr) = at.clone() else {
        unreachable!()
    };
    let opened = Instant::now();
    let mut idle: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    append_lines(&log, 10..20);
    wait_seqs(&receiver, 20, Duration::from_secs(10));
    // The served ones are closed at their deadline (a read sees the end).
    let mut first = idle.remove(0);
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut byte = [0u8; 1];
    let closed = first.read(&mut byte);
    let lived = opened.elapsed();
    assert!(
        matches!(closed, Ok(0)) || closed.is_err(),
        "the idle connection read {closed:?}"
    );
    assert!(
        lived >= Duration::from_secs(9) && lived < Duration::from_secs(15),
        "closed after {lived:?}"
    );
    // The rest are served and closed in turn; a real request gets through.
    let start = Instant::now();
    loop {
        if let Ok((200, _)) = client::get(&at, "/healthz") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the endpoint never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(idle);
    assert_eq!(get(&at, "/readyz").0, 200);
    assert!(terminate(&mut daemon).success());
}

/// With the endpoint off, `status` reads the report the running daemon
/// keeps in its state directory and still tells running from stopped.
#[test]
fn status_without_an_endpoint_reads_the_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_config(dir.path(), &receiver.addr, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("listen = \"127.0.0.1:0\"", "listen = \"off\"");
    std::fs::write(&config, text).unwrap();
    append_lines(&dir.path().join("logs/a.jsonl"), 0..10);
    let mut daemon = start_daemon(&config);
    wait_seqs(&receiver, 10, Duration::from_secs(30));
    let start = Instant::now();
    while !dir.path().join("state/status.json").exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no report kept");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!dir.path().join("state/admin.addr").exists());
    let (code, shown) = status_command(&config, &[]);
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains("running") && shown.contains("endpoint is off"),
        "{shown}"
    );
    assert!(terminate(&mut daemon).success());
    let (code, shown) = status_command(&config, &[]);
    assert_eq!(code, 3, "{shown}");
    assert!(shown.contains("STOPPED"), "{shown}");
}

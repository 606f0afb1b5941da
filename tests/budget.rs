//! The request budget against a receiver with a short window: a backlog drains
//! at the budget without a 429 (also the backlog left by an outage), and two
//! daemons of one tenant share it.

#[path = "it/common/mod.rs"]
mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

/// These tests measure rates: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const BUDGET: &str = "budget = { requests = 20, per = \"5s\" }\nbatch_max_events = 250";

/// Waits for the first request, then returns the receiver's stats `span` later.
fn stats_over(
    receiver: &ReceiverProc,
    span: Duration,
) -> (thoth_ingest::receiver::ReceiverStats, Instant) {
    let first = wait_first_request(receiver);
    std::thread::sleep(span);
    (receiver.stats(), first)
}

#[test]
fn backlog_drains_at_the_budget_without_429() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &["--limit", "20", "--window", "5s"]);
    let config = write_config_with(dir.path(), &receiver.addr, BUDGET);
    append_lines(&dir.path().join("logs/a.jsonl"), 0..50_000);
    let mut daemon = start_daemon(&config);
    let (stats, _) = stats_over(&receiver, Duration::from_secs(30));
    assert!(terminate(&mut daemon).success());
    let allowed = 20 * 6;
    let used = stats.status.get(&202).copied().unwrap_or(0);
    eprintln!("budget: {used} of {allowed} requests used in 30 s; {stats:?}");
    assert_eq!(stats.status.get(&429), None, "no 429 at all: {stats:?}");
    assert!(
        used * 100 >= allowed * 95,
        "used {used} of {allowed} allowed requests"
    );
    let efficiency = stats.accepted_events as f64 / (allowed as f64 * 250.0);
    eprintln!("budget efficiency: {efficiency:.3}");
    // Full batches: the requests used carry 250 events each.
    assert!(efficiency >= 0.95, "efficiency {efficiency:.3}: {stats:?}");
}

#[test]
fn two_daemons_share_one_tenant_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &["--limit", "20", "--window", "5s"]);
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let config_a = write_config_with(&a, &receiver.addr, BUDGET);
    let config_b = write_config_with(&b, &receiver.addr, BUDGET);
    append_lines(&a.join("logs/x.jsonl"), 0..25_000);
    append_lines(&b.join("logs/x.jsonl"), 100_000..125_000);
    let mut daemon_a = start_daemon(&config_a);
    let mut daemon_b = start_daemon(&config_b);
    let (stats, _) = stats_over(&receiver, Duration::from_secs(30));
    assert!(terminate(&mut daemon_a).success());
    assert!(terminate(&mut daemon_b).success());
    let seqs = stored_seqs(&receiver);
    let from_a = seqs.iter().filter(|s| **s < 100_000).count();
    let from_b = seqs.len() - from_a;
    let limited = stats.status.get(&429).copied().unwrap_or(0);
    let accepted = stats.status.get(&202).copied().unwrap_or(0);
    eprintln!(
        "two daemons: a {from_a}, b {from_b} events; {accepted} accepted and {limited} 429s of {} requests",
        stats.requests
    );
    // The receiver refuses what is over the limit, so the sum stays within
    // it by construction; 30 s from the first request touch at most 7 windows.
    assert!(accepted <= 7 * 20, "{stats:?}");
    assert!(
        limited * 50 <= stats.requests,
        "429s above 2% of requests: {stats:?}"
    );
    let total = (from_a + from_b) as f64;
    assert!(
        from_a as f64 >= 0.3 * total && from_b as f64 >= 0.3 * total,
        "a {from_a}, b {from_b}"
    );
}

#[test]
fn backlog_after_an_outage_drains_at_the_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let limit = ["--limit", "20", "--window", "5s"];
    let receiver = ReceiverProc::start_at(dir.path(), &listen, &limit);
    let config = write_config_with(
        dir.path(),
        &receiver.addr,
        &format!("{BUDGET}\nmax_backoff = \"2s\""),
    );
    let log = dir.path().join("logs/a.jsonl");
    append_lines(&log, 0..500);
    let mut daemon = start_daemon(&config);
    wait_seqs(&receiver, 500, Duration::from_secs(30));
    drop(receiver);
    // Down for 15 s while the writer keeps writing: a backlog of 40,000
    // events, more than the 30 s of budget measured below can carry.
    let down = Instant::now();
    let mut seq = 500;
    while down.elapsed() < Duration::from_secs(15) {
        append_lines(&log, seq..seq + 2000);
        seq += 2000;
        std::thread::sleep(Duration::from_millis(750));
    }
    let receiver = ReceiverProc::start_at(dir.path(), &listen, &limit);
    let (stats, _) = stats_over(&receiver, Duration::from_secs(30));
    assert!(terminate(&mut daemon).success());
    let allowed = 20 * 6;
    let used = stats.status.get(&202).copied().unwrap_or(0);
    let efficiency = stats.accepted_events as f64 / (allowed as f64 * 250.0);
    eprintln!(
        "after the outage: {used} of {allowed} requests used in 30 s, efficiency {efficiency:.3}; {stats:?}"
    );
    assert_eq!(stats.status.get(&429), None, "no 429 at all: {stats:?}");
    assert!(
        used * 100 >= allowed * 95,
        "used {used} of {allowed} allowed requests"
    );
    assert!(efficiency >= 0.95, "efficiency {efficiency:.3}");
}

//! Ten real daemons with a backlog each share one tenant's budget on one
//! receiver (100 requests per 5 s window): over 40 s of steady state they
//! use at least 90% of it, at most 2% of their requests get a 429, and each
//! gets at least half of an even share. The simulator (tests/it/fleet.rs) checks
//! the same at fleet scale.

#[path = "it/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;

const DAEMONS: u64 = 10;
const LIMIT: u64 = 100;
const WINDOW: Duration = Duration::from_secs(5);
/// Windows left out while the daemons find each other, then measured.
const WARMUP_WINDOWS: u32 = 2;
const MEASURED_WINDOWS: u32 = 8;
const LINES_EACH: u64 = 12_000;

/// Events accepted so far from each daemon (daemon `i` writes sequence
/// numbers from `i * 1_000_000`).
fn accepted_by_daemon(seqs: &BTreeSet<u64>) -> Vec<u64> {
    (0..DAEMONS)
        .map(|i| seqs.range(i * 1_000_000..(i + 1) * 1_000_000).count() as u64)
        .collect()
}

#[test]
fn ten_daemons_share_one_tenant_budget() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &["--limit", "100", "--window", "5s"]);
    let delivery = "budget = { requests = 100, per = \"5s\" }\nbatch_max_events = 50";
    let mut daemons = Vec::new();
    for i in 0..DAEMONS {
        let home = dir.path().join(format!("d{i}"));
        let config = write_config_with(&home, &receiver.addr, delivery);
        append_lines(
            &home.join("logs/x.jsonl"),
            i * 1_000_000..i * 1_000_000 + LINES_EACH,
        );
        daemons.push(start_daemon(&config));
    }
    // The receiver's windows start at the tenant's first request: snapshots
    // are taken just before a window ends, when the window's requests are
    // done (the daemons plan to finish a second before it).
    let first = wait_first_request(&receiver);
    let at_window_end = |windows: u32| {
        let until = first + WINDOW * windows - Duration::from_millis(300);
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        (
            receiver.stats(),
            accepted_by_daemon(&stored_seqs(&receiver)),
        )
    };
    let (before, events_before) = at_window_end(WARMUP_WINDOWS);
    let (after, events_after) = at_window_end(WARMUP_WINDOWS + MEASURED_WINDOWS);
    for mut d in daemons {
        assert!(terminate(&mut d).success());
    }
    let count =
        |s: &thoth_ingest::receiver::ReceiverStats, code| s.status.get(&code).copied().unwrap_or(0);
    let accepted = count(&after, 202) - count(&before, 202);
    let refused = count(&after, 429) - count(&before, 429);
    let requests = after.requests - before.requests;
    let used = accepted as f64 / (LIMIT * u64::from(MEASURED_WINDOWS)) as f64;
    let refused_share = refused as f64 / requests.max(1) as f64;
    let each: Vec<u64> = events_after
        .iter()
        .zip(&events_before)
        .map(|(a, b)| a - b)
        .collect();
    let mean = each.iter().sum::<u64>() as f64 / DAEMONS as f64;
    let min = *each.iter().min().unwrap() as f64 / mean;
    let max = *each.iter().max().unwrap() as f64 / mean;
    eprintln!(
        "10 daemons: budget used {:.1}% ({accepted} of {}), 429s {:.2}% ({refused} of {requests}), \
         fairness {min:.2} / {max:.2}, events each {each:?}",
        used * 100.0,
        LIMIT * u64::from(MEASURED_WINDOWS),
        refused_share * 100.0
    );
    // Every daemon still had a backlog at the end: the measure is of sharing.
    assert!(
        events_after.iter().all(|&e| e < LINES_EACH),
        "a daemon ran out of events: {events_after:?}"
    );
    assert!(used >= 0.90, "budget used {used:.3}");
    assert!(refused_share <= 0.02, "429 share {refused_share:.4}");
    assert!(min >= 0.5, "fairness {min:.2}: {each:?}");
}

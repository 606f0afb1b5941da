//! Sharing one tenant's budget across a fleet, in the deterministic
//! simulator (`thoth_ingest::flush::simulation`): 10, 100 and 1,000 daemons
//! of mixed kinds (backlogged, bursty, steady, idle) use at least 90% of the
//! budget with at most 2% of requests answered 429, and every backlogged
//! daemon gets at least half of an even share.

use thoth_ingest::flush::simulation::{simulate, FleetConfig, FleetReport};

fn row(r: &FleetReport) -> String {
    format!(
        "| {} | {} | {:.1}% | {:.2}% ({} of {}) | {:.2} / {:.2} | {:.1} s | {:.1} s |",
        r.daemons,
        r.backlogged,
        r.budget_used * 100.0,
        r.refused_share * 100.0,
        r.refused,
        r.requests,
        r.fairness_min,
        r.fairness_max,
        r.latency_p50,
        r.latency_p99
    )
}

fn check(daemons: usize) {
    let mut failures = Vec::new();
    for seed in 1..=3 {
        let report = simulate(&FleetConfig::new(daemons, seed));
        eprintln!("seed {seed}: {}", row(&report));
        if report.budget_used < 0.90 {
            failures.push(format!(
                "seed {seed}: budget used {:.3}",
                report.budget_used
            ));
        }
        if report.refused_share > 0.02 {
            failures.push(format!(
                "seed {seed}: 429 share {:.4}",
                report.refused_share
            ));
        }
        if report.fairness_min < 0.5 {
            failures.push(format!(
                "seed {seed}: fairness min {:.3}",
                report.fairness_min
            ));
        }
    }
    assert!(failures.is_empty(), "{daemons} daemons: {failures:?}");
}

#[test]
fn ten_daemons_share_the_budget() {
    check(10);
}

#[test]
fn a_hundred_daemons_share_the_budget() {
    check(100);
}

#[test]
fn a_thousand_daemons_share_the_budget() {
    check(1000);
}

/// The real 10-daemon test's fleet (tests/fleet_daemons.rs): every host has
/// a backlog, 100 requests per 5 s window, batches of 50, a local receiver's
/// round trips. A short window is the hard case: the end of the window, where
/// each daemon's latest `Remaining` is a round of requests old, is a large
/// part of it.
#[test]
fn ten_backlogged_daemons_share_a_short_window() {
    let mut failures = Vec::new();
    for seed in 1..=5 {
        let mut config = FleetConfig::new(10, seed);
        config.all_backlogged = true;
        config.limit = 100;
        config.window = std::time::Duration::from_secs(5);
        config.batch_max_events = 50;
        config.warmup_windows = 4;
        config.measured_windows = 40;
        config.latency = (0.002, 0.03);
        let report = simulate(&config);
        eprintln!("seed {seed}: {}", row(&report));
        if report.budget_used < 0.90 || report.refused_share > 0.02 || report.fairness_min < 0.5 {
            failures.push(row(&report));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

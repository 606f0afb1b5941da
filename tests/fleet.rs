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

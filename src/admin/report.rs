//! The status report: one snapshot of every counter a running pipeline
//! keeps (sources, queue, delivery, budget), the readiness verdict and the
//! estimated time to drain the backlog. `/status` serves it, `/metrics`
//! encodes it, `thoth-ingest status` prints it, and the daemon leaves its
//! last one in the state directory for `status` to read once it stopped.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::pipeline::Observed;

/// The name of the last report, in the state directory.
pub const STATUS_FILE: &str = "status.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub version: String,
    pub pid: u32,
    /// When this report was made, in Unix seconds.
    pub as_of: f64,
    pub started_at: f64,
    /// True while the daemon runs; a report left behind at a stop says false.
    pub running: bool,
    pub ready: bool,
    /// Why it is not ready (empty when it is).
    pub problems: Vec<String>,
    pub sources: Vec<SourceReport>,
    pub queue: QueueReport,
    pub delivery: DeliveryReport,
    pub drain: Drain,
    pub redactions: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceReport {
    pub name: String,
    pub kind: String,
    pub files: u64,
    pub bytes_read: u64,
    /// The read positions in the followed plain files, summed.
    pub position_bytes: u64,
    /// Bytes between the read position and the end of every followed file.
    pub lag_bytes: u64,
    pub lines: u64,
    pub events: u64,
    pub skipped: BTreeMap<String, u64>,
    pub truncated_lines: u64,
    pub invalid_utf8_lines: u64,
    pub caught_up: bool,
    /// Paused: its commit waits for room in a full queue, or for disk.
    pub waiting_for_room: bool,
    /// Age of the journal entry at the committed cursor (journald only).
    pub cursor_age_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueReport {
    pub events: u64,
    pub bytes: u64,
    pub oldest_event_age_seconds: Option<f64>,
    /// Committed since the daemon started.
    pub events_queued: u64,
    /// Set aside (refused by the API) since the daemon started.
    pub dead_lettered_events: u64,
    /// Dropped by `when_full = "drop_oldest"` since the daemon started.
    pub dropped_events: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeliveryReport {
    pub requests: u64,
    /// Answers by HTTP status; `none`: no answer (connection, timeout).
    pub answers: BTreeMap<String, u64>,
    pub delivered_events: u64,
    pub retries: u64,
    pub rate_limited: u64,
    pub budget_waits: u64,
    pub in_flight: u64,
    /// Events accepted per second, over the last minute.
    pub events_per_second: f64,
    /// Requests started over the last minute.
    pub requests_last_minute: u64,
    pub budget: BudgetReport,
    pub batch_max_events: u64,
    pub batch_max_bytes: u64,
    pub last_success_at: Option<f64>,
    pub last_error: Option<LastError>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BudgetReport {
    /// Requests allowed per window, and the window (with its safety margin).
    pub limit: u64,
    pub window_seconds: f64,
    /// Requests started in the window ending now.
    pub used: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastError {
    pub what: String,
    pub at: f64,
}

/// The estimated time to drain what waits, at the budget and batch size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Drain {
    /// Events a full request carries, given the events waiting.
    pub events_per_request: u64,
    /// Requests the backlog needs.
    pub requests: u64,
    /// At the budget's rate; None when delivery is held (a refused key).
    pub eta_seconds: Option<f64>,
    /// At the rate of the last minute, when events went at all.
    pub eta_at_recent_rate_seconds: Option<f64>,
}

/// Samples of the delivery counters, one a second for the last minute:
/// rates over the last minute come from the oldest and the newest.
#[derive(Debug, Default)]
pub struct Rates {
    samples: Mutex<VecDeque<(Instant, u64, u64)>>,
}

const RATE_WINDOW: Duration = Duration::from_secs(60);

impl Rates {
    /// Takes a sample (called once a second).
    pub fn sample(&self, observed: &Observed) {
        let now = Instant::now();
        let delivered = observed.flush.delivered_events.load(Ordering::Relaxed);
        let requests = observed.flush.requests.load(Ordering::Relaxed);
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        s.push_back((now, delivered, requests));
        while s
            .front()
            .is_some_and(|(t, ..)| now.duration_since(*t) > RATE_WINDOW)
        {
            s.pop_front();
        }
    }

    /// Forgets the samples (of another pipeline's counters) and takes the
    /// first of `observed`.
    pub fn restart(&self, observed: Option<&Observed>) {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        if let Some(observed) = observed {
            self.sample(observed);
        }
    }

    /// Events per second and requests over the last minute (or since the
    /// first sample, if younger).
    fn recent(&self, delivered_now: u64, requests_now: u64) -> (f64, u64) {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let Some(&(t, delivered, requests)) = s.front() else {
            return (0.0, 0);
        };
        let secs = t.elapsed().as_secs_f64();
        let events = delivered_now.saturating_sub(delivered) as f64;
        let rate = if secs >= 1.0 { events / secs } else { 0.0 };
        (rate, requests_now.saturating_sub(requests))
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Makes a report of `observed` now. `configured` names the sources the
/// config asks for, to say which ones do not run; `stuck_after` bounds the
/// time without an accepted batch while events wait.
pub fn gather(
    observed: &Observed,
    rates: &Rates,
    configured: &[String],
    stuck_after: Duration,
) -> Report {
    let now = SystemTime::now();
    let now_s = unix_seconds(now);
    let listed = observed
        .sources
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let sources: Vec<SourceReport> = listed
        .iter()
        .map(|l| {
            let read = &l.stats.read;
            let parse = l.stats.snapshot();
            let written = read.position_written_at.load(Ordering::Relaxed);
            SourceReport {
                name: l.name.clone(),
                kind: l.kind.to_string(),
                files: read.files.load(Ordering::Relaxed),
                bytes_read: read.bytes_read.load(Ordering::Relaxed),
                position_bytes: read.position_bytes.load(Ordering::Relaxed),
                lag_bytes: read.lag_bytes.load(Ordering::Relaxed),
                lines: parse.lines,
                events: parse.events,
                skipped: parse
                    .skipped
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), *v))
                    .collect(),
                truncated_lines: read.truncated_lines.load(Ordering::Relaxed),
                invalid_utf8_lines: l.stats.invalid_utf8_lines.load(Ordering::Relaxed),
                caught_up: read.is_caught_up(),
                waiting_for_room: read.waiting_for_room.load(Ordering::Relaxed),
                cursor_age_seconds: (written > 0).then(|| (now_s - written as f64 / 1e6).max(0.0)),
            }
        })
        .collect();
    let q = &observed.queue;
    let queue = QueueReport {
        events: q.pending_events(),
        bytes: q.queued_bytes(),
        oldest_event_age_seconds: q
            .oldest_committed_at()
            .map(|t| (now_s - t.unix_micros as f64 / 1e6).max(0.0)),
        events_queued: q.committed_events(),
        dead_lettered_events: q.dead_events(),
        dropped_events: q.dropped_events(),
    };
    let f = &observed.flush;
    let delivered = f.delivered_events.load(Ordering::Relaxed);
    let requests = f.requests.load(Ordering::Relaxed);
    let (events_per_second, requests_last_minute) = rates.recent(delivered, requests);
    let mut answers: BTreeMap<String, u64> = f
        .answers()
        .into_iter()
        .map(|(code, n)| (code.to_string(), n))
        .collect();
    let no_answer = f.no_answer.load(Ordering::Relaxed);
    if no_answer > 0 {
        answers.insert("none".into(), no_answer);
    }
    let last_success = f.last_success.lock().ok().and_then(|l| *l);
    let last_error = f
        .last_error
        .lock()
        .ok()
        .and_then(|l| l.clone())
        .map(|(what, at)| LastError {
            what,
            at: unix_seconds(at),
        });
    let budget = BudgetReport {
        limit: f.budget_limit.load(Ordering::Relaxed),
        window_seconds: f.budget_window_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        used: f.budget_used.load(Ordering::Relaxed),
    };
    let delivery = DeliveryReport {
        requests,
        answers,
        delivered_events: delivered,
        retries: f.retries.load(Ordering::Relaxed),
        rate_limited: f.rate_limited.load(Ordering::Relaxed),
        budget_waits: f.budget_waits.load(Ordering::Relaxed),
        in_flight: f.in_flight.load(Ordering::Relaxed) as u64,
        events_per_second,
        requests_last_minute,
        budget,
        batch_max_events: f.batch_max_events.load(Ordering::Relaxed),
        batch_max_bytes: f.batch_max_bytes.load(Ordering::Relaxed),
        last_success_at: last_success.map(unix_seconds),
        last_error,
    };
    let drain = drain_estimate(&queue, &delivery);
    let mut problems = Vec::new();
    for name in configured {
        if !sources.iter().any(|s| &s.name == name) {
            problems.push(format!("source `{name}` is not running"));
        }
    }
    if queue.events > 0 {
        let since = last_success.unwrap_or(observed.started_at);
        let idle = now.duration_since(since).unwrap_or_default();
        if idle >= stuck_after {
            problems.push(format!(
                "{} events wait and no batch was accepted for {}",
                queue.events,
                humantime::format_duration(Duration::from_secs(idle.as_secs()))
            ));
        }
    }
    Report {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        as_of: now_s,
        started_at: unix_seconds(observed.started_at),
        running: true,
        ready: problems.is_empty(),
        problems,
        sources,
        queue,
        delivery,
        drain,
        redactions: crate::parse::redact::redactions_by_detector()
            .into_iter()
            .collect(),
    }
}

/// How long the events waiting take to go: full requests of
/// `batch_max_events` (or as many as `batch_max_bytes` holds, at the
/// queue's mean event size), at the budget's rate.
pub fn drain_estimate(queue: &QueueReport, delivery: &DeliveryReport) -> Drain {
    let by_events = delivery.batch_max_events.max(1);
    // The queue's bytes include chunk headers: a slight overestimate of
    // an event's size, so of the requests needed.
    let mean_bytes = queue.bytes.checked_div(queue.events).unwrap_or(0).max(1);
    let by_bytes = (delivery.batch_max_bytes / mean_bytes).max(1);
    let events_per_request = by_events.min(by_bytes);
    let requests = queue.events.div_ceil(events_per_request);
    let budget = &delivery.budget;
    let eta_seconds = (budget.limit > 0 && budget.window_seconds > 0.0)
        .then(|| requests as f64 * budget.window_seconds / budget.limit as f64);
    let eta_at_recent_rate_seconds = (delivery.events_per_second > 0.0)
        .then(|| queue.events as f64 / delivery.events_per_second);
    Drain {
        events_per_request,
        requests,
        eta_seconds,
        eta_at_recent_rate_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(limit: u64, window: f64, max_events: u64, max_bytes: u64) -> DeliveryReport {
        DeliveryReport {
            requests: 0,
            answers: BTreeMap::new(),
            delivered_events: 0,
            retries: 0,
            rate_limited: 0,
            budget_waits: 0,
            in_flight: 0,
            events_per_second: 0.0,
            requests_last_minute: 0,
            budget: BudgetReport {
                limit,
                window_seconds: window,
                used: 0,
            },
            batch_max_events: max_events,
            batch_max_bytes: max_bytes,
            last_success_at: None,
            last_error: None,
        }
    }

    fn queue(events: u64, bytes: u64) -> QueueReport {
        QueueReport {
            events,
            bytes,
            oldest_event_age_seconds: None,
            events_queued: 0,
            dead_lettered_events: 0,
            dropped_events: 0,
        }
    }

    #[test]
    fn the_drain_takes_full_requests_at_the_budget_rate() {
        // 10,000 events of 300 bytes, 50 a request: 200 requests at 10/s.
        let d = drain_estimate(&queue(10_000, 3_000_000), &delivery(10, 1.0, 50, 1 << 20));
        assert_eq!((d.events_per_request, d.requests), (50, 200));
        assert_eq!(d.eta_seconds, Some(20.0));
        // Large events: the byte bound decides (4 KiB events, 64 KiB batches).
        let d = drain_estimate(&queue(1_000, 4_096_000), &delivery(60, 60.0, 500, 65_536));
        assert_eq!((d.events_per_request, d.requests), (16, 63));
        assert_eq!(d.eta_seconds, Some(63.0));
        // Nothing waits: nothing to drain.
        let d = drain_estimate(&queue(0, 0), &delivery(10, 1.0, 50, 1 << 20));
        assert_eq!((d.requests, d.eta_seconds), (0, Some(0.0)));
        assert_eq!(d.eta_at_recent_rate_seconds, None);
    }
}

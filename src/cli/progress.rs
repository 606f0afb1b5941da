//! The progress of a replay: a bar on a terminal (indicatif), a plain line
//! every few seconds otherwise, and the estimated time to the end, from the
//! backlog and the request budget.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use thoth_ingest::config::DeliveryConfig;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, else plain lines.
    Auto,
    Bar,
    Plain,
    None,
}

/// Where a replay stands.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub files_total: u64,
    pub files_done: u64,
    pub disk_bytes_total: u64,
    pub disk_bytes_done: u64,
    pub lines: u64,
    pub events: u64,
    pub events_outside_window: u64,
    /// None on a dry run.
    pub delivered: Option<u64>,
    pub pending: Option<u64>,
    pub dead_letters: u64,
    pub read_finished: bool,
}

/// Seconds until the replay ends: the longer of what is left to read at the
/// rate read so far, and what is left to deliver (events queued, and the
/// events the unread bytes will make at the rate seen so far) at the full
/// budget: `requests` per `per`, `batch_max_events` each. None before there
/// is anything to go on.
pub fn eta_secs(s: &Snapshot, elapsed: Duration, delivery: &DeliveryConfig) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    let unread = s.disk_bytes_total.saturating_sub(s.disk_bytes_done) as f64;
    let read_secs = if s.read_finished || unread == 0.0 {
        0.0
    } else if s.disk_bytes_done == 0 || secs <= 0.0 {
        return None;
    } else {
        unread / (s.disk_bytes_done as f64 / secs)
    };
    let Some(pending) = s.pending else {
        return Some(read_secs);
    };
    let events_per_byte = if s.disk_bytes_done > 0 {
        s.events as f64 / s.disk_bytes_done as f64
    } else {
        0.0
    };
    let backlog = pending as f64
        + if s.read_finished {
            0.0
        } else {
            unread * events_per_byte
        };
    let (requests, per) = delivery.budget();
    let per_sec = f64::from(requests) * delivery.batch_max_events as f64 / per.as_secs_f64();
    let deliver_secs = if per_sec > 0.0 {
        backlog / per_sec
    } else {
        f64::INFINITY
    };
    Some(read_secs.max(deliver_secs))
}

pub struct Progress {
    mode: ProgressMode,
    bar: Option<ProgressBar>,
    delivery: DeliveryConfig,
    started: Instant,
    last_line: Option<Instant>,
    every: Duration,
}

impl Progress {
    pub fn new(mode: ProgressMode, delivery: &DeliveryConfig) -> Progress {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        let bar = (mode == ProgressMode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:30}] {binary_bytes}/{binary_total_bytes} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        Progress {
            mode,
            bar,
            delivery: delivery.clone(),
            started: Instant::now(),
            last_line: None,
            every: std::env::var("THOTH_INGEST_PROGRESS_EVERY")
                .ok()
                .and_then(|v| humantime::parse_duration(&v).ok())
                .unwrap_or(Duration::from_secs(10)),
        }
    }

    pub fn update(&mut self, s: &Snapshot) {
        match self.mode {
            ProgressMode::Bar => {
                if let Some(bar) = &self.bar {
                    bar.set_length(s.disk_bytes_total);
                    bar.set_position(s.disk_bytes_done.min(s.disk_bytes_total));
                    bar.set_message(self.describe(s));
                }
            }
            ProgressMode::Plain => {
                if self.last_line.is_none_or(|t| t.elapsed() >= self.every) {
                    self.last_line = Some(Instant::now());
                    eprintln!("replay: {}", self.describe(s));
                }
            }
            ProgressMode::Auto | ProgressMode::None => {}
        }
    }

    pub fn finish(&mut self, s: &Snapshot) {
        if let Some(bar) = self.bar.take() {
            bar.set_message(self.describe(s));
            bar.finish();
        }
    }

    fn describe(&self, s: &Snapshot) -> String {
        let elapsed = self.started.elapsed();
        let rate = if elapsed.as_secs_f64() > 0.0 {
            s.events as f64 / elapsed.as_secs_f64()
        } else {
            0.0
        };
        let mut text = format!(
            "files {}/{}, lines {}, events {} ({:.0}/s)",
            s.files_done, s.files_total, s.lines, s.events, rate
        );
        if let (Some(delivered), Some(pending)) = (s.delivered, s.pending) {
            text.push_str(&format!(", delivered {delivered}, queued {pending}"));
        }
        match eta_secs(s, elapsed, &self.delivery) {
            Some(eta) if eta.is_finite() => {
                let eta = Duration::from_secs(eta.ceil() as u64);
                text.push_str(&format!(", ETA {}", humantime::format_duration(eta)));
            }
            _ => text.push_str(", ETA unknown"),
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_is_the_longer_of_reading_and_delivering_at_the_budget() {
        let delivery = DeliveryConfig {
            requests_per_minute: 1000,
            batch_max_events: 1000,
            ..DeliveryConfig::default()
        };
        // Read: all; 2,000,000 events queued at 1,000,000 a minute: 120 s.
        let s = Snapshot {
            disk_bytes_total: 100,
            disk_bytes_done: 100,
            events: 2_000_000,
            pending: Some(2_000_000),
            read_finished: true,
            ..Snapshot::default()
        };
        let eta = eta_secs(&s, Duration::from_secs(10), &delivery).expect("known");
        assert!((eta - 120.0).abs() < 1e-6, "{eta}");
        // Half read in 10 s: 10 s more to read; the other half will make
        // as many events as the first, all of them still to deliver.
        let s = Snapshot {
            disk_bytes_total: 200,
            disk_bytes_done: 100,
            events: 500_000,
            pending: Some(500_000),
            ..Snapshot::default()
        };
        let eta = eta_secs(&s, Duration::from_secs(10), &delivery).expect("known");
        assert!((eta - 60.0).abs() < 1e-6, "{eta}");
        // Dry run: reading only.
        let s = Snapshot { pending: None, ..s };
        let eta = eta_secs(&s, Duration::from_secs(10), &delivery).expect("known");
        assert!((eta - 10.0).abs() < 1e-6, "{eta}");
    }
}

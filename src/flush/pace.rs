//! When the flusher's next request may start (our own budget, the tenant's
//! budget shared with others, a server's Retry-After) and whether a partial
//! batch goes now or waits for more events. Pure: time is passed in, so the
//! fleet simulator (`simulation`) runs this very code in virtual time.

use std::time::Duration;

use tokio::time::Instant;

use super::budget::Budget;
use super::share::{Advice, Observation, Share};

/// Our window is a little longer than the server's: ours starts when a
/// request leaves, the server's when it arrives.
pub fn with_margin(per: Duration) -> Duration {
    per + (per / 100).max(Duration::from_millis(50))
}

/// The wall clock in Unix seconds (what `X-RateLimit-Reset` counts in).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A seed for the share's random moments that differs between hosts and
/// between runs.
pub fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
}

#[derive(Debug)]
pub struct Pacer {
    budget: Budget,
    share: Share,
    /// A server's Retry-After: no request before this.
    not_before: Instant,
    per: Duration,
}

impl Pacer {
    pub fn new(requests: u32, per: Duration, now: Instant, seed: u64) -> Pacer {
        Pacer {
            budget: Budget::new(requests, with_margin(per)),
            share: Share::new(requests, per, seed),
            not_before: now,
            per,
        }
    }

    /// A new budget; the requests already sent still count, what was
    /// learnt of the tenant's budget is dropped.
    pub fn reconfigure(&mut self, requests: u32, per: Duration, seed: u64) {
        self.budget.reconfigure(requests, with_margin(per));
        self.share = Share::new(requests, per, seed);
        self.per = per;
    }

    /// The earliest moment the next request may start.
    pub fn gate(&mut self, now: Instant, now_unix: f64) -> Instant {
        let mut at = self.not_before.max(now + self.budget.wait_time(now));
        if let Advice::At(t) = self.share.advice(now_unix) {
            // A number derived from a server's header never becomes an
            // unchecked Duration: at most two windows.
            let wait = Duration::try_from_secs_f64((t - now_unix).max(0.0))
                .unwrap_or(self.per)
                .min(self.per.saturating_mul(2));
            at = at.max(now + wait);
        }
        at
    }

    /// A request starts now.
    pub fn started(&mut self, now: Instant, now_unix: f64) {
        self.budget.record(now);
        self.share.started(now_unix);
    }

    /// An answer's rate headers.
    pub fn observe(&mut self, now_unix: f64, observation: Observation) {
        self.share.observe(now_unix, observation);
    }

    /// No request before `at` (a Retry-After).
    pub fn wait_until(&mut self, at: Instant) {
        self.not_before = self.not_before.max(at);
    }

    /// How long a partial batch may wait for more events: the configured
    /// `linger`, or, while the tenant's budget is shared, the time between
    /// our requests at an even share, up to `max_linger`.
    pub fn linger(&self, now_unix: f64, linger: Duration, max_linger: Duration) -> Duration {
        let interval = self
            .share
            .request_interval(now_unix)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .unwrap_or(Duration::ZERO);
        linger.max(interval.min(max_linger))
    }

    pub fn budget(&mut self) -> &mut Budget {
        &mut self.budget
    }

    pub fn share(&self) -> &Share {
        &self.share
    }
}

/// Whether a batch goes now (None) or waits for more events (how long): a
/// full batch (by events, or 90% of the byte bound) goes at once, a partial
/// one when its oldest event has waited `linger`.
pub fn batch_wait(
    events: usize,
    bytes: usize,
    oldest_age: Duration,
    max_events: usize,
    max_bytes: usize,
    linger: Duration,
) -> Option<Duration> {
    let full = events >= max_events || bytes.saturating_mul(10) >= max_bytes.saturating_mul(9);
    if full || oldest_age >= linger {
        None
    } else {
        Some(linger - oldest_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_batch_waits_its_linger_and_a_full_one_goes() {
        let s = Duration::from_secs;
        assert_eq!(batch_wait(10, 1000, s(0), 500, 1 << 20, s(1)), Some(s(1)));
        assert_eq!(batch_wait(10, 1000, s(2), 500, 1 << 20, s(1)), None);
        assert_eq!(batch_wait(500, 1000, s(0), 500, 1 << 20, s(1)), None);
        assert_eq!(batch_wait(10, 950_000, s(0), 500, 1 << 20, s(1)), None);
    }

    #[test]
    fn alone_the_linger_is_the_configured_one() {
        let p = Pacer::new(1000, Duration::from_secs(60), Instant::now(), 1);
        let l = p.linger(unix_now(), Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(l, Duration::from_secs(1));
    }
}

//! The request budget: never more than N requests in any window of the
//! configured length (design invariant 5), and never faster than twice the
//! budget's average rate.
//!
//! The second rule keeps a backlog from spending a whole window in one burst
//! at its start. Alone, that costs nothing (the window is still spent long
//! before it ends). With others on the same tenant's budget, it leaves them
//! room to be counted early in the window, which is how we learn they are
//! there (see `share`): a burst that spends the window before another client
//! wakes would starve it, and that client's 429s are not counted, so the
//! burster would never learn of it.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// A sliding-window log of request start times. Unlike a token bucket, it
/// holds the limit over *every* window of the given length, which is what the
/// server's per-minute budget counts.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    window: Duration,
    /// Least gap between two request starts: half the average spacing.
    min_gap: Duration,
    sent: VecDeque<Instant>,
}

impl Budget {
    pub fn new(limit: u32, window: Duration) -> Budget {
        Budget {
            limit: limit.max(1) as usize,
            window,
            min_gap: window / limit.max(1) / 2,
            sent: VecDeque::with_capacity(limit as usize),
        }
    }

    /// A new limit or window; the requests already sent still count.
    pub fn reconfigure(&mut self, limit: u32, window: Duration) {
        let sent = std::mem::take(&mut self.sent);
        *self = Budget::new(limit, window);
        self.sent = sent;
    }

    pub fn per_minute(limit: u32) -> Budget {
        Budget::new(limit, Duration::from_secs(60))
    }

    fn expire(&mut self, now: Instant) {
        while self
            .sent
            .front()
            .is_some_and(|&t| now.duration_since(t) >= self.window)
        {
            self.sent.pop_front();
        }
    }

    /// How long until a request may start (zero if one may start now).
    pub fn wait_time(&mut self, now: Instant) -> Duration {
        self.expire(now);
        let spaced = self.sent.back().map_or(Duration::ZERO, |&last| {
            (last + self.min_gap).saturating_duration_since(now)
        });
        if self.sent.len() < self.limit {
            return spaced;
        }
        let oldest = self.sent[self.sent.len() - self.limit];
        (oldest + self.window)
            .saturating_duration_since(now)
            .max(spaced)
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Requests started in the window ending at `now`.
    pub fn used(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.sent.len()
    }

    /// Requests that may start now.
    pub fn available(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.limit.saturating_sub(self.sent.len())
    }

    /// Records a request started at `now`. Call only when [`Budget::wait_time`]
    /// is zero.
    pub fn record(&mut self, now: Instant) {
        self.sent.push_back(now);
    }

    /// Waits for room and records the request.
    pub async fn acquire(&mut self) {
        loop {
            let wait = self.wait_time(Instant::now());
            if wait.is_zero() {
                break;
            }
            tokio::time::sleep(wait).await;
        }
        self.record(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_than_the_limit_in_any_window() {
        let start = Instant::now();
        let mut b = Budget::new(3, Duration::from_secs(10));
        let mut starts = Vec::new();
        let mut now = start;
        // Try to send every 100 ms for a minute; send whenever allowed.
        while now < start + Duration::from_secs(60) {
            if b.wait_time(now).is_zero() {
                b.record(now);
                starts.push(now);
            }
            now += Duration::from_millis(100);
        }
        for (i, &s) in starts.iter().enumerate() {
            let in_window = starts[i..]
                .iter()
                .filter(|&&t| t < s + Duration::from_secs(10))
                .count();
            assert!(in_window <= 3, "{in_window} requests in a window");
        }
        // And the budget is used: 3 per 10 s over 60 s.
        assert_eq!(starts.len(), 18);
        // Not in one burst: at most twice the average rate.
        for pair in starts.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(1666));
        }
    }

    #[test]
    fn wait_time_points_at_the_oldest_request_leaving_the_window() {
        let t0 = Instant::now();
        let mut b = Budget::new(2, Duration::from_secs(10));
        b.record(t0);
        b.record(t0 + Duration::from_secs(4));
        assert_eq!(
            b.wait_time(t0 + Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert!(b.wait_time(t0 + Duration::from_secs(10)).is_zero());
    }
}

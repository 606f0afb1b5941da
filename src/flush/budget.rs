//! The request budget: never more than N requests in any window of the
//! configured length (design invariant 5).

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
    sent: VecDeque<Instant>,
}

impl Budget {
    pub fn new(limit: u32, window: Duration) -> Budget {
        Budget {
            limit: limit.max(1) as usize,
            window,
            sent: VecDeque::with_capacity(limit as usize),
        }
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
        if self.sent.len() < self.limit {
            return Duration::ZERO;
        }
        let oldest = self.sent[self.sent.len() - self.limit];
        (oldest + self.window).saturating_duration_since(now)
    }

    pub fn window(&self) -> Duration {
        self.window
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

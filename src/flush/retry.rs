//! What each answer means for its batch: acknowledge it, wait out a 429,
//! split a refused batch to find the bad events, set a lone refused event
//! aside as a dead letter, or hold and retry with exponential backoff (a
//! refused key, a redirect, a server error or a lost connection).

use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::answer;
use super::sender::{Outcome, Reply};
use super::{FlushError, Flusher};
use crate::queue::{Batch, DeadReason};

/// How long to wait before trying again after 401/403: a fixed key may be
/// installed at any time, but hammering a refusing endpoint helps no one.
const AUTH_RETRY: Duration = Duration::from_secs(15);
/// A refused key is reported at most this often.
const AUTH_LOG_EVERY: Duration = Duration::from_secs(300);
/// A request of one event this small that gets a 413 meets a proxy's limit,
/// not the API's: 16 KiB is below any body limit a server of events sets
/// (nginx's default is 1 MiB).
const SMALL_EVENT_BYTES: usize = 16 << 10;

impl Flusher {
    pub(super) async fn completed(
        &mut self,
        done: Result<(tokio::task::Id, (Batch, Reply)), tokio::task::JoinError>,
    ) -> Result<(), FlushError> {
        self.outstanding = self.outstanding.saturating_sub(1);
        let (batch, reply) = match done {
            Ok((id, d)) => {
                self.sending.remove(&id);
                d
            }
            Err(e) => {
                // Its batch goes back to the queue either way; a panic is a
                // bug, and ends the process (the service manager restarts it).
                if let Some(batch) = self.sending.remove(&e.id()) {
                    self.queue.release(&batch);
                }
                if e.is_panic() {
                    let message = crate::ops::panic_message(e.into_panic());
                    return Err(FlushError::Panicked(message));
                }
                warn!(error = %e, "a delivery task was cancelled; its batch is sent again");
                return Ok(());
            }
        };
        let now = Instant::now();
        self.count_answer(&reply);
        if !matches!(reply.outcome, Outcome::Unauthorized(..)) {
            // (A refused key has no tenant: its headers describe no budget.)
            self.follow_rate_headers(&reply);
        }
        match reply.outcome {
            Outcome::Delivered => {
                let events = batch.events;
                self.on_disk(move |q| q.ack(&batch)).await?;
                self.stats
                    .delivered_events
                    .fetch_add(events as u64, Ordering::Relaxed);
                self.consecutive_failures = 0;
                if self.last_auth_log.take().is_some() {
                    info!("the API accepts the key again; delivery resumed");
                }
                if self.last_proxy_log.take().is_some() {
                    info!("requests are accepted again after 413s for single small events; delivery resumed");
                }
            }
            Outcome::RateLimited(wait) => {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                let max = self.limits.max_backoff;
                let wait = answer::clamp_wait(wait, max, "retry-after");
                debug!(
                    wait_ms = wait.as_millis() as u64,
                    "rate limited by the server"
                );
                self.pacer.wait_until(answer::after(now, wait, max));
                self.retry.push_front(batch);
            }
            Outcome::Redirected(status, location) => {
                self.stats.rejected_requests.fetch_add(1, Ordering::Relaxed);
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let wait = backoff(self.consecutive_failures, self.limits.max_backoff);
                if self
                    .last_redirect_log
                    .is_none_or(|t| t.elapsed() >= AUTH_LOG_EVERY)
                {
                    error!(
                        status, location = %location,
                        "the API answered with a redirect, which is not followed (the key and the events \
                         go only to api.base_url); set api.base_url to the API's real address. Every event \
                         is kept; retrying with backoff"
                    );
                    self.last_redirect_log = Some(now);
                }
                self.hold(now + wait);
                self.retry.push_front(batch);
            }
            Outcome::BadRequest(detail) if batch.events == 1 && detail.code.is_empty() => {
                // Not the API's error body: a proxy or a WAF in between. Its
                // refusal says nothing about the event, which is kept.
                self.stats.rejected_requests.fetch_add(1, Ordering::Relaxed);
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let wait = backoff(self.consecutive_failures, self.limits.max_backoff);
                warn!(
                    message = %detail.message, retry_in_ms = wait.as_millis() as u64,
                    "a 400 without the API's error body (from a proxy or gateway on the way?): \
                     the event is kept and sent again"
                );
                self.hold(now + wait);
                self.retry.push_front(batch);
            }
            Outcome::BadRequest(detail) => {
                self.stats.rejected_requests.fetch_add(1, Ordering::Relaxed);
                if batch.events == 1 {
                    warn!(
                        code = %detail.code, message = %detail.message, request_id = %detail.request_id,
                        "the API refused an event; it is set aside (see `thoth-ingest dead-letter list`)"
                    );
                    let reason = detail.reason(400);
                    self.on_disk(move |q| q.set_aside(&batch, &reason)).await?;
                } else {
                    debug!(events = batch.events, code = %detail.code, "batch refused with 400; splitting it to find the bad events");
                    let (first, rest) = batch.split_at(batch.events / 2);
                    self.retry.push_front(rest);
                    self.retry.push_front(first);
                }
            }
            Outcome::TooLarge => {
                self.stats.rejected_requests.fetch_add(1, Ordering::Relaxed);
                if batch.events == 1 && batch.body.len() <= SMALL_EVENT_BYTES {
                    // No server that takes events refuses one this small:
                    // a proxy's body limit is set too low. Setting events
                    // aside one by one would empty the queue into dead
                    // letters; hold them all and say so, as for a refused key.
                    if self
                        .last_proxy_log
                        .is_none_or(|t| t.elapsed() >= AUTH_LOG_EVERY)
                    {
                        error!(
                            bytes = batch.body.len(),
                            "413 for a request of one small event: a proxy or load balancer between here and the API \
                             limits request bodies too tightly (nginx: client_max_body_size). Every event is kept; \
                             sending is retried every {}s",
                            AUTH_RETRY.min(self.limits.max_backoff).as_secs()
                        );
                        self.last_proxy_log = Some(now);
                    }
                    self.hold(now + AUTH_RETRY.min(self.limits.max_backoff));
                    self.retry.push_front(batch);
                } else if batch.events == 1 {
                    warn!(
                        bytes = batch.body.len(),
                        "the API refused an event as too large (413); it is set aside"
                    );
                    let reason = DeadReason {
                        status: 413,
                        code: "PAYLOAD_TOO_LARGE".into(),
                        message: format!(
                            "a single event of {} bytes is larger than the server accepts",
                            batch.body.len()
                        ),
                        request_id: String::new(),
                    };
                    self.on_disk(move |q| q.set_aside(&batch, &reason)).await?;
                } else {
                    let smaller = (batch.body.len() / 2).max(4096);
                    if smaller < self.limits.batch_max_bytes {
                        warn!(
                            from = self.limits.batch_max_bytes,
                            to = smaller,
                            "413 from the API: lowering the batch size"
                        );
                        self.limits.batch_max_bytes = smaller;
                    }
                    self.limits.batch_max_events =
                        self.limits.batch_max_events.min(batch.events / 2).max(1);
                    let (first, rest) = batch.split_at(batch.events / 2);
                    self.retry.push_front(rest);
                    self.retry.push_front(first);
                }
            }
            Outcome::Unauthorized(status, detail) => {
                self.stats.rejected_requests.fetch_add(1, Ordering::Relaxed);
                if self
                    .last_auth_log
                    .is_none_or(|t| t.elapsed() >= AUTH_LOG_EVERY)
                {
                    error!(
                        status, code = %detail.code, message = %detail.message, request_id = %detail.request_id,
                        "the API refused the key; every event is kept and sending is retried every {}s. \
                         Check the key (THOTH_API_KEY, THOTH_API_KEY_FILE, the thoth-api-key credential or \
                         api.api_key_file), its tenant, and that it has the events:write scope",
                        AUTH_RETRY.min(self.limits.max_backoff).as_secs()
                    );
                    self.last_auth_log = Some(now);
                }
                self.hold(now + AUTH_RETRY.min(self.limits.max_backoff));
                self.retry.push_front(batch);
            }
            Outcome::Transient(why) => {
                self.stats.rejected_requests.fetch_add(1, Ordering::Relaxed);
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let wait = backoff(self.consecutive_failures, self.limits.max_backoff);
                warn!(error = %why, retry_in_ms = wait.as_millis() as u64, "delivery failed; will retry");
                self.hold(now + wait);
                self.retry.push_front(batch);
            }
        }
        Ok(())
    }

    /// Counts an answer by its status, and notes the last acceptance and
    /// the last error.
    fn count_answer(&self, reply: &Reply) {
        let at = std::time::SystemTime::now();
        let stats = &self.stats;
        match reply.status {
            Some(code) => {
                if let Ok(mut m) = stats.by_status.lock() {
                    *m.entry(code).or_default() += 1;
                }
            }
            None => {
                stats.no_answer.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Ok(mut last) = stats.last_outcome.lock() {
            *last = Some((reply.outcome.summary(), at));
        }
        if matches!(reply.outcome, Outcome::Delivered) {
            if let Ok(mut last) = stats.last_success.lock() {
                *last = Some(at);
            }
        } else if let Ok(mut last) = stats.last_error.lock() {
            // The server's words end up on an operator's terminal: no
            // control characters (escape sequences), and a bounded length.
            let what = match (&reply.outcome, reply.status) {
                (Outcome::Transient(why), _) => why
                    .chars()
                    .take(200)
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect(),
                (outcome, Some(code)) => format!("HTTP {code}: {}", outcome.summary()),
                (outcome, None) => outcome.summary().to_string(),
            };
            *last = Some((what, at));
        }
    }

    /// Holds requests back until `until` (or longer, if already held).
    fn hold(&mut self, until: Instant) {
        self.hold_until = Some(self.hold_until.map_or(until, |h| h.max(until)));
    }
}

/// Exponential backoff with full jitter: a random wait in [0, min(cap, 0.5s·2^n)].
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1u32 << attempt.min(20));
    let ceiling = base.min(cap);
    let millis = rand::thread_rng().gen_range(0..=ceiling.as_millis() as u64);
    Duration::from_millis(millis.max(50))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let cap = Duration::from_secs(5);
        for attempt in 0..40 {
            assert!(backoff(attempt, cap) <= cap);
        }
        // Jittered: many different waits, not one value (nor its cap).
        let waits: std::collections::BTreeSet<Duration> =
            (0..200).map(|_| backoff(10, cap)).collect();
        assert!(waits.len() > 100, "{} distinct waits of 200", waits.len());
        // Growing: the first attempt waits at most 1 s, later ones reach the cap's range.
        assert!((0..200).all(|_| backoff(1, cap) <= Duration::from_secs(1)));
        assert!((0..200).any(|_| backoff(10, cap) > Duration::from_secs(3)));
    }
}

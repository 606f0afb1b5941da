//! The flusher: takes batches from the head of the queue and delivers them to
//! `POST /v1/events/batch` within the request budget. It knows HTTP, the budget
//! and the API's answers, and nothing of logs.

pub mod budget;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use tracing::{debug, error, warn};

use self::budget::Budget;
use crate::config::{ApiKey, Config};
use crate::event::Timestamp;
use crate::queue::{Batch, Queue, QueueError};

pub const BATCH_PATH: &str = "/v1/events/batch";

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("the API key cannot be sent as an HTTP header")]
    KeyHeader,
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Counters of the flusher, for `status`, the demo and tests.
#[derive(Debug, Default)]
pub struct FlushStats {
    pub requests: AtomicU64,
    pub delivered_events: AtomicU64,
    pub rejected_requests: AtomicU64,
    pub in_flight: AtomicBool,
}

pub struct Flusher {
    client: reqwest::Client,
    url: String,
    queue: Arc<Queue>,
    budget: Budget,
    batch_max_events: usize,
    linger: Duration,
    max_backoff: Duration,
    stats: Arc<FlushStats>,
}

/// What to do after an answer.
enum Outcome {
    Delivered,
    /// Wait this long, then send the same batch again.
    RetryAfter(Duration),
    /// Back off (exponentially) and send the same batch again.
    Failed,
}

impl Flusher {
    pub fn new(
        config: &Config,
        key: &ApiKey,
        queue: Arc<Queue>,
        stats: Arc<FlushStats>,
    ) -> Result<Flusher, FlushError> {
        let mut headers = HeaderMap::new();
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
            .map_err(|_| FlushError::KeyHeader)?;
        bearer.set_sensitive(true);
        let mut x_key = HeaderValue::from_str(key.expose()).map_err(|_| FlushError::KeyHeader)?;
        x_key.set_sensitive(true);
        headers.insert(AUTHORIZATION, bearer);
        headers.insert("x-api-key", x_key);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.api.timeout)
            .connect_timeout(config.api.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("thoth-ingest/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let base = config.api.base_url.get_ref().trim_end_matches('/');
        Ok(Flusher {
            client,
            url: format!("{base}{BATCH_PATH}"),
            queue,
            budget: Budget::per_minute(config.delivery.requests_per_minute),
            batch_max_events: config.delivery.batch_max_events,
            linger: config.delivery.linger,
            max_backoff: config.delivery.max_backoff,
            stats,
        })
    }

    /// Delivers until `shutdown` is set; a batch in flight is finished first
    /// (or left in the queue for the next start).
    pub async fn run(mut self, shutdown: Arc<AtomicBool>) -> Result<(), FlushError> {
        let stop = || shutdown.load(Ordering::SeqCst);
        while !stop() {
            let Some(mut batch) = self.queue.peek_batch(self.batch_max_events)? else {
                self.idle(Duration::from_millis(200)).await;
                continue;
            };
            if batch.events < self.batch_max_events {
                let age = Duration::from_micros(
                    (Timestamp::now().unix_micros - batch.oldest.unix_micros).max(0) as u64,
                );
                if age < self.linger {
                    self.idle(self.linger - age).await;
                    continue;
                }
            }
            self.queue.take(&batch);
            self.stats.in_flight.store(true, Ordering::SeqCst);
            let delivered = self.deliver(&mut batch, &stop).await?;
            if !delivered {
                self.queue.release(&batch);
            }
            self.stats.in_flight.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn idle(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.queue.appended.notified()).await;
    }

    /// Sends one batch until it is accepted; false if shutdown came first.
    async fn deliver(
        &mut self,
        batch: &mut Batch,
        stop: &impl Fn() -> bool,
    ) -> Result<bool, FlushError> {
        let body = bytes::Bytes::from(std::mem::take(&mut batch.body));
        let mut attempt: u32 = 0;
        loop {
            self.budget.acquire().await;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = self.send(body.clone(), batch.events).await;
            let wait = match outcome {
                Outcome::Delivered => {
                    self.queue.ack(batch)?;
                    self.stats
                        .delivered_events
                        .fetch_add(batch.events as u64, Ordering::Relaxed);
                    return Ok(true);
                }
                Outcome::RetryAfter(d) => d,
                Outcome::Failed => {
                    attempt = attempt.saturating_add(1);
                    backoff(attempt, self.max_backoff)
                }
            };
            if stop() {
                return Ok(false);
            }
            debug!(wait_ms = wait.as_millis() as u64, attempt, "retrying batch");
            tokio::time::sleep(wait).await;
            if stop() {
                return Ok(false);
            }
        }
    }

    async fn send(&self, body: bytes::Bytes, events: usize) -> Outcome {
        let response = match self.client.post(&self.url).body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %without_url(&e), "request failed; will retry");
                return Outcome::Failed;
            }
        };
        let status = response.status();
        if status.as_u16() == 202 || status.as_u16() == 200 {
            debug!(events, "batch accepted");
            return Outcome::Delivered;
        }
        self.stats.rejected_requests.fetch_add(1, Ordering::Relaxed);
        if status.as_u16() == 429 {
            let wait = retry_after(response.headers()).unwrap_or(Duration::from_secs(1));
            debug!(
                wait_ms = wait.as_millis() as u64,
                "rate limited by the server"
            );
            return Outcome::RetryAfter(wait);
        }
        let body = response.text().await.unwrap_or_default();
        let detail = ErrorBody::parse(&body);
        if matches!(status.as_u16(), 401 | 403) {
            error!(
                status = status.as_u16(),
                code = %detail.code, message = %detail.message, request_id = %detail.request_id,
                "the API refused the key; events are kept. Check the key and its events:write scope"
            );
        } else {
            warn!(
                status = status.as_u16(),
                code = %detail.code, message = %detail.message, request_id = %detail.request_id,
                "batch refused; will retry"
            );
        }
        Outcome::Failed
    }
}

/// The documented error body, `{"error": {"code", "message", "requestId"}}`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    pub request_id: String,
}

impl ErrorBody {
    pub fn parse(body: &str) -> ErrorBody {
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let field = |k: &str| v["error"][k].as_str().unwrap_or_default().to_string();
        let mut parsed = ErrorBody {
            code: field("code"),
            message: field("message"),
            request_id: field("requestId"),
        };
        if parsed.message.is_empty() {
            // An HTML page from a proxy or WAF: keep a short, printable excerpt.
            parsed.message = body.chars().take(200).filter(|c| !c.is_control()).collect();
        }
        parsed
    }
}

/// Reads `Retry-After` (delta-seconds or an HTTP date), falling back to
/// `X-RateLimit-Reset` (Unix seconds).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(v) = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()) {
        if let Ok(secs) = v.trim().parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = httpdate_parse(v) {
            return Some(
                at.duration_since(std::time::SystemTime::now())
                    .unwrap_or_default(),
            );
        }
    }
    let reset: u64 = headers
        .get("x-ratelimit-reset")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(reset.saturating_sub(now).max(1)))
}

fn httpdate_parse(s: &str) -> Result<std::time::SystemTime, humantime::TimestampError> {
    // humantime parses RFC 3339; HTTP dates (IMF-fixdate) are handled by hand.
    let t = time::PrimitiveDateTime::parse(
        s.trim(),
        time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        ),
    )
    .map_err(|_| humantime::TimestampError::InvalidFormat)?;
    let secs = t.assume_utc().unix_timestamp();
    Ok(std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// Exponential backoff with full jitter: a random wait in [0, min(cap, 0.5s·2^n)].
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1u32 << attempt.min(20));
    let ceiling = base.min(cap);
    let millis = rand::thread_rng().gen_range(0..=ceiling.as_millis() as u64);
    Duration::from_millis(millis.max(50))
}

/// reqwest errors print the URL; the URL holds no secret, but keep logs short.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(url.as_str(), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let mut h = HeaderMap::new();
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        let mut h = HeaderMap::new();
        let reset = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 30;
        h.insert(
            "x-ratelimit-reset",
            HeaderValue::from_str(&reset.to_string()).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d >= Duration::from_secs(29) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        for attempt in 0..40 {
            assert!(backoff(attempt, Duration::from_secs(5)) <= Duration::from_secs(5));
        }
    }

    #[test]
    fn error_body() {
        let e = ErrorBody::parse(
            r#"{"error":{"code":"INVALID_TENANT","message":"no","requestId":"req_1"}}"#,
        );
        assert_eq!(e.code, "INVALID_TENANT");
        assert_eq!(e.request_id, "req_1");
        assert_eq!(
            ErrorBody::parse("<html>blocked</html>").message,
            "<html>blocked</html>"
        );
    }
}

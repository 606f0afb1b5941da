//! The flusher: takes batches from the head of the queue and delivers them to
//! `POST /v1/events/batch` within the request budget. It knows HTTP, the budget
//! and the API's answers, and nothing of logs.

pub mod budget;
pub mod share;

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER,
};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use self::budget::Budget;
use self::share::{Advice, Observation, Share};
use crate::config::{ApiKey, Compression, Config};
use crate::event::Timestamp;
use crate::queue::{Batch, DeadReason, Queue, QueueError};

pub const BATCH_PATH: &str = "/v1/events/batch";
/// How long to wait before trying again after 401/403: a fixed key may be
/// installed at any time, but hammering a refusing endpoint helps no one.
const AUTH_RETRY: Duration = Duration::from_secs(15);
/// A refused key is reported at most this often.
const AUTH_LOG_EVERY: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("the API key cannot be sent as an HTTP header")]
    KeyHeader,
    #[error("api.ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Counters of the flusher, for `status`, the demo and tests.
#[derive(Debug, Default)]
pub struct FlushStats {
    pub requests: AtomicU64,
    pub delivered_events: AtomicU64,
    pub rejected_requests: AtomicU64,
    pub rate_limited: AtomicU64,
    pub in_flight: AtomicUsize,
}

/// What an answer means for the batch.
#[derive(Debug)]
enum Outcome {
    Delivered,
    /// 429: wait this long; not a failure.
    RateLimited(Duration),
    /// 400: something in the batch is refused as it is.
    BadRequest(ErrorBody),
    /// 413: the body is too large for the server or a proxy.
    TooLarge,
    /// 401/403: the key is refused.
    Unauthorized(u16, ErrorBody),
    /// 5xx, timeouts, connection errors.
    Transient(String),
}

#[derive(Debug)]
struct Reply {
    outcome: Outcome,
    /// `X-RateLimit-Remaining`, `X-RateLimit-Reset` (Unix seconds) and
    /// `X-RateLimit-Limit`.
    remaining: Option<u64>,
    reset: Option<u64>,
    limit: Option<u64>,
}

/// What sending needs, shared by the request tasks.
struct Sender {
    client: reqwest::Client,
    url: String,
    compression: Compression,
}

pub struct Flusher {
    sender: Arc<Sender>,
    queue: Arc<Queue>,
    budget: Budget,
    /// Batch sizes, waits and concurrency; the batch bounds shrink on 413.
    limits: Limits,
    stats: Arc<FlushStats>,
    /// Batches already taken from the queue that must be sent again (after a
    /// failure, or as halves of a refused batch) before new ones.
    retry: VecDeque<Batch>,
    /// No request starts before this (Retry-After, a spent shared window).
    not_before: Instant,
    /// Nor before this: a refused key or a backoff; a reload ends it.
    hold_until: Option<Instant>,
    /// Least gap between request starts while the tenant's budget is shared.
    pace_gap: Option<Duration>,
    last_start: Option<Instant>,
    /// What the rate headers say about others drawing on the tenant's budget.
    share: Share,
    consecutive_failures: u32,
    last_auth_log: Option<Instant>,
    /// Requests started and not yet answered.
    outstanding: usize,
    /// The configured budget, to see whether a reload changes it.
    budget_config: (u32, Duration),
    reloads: ReloadSlot,
}

/// The settings a reload (SIGHUP) may change while the daemon runs: the key,
/// `[api]` (URL, CA file, timeout) and `[delivery]`.
pub struct Reload {
    sender: Sender,
    budget: (u32, Duration),
    limits: Limits,
}

/// The `[delivery]` settings the flusher reads on every batch, set at start
/// and by each reload.
#[derive(Debug, Clone, Copy)]
struct Limits {
    batch_max_events: usize,
    batch_max_bytes: usize,
    linger: Duration,
    max_backoff: Duration,
    max_in_flight: usize,
    shutdown_timeout: Duration,
}

/// Where a reload waits for the flusher to pick it up (within 200 ms).
pub type ReloadSlot = Arc<std::sync::Mutex<Option<Reload>>>;

impl Reload {
    /// Builds the HTTP client and reads the delivery settings; fails on a
    /// key that cannot be a header or an unusable `ca_file`.
    pub fn new(config: &Config, key: &ApiKey) -> Result<Reload, FlushError> {
        Ok(Reload {
            sender: Sender::new(config, key)?,
            budget: config.delivery.budget(),
            limits: Limits {
                batch_max_events: config.delivery.batch_max_events,
                batch_max_bytes: config.delivery.batch_max_bytes.0 as usize,
                linger: config.delivery.linger,
                max_backoff: config.delivery.max_backoff,
                max_in_flight: config.delivery.max_in_flight,
                shutdown_timeout: config.delivery.shutdown_timeout,
            },
        })
    }
}

impl Sender {
    fn new(config: &Config, key: &ApiKey) -> Result<Sender, FlushError> {
        let mut headers = HeaderMap::new();
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
            .map_err(|_| FlushError::KeyHeader)?;
        bearer.set_sensitive(true);
        let mut x_key = HeaderValue::from_str(key.expose()).map_err(|_| FlushError::KeyHeader)?;
        x_key.set_sensitive(true);
        headers.insert(AUTHORIZATION, bearer);
        headers.insert("x-api-key", x_key);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if config.delivery.compression == Compression::Gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        // reqwest follows HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY
        // from the environment by default.
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.api.timeout)
            .connect_timeout(config.api.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("thoth-ingest/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.api.ca_file {
            let ca_error = |reason: String| FlushError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no PEM certificate in it".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build()?;
        let base = config.api.base_url.get_ref().trim_end_matches('/');
        Ok(Sender {
            client,
            url: format!("{base}{BATCH_PATH}"),
            compression: config.delivery.compression,
        })
    }
}

/// Our window is a little longer than the server's: ours starts when a
/// request leaves, the server's when it arrives.
fn with_margin(per: Duration) -> Duration {
    per + (per / 100).max(Duration::from_millis(50))
}

impl Flusher {
    pub fn new(
        config: &Config,
        key: &ApiKey,
        queue: Arc<Queue>,
        stats: Arc<FlushStats>,
    ) -> Result<Flusher, FlushError> {
        let settings = Reload::new(config, key)?;
        let (requests, per) = settings.budget;
        Ok(Flusher {
            sender: Arc::new(settings.sender),
            queue,
            budget: Budget::new(requests, with_margin(per)),
            limits: settings.limits,
            stats,
            retry: VecDeque::new(),
            not_before: Instant::now(),
            hold_until: None,
            pace_gap: None,
            last_start: None,
            share: Share::new(requests, per),
            consecutive_failures: 0,
            last_auth_log: None,
            outstanding: 0,
            budget_config: (requests, per),
            reloads: Arc::default(),
        })
    }

    /// Where [`Pipeline`](crate::pipeline::Pipeline) puts a reload.
    pub fn reload_slot(&self) -> ReloadSlot {
        self.reloads.clone()
    }

    /// Applies a reload. A request held back by a refused key or a backoff
    /// is tried at once (the fix may be what was reloaded); a server's
    /// Retry-After and the budget still hold.
    fn apply(&mut self, r: Reload) {
        self.sender = Arc::new(r.sender);
        if r.budget != self.budget_config {
            let (requests, per) = r.budget;
            self.budget.reconfigure(requests, with_margin(per));
            self.share = Share::new(requests, per);
            self.pace_gap = None;
            self.budget_config = r.budget;
        }
        self.limits = r.limits;
        self.consecutive_failures = 0;
        if self.hold_until.take().is_some_and(|t| t > Instant::now()) {
            info!("configuration reloaded; retrying delivery now");
        } else {
            info!("configuration reloaded");
        }
    }

    /// Delivers until `shutdown` is set, then waits for requests in flight up
    /// to `shutdown_timeout`. Whatever is not acknowledged stays queued.
    pub async fn run(mut self, shutdown: Arc<AtomicBool>) -> Result<(), FlushError> {
        let mut in_flight: JoinSet<(Batch, Reply)> = JoinSet::new();
        let stop = || shutdown.load(Ordering::SeqCst);
        while !stop() {
            let reload = self
                .reloads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(r) = reload {
                self.apply(r);
            }
            while let Some(done) = in_flight.try_join_next() {
                self.completed(done)?;
            }
            self.stats
                .in_flight
                .store(in_flight.len(), Ordering::SeqCst);
            let now = Instant::now();
            let gate = self.next_start(now);
            // While sharing, one request at a time: its answer sets the next gap.
            let max_in_flight = if self.pace_gap.is_some() || self.share.shared(now) {
                1
            } else {
                self.limits.max_in_flight
            };
            if in_flight.len() >= max_in_flight || gate > now {
                tokio::select! {
                    Some(done) = in_flight.join_next() => self.completed(done)?,
                    _ = tokio::time::sleep_until(gate), if gate > now => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            let batch = match self.retry.pop_front() {
                // After a 413 lowered the limit, batches taken before it are
                // split here rather than refused again.
                Some(b) if b.events > 1 && b.body.len() > self.limits.batch_max_bytes => {
                    let (first, rest) = b.split_at(b.events / 2);
                    self.retry.push_front(rest);
                    self.retry.push_front(first);
                    continue;
                }
                Some(b) => b,
                None => match self.next_batch()? {
                    Ok(b) => b,
                    Err(wait) => {
                        tokio::select! {
                            Some(done) = in_flight.join_next() => self.completed(done)?,
                            _ = self.queue.appended.notified() => {}
                            _ = tokio::time::sleep(wait) => {}
                        }
                        continue;
                    }
                },
            };
            let now = Instant::now();
            self.budget.record(now);
            self.last_start = Some(now);
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            self.outstanding += 1;
            let sender = self.sender.clone();
            in_flight.spawn(async move {
                let reply = sender.send(&batch).await;
                (batch, reply)
            });
            self.stats
                .in_flight
                .store(in_flight.len(), Ordering::SeqCst);
        }
        // Shutdown: no new requests; let those in flight finish.
        let deadline = Instant::now() + self.limits.shutdown_timeout;
        while !in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, in_flight.join_next()).await {
                Ok(Some(done)) => self.completed(done)?,
                Ok(None) => break,
                Err(_) => {
                    info!(
                        requests = in_flight.len(),
                        "shutdown timeout: requests still in flight stay queued"
                    );
                    in_flight.abort_all();
                    break;
                }
            }
        }
        for batch in self.retry.drain(..) {
            self.queue.release(&batch);
        }
        self.stats.in_flight.store(0, Ordering::SeqCst);
        Ok(())
    }

    /// The earliest time the next request may start.
    fn next_start(&mut self, now: Instant) -> Instant {
        let mut at = self.not_before.max(now + self.budget.wait_time(now));
        if let Some(hold) = self.hold_until {
            at = at.max(hold);
        }
        if let (Some(gap), Some(last)) = (self.pace_gap, self.last_start) {
            at = at.max(last + gap);
        }
        at
    }

    /// A new batch from the queue, or how long to wait for one: a partial
    /// batch waits up to `linger` for more events.
    fn next_batch(&mut self) -> Result<Result<Batch, Duration>, FlushError> {
        let Some(batch) = self
            .queue
            .peek_batch(self.limits.batch_max_events, self.limits.batch_max_bytes)?
        else {
            return Ok(Err(Duration::from_millis(200)));
        };
        let full = batch.events >= self.limits.batch_max_events
            || batch.body.len() * 10 >= self.limits.batch_max_bytes * 9;
        if !full {
            let age = Duration::from_micros(
                (Timestamp::now().unix_micros - batch.oldest.unix_micros).max(0) as u64,
            );
            if age < self.limits.linger {
                return Ok(Err(self.limits.linger - age));
            }
        }
        self.queue.take(&batch);
        Ok(Ok(batch))
    }

    fn completed(
        &mut self,
        done: Result<(Batch, Reply), tokio::task::JoinError>,
    ) -> Result<(), FlushError> {
        self.outstanding = self.outstanding.saturating_sub(1);
        let (batch, reply) = match done {
            Ok(d) => d,
            // A request task cannot panic short of a bug; its batch is still
            // marked in flight and is sent again after a restart.
            Err(e) => {
                error!(error = %e, "a delivery task failed");
                return Ok(());
            }
        };
        let now = Instant::now();
        if !matches!(reply.outcome, Outcome::Unauthorized(..)) {
            // (A refused key has no tenant: its headers describe no budget.)
            self.follow_rate_headers(&reply, now);
        }
        match reply.outcome {
            Outcome::Delivered => {
                self.queue.ack(&batch)?;
                self.stats
                    .delivered_events
                    .fetch_add(batch.events as u64, Ordering::Relaxed);
                self.consecutive_failures = 0;
                if self.last_auth_log.take().is_some() {
                    info!("the API accepts the key again; delivery resumed");
                }
            }
            Outcome::RateLimited(wait) => {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                debug!(
                    wait_ms = wait.as_millis() as u64,
                    "rate limited by the server"
                );
                self.not_before = self.not_before.max(now + wait);
                self.retry.push_front(batch);
            }
            Outcome::BadRequest(detail) => {
                self.stats.rejected_requests.fetch_add(1, Ordering::Relaxed);
                if batch.events == 1 {
                    warn!(
                        code = %detail.code, message = %detail.message, request_id = %detail.request_id,
                        "the API refused an event; it is set aside (see `thoth-ingest dead-letter list`)"
                    );
                    self.queue.set_aside(&batch, &detail.reason(400))?;
                } else {
                    debug!(events = batch.events, code = %detail.code, "batch refused with 400; splitting it to find the bad events");
                    let (first, rest) = batch.split_at(batch.events / 2);
                    self.retry.push_front(rest);
                    self.retry.push_front(first);
                }
            }
            Outcome::TooLarge => {
                self.stats.rejected_requests.fetch_add(1, Ordering::Relaxed);
                if batch.events == 1 {
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
                    self.queue.set_aside(&batch, &reason)?;
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
                        AUTH_RETRY.as_secs()
                    );
                    self.last_auth_log = Some(now);
                }
                self.hold(now + AUTH_RETRY);
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

    /// Holds requests back until `until` (or longer, if already held).
    fn hold(&mut self, until: Instant) {
        self.hold_until = Some(self.hold_until.map_or(until, |h| h.max(until)));
    }

    /// Shares the tenant's budget with its other clients (see `share`).
    fn follow_rate_headers(&mut self, reply: &Reply, now: Instant) {
        let (Some(remaining), Some(reset)) = (reply.remaining, reply.reset) else {
            return;
        };
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let observation = Observation {
            remaining,
            reset,
            limit: reply.limit,
            counted: !matches!(reply.outcome, Outcome::RateLimited(_)),
            other_in_flight: self.outstanding,
        };
        let advice = self.share.observe(now, now_unix, observation);
        debug!(
            remaining,
            reset,
            others = self.share.others_in_window(),
            reserve = self.share.reserve(),
            ?advice,
            "rate headers"
        );
        match advice {
            Advice::Free => self.pace_gap = None,
            Advice::Pace(gap) => self.pace_gap = Some(gap),
            Advice::WaitUntil(at) => {
                self.pace_gap = None;
                self.not_before = self.not_before.max(at);
            }
        }
    }
}

impl Sender {
    async fn send(&self, batch: &Batch) -> Reply {
        let body = match self.compression {
            Compression::None => batch.body.clone(),
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                let _ = gz.write_all(&batch.body);
                match gz.finish() {
                    Ok(v) => bytes::Bytes::from(v),
                    Err(_) => batch.body.clone(),
                }
            }
        };
        let response = match self.client.post(&self.url).body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return Reply {
                    outcome: Outcome::Transient(without_url(&e)),
                    remaining: None,
                    reset: None,
                    limit: None,
                }
            }
        };
        let status = response.status().as_u16();
        let header_u64 = |name: &str| {
            response
                .headers()
                .get(name)?
                .to_str()
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        };
        let remaining = header_u64("x-ratelimit-remaining");
        let reset = header_u64("x-ratelimit-reset");
        let limit = header_u64("x-ratelimit-limit");
        let outcome = match status {
            200..=299 => Outcome::Delivered,
            429 => Outcome::RateLimited(
                retry_after(response.headers()).unwrap_or(Duration::from_secs(1)),
            ),
            413 => Outcome::TooLarge,
            400 | 401 | 403 => {
                let detail = ErrorBody::parse(&response.text().await.unwrap_or_default());
                if status == 400 {
                    Outcome::BadRequest(detail)
                } else {
                    Outcome::Unauthorized(status, detail)
                }
            }
            other => {
                let detail = ErrorBody::parse(&response.text().await.unwrap_or_default());
                Outcome::Transient(format!(
                    "HTTP {other} {} {} {}",
                    detail.code, detail.message, detail.request_id
                ))
            }
        };
        Reply {
            outcome,
            remaining,
            reset,
            limit,
        }
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
    fn reason(&self, status: u16) -> DeadReason {
        DeadReason {
            status,
            code: self.code.clone(),
            message: self.message.clone(),
            request_id: self.request_id.clone(),
        }
    }

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
        msg = msg
            .replace(&format!(" for url ({url})"), "")
            .replace(url.as_str(), "");
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

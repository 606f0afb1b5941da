//! The flusher: takes batches from the head of the queue and delivers them to
//! `POST /v1/events/batch` within the request budget. It knows HTTP, the budget
//! and the API's answers, and nothing of logs.

pub mod answer;
pub mod budget;
pub mod share;

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use self::answer::{ErrorBody, RateHeaders};
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
    #[error("a delivery task panicked: {0}")]
    Panicked(String),
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
    /// 3xx: `base_url` points at a redirect, which is not followed (the
    /// key must not go to another origin, a 302 would turn the POST into a
    /// GET). The `Location`, for the operator.
    Redirected(u16, String),
    /// 5xx, timeouts, connection errors.
    Transient(String),
}

#[derive(Debug)]
struct Reply {
    outcome: Outcome,
    /// The `X-RateLimit-*` headers, when present and sensible.
    rate: Option<RateHeaders>,
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
    last_redirect_log: Option<Instant>,
    /// The batch of each request task, to release it if the task fails.
    sending: HashMap<tokio::task::Id, Batch>,
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
        let base = config.api.base_url.get_ref().trim_end_matches('/');
        // Redirects are answers, not directions: following one would send
        // the key (X-Api-Key survives reqwest's cross-origin rule) and the
        // events to wherever a proxy or a misconfigured gateway points.
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
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
        // reqwest follows HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY
        // from the environment. A plain-http URL (loopback only, by config
        // validation) never goes through a proxy: the key would cross the
        // network in clear.
        if base.starts_with("http://") {
            builder = builder.no_proxy();
        }
        let client = builder.build()?;
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
            last_redirect_log: None,
            sending: HashMap::new(),
            outstanding: 0,
            budget_config: (requests, per),
            reloads: Arc::default(),
        })
    }

    /// Where the pipeline puts a reload.
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
            while let Some(done) = in_flight.try_join_next_with_id() {
                self.completed(done).await?;
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
                    Some(done) = in_flight.join_next_with_id() => self.completed(done).await?,
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
                None => match self.next_batch().await? {
                    Ok(b) => b,
                    Err(wait) => {
                        tokio::select! {
                            Some(done) = in_flight.join_next_with_id() => self.completed(done).await?,
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
            let copy = batch.clone();
            let task = in_flight.spawn(async move {
                if crate::ops::test_hook("panic-delivery") {
                    panic!("test hook panic-delivery: a delivery task panics");
                }
                let reply = sender.send(&batch).await;
                (batch, reply)
            });
            self.sending.insert(task.id(), copy);
            self.stats
                .in_flight
                .store(in_flight.len(), Ordering::SeqCst);
        }
        // Shutdown: no new requests; let those in flight finish.
        let deadline = Instant::now() + self.limits.shutdown_timeout;
        while !in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, in_flight.join_next_with_id()).await {
                Ok(Some(done)) => self.completed(done).await?,
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
        for batch in self
            .retry
            .drain(..)
            .chain(self.sending.drain().map(|(_, b)| b))
        {
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
    async fn next_batch(&mut self) -> Result<Result<Batch, Duration>, FlushError> {
        let (events, bytes) = (self.limits.batch_max_events, self.limits.batch_max_bytes);
        let Some(batch) = self.on_disk(move |q| q.peek_batch(events, bytes)).await? else {
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

    async fn completed(
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
        if !matches!(reply.outcome, Outcome::Unauthorized(..)) {
            // (A refused key has no tenant: its headers describe no budget.)
            self.follow_rate_headers(&reply, now);
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
            }
            Outcome::RateLimited(wait) => {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                let max = self.limits.max_backoff;
                let wait = answer::clamp_wait(wait, max, "retry-after");
                debug!(
                    wait_ms = wait.as_millis() as u64,
                    "rate limited by the server"
                );
                self.not_before = self.not_before.max(answer::after(now, wait, max));
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

    /// Runs queue work (sled, fsync, segment reads) on tokio's blocking
    /// pool: a slow disk must not stall the two workers that drive the
    /// requests in flight and the timers.
    async fn on_disk<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Queue) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, FlushError> {
        let queue = self.queue.clone();
        match tokio::task::spawn_blocking(move || work(&queue)).await {
            Ok(result) => Ok(result?),
            Err(e) if e.is_panic() => Err(FlushError::Panicked(crate::ops::panic_message(
                e.into_panic(),
            ))),
            Err(e) => Err(FlushError::Panicked(format!(
                "queue work was cancelled: {e}"
            ))),
        }
    }

    /// Holds requests back until `until` (or longer, if already held).
    fn hold(&mut self, until: Instant) {
        self.hold_until = Some(self.hold_until.map_or(until, |h| h.max(until)));
    }

    /// Shares the tenant's budget with its other clients (see `share`).
    fn follow_rate_headers(&mut self, reply: &Reply, now: Instant) {
        let Some(RateHeaders {
            remaining,
            reset,
            limit,
        }) = reply.rate
        else {
            return;
        };
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let observation = Observation {
            remaining,
            reset,
            limit,
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
                // Whatever the headers said, no longer than max_backoff.
                let at = at.min(answer::after(now, self.limits.max_backoff, Duration::ZERO));
                self.not_before = self.not_before.max(at);
            }
        }
    }
}

impl Sender {
    async fn send(&self, batch: &Batch) -> Reply {
        let mut request = self.client.post(&self.url);
        let body = match self.compression {
            Compression::None => batch.body.clone(),
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                match gz.write_all(&batch.body).and_then(|()| gz.finish()) {
                    Ok(v) => {
                        request = request.header(CONTENT_ENCODING, "gzip");
                        bytes::Bytes::from(v)
                    }
                    // Sent as it is, and said so by the missing header.
                    Err(_) => batch.body.clone(),
                }
            }
        };
        let mut response = match request.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return Reply {
                    outcome: Outcome::Transient(without_url(&e)),
                    rate: None,
                }
            }
        };
        let status = response.status().as_u16();
        let now = std::time::SystemTime::now();
        let rate = answer::rate_headers(response.headers(), now);
        let outcome = match status {
            200..=299 => Outcome::Delivered,
            300..=399 => {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .map(|l| l.chars().take(200).collect())
                    .unwrap_or_else(|| "(no Location)".to_string());
                Outcome::Redirected(status, location)
            }
            429 => Outcome::RateLimited(
                answer::retry_after(response.headers(), now).unwrap_or(Duration::from_secs(1)),
            ),
            413 => Outcome::TooLarge,
            400 | 401 | 403 => {
                let detail = ErrorBody::parse(&bounded_text(&mut response).await);
                if status == 400 {
                    Outcome::BadRequest(detail)
                } else {
                    Outcome::Unauthorized(status, detail)
                }
            }
            other => {
                let detail = ErrorBody::parse(&bounded_text(&mut response).await);
                Outcome::Transient(format!(
                    "HTTP {other} {} {} {}",
                    detail.code, detail.message, detail.request_id
                ))
            }
        };
        Reply { outcome, rate }
    }
}

/// At most [`answer::MAX_ERROR_BODY`] bytes of an answer's body, as text:
/// an error page can be megabytes, or never end.
async fn bounded_text(response: &mut reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = answer::MAX_ERROR_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= answer::MAX_ERROR_BODY {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
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

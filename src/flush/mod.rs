//! The flusher: takes batches from the head of the queue and delivers them to
//! `POST /v1/events/batch` within the request budget. It knows HTTP, the budget
//! and the API's answers, and nothing of logs.
//!
//! This module holds the delivery loop; `sender` sends one batch,
//! `retry` acts on each answer (backoff, splitting, dead letters) and
//! `reload` applies a SIGHUP to the running flusher.

pub mod answer;
pub mod budget;
pub mod pace;
mod reload;
mod retry;
pub mod scrub;
mod sender;
pub mod share;
pub mod simulation;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info};

use self::answer::RateHeaders;
use self::pace::{batch_wait, unix_now, Pacer};
use self::reload::Limits;
pub use self::reload::{Reload, ReloadSlot};
pub use self::retry::backoff;
use self::sender::{Outcome, Reply, Sender};
use self::share::Observation;
use crate::config::{ApiKey, Config};
use crate::event::Timestamp;
use crate::queue::{Batch, Queue, QueueError};

pub const BATCH_PATH: &str = "/v1/events/batch";

/// How often the budget's use is published for `status` and the metrics.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

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
    /// Bumped each time the flusher's loop turns (at least once a second
    /// while it runs): the watchdog's sign of life.
    pub heartbeat: AtomicU64,
    /// What the last answer meant, and when it came.
    pub last_outcome: std::sync::Mutex<Option<(&'static str, std::time::SystemTime)>>,
    /// Answers by HTTP status code.
    pub by_status: std::sync::Mutex<std::collections::BTreeMap<u16, u64>>,
    /// Requests that got no HTTP answer (connection refused, timeout, TLS).
    pub no_answer: AtomicU64,
    /// Requests that carried events sent before (after a failure, a 429,
    /// or as halves of a refused batch).
    pub retries: AtomicU64,
    /// Times a batch ready to go waited for the budget or a Retry-After.
    pub budget_waits: AtomicU64,
    /// When the last batch was accepted.
    pub last_success: std::sync::Mutex<Option<std::time::SystemTime>>,
    /// The last answer that was not an acceptance, and when it came.
    pub last_error: std::sync::Mutex<Option<(String, std::time::SystemTime)>>,
    /// The budget in force: requests per window, the window in ms, and the
    /// requests started in the window ending now (as of the last loop turn).
    pub budget_limit: AtomicU64,
    pub budget_window_ms: AtomicU64,
    pub budget_used: AtomicU64,
    /// The batch bounds in force (a 413 lowers them).
    pub batch_max_events: AtomicU64,
    pub batch_max_bytes: AtomicU64,
}

impl FlushStats {
    /// Answers by status code, as `(code, count)`.
    pub fn answers(&self) -> Vec<(u16, u64)> {
        self.by_status
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }
}

pub struct Flusher {
    sender: Arc<Sender>,
    queue: Arc<Queue>,
    /// Our own budget, the tenant's shared one and Retry-After.
    pacer: Pacer,
    /// Batch sizes, waits and concurrency; the batch bounds shrink on 413.
    limits: Limits,
    stats: Arc<FlushStats>,
    /// Batches already taken from the queue that must be sent again (after a
    /// failure, or as halves of a refused batch) before new ones.
    retry: VecDeque<Batch>,
    /// No request before this: a refused key or a backoff; a reload ends it.
    hold_until: Option<Instant>,
    consecutive_failures: u32,
    last_auth_log: Option<Instant>,
    /// When a 413 for one small event (a proxy's limit, not the API's)
    /// was last logged.
    last_proxy_log: Option<Instant>,
    last_redirect_log: Option<Instant>,
    /// The batch of each request task, to release it if the task fails.
    sending: HashMap<tokio::task::Id, Batch>,
    /// Requests started and not yet answered.
    outstanding: usize,
    /// The configured budget, to see whether a reload changes it.
    budget_config: (u32, Duration),
    /// Whether the last loop turn found a batch held back by the budget
    /// (to count each wait once).
    waiting_on_budget: bool,
    /// When the budget's use was last published to the stats.
    limits_published_at: Instant,
    reloads: ReloadSlot,
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
            pacer: Pacer::new(requests, per, Instant::now(), pace::seed()),
            limits: settings.limits,
            stats,
            retry: VecDeque::new(),
            hold_until: None,
            consecutive_failures: 0,
            last_auth_log: None,
            last_proxy_log: None,
            last_redirect_log: None,
            sending: HashMap::new(),
            outstanding: 0,
            budget_config: (requests, per),
            waiting_on_budget: false,
            limits_published_at: Instant::now()
                .checked_sub(PUBLISH_EVERY)
                .unwrap_or_else(Instant::now),
            reloads: Arc::default(),
        })
    }

    /// Where the pipeline puts a reload.
    pub fn reload_slot(&self) -> ReloadSlot {
        self.reloads.clone()
    }

    /// Delivers until `shutdown` is set, then waits for requests in flight up
    /// to `shutdown_timeout`. Whatever is not acknowledged stays queued.
    pub async fn run(mut self, shutdown: Arc<AtomicBool>) -> Result<(), FlushError> {
        let mut in_flight: JoinSet<(Batch, Reply)> = JoinSet::new();
        let stop = || shutdown.load(Ordering::SeqCst);
        while !stop() {
            self.stats.heartbeat.fetch_add(1, Ordering::Relaxed);
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
            if now >= self.limits_published_at + PUBLISH_EVERY {
                self.publish_limits(now);
            }
            // (Not the budget's spacing of a few ms between requests.)
            let held_by_budget = gate > now + Duration::from_millis(50)
                && in_flight.len() < self.limits.max_in_flight
                && self.hold_until.is_none_or(|h| h < gate)
                && (!self.retry.is_empty() || self.queue.pending_events() > 0);
            if held_by_budget && !self.waiting_on_budget {
                self.stats.budget_waits.fetch_add(1, Ordering::Relaxed);
            }
            self.waiting_on_budget = held_by_budget;
            let max_in_flight = self.limits.max_in_flight;
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
                Some(b) => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    b
                }
                None => match self.next_batch().await? {
                    Ok(b) => b,
                    Err(wait) => {
                        tokio::select! {
                            Some(done) = in_flight.join_next_with_id() => self.completed(done).await?,
                            _ = self.queue.appended.notified() => {}
                            // Bounded, so the loop (and its heartbeat) turns.
                            _ = tokio::time::sleep(wait.min(Duration::from_secs(1))) => {}
                        }
                        continue;
                    }
                },
            };
            self.pacer.started(Instant::now(), unix_now());
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

    /// The budget and batch bounds in force, for `status` and the metrics
    /// (at most every [`PUBLISH_EVERY`]: the loop may turn every few µs).
    fn publish_limits(&mut self, now: Instant) {
        self.limits_published_at = now;
        let s = &self.stats;
        let budget = self.pacer.budget();
        s.budget_limit
            .store(budget.limit() as u64, Ordering::Relaxed);
        s.budget_window_ms
            .store(budget.window().as_millis() as u64, Ordering::Relaxed);
        s.budget_used
            .store(budget.used(now) as u64, Ordering::Relaxed);
        s.batch_max_events
            .store(self.limits.batch_max_events as u64, Ordering::Relaxed);
        s.batch_max_bytes
            .store(self.limits.batch_max_bytes as u64, Ordering::Relaxed);
    }

    /// The earliest time the next request may start.
    fn next_start(&mut self, now: Instant) -> Instant {
        let at = self.pacer.gate(now, unix_now());
        match self.hold_until {
            Some(hold) => at.max(hold),
            None => at,
        }
    }

    /// A new batch from the queue, or how long to wait for one: a partial
    /// batch waits up to its linger for more events (see `pace`).
    async fn next_batch(&mut self) -> Result<Result<Batch, Duration>, FlushError> {
        let (events, bytes) = (self.limits.batch_max_events, self.limits.batch_max_bytes);
        let Some(batch) = self.on_disk(move |q| q.peek_batch(events, bytes)).await? else {
            return Ok(Err(Duration::from_millis(200)));
        };
        let age = Duration::from_micros(
            Timestamp::now()
                .unix_micros
                .saturating_sub(batch.oldest.unix_micros)
                .max(0) as u64,
        );
        let linger = self
            .pacer
            .linger(unix_now(), self.limits.linger, self.limits.max_linger);
        if let Some(wait) = batch_wait(
            batch.events,
            batch.body.len(),
            age,
            self.limits.batch_max_events,
            self.limits.batch_max_bytes,
            linger,
        ) {
            return Ok(Err(wait));
        }
        self.queue.take(&batch);
        Ok(Ok(batch))
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

    /// Shares the tenant's budget with its other clients (see `share`).
    fn follow_rate_headers(&mut self, reply: &Reply) {
        let Some(RateHeaders {
            remaining,
            reset,
            limit,
        }) = reply.rate
        else {
            return;
        };
        let observation = Observation {
            remaining,
            reset,
            limit,
            counted: !matches!(reply.outcome, Outcome::RateLimited(_)),
            other_in_flight: self.outstanding,
        };
        self.pacer.observe(unix_now(), observation);
        let share = self.pacer.share();
        debug!(
            remaining,
            reset,
            others = share.others_in_window(),
            senders = share.senders(),
            reserve = share.reserve(),
            "rate headers"
        );
    }
}

//! Reloading the sender (SIGHUP): the settings a reload may change while the
//! daemon runs ([`Reload`]), the slot where the pipeline leaves one, and how
//! the flusher applies it between requests.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use super::sender::Sender;
use super::{FlushError, Flusher};
use crate::config::{ApiKey, Config};

/// The settings a reload (SIGHUP) may change while the daemon runs: the key,
/// `[api]` (URL, CA file, timeout) and `[delivery]`.
pub struct Reload {
    pub(super) sender: Sender,
    pub(super) budget: (u32, Duration),
    pub(super) limits: Limits,
}

/// The `[delivery]` settings the flusher reads on every batch, set at start
/// and by each reload.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) batch_max_events: usize,
    pub(super) batch_max_bytes: usize,
    pub(super) linger: Duration,
    pub(super) max_linger: Duration,
    pub(super) max_backoff: Duration,
    pub(super) max_in_flight: usize,
    pub(super) shutdown_timeout: Duration,
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
                max_linger: config.delivery.max_linger,
                max_backoff: config.delivery.max_backoff,
                max_in_flight: config.delivery.max_in_flight,
                shutdown_timeout: config.delivery.shutdown_timeout,
            },
        })
    }
}

impl Flusher {
    /// Applies a reload. A request held back by a refused key or a backoff
    /// is tried at once (the fix may be what was reloaded); a server's
    /// Retry-After and the budget still hold.
    pub(super) fn apply(&mut self, r: Reload) {
        self.sender = Arc::new(r.sender);
        if r.budget != self.budget_config {
            let (requests, per) = r.budget;
            self.pacer.reconfigure(requests, per, super::pace::seed());
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
}

//! A local Thoth-compatible ingest endpoint for tests, benchmarks and the demo.
//!
//! It implements the contract of `thoth-api.md` (auth, the per-tenant request
//! budget with its headers, the documented error body, 202 on success) and
//! checks each event against that contract on its own, deliberately *not*
//! through `crate::event`, so a mistake in the event model cannot hide behind
//! the same mistake here. `GET /stats` is this receiver's own addition.
//!
//! This module holds the configuration and the server; `handlers` answers
//! the requests, `state` is what they share, `validate` checks the events,
//! `tls` serves HTTPS and `script` answers from a script.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufWriter;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;

mod handlers;
pub mod script;
mod state;
mod tls;
mod validate;

use self::handlers::{batch, stats};
use self::state::{lock, Inner, Shared};
use self::tls::{tls_acceptor, TlsListener};
pub use self::validate::{validate_batch, validate_batch_with, Checked};

/// The batch endpoint of the API.
const BATCH_PATH: &str = "/v1/events/batch";

#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    pub listen: SocketAddr,
    /// Accepted events are appended here as JSON lines.
    pub store: Option<PathBuf>,
    /// Requests allowed per tenant in each fixed window.
    pub limit: u32,
    pub window: Duration,
    /// Keys accepted; empty means any well-formed key.
    pub api_keys: Vec<String>,
    /// Share of requests answered with 500.
    pub fail_ratio: f64,
    /// Added before every answer to a batch.
    pub latency: Duration,
    /// Bodies larger than this (after any gzip decoding) get 413.
    pub max_body: usize,
    /// Every key is refused (401) for this long after start.
    pub refuse_keys_for: Duration,
    /// Events whose `content` contains this are refused (400), to test how a
    /// client isolates a bad event.
    pub reject_content: Option<String>,
    /// Serve HTTPS with this certificate chain and private key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Answer batches from this script first ([`script`]); plain HTTP only.
    pub script: Option<Vec<script::Step>>,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            store: None,
            limit: 1000,
            window: Duration::from_secs(60),
            api_keys: Vec::new(),
            fail_ratio: 0.0,
            latency: Duration::ZERO,
            max_body: 16 << 20,
            refuse_keys_for: Duration::ZERO,
            reject_content: None,
            tls: None,
            script: None,
        }
    }
}

/// What `GET /stats` reports.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ReceiverStats {
    pub requests: u64,
    pub accepted_events: u64,
    pub unique_event_ids: u64,
    pub duplicate_events: u64,
    pub rejected_events: u64,
    /// Requests whose body came gzip-encoded.
    #[serde(default)]
    pub gzip_requests: u64,
    /// Answers by status code.
    pub status: BTreeMap<u16, u64>,
    /// Requests answered by a step of `--script`.
    #[serde(default)]
    pub scripted: u64,
}

/// A bound receiver, ready to serve.
pub struct Receiver {
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

#[derive(Clone)]
pub struct ReceiverHandle {
    shared: Arc<Shared>,
    pub addr: SocketAddr,
}

impl ReceiverHandle {
    pub fn stats(&self) -> ReceiverStats {
        lock(&self.shared).stats.clone()
    }
}

impl Receiver {
    pub async fn bind(config: ReceiverConfig) -> std::io::Result<(Receiver, ReceiverHandle)> {
        let store = match &config.store {
            Some(p) => Some(BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
            None => None,
        };
        let tls = match &config.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            started: Instant::now(),
            inner: Mutex::new(Inner {
                windows: HashMap::new(),
                stats: ReceiverStats::default(),
                ids: HashSet::new(),
                store,
                request_counter: 0,
            }),
        });
        let handle = ReceiverHandle {
            shared: shared.clone(),
            addr,
        };
        Ok((
            Receiver {
                listener,
                shared,
                tls,
            },
            handle,
        ))
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        if let Some(steps) = self.shared.config.script.clone() {
            if self.tls.is_some() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "--script serves plain HTTP only; drop --tls-cert",
                ));
            }
            let steps = Arc::new(Mutex::new(steps.into()));
            return script::serve(self.listener, self.shared, steps, shutdown).await;
        }
        let app = Router::new()
            // Body size is this receiver's own --max-body check, answered 413.
            .route(
                BATCH_PATH,
                post(batch).layer(axum::extract::DefaultBodyLimit::disable()),
            )
            .route("/healthz", get(|| async { "ok" }))
            .route("/stats", get(stats))
            .with_state(self.shared.clone());
        match self.tls {
            None => {
                axum::serve(self.listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Some(acceptor) => {
                axum::serve(TlsListener::new(self.listener, acceptor), app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        }
    }
}

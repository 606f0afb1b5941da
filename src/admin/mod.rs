//! The admin endpoint of a running daemon: `GET /metrics` (Prometheus
//! text), `/healthz` (the process answers), `/readyz` (sources run and
//! delivery is not stuck; 503 with the reasons) and `/status` (the whole
//! [`report::Report`] as JSON), on loopback TCP or a unix socket.
//!
//! The endpoint only reads: it has no way to change the daemon. It takes
//! no authentication, which is why a non-loopback address needs
//! `allow_remote`. A port in use does not stop the daemon (its events
//! matter more than its metrics): binding is retried every 30 s.
//!
//! `report.rs` makes the report, `metrics.rs` encodes it, `client.rs` is
//! what `thoth-ingest status` asks it with.

mod bounded;
pub mod client;
pub mod metrics;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tracing::{debug, error, info};

use crate::config::AdminListen;
use crate::pipeline::Observed;
use bounded::Bounded;
use report::{Rates, Report};

/// The file a daemon names its bound admin address in, in the state
/// directory (the port the kernel chose for `:0`, for `status`).
pub const ADDRESS_FILE: &str = "admin.addr";

/// How long binding waits before it is tried again.
const BIND_RETRY: Duration = Duration::from_secs(30);

/// What the endpoint reports from, shared with the daemon's loop.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

struct Inner {
    /// None while no pipeline runs (its start waits for disk space).
    observed: Mutex<Option<Observed>>,
    state_dir: PathBuf,
    /// The address bound, to name again once the state directory exists.
    bound: Mutex<Option<String>>,
    rates: Rates,
    /// The sources the applied config names, and the stuck bound.
    expected: Mutex<(Vec<String>, Duration)>,
}

impl Admin {
    pub fn new(state_dir: &Path, configured: Vec<String>, stuck_after: Duration) -> Admin {
        Admin {
            inner: Arc::new(Inner {
                observed: Mutex::new(None),
                state_dir: state_dir.to_path_buf(),
                bound: Mutex::new(None),
                rates: Rates::default(),
                expected: Mutex::new((configured, stuck_after)),
            }),
        }
    }

    /// Reports from this pipeline from now on (None: none runs). Its
    /// counters start again from zero: so do the last minute's rates. A
    /// pipeline that runs has its state directory: the bound address is
    /// named there (again).
    pub fn attach(&self, observed: Option<Observed>) {
        self.inner.rates.restart(observed.as_ref());
        if observed.is_some() {
            self.name_address();
        }
        *self
            .inner
            .observed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = observed;
    }

    fn observed(&self) -> Option<Observed> {
        self.inner
            .observed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// After a reload: the sources the config now names.
    pub fn set_configured(&self, configured: Vec<String>) {
        let mut expected = self
            .inner
            .expected
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        expected.0 = configured;
    }

    /// A report of now; None while no pipeline runs.
    pub fn report(&self) -> Option<Report> {
        let observed = self.observed()?;
        let (configured, stuck_after) = self
            .inner
            .expected
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        Some(report::gather(
            &observed,
            &self.inner.rates,
            &configured,
            stuck_after,
        ))
    }

    /// Samples the delivery counters once a second, for the last minute's
    /// rates; ends with the runtime.
    pub fn start_sampling(&self) {
        let admin = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Some(observed) = admin.observed() {
                    admin.inner.rates.sample(&observed);
                }
            }
        });
    }

    /// Serves the endpoint at `listen` in the background (nothing for
    /// `Off`); names the bound address in the state directory.
    pub fn serve(&self, listen: AdminListen) {
        if listen == AdminListen::Off {
            return;
        }
        let admin = self.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                match admin.bind_and_serve(&listen).await {
                    Ok(()) => return,
                    Err(e) => {
                        if failures == 0 {
                            error!(listen = %describe(&listen), error = %e,
                                "cannot serve the admin endpoint (metrics, status); events still flow; trying again every 30 s");
                        } else {
                            debug!(error = %e, "the admin endpoint still cannot bind");
                        }
                        failures = failures.saturating_add(1);
                        tokio::time::sleep(BIND_RETRY).await;
                    }
                }
            }
        });
    }

    async fn bind_and_serve(&self, listen: &AdminListen) -> std::io::Result<()> {
        let app = Router::new()
            .route("/metrics", get(metrics_page))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/status", get(status))
            .with_state(self.clone());
        match listen {
            AdminListen::Off => Ok(()),
            AdminListen::Tcp(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                let bound = listener.local_addr()?;
                info!(listen = %bound, "admin endpoint: /metrics /healthz /readyz /status");
                self.bound_at(bound.to_string());
                axum::serve(Bounded::new(listener), app).await
            }
            AdminListen::Unix(path) => {
                let listener = bind_unix(path)?;
                info!(listen = %path.display(), "admin endpoint: /metrics /healthz /readyz /status");
                self.bound_at(format!("unix:{}", path.display()));
                axum::serve(Bounded::new(listener), app).await
            }
        }
    }
}

impl Admin {
    fn bound_at(&self, address: String) {
        *self.inner.bound.lock().unwrap_or_else(|p| p.into_inner()) = Some(address);
        self.name_address();
    }

    /// Writes the bound address where `status` looks first (a state
    /// directory not made yet, or a full disk, only delays it).
    fn name_address(&self) {
        let bound = self
            .inner
            .bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(address) = bound else { return };
        if !crate::private_fs::state_dir_is_trusted(&self.inner.state_dir) {
            return; // not ours (yet): the queue's open says why
        }
        let path = self.inner.state_dir.join(ADDRESS_FILE);
        if let Err(e) = write_atomically(&path, address.as_bytes()) {
            debug!(path = %path.display(), error = %e, "cannot name the admin address in the state directory");
        }
    }
}

fn describe(listen: &AdminListen) -> String {
    match listen {
        AdminListen::Off => "off".into(),
        AdminListen::Tcp(a) => a.to_string(),
        AdminListen::Unix(p) => format!("unix:{}", p.display()),
    }
}

/// Binds a unix socket at `path`, replacing a stale socket left by an
/// earlier run, but never another kind of file.
fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    tokio::net::UnixListener::bind(path)
}

/// Replaces `path` with `bytes` whole (a reader never sees half).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("tmp");
    let mut file = crate::private_fs::create_private(&tmp)?;
    std::io::Write::write_all(&mut file, bytes)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Leaves `report` in the state directory, for `status` once the daemon
/// has stopped.
pub fn save_report(state_dir: &Path, report: &Report) {
    let path = state_dir.join(report::STATUS_FILE);
    let written = serde_json::to_vec_pretty(report)
        .map_err(std::io::Error::other)
        .and_then(|bytes| write_atomically(&path, &bytes));
    if let Err(e) = written {
        debug!(path = %path.display(), error = %e, "cannot save the status report");
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// The answer while no pipeline runs.
fn not_running() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the pipeline is not running (its start waits for disk space)\n",
    )
        .into_response()
}

async fn readyz(State(admin): State<Admin>) -> Response {
    let Some(report) = admin.report() else {
        return not_running();
    };
    if report.ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let mut why = report.problems.join("\n");
        why.push('\n');
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    }
}

async fn status(State(admin): State<Admin>) -> Response {
    match admin.report() {
        Some(report) => axum::Json(report).into_response(),
        None => not_running(),
    }
}

async fn metrics_page(State(admin): State<Admin>) -> Response {
    let Some(report) = admin.report() else {
        return not_running();
    };
    match metrics::encode(&report) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}

//! A local Thoth-compatible ingest endpoint for tests, benchmarks and the demo.
//!
//! It implements the contract of `thoth-api.md` (auth, the per-tenant request
//! budget with its headers, the documented error body, 202 on success) and
//! checks each event against that contract on its own, deliberately *not*
//! through `crate::event`, so a mistake in the event model cannot hide behind
//! the same mistake here. `GET /stats` is this receiver's own addition.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

pub mod script;

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

struct Window {
    started: Instant,
    used: u32,
}

struct Inner {
    windows: HashMap<String, Window>,
    stats: ReceiverStats,
    ids: HashSet<Box<str>>,
    store: Option<BufWriter<File>>,
    request_counter: u64,
}

struct Shared {
    config: ReceiverConfig,
    started: Instant,
    inner: Mutex<Inner>,
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

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Inner> {
    shared.inner.lock().unwrap_or_else(|p| p.into_inner())
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

/// A rustls server configuration from PEM files: the certificate chain and
/// its private key.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &std::path::Path, e: &dyn std::fmt::Display| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: {e}", what.display()),
        )
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| invalid(cert, &e))?;
    // The router speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Accepts TCP connections and hands axum those whose TLS handshake
/// succeeded; handshakes run on their own tasks, so a slow or failed one
/// holds up no other connection.
struct TlsListener {
    local: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
}

impl TlsListener {
    fn new(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor) -> TlsListener {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake = acceptor.accept(tcp);
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), handshake).await
                    {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        TlsListener { local, ready }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(lock(&shared).stats.clone()).into_response()
}

fn error_response(status: StatusCode, code: &str, message: String, request_id: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message, "requestId": request_id}});
    (status, axum::Json(body)).into_response()
}

/// The key from `Authorization: Bearer` or `X-Api-Key`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        if let Some(k) = v.strip_prefix("Bearer ") {
            return Some(k.trim());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn well_formed(key: &str) -> bool {
    let body = key
        .strip_prefix("thoth_live_")
        .or_else(|| key.strip_prefix("thoth_test_"));
    matches!(body, Some(b) if !b.is_empty() && b.bytes().all(|c| c.is_ascii_graphic()))
}

async fn batch(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let config = &shared.config;
    if !config.latency.is_zero() {
        tokio::time::sleep(config.latency).await;
    }
    let gzip = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let body: Result<Bytes, StatusCode> = if gzip {
        use std::io::Read;
        let mut out = Vec::new();
        let limit = config.max_body as u64 + 1;
        match flate2::read::GzDecoder::new(&body[..])
            .take(limit)
            .read_to_end(&mut out)
        {
            Ok(_) => Ok(Bytes::from(out)),
            Err(_) => Err(StatusCode::BAD_REQUEST),
        }
    } else {
        Ok(body)
    };
    let too_large = body.as_ref().is_ok_and(|b| b.len() > config.max_body);
    let body = body.unwrap_or_default();
    // Checked before taking the lock, so requests validate in parallel.
    let checked = if too_large {
        Err(String::new())
    } else {
        validate_batch_with(&body, config.reject_content.as_deref())
    };
    if gzip {
        lock(&shared).stats.gzip_requests += 1;
    }
    if too_large || config.refuse_keys_for > shared.started.elapsed() {
        let mut inner = lock(&shared);
        inner.request_counter += 1;
        inner.stats.requests += 1;
        let request_id = format!("req_{:08x}", inner.request_counter);
        let response = if too_large {
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!("body larger than {} bytes", config.max_body),
                &request_id,
            )
        } else {
            error_response(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "key refused".into(),
                &request_id,
            )
        };
        *inner
            .stats
            .status
            .entry(response.status().as_u16())
            .or_default() += 1;
        return response;
    }
    let (response, status) = {
        let mut inner = lock(&shared);
        inner.request_counter += 1;
        let request_id = format!("req_{:08x}", inner.request_counter);
        inner.stats.requests += 1;
        let response = handle_batch(config, &mut inner, &headers, checked, &request_id);
        let status = response.status().as_u16();
        *inner.stats.status.entry(status).or_default() += 1;
        (response, status)
    };
    let _ = status;
    response
}

fn handle_batch(
    config: &ReceiverConfig,
    inner: &mut Inner,
    headers: &HeaderMap,
    checked: Result<Vec<Checked<'_>>, String>,
    request_id: &str,
) -> Response {
    let key = match presented_key(headers) {
        Some(k)
            if well_formed(k)
                && (config.api_keys.is_empty() || config.api_keys.iter().any(|a| a == k)) =>
        {
            k.to_string()
        }
        presented => {
            let message = if presented.is_some() {
                "invalid API key"
            } else {
                "missing API key"
            };
            let mut r = error_response(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                message.into(),
                request_id,
            );
            // No tenant is known, so the headers show an untouched window.
            let reset = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                + config.window;
            for (name, value) in [
                ("x-ratelimit-limit", config.limit.to_string()),
                ("x-ratelimit-remaining", config.limit.to_string()),
                ("x-ratelimit-reset", reset.as_secs().to_string()),
            ] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    r.headers_mut().insert(name, v);
                }
            }
            return r;
        }
    };
    // The tenant's budget: a key belongs to one tenant, so the window is per key.
    let now = Instant::now();
    let window = inner.windows.entry(key).or_insert(Window {
        started: now,
        used: 0,
    });
    if now.duration_since(window.started) >= config.window {
        let periods =
            now.duration_since(window.started).as_nanos() / config.window.as_nanos().max(1);
        window.started += config.window * periods as u32;
        window.used = 0;
    }
    let reset_in = (window.started + config.window).saturating_duration_since(now);
    let reset_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        + reset_in;
    let reset_unix = reset_at.as_secs() + u64::from(reset_at.subsec_nanos() > 0);
    let limited = window.used >= config.limit;
    if !limited {
        window.used += 1;
    }
    let remaining = config.limit - window.used;
    let rate_headers = [
        ("x-ratelimit-limit", config.limit.to_string()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-reset", reset_unix.to_string()),
    ];
    let mut response = if limited {
        let retry = reset_in.as_secs() + u64::from(reset_in.subsec_nanos() > 0);
        let mut r = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            format!(
                "rate limit of {} requests per {:?} exceeded",
                config.limit, config.window
            ),
            request_id,
        );
        r.headers_mut()
            .insert("retry-after", HeaderValue::from(retry.max(1)));
        r
    } else if config.fail_ratio > 0.0 && rand::random::<f64>() < config.fail_ratio {
        error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "injected failure".into(),
            request_id,
        )
    } else {
        match checked {
            Err(message) => {
                inner.stats.rejected_events += 1;
                error_response(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    message,
                    request_id,
                )
            }
            Ok(events) => {
                accept(inner, &events);
                (
                    StatusCode::ACCEPTED,
                    axum::Json(json!({"accepted": events.len(), "requestId": request_id})),
                )
                    .into_response()
            }
        }
    };
    for (name, value) in rate_headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

fn accept(inner: &mut Inner, events: &[Checked<'_>]) {
    for e in events {
        inner.stats.accepted_events += 1;
        if inner.ids.insert(e.event_id.as_ref().into()) {
            inner.stats.unique_event_ids += 1;
        } else {
            inner.stats.duplicate_events += 1;
        }
        if let Some(store) = inner.store.as_mut() {
            let raw = e.raw.get();
            if raw.contains('\n') {
                // Pretty-printed by the sender: one line per event in the store.
                let v: Value = serde_json::from_str(raw).unwrap_or_default();
                let _ = serde_json::to_writer(&mut *store, &v);
            } else {
                let _ = store.write_all(raw.as_bytes());
            }
            let _ = store.write_all(b"\n");
        }
    }
    if let Some(store) = inner.store.as_mut() {
        let _ = store.flush();
    }
}

const EVENT_TYPES: &[&str] = &[
    "TOOL_CALL_PRE",
    "TOOL_CALL_POST",
    "TOOL_CALL_BLOCK",
    "LLM_INVOCATION",
];
const SOURCE_TYPES: &[&str] = &["agent_tool_call", "agent_llm_invocation"];
const MODES: &[&str] = &["observe", "step_up", "block", "progressive"];

/// An event that passed the checks: its id and its JSON as sent.
#[derive(Debug)]
pub struct Checked<'a> {
    pub event_id: std::borrow::Cow<'a, str>,
    pub raw: &'a serde_json::value::RawValue,
}

/// The event fields thoth-api.md names, typed as it says. Fields it does not
/// name (the older model's `hostname`, `chain_index`, ...) are allowed.
#[derive(serde::Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow)]
    event_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    tenant_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    session_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    user_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    agent_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    source_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    event_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    tool_name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    metadata: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    approved_scope: Option<Vec<std::borrow::Cow<'a, str>>>,
    #[serde(borrow)]
    enforcement_mode: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    session_tool_calls: Option<Vec<std::borrow::Cow<'a, str>>>,
    #[serde(borrow)]
    occurred_at: Option<std::borrow::Cow<'a, str>>,
    ttl: Option<i64>,
    #[serde(default, borrow)]
    violation_id: Option<std::borrow::Cow<'a, str>>,
}

/// Checks a body against thoth-api.md; the message names the event and field.
pub fn validate_batch(body: &[u8]) -> Result<Vec<Checked<'_>>, String> {
    validate_batch_with(body, None)
}

/// [`validate_batch`], also refusing events whose content contains `reject`.
pub fn validate_batch_with<'a>(
    body: &'a [u8],
    reject: Option<&str>,
) -> Result<Vec<Checked<'a>>, String> {
    let events: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body).map_err(|e| {
        if body.first().is_some_and(|b| *b == b'[') {
            format!("body is not a JSON array of events: {e}")
        } else {
            "body must be a JSON array of events".to_string()
        }
    })?;
    events
        .into_iter()
        .enumerate()
        .map(|(i, raw)| validate_event(raw, reject).map_err(|m| format!("event {i}: {m}")))
        .collect()
}

fn validate_event<'a>(
    raw: &'a serde_json::value::RawValue,
    reject: Option<&str>,
) -> Result<Checked<'a>, String> {
    if !raw.get().starts_with('{') {
        return Err("not a JSON object".into());
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let e: WireEvent = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let field = err.path().to_string();
        let inner = err.into_inner().to_string();
        let inner = inner
            .split(" at line")
            .next()
            .unwrap_or_default()
            .to_string();
        format!("field `{field}`: {inner}")
    })?;
    let required = |v: &Option<std::borrow::Cow<'_, str>>, k: &str| match v {
        Some(_) => Ok(()),
        None => Err(format!("field `{k}` is required")),
    };
    required(&e.event_id, "event_id")?;
    required(&e.tenant_id, "tenant_id")?;
    required(&e.session_id, "session_id")?;
    required(&e.user_id, "user_id")?;
    required(&e.event_type, "event_type")?;
    if e.tenant_id.as_deref().is_some_and(str::is_empty) {
        return Err("field `tenant_id` must not be empty".into());
    }
    let one_of =
        |v: &Option<std::borrow::Cow<'_, str>>, k: &str, allowed: &[&str]| match v.as_deref() {
            Some(s) if !allowed.contains(&s) => Err(format!(
                "field `{k}`: \"{s}\" is not one of {}",
                allowed.join(", ")
            )),
            _ => Ok(()),
        };
    one_of(&e.source_type, "source_type", SOURCE_TYPES)?;
    one_of(&e.event_type, "event_type", EVENT_TYPES)?;
    one_of(&e.enforcement_mode, "enforcement_mode", MODES)?;
    if e.metadata.is_some_and(|m| !m.get().starts_with('{')) {
        return Err("field `metadata` must be an object".into());
    }
    if let Some(t) = e.occurred_at.as_deref() {
        if !is_rfc3339_with_offset(t) {
            return Err(format!(
                "field `occurred_at`: \"{t}\" is not an RFC 3339 timestamp with offset"
            ));
        }
    }
    if let (Some(bad), Some(content)) = (reject, e.content.as_deref()) {
        if content.contains(bad) {
            return Err(format!(
                "field `content`: contains `{bad}`, refused by this receiver"
            ));
        }
    }
    let _ = (&e.agent_id, &e.tool_name, &e.approved_scope);
    let _ = (&e.session_tool_calls, &e.ttl, &e.violation_id);
    Ok(Checked {
        event_id: e.event_id.unwrap_or_default(),
        raw,
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)`, checked by shape.
fn is_rfc3339_with_offset(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Value {
        json!({
          "event_id": "acme:1", "tenant_id": "acme", "agent_id": null, "session_id": "s",
          "user_id": "u", "source_type": "agent_tool_call", "event_type": "TOOL_CALL_PRE",
          "tool_name": "t", "content": "c", "metadata": {}, "approved_scope": [],
          "enforcement_mode": "observe", "session_tool_calls": [],
          "occurred_at": "2026-03-13T12:00:00.123456+00:00", "ttl": 1781352000, "violation_id": null
        })
    }

    #[test]
    fn validation_names_event_and_field() {
        assert!(validate_batch(&serde_json::to_vec(&json!([event()])).unwrap()).is_ok());
        let mut bad = event();
        bad["metadata"] = json!("text");
        let e = validate_batch(&serde_json::to_vec(&json!([bad])).unwrap())
            .err()
            .unwrap();
        assert!(e.starts_with("event 0: field `metadata`"), "{e}");
        let mut bad = event();
        bad["ttl"] = json!("soon");
        let e = validate_batch(&serde_json::to_vec(&json!([bad])).unwrap())
            .err()
            .unwrap();
        assert!(e.starts_with("event 0: field `ttl`"), "{e}");
        let mut bad = event();
        bad["approved_scope"] = json!([1]);
        assert!(validate_batch(&serde_json::to_vec(&json!([bad])).unwrap()).is_err());
        let mut bad = event();
        bad.as_object_mut().unwrap().remove("session_id");
        let e = validate_batch(&serde_json::to_vec(&json!([event(), bad])).unwrap()).unwrap_err();
        assert_eq!(e, "event 1: field `session_id` is required");
        let mut bad = event();
        bad["occurred_at"] = json!("2026-03-13 12:00");
        assert!(validate_batch(&serde_json::to_vec(&json!([bad])).unwrap()).is_err());
        let mut bad = event();
        bad["event_type"] = json!("TOOL_CALL");
        assert!(validate_batch(&serde_json::to_vec(&json!([bad])).unwrap()).is_err());
        assert!(validate_batch(b"{}").is_err());
        assert!(validate_batch(b"[").is_err());
    }

    #[test]
    fn rfc3339_shapes() {
        assert!(is_rfc3339_with_offset("2026-03-13T12:00:00Z"));
        assert!(is_rfc3339_with_offset("2026-03-13T12:00:00.1-05:30"));
        assert!(!is_rfc3339_with_offset("2026-03-13T12:00:00"));
        assert!(!is_rfc3339_with_offset("2026-03-13T12:00:00."));
    }
}

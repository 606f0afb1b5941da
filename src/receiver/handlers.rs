//! The HTTP handlers: `POST /v1/events/batch` (gzip, the body limit, the
//! key, the per-key request budget with its headers, injected failures and
//! latency, the documented error body, 202 on success) and `GET /stats`.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::state::{accept, lock, Inner, Shared, Window};
use super::validate::{validate_batch_with, Checked};
use super::ReceiverConfig;

pub(super) async fn stats(State(shared): State<Arc<Shared>>) -> Response {
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

pub(super) async fn batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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

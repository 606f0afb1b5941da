//! Sending one batch: the HTTP client built from the config and the key
//! (headers, CA file, timeouts, no redirects, no proxy for plain http), the
//! request with its optional gzip body, and what the answer means for the
//! batch ([`Outcome`]). It keeps no state between requests.

use std::io::Write as _;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};

use super::answer::{self, ErrorBody, RateHeaders};
use super::scrub::Scrubber;
use super::{FlushError, BATCH_PATH};
use crate::config::{ApiKey, Compression, Config};
use crate::queue::Batch;

/// What an answer means for the batch.
#[derive(Debug)]
pub(super) enum Outcome {
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

impl Outcome {
    /// A few words for the operator (`STATUS=`, logs).
    pub(super) fn summary(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::RateLimited(_) => "429 rate limited",
            Outcome::BadRequest(_) => "400 refused",
            Outcome::TooLarge => "413 too large",
            Outcome::Unauthorized(..) => "key refused",
            Outcome::Redirected(..) => "redirected (not followed)",
            Outcome::Transient(_) => "network error or 5xx",
        }
    }
}

#[derive(Debug)]
pub(super) struct Reply {
    pub(super) outcome: Outcome,
    /// The HTTP status, if an answer came at all.
    pub(super) status: Option<u16>,
    /// The `X-RateLimit-*` headers, when present and sensible.
    pub(super) rate: Option<RateHeaders>,
}

/// What sending needs, shared by the request tasks.
pub(super) struct Sender {
    client: reqwest::Client,
    url: String,
    compression: Compression,
    /// Cuts the key out of what the server says.
    scrub: Scrubber,
}

impl Sender {
    pub(super) fn new(config: &Config, key: &ApiKey) -> Result<Sender, FlushError> {
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
            scrub: Scrubber::new(key.expose()),
        })
    }
}

impl Sender {
    pub(super) async fn send(&self, batch: &Batch) -> Reply {
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
                    outcome: Outcome::Transient(self.scrub.scrub(&without_url(&e))),
                    status: None,
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
                    .map(|l| self.scrub.scrub(l).chars().take(200).collect())
                    .unwrap_or_else(|| "(no Location)".to_string());
                Outcome::Redirected(status, location)
            }
            429 => Outcome::RateLimited(
                answer::retry_after(response.headers(), now).unwrap_or(Duration::from_secs(1)),
            ),
            413 => Outcome::TooLarge,
            400 | 401 | 403 => {
                let detail = self.error_body(&mut response).await;
                if status == 400 {
                    Outcome::BadRequest(detail)
                } else {
                    Outcome::Unauthorized(status, detail)
                }
            }
            other => {
                let detail = self.error_body(&mut response).await;
                Outcome::Transient(format!(
                    "HTTP {other} {} {} {}",
                    detail.code, detail.message, detail.request_id
                ))
            }
        };
        Reply {
            outcome,
            status: Some(status),
            rate,
        }
    }
}

impl Sender {
    /// The answer's error body, its fields scrubbed of the key and of
    /// secrets before anything keeps them.
    async fn error_body(&self, response: &mut reqwest::Response) -> ErrorBody {
        // Scrubbed whole first: a key cut in two by a field's length bound
        // would no longer be recognised.
        let parsed = ErrorBody::parse(&self.scrub.scrub(&bounded_text(response).await));
        ErrorBody {
            code: self.scrub.scrub(&parsed.code),
            message: self.scrub.scrub(&parsed.message),
            request_id: self.scrub.scrub(&parsed.request_id),
        }
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

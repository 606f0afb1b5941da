//! The receiver's scripted mode (`receiver --script FILE`): answers the way
//! proxies, load balancers and buggy gateways do, to test the daemon against
//! them. Each request to the batch endpoint takes the next step of the
//! script; once the script is used up, every request gets the receiver's own
//! healthy answer.
//!
//! HTTP is spoken by hand here, on purpose: a scripted answer must be able to
//! do what no well-behaved server library lets a handler do (close the
//! connection halfway through the head, send an absurd header). Each
//! connection carries one request and is closed after the answer.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{lock, Shared};

/// Longest request head read.
const MAX_HEAD: usize = 64 << 10;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One scripted answer, a line of the script file (JSON).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The status to answer; absent: the receiver's own answer.
    pub status: Option<u16>,
    /// Extra headers, sent as they are (nothing is checked).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body. `{head}` in it (and in header values) stands for the
    /// request's head as it came, `{head_json}` for the same escaped as the
    /// inside of a JSON string: a server or proxy that echoes the request.
    #[serde(default)]
    pub body: String,
    /// Wait this long before answering (or closing).
    #[serde(default)]
    pub delay_ms: u64,
    /// Store the batch's events before answering: a server that accepted
    /// the batch and then answered oddly, or not at all.
    #[serde(default)]
    pub accept: bool,
    /// Cut the connection instead of answering in full.
    pub close: Option<Close>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Close {
    /// Close without writing a byte.
    NoAnswer,
    /// Write the first half of the answer's head, then close.
    MidAnswer,
}

/// Reads a script: one [`Step`] per line, blank lines and `#` comments skipped.
pub fn load(path: &Path) -> Result<Vec<Step>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut steps = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let step: Step = serde_json::from_str(line)
            .map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))?;
        if let Some(s) = step.status {
            if !(200..=599).contains(&s) {
                return Err(format!(
                    "{} line {}: status {s} is not between 200 and 599",
                    path.display(),
                    i + 1
                ));
            }
        }
        steps.push(step);
    }
    Ok(steps)
}

/// The script's steps not yet used, shared by the connections.
pub type Steps = Arc<Mutex<VecDeque<Step>>>;

/// Serves until `shutdown` completes.
pub(super) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    steps: Steps,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let shared = shared.clone();
        let steps = steps.clone();
        tokio::spawn(async move {
            let _ = connection(stream, shared, steps).await;
        });
    }
}

/// A request as read off the wire.
struct Request {
    /// The request line and headers as they came, for echoes.
    head: String,
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

async fn connection(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    steps: Steps,
) -> std::io::Result<()> {
    let limit = shared.config.max_body.saturating_add(1 << 20);
    let Some(mut request) = tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream, limit))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??
    else {
        return Ok(());
    };
    let answer = match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/stats") => {
            let stats = lock(&shared).stats.clone();
            let body = serde_json::to_vec(&stats).unwrap_or_default();
            raw_answer(200, &[("Content-Type", "application/json")], &body)
        }
        ("GET", "/healthz") => raw_answer(200, &[], b"ok"),
        ("POST", super::BATCH_PATH) => {
            let step = steps.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            match step {
                None => own_answer(&shared, request).await,
                Some(step) => {
                    lock(&shared).stats.scripted += 1;
                    let answer = match step.status {
                        None => own_answer(&shared, request).await,
                        Some(status) => {
                            let head = std::mem::take(&mut request.head);
                            if step.accept {
                                own_answer(&shared, request).await;
                            }
                            let mut inner = lock(&shared);
                            inner.stats.requests += 1;
                            *inner.stats.status.entry(status).or_default() += 1;
                            drop(inner);
                            let head_line = head.replace("\r\n", "; ");
                            let values: Vec<String> = step
                                .headers
                                .iter()
                                .map(|(_, v)| echo(v, &head_line))
                                .collect();
                            let headers: Vec<(&str, &str)> = step
                                .headers
                                .iter()
                                .zip(&values)
                                .map(|((k, _), v)| (k.as_str(), v.as_str()))
                                .collect();
                            raw_answer(status, &headers, echo(&step.body, &head).as_bytes())
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(step.delay_ms)).await;
                    match step.close {
                        None => answer,
                        Some(Close::NoAnswer) => return Ok(()),
                        Some(Close::MidAnswer) => {
                            let half = (answer_head_len(&answer) / 2).max(1);
                            return write(&mut stream, &answer[..half]).await;
                        }
                    }
                }
            }
        }
        _ => raw_answer(404, &[], b""),
    };
    write(&mut stream, &answer).await
}

/// `text` with `{head}` and `{head_json}` replaced by the request's head.
fn echo(text: &str, head: &str) -> String {
    if !text.contains("{head") {
        return text.to_string();
    }
    let json = serde_json::to_string(head).unwrap_or_default();
    let json = json.trim_start_matches('"').trim_end_matches('"');
    text.replace("{head_json}", json).replace("{head}", head)
}

async fn write(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// The receiver's own answer to a batch (events stored, stats counted), as
/// bytes on the wire.
async fn own_answer(shared: &Arc<Shared>, request: Request) -> Vec<u8> {
    let response = super::batch(State(shared.clone()), request.headers, request.body).await;
    let status = response.status().as_u16();
    let headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(k, _)| *k != "content-length")
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    raw_answer(status, &headers, &body)
}

/// An HTTP/1.1 answer that closes the connection.
fn raw_answer(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} Scripted\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn answer_head_len(answer: &[u8]) -> usize {
    find(answer, b"\r\n\r\n").map_or(answer.len(), |i| i + 4)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One request, or None when the client closed before sending one. The
/// body needs a Content-Length of at most `max_body` (the daemon sends one).
async fn read_request(stream: &mut TcpStream, max_body: usize) -> std::io::Result<Option<Request>> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut buf = Vec::with_capacity(8192);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("request head too long"));
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| invalid("head is not UTF-8"))?
        .to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_string();
    let path = request_line.next().unwrap_or_default().to_string();
    let mut headers = HeaderMap::new();
    let mut length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| invalid("bad Content-Length"))?;
            if length > max_body {
                return Err(invalid("body too large"));
            }
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    let mut body = buf.split_off(head_end + 4);
    if body.len() < length {
        let have = body.len();
        body.resize(length, 0);
        stream.read_exact(&mut body[have..]).await?;
    }
    body.truncate(length);
    Ok(Some(Request {
        head,
        method,
        path,
        headers,
        body: body.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("script.jsonl");
        std::fs::write(
            &path,
            "# a comment\n{\"status\": 429, \"headers\": [[\"Retry-After\", \"-5\"]]}\n\n{\"close\": \"mid_answer\", \"accept\": true}\n{\"status\": 700}\n",
        )
        .unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.contains("line 5") && e.contains("700"), "{e}");
        std::fs::write(&path, "{\"status\": 429}\n{\"stauts\": 1}\n").unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.contains("line 2") && e.contains("stauts"), "{e}");
        std::fs::write(&path, "{\"status\": 302, \"headers\": [[\"Location\", \"http://x\"]]}\n{\"close\": \"no_answer\"}\n").unwrap();
        let steps = load(&path).unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1].close, Some(Close::NoAnswer));
        assert_eq!(steps[0].headers[0].0, "Location");
    }
}

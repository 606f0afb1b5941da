//! What `thoth-ingest status` asks the admin endpoint with: one HTTP/1.0
//! GET over loopback TCP or a unix socket, read to its end. A few lines
//! instead of an HTTP client crate, because reqwest speaks no unix
//! sockets; the peer is our own server, and the answer is bounded in time
//! and size all the same.

use std::io::{Read, Write};
use std::time::Duration;

use crate::config::AdminListen;

/// The most of an answer read (a report of many sources is some KiB).
const MAX_ANSWER: u64 = 16 << 20;
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens there: the daemon is not running (or serves no
    /// endpoint).
    #[error("nothing answers at {0}")]
    NotListening(String),
    #[error("asking {at}: {err}")]
    Io { at: String, err: std::io::Error },
    #[error("{0} answered something that is not HTTP")]
    NotHttp(String),
}

/// The status code and body of `GET path` at `endpoint`.
pub fn get(endpoint: &AdminListen, path: &str) -> Result<(u16, String), ClientError> {
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: thoth-ingest-status\r\n\r\n"
    );
    let (at, answer) = match endpoint {
        AdminListen::Off => return Err(ClientError::NotListening("off".into())),
        AdminListen::Tcp(addr) => {
            let at = addr.to_string();
            let stream = std::net::TcpStream::connect_timeout(addr, TIMEOUT)
                .map_err(|err| connect_error(&at, err))?;
            (
                at.clone(),
                exchange(stream, &request).map_err(|err| ClientError::Io { at, err })?,
            )
        }
        AdminListen::Unix(path) => {
            let at = format!("unix:{}", path.display());
            let stream = std::os::unix::net::UnixStream::connect(path)
                .map_err(|err| connect_error(&at, err))?;
            (
                at.clone(),
                exchange(stream, &request).map_err(|err| ClientError::Io { at, err })?,
            )
        }
    };
    parse_answer(&answer).ok_or(ClientError::NotHttp(at))
}

fn connect_error(at: &str, err: std::io::Error) -> ClientError {
    use std::io::ErrorKind::{ConnectionRefused, NotFound};
    match err.kind() {
        ConnectionRefused | NotFound => ClientError::NotListening(at.to_string()),
        _ => ClientError::Io {
            at: at.to_string(),
            err,
        },
    }
}

trait Stream: Read + Write {
    fn set_timeouts(&self) -> std::io::Result<()>;
}

impl Stream for std::net::TcpStream {
    fn set_timeouts(&self) -> std::io::Result<()> {
        self.set_read_timeout(Some(TIMEOUT))?;
        self.set_write_timeout(Some(TIMEOUT))
    }
}

impl Stream for std::os::unix::net::UnixStream {
    fn set_timeouts(&self) -> std::io::Result<()> {
        self.set_read_timeout(Some(TIMEOUT))?;
        self.set_write_timeout(Some(TIMEOUT))
    }
}

fn exchange(mut stream: impl Stream, request: &str) -> std::io::Result<Vec<u8>> {
    stream.set_timeouts()?;
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer)?;
    Ok(answer)
}

/// `HTTP/1.x CODE ...`, headers, a blank line, the body.
fn parse_answer(answer: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status_line = head.lines().next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?.parse().ok()?;
    Some((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_or_refused() {
        assert_eq!(
            parse_answer(b"HTTP/1.0 503 Service Unavailable\r\ncontent-length: 3\r\n\r\nno\n"),
            Some((503, "no\n".to_string()))
        );
        assert_eq!(parse_answer(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_answer(b"HTTP/1.1 abc\r\n\r\n"), None);
    }
}

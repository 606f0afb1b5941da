//! The network against the daemon (issue 11): answers a proxy, a load
//! balancer or a buggy gateway could give. A scripted server answers each
//! request with the next of its answers; the real binary must neither panic
//! nor stall, follow no redirect, send the key nowhere else, and deliver
//! every event under its id once the answers turn healthy.

use crate::common;

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// One request as the scripted server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    has_key: bool,
    body: Vec<u8>,
    /// The status it was answered with.
    status: u16,
}

/// Answers each request with the next scripted answer, then with the last
/// one forever; closes the connection after each answer.
struct Scripted {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    fn start(answers: Vec<String>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let mut answers: VecDeque<String> = answers.into();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let answer = if answers.len() > 1 {
                    answers.pop_front().unwrap()
                } else {
                    answers.front().cloned().unwrap_or_default()
                };
                if let Some(seen) = serve(stream, &answer) {
                    record.lock().unwrap().push(seen);
                }
            }
        });
        Scripted { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The `seq`s of the events of every request answered 2xx.
    fn accepted_seqs(&self) -> Vec<u64> {
        let mut seqs = Vec::new();
        for s in self.seen() {
            if (200..300).contains(&s.status) {
                let events: Vec<serde_json::Value> = serde_json::from_slice(&s.body).unwrap();
                seqs.extend(
                    events
                        .iter()
                        .map(|e| e["metadata"]["seq"].as_u64().unwrap()),
                );
            }
        }
        seqs
    }

    fn wait_accepted(&self, want: usize, timeout: Duration) -> Vec<u64> {
        let start = Instant::now();
        loop {
            let seqs = self.accepted_seqs();
            if seqs.len() >= want {
                return seqs;
            }
            assert!(
                start.elapsed() < timeout,
                "{} of {want} events accepted; requests: {:?}",
                seqs.len(),
                self.seen()
                    .iter()
                    .map(|s| (s.method.clone(), s.status))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Reads one request, writes `answer`, closes.
fn serve(stream: TcpStream, answer: &str) -> Option<Seen> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let method = request_line.split(' ').next()?.to_string();
    let mut length = 0usize;
    let mut has_key = false;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        has_key |= lower.starts_with("x-api-key:") || lower.starts_with("authorization:");
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let mut stream = stream;
    stream.write_all(answer.as_bytes()).ok()?;
    let _ = stream.flush();
    Some(Seen {
        method,
        has_key,
        body,
        status,
    })
}

/// An HTTP/1.1 answer with `headers` (each "Name: value") and an empty body.
fn answer(status: u16, headers: &[String]) -> String {
    let mut a = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n");
    for h in headers {
        a.push_str(h);
        a.push_str("\r\n");
    }
    a.push_str("\r\n");
    a
}

fn accepted() -> String {
    answer(202, &[])
}

fn config_for(dir: &Path, server: &str, delivery: &str) -> std::path::PathBuf {
    write_config_with(
        dir,
        server,
        &format!("batch_max_events = 5\nmax_backoff = \"2s\"\n{delivery}"),
    )
}

fn logged(dir: &Path, config: &Path, setup: impl FnOnce(&mut std::process::Command)) -> Daemon {
    let err = std::fs::File::create(dir.join("daemon.err")).unwrap();
    start_daemon_cmd(config, |c| {
        c.env("THOTH_API_KEY", KEY).stderr(err);
        setup(c);
    })
}

fn unique(seqs: &[u64]) -> BTreeSet<u64> {
    seqs.iter().copied().collect()
}

#[test]
fn absurd_rate_numbers_neither_panic_nor_stall_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let huge = "18446744073709551615";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let server = Scripted::start(vec![
        answer(429, &[format!("Retry-After: {huge}")]),
        answer(
            202,
            &[
                format!("X-RateLimit-Reset: {huge}"),
                "X-RateLimit-Remaining: 0".into(),
                "X-RateLimit-Limit: 20".into(),
            ],
        ),
        answer(
            202,
            &[
                format!("X-RateLimit-Reset: {}", now + 1_000_000_000),
                "X-RateLimit-Remaining: 0".into(),
                "X-RateLimit-Limit: 20".into(),
            ],
        ),
        answer(429, &["Retry-After: -5".into()]),
        answer(
            202,
            &[
                format!("X-RateLimit-Reset: {}", now + 30),
                "X-RateLimit-Remaining: 99".into(),
                "X-RateLimit-Limit: 20".into(),
            ],
        ),
        answer(429, &["Retry-After: 1e9".into()]),
        accepted(),
    ]);
    let config = config_for(dir.path(), &server.addr, "");
    append_lines(&dir.path().join("logs/a.jsonl"), 0..40);
    let mut daemon = logged(dir.path(), &config, |_| {});
    // max_backoff is 2 s: every absurd wait is cut to it, and ignored
    // headers leave the budget alone.
    let seqs = server.wait_accepted(40, Duration::from_secs(40));
    assert_eq!(unique(&seqs), (0..40).collect());
    assert!(daemon.try_wait().unwrap().is_none(), "still running");
    assert!(terminate(&mut daemon).success());
    let log = std::fs::read_to_string(dir.path().join("daemon.err")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains("x-ratelimit-reset"),
        "the header is named:\n{log}"
    );
}

#[test]
fn redirects_are_not_followed_and_the_key_goes_nowhere_else() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = Scripted::start(vec![accepted()]);
    let location = format!("Location: http://{}/v1/events/batch", elsewhere.addr);
    let server = Scripted::start(vec![
        answer(307, std::slice::from_ref(&location)),
        answer(308, std::slice::from_ref(&location)),
        answer(302, std::slice::from_ref(&location)),
        answer(301, &[]),
        accepted(),
    ]);
    let config = config_for(dir.path(), &server.addr, "");
    append_lines(&dir.path().join("logs/a.jsonl"), 0..20);
    let mut daemon = logged(dir.path(), &config, |_| {});
    let seqs = server.wait_accepted(20, Duration::from_secs(40));
    assert_eq!(unique(&seqs), (0..20).collect());
    assert!(terminate(&mut daemon).success());
    assert!(
        elsewhere.seen().is_empty(),
        "the other origin got {:?}",
        elsewhere.seen()
    );
    assert!(server.seen().iter().all(|s| s.method == "POST"));
    let log = std::fs::read_to_string(dir.path().join("daemon.err")).unwrap();
    assert!(log.contains("redirect"), "{log}");
    assert!(
        log.contains(&elsewhere.addr),
        "the Location is named:\n{log}"
    );
}

#[test]
fn a_plain_http_url_never_goes_through_a_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Scripted::start(vec![answer(502, &[])]);
    let server = Scripted::start(vec![accepted()]);
    let config = config_for(dir.path(), &server.addr, "");
    append_lines(&dir.path().join("logs/a.jsonl"), 0..10);
    let proxy_url = format!("http://{}", proxy.addr);
    let mut daemon = logged(dir.path(), &config, |c| {
        c.env("HTTP_PROXY", &proxy_url)
            .env("http_proxy", &proxy_url)
            .env("ALL_PROXY", &proxy_url)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
    });
    let seqs = server.wait_accepted(10, Duration::from_secs(30));
    assert_eq!(unique(&seqs), (0..10).collect());
    assert!(terminate(&mut daemon).success());
    assert!(
        proxy.seen().is_empty(),
        "the proxy saw {} requests, {} with the key",
        proxy.seen().len(),
        proxy.seen().iter().filter(|s| s.has_key).count()
    );
}

/// A panic in a delivery task or a source thread ends the process with a
/// non-zero status and its message; the next start delivers everything.
#[test]
fn a_panic_ends_the_daemon_loudly_and_loses_nothing() {
    for hook in ["panic-delivery", "panic-source"] {
        let dir = tempfile::tempdir().unwrap();
        let receiver = ReceiverProc::start(dir.path(), &[]);
        let config = write_config(dir.path(), &receiver.addr, "");
        append_lines(&dir.path().join("logs/a.jsonl"), 0..50);
        let mut daemon = logged(dir.path(), &config, |c| {
            c.env("THOTH_INGEST_TEST_HOOK", hook);
        });
        let start = Instant::now();
        let status = loop {
            if let Some(s) = daemon.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{hook}: the daemon kept running after a panic"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!status.success(), "{hook}: {status}");
        let log = std::fs::read_to_string(dir.path().join("daemon.err")).unwrap();
        assert!(
            log.contains("panicked") && log.contains(hook),
            "{hook}:\n{log}"
        );
        let mut again = start_daemon(&config);
        let seqs = wait_seqs(&receiver, 50, Duration::from_secs(30));
        assert_eq!(seqs, (0..50).collect(), "{hook}");
        assert!(terminate(&mut again).success());
        let ids = ids_by_seq(&receiver.stored());
        assert!(ids.values().all(|s| s.len() == 1), "{hook}: one id a line");
    }
}

/// A 400 without the API's error body comes from something in between (a
/// WAF, a proxy): it says nothing about the event, which is kept and sent
/// again rather than set aside.
#[test]
fn a_400_that_is_not_the_apis_sets_nothing_aside() {
    let dir = tempfile::tempdir().unwrap();
    let html = "<html><body>Request blocked</body></html>";
    let refused = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
        html.len()
    );
    let server = Scripted::start(vec![refused.clone(), refused.clone(), refused, accepted()]);
    let config = config_for(dir.path(), &server.addr, "");
    append_lines(&dir.path().join("logs/a.jsonl"), 0..1);
    let mut daemon = logged(dir.path(), &config, |_| {});
    let seqs = server.wait_accepted(1, Duration::from_secs(30));
    assert_eq!(seqs, [0]);
    assert!(terminate(&mut daemon).success());
    let statuses: Vec<u16> = server.seen().iter().map(|s| s.status).collect();
    assert_eq!(statuses, [400, 400, 400, 202]);
    let listed = std::process::Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "dead-letter", "list"])
        .output()
        .unwrap();
    assert!(listed.status.success());
    assert!(listed.stdout.is_empty(), "nothing set aside");
    let said = String::from_utf8_lossy(&listed.stderr);
    assert!(said.contains("0 dead letter(s)"), "{said}");
    let log = std::fs::read_to_string(dir.path().join("daemon.err")).unwrap();
    assert!(log.contains("without the API's error body"), "{log}");
}

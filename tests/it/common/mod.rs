//! Helpers for integration tests: run the real binary and the local receiver.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thoth_ingest::receiver::ReceiverStats;

pub const BIN: &str = env!("CARGO_BIN_EXE_thoth-ingest");
pub const KEY: &str = "thoth_test_integration";

/// A receiver running as its own process.
pub struct ReceiverProc {
    pub child: Child,
    pub addr: String,
    pub store: PathBuf,
}

impl ReceiverProc {
    pub fn start(dir: &Path, extra: &[&str]) -> ReceiverProc {
        ReceiverProc::start_at(dir, "127.0.0.1:0", extra)
    }

    /// Starts on a given address (to bring a receiver back after an outage).
    pub fn start_at(dir: &Path, listen: &str, extra: &[&str]) -> ReceiverProc {
        let store = dir.join("received.jsonl");
        let mut child = Command::new(BIN)
            .args(["receiver", "--listen", listen, "--store"])
            .arg(&store)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start receiver");
        let stdout = child.stdout.take().expect("receiver stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("receiver prints its address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected receiver output: {line:?}"))
            .to_string();
        ReceiverProc { child, addr, store }
    }

    pub fn stats(&self) -> ReceiverStats {
        reqwest::blocking::get(format!("http://{}/stats", self.addr))
            .and_then(|r| r.json())
            .expect("receiver /stats")
    }

    /// Waits until the receiver has `n` unique ids, or panics after `timeout`.
    pub fn wait_unique(&self, n: u64, timeout: Duration) -> ReceiverStats {
        let start = Instant::now();
        loop {
            let s = self.stats();
            if s.unique_event_ids >= n {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {n} unique ids; receiver has {s:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The accepted events, as stored.
    pub fn stored(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.store).unwrap_or_default();
        // The receiver may be halfway through writing its last line.
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).expect("stored line is JSON"))
            .collect()
    }
}

impl Drop for ReceiverProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a config for one file source over `logs/*.jsonl`; `delivery` is
/// added to the `[delivery]` table.
pub fn write_config_with(dir: &Path, receiver: &str, delivery: &str) -> PathBuf {
    let config = write_config(dir, receiver, "");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("[delivery]\n", &format!("[delivery]\n{delivery}\n"));
    std::fs::write(&config, text).unwrap();
    config
}

/// The `[api]`, `[admin]`, `[state]` and `[delivery]` tables every test
/// config starts with: the receiver at `receiver`, the admin endpoint on a
/// port of the kernel's choice (named in `<state>/admin.addr`), state in
/// `<dir>/state`, no budget in the way, a short linger.
pub fn config_header(dir: &Path, receiver: &str) -> String {
    format!(
        r#"
[api]
base_url = "http://{receiver}"
tenant_id = "it-tenant"
[admin]
listen = "127.0.0.1:0"
[state]
dir = "{state}"
[delivery]
requests_per_minute = 100000
linger = "100ms"
"#,
        state = dir.join("state").display(),
    )
}

/// Writes a config for one file source over `logs/*.jsonl`.
pub fn write_config(dir: &Path, receiver: &str, extra: &str) -> PathBuf {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"{header}[[sources]]
name = "agents"
type = "file"
include = ["{logs}/*.jsonl"]
parser = "json"
poll_interval = "50ms"
{extra}
"#,
            header = config_header(dir, receiver),
            logs = logs.display(),
        ),
    )
    .unwrap();
    config
}

/// A config of file sources, one per `(name, folder, extra)`, each over
/// `<dir>/<folder>/*.jsonl`.
pub fn sources_config(dir: &Path, receiver: &str, sources: &[(&str, &str, &str)]) -> String {
    let mut text = config_header(dir, receiver);
    for (name, folder, extra) in sources {
        let logs = dir.join(folder);
        std::fs::create_dir_all(&logs).unwrap();
        text.push_str(&format!(
            "[[sources]]\nname = \"{name}\"\ntype = \"file\"\ninclude = [\"{}/*.jsonl\"]\nparser = \"json\"\npoll_interval = \"50ms\"\n{extra}\n",
            logs.display()
        ));
    }
    text
}

/// For each seq the receiver stored, the `user_id` of each time it arrived.
pub fn arrivals(receiver: &ReceiverProc) -> BTreeMap<u64, Vec<String>> {
    let mut by_seq = BTreeMap::<u64, Vec<String>>::new();
    for e in receiver.stored() {
        let seq = e["metadata"]["seq"].as_u64().unwrap();
        by_seq
            .entry(seq)
            .or_default()
            .push(e["user_id"].as_str().unwrap_or("").to_string());
    }
    by_seq
}

/// A daemon process, killed if a test ends (or panics) without stopping it.
pub struct Daemon(Child);

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_daemon(config: &Path) -> Daemon {
    start_daemon_cmd(config, |c| {
        c.env("THOTH_API_KEY", KEY);
    })
}

/// Starts a daemon; `setup` adds to its command (environment, mostly). No
/// key is passed unless `setup` passes one.
pub fn start_daemon_cmd(config: &Path, setup: impl FnOnce(&mut Command)) -> Daemon {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .arg("run")
        .env_remove("THOTH_API_KEY")
        .env_remove("THOTH_API_KEY_FILE")
        .env_remove("CREDENTIALS_DIRECTORY")
        // THOTH_TEST_DAEMON_LOG sets the daemons' log filter, to look
        // inside a failing run (e.g. `thoth_ingest::source=debug`).
        .env(
            "RUST_LOG",
            std::env::var("THOTH_TEST_DAEMON_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    setup(&mut cmd);
    let child = cmd.spawn().expect("start daemon");
    // Signal handlers are installed first thing, but not before exec.
    std::thread::sleep(Duration::from_millis(50));
    Daemon(child)
}

/// Sends `signal` to a child.
pub fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on a pid we own; no memory is involved.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
}

/// SIGTERM, then the exit status.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: kill(2) on a pid we own; no memory is involved.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "daemon did not stop within 40 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Appends lines `range` to `path`.
pub fn append_lines(path: &Path, range: std::ops::Range<u64>) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut chunk = String::new();
    for seq in range {
        chunk.push_str(&line(seq));
    }
    f.write_all(chunk.as_bytes()).unwrap();
}

/// Distinct `seq`s the receiver stored.
pub fn stored_seqs(receiver: &ReceiverProc) -> BTreeSet<u64> {
    receiver
        .stored()
        .iter()
        .filter_map(|e| e["metadata"]["seq"].as_u64())
        .collect()
}

/// Waits until the receiver stored `n` distinct seqs, or panics.
pub fn wait_seqs(receiver: &ReceiverProc, n: usize, timeout: Duration) -> BTreeSet<u64> {
    let start = Instant::now();
    loop {
        let seqs = stored_seqs(receiver);
        if seqs.len() >= n {
            return seqs;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out: {} of {n} lines arrived",
            seqs.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A log line whose `seq` identifies it.
pub fn line(seq: u64) -> String {
    format!(
        r#"{{"timestamp":"2026-11-28T10:00:00.000Z","agent":"it-agent","session_id":"s-{}","tool":"bash","content":"line {seq}","seq":{seq},"pad":"{}"}}"#,
        seq / 100,
        "x".repeat(150)
    ) + "\n"
}

/// For each `seq` seen at the receiver, the distinct event ids it arrived under.
pub fn ids_by_seq(events: &[serde_json::Value]) -> BTreeMap<u64, BTreeSet<String>> {
    let mut map: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for e in events {
        let seq = e["metadata"]["seq"].as_u64().expect("metadata.seq");
        let id = e["event_id"].as_str().expect("event_id").to_string();
        map.entry(seq).or_default().insert(id);
    }
    map
}

/// Opens the queue; a restart right after a drop may find sled's background
/// threads still letting go of the previous handle's lock.
pub fn open_queue(dir: &Path) -> thoth_ingest::queue::Queue {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match thoth_ingest::queue::Queue::open(dir, 8 << 20) {
            Ok(q) => return q,
            Err(thoth_ingest::queue::QueueError::Locked { .. })
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("cannot open the queue: {e}"),
        }
    }
}

/// A config for in-process source tests: one file source `name` with
/// `parser` over the `include` globs, state in `state`, `extra` keys added
/// to the source. Its API address is never reached.
pub fn in_process_config(
    state: &Path,
    name: &str,
    include: &[String],
    parser: &str,
    extra: &str,
) -> thoth_ingest::config::Config {
    let toml = format!(
        r#"
[api]
base_url = "http://127.0.0.1:9"
tenant_id = "acme"
[state]
dir = {state:?}
[[sources]]
name = {name:?}
type = "file"
include = {include:?}
parser = {parser:?}
{extra}
"#,
        state = state.display().to_string(),
    );
    thoth_ingest::config::Config::from_toml(
        &toml,
        Path::new("(test)"),
        &thoth_ingest::config::Env::default(),
    )
    .unwrap()
}

/// The config's first source, reading into `queue`.
pub fn first_file_source(
    config: &thoth_ingest::config::Config,
    queue: std::sync::Arc<thoth_ingest::queue::Queue>,
    stats: std::sync::Arc<thoth_ingest::stage::SourceStats>,
    shutdown: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> thoth_ingest::source::file::FileSource {
    thoth_ingest::stage::file_source(config, &config.sources[0], queue, stats, shutdown).unwrap()
}

/// (event_id, content) of every event in `queue`, in queue order; nothing
/// is taken from it.
pub fn queued_ids_and_contents(queue: &thoth_ingest::queue::Queue) -> Vec<(String, String)> {
    let Some(batch) = queue.peek_batch(1_000_000, 1 << 30).unwrap() else {
        return Vec::new();
    };
    let events: Vec<serde_json::Value> = serde_json::from_slice(&batch.body).unwrap();
    queue.release(&batch);
    events
        .iter()
        .map(|e| {
            (
                e["event_id"].as_str().unwrap().to_string(),
                e["content"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Waits until the log at `path` contains `needle`, or panics after
/// `timeout` with the log; returns the log. A condition to wait on before a
/// check that something did *not* happen, instead of a fixed sleep.
pub fn wait_log(path: &Path, needle: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < timeout,
            "{needle:?} not logged within {timeout:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A service manager's notify socket: the datagrams the daemon sends.
pub struct NotifySocket {
    pub socket: std::os::unix::net::UnixDatagram,
    pub path: std::path::PathBuf,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket { socket, path }
    }

    /// Messages until one contains `want`, or None after `timeout`; every
    /// message seen on the way is appended to `seen`.
    pub fn wait_for(
        &self,
        want: &str,
        timeout: Duration,
        seen: &mut Vec<String>,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                seen.push(msg.clone());
                if msg.lines().any(|l| l == want || l.starts_with(want)) {
                    return Some(msg);
                }
            }
        }
        None
    }
}

/// Waits for the receiver's first request (at most 30 s) and returns when it
/// was seen.
pub fn wait_first_request(receiver: &ReceiverProc) -> Instant {
    let start = Instant::now();
    while receiver.stats().requests == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no request arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Instant::now()
}

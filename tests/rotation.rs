//! End-to-end rotation under load: a writer at 20,000 lines/s for 30 s with a
//! rotation every second (rename + create, copytruncate, rename into `.gz`),
//! the real daemon, kill -9 restarts, and the receiver's store as the oracle.
//!
//! Set THOTH_ROTATION_SECS to run shorter or longer (default 30).

#[path = "it/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const LINES_PER_SEC: u64 = 20_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rotation {
    RenameCreate,
    CopyTruncate,
    RenameGz,
}

fn seconds() -> u64 {
    std::env::var("THOTH_ROTATION_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

/// Config over `logs/agent.jsonl` and, if `rotated`, its rotated names.
fn config(dir: &Path, receiver: &str, rotated: bool) -> PathBuf {
    let config = write_config(dir, receiver, "rotate_wait = \"2s\"");
    let logs = dir.join("logs");
    let include = if rotated {
        format!(
            "include = [\"{0}/agent.jsonl\", \"{0}/agent.jsonl.*\"]",
            logs.display()
        )
    } else {
        format!("include = [\"{}/agent.jsonl\"]", logs.display())
    };
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        &format!("include = [\"{}/*.jsonl\"]", logs.display()),
        &include,
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// Writes lines 0.. at LINES_PER_SEC into `logs/agent.jsonl` until `stop`;
/// returns how many it wrote. The file is reopened when `reopen` is set (a
/// rename rotation: the application reopens its log).
fn writer(
    path: PathBuf,
    stop: Arc<AtomicBool>,
    reopen: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap()
        };
        let mut file = open(&path);
        let start = Instant::now();
        let mut seq = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let due = (start.elapsed().as_secs_f64() * LINES_PER_SEC as f64) as u64;
            if due > seq {
                let mut chunk = String::new();
                for s in seq..due {
                    chunk.push_str(&line(s));
                }
                file.write_all(chunk.as_bytes()).unwrap();
                seq = due;
                written.store(seq, Ordering::SeqCst);
            }
            if reopen.swap(false, Ordering::SeqCst) {
                file = open(&path);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        seq
    })
}

/// Runs one rotation scheme; returns (lines written, seqs missing, seqs
/// under more than one event id).
fn run(rotation: Rotation, kills: usize) -> (u64, Vec<u64>, usize) {
    let dir = tempfile::tempdir().unwrap();
    // The budget is not under test here: 600,000 events are 1,200 requests.
    let receiver = ReceiverProc::start(dir.path(), &["--limit", "100000"]);
    let rotated_followed = rotation != Rotation::CopyTruncate;
    let config = config(dir.path(), &receiver.addr, rotated_followed);
    let logs = dir.path().join("logs");
    let path = logs.join("agent.jsonl");
    std::fs::File::create(&path).unwrap();
    let mut daemon = start_daemon(&config);

    let stop = Arc::new(AtomicBool::new(false));
    let reopen = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let w = writer(path.clone(), stop.clone(), reopen.clone(), written.clone());

    let secs = seconds();
    let kill_at: Vec<u64> = (1..=kills as u64)
        .map(|k| k * secs / (kills as u64 + 1))
        .collect();
    let mut restart_at = None;
    for n in 1..=secs {
        std::thread::sleep(Duration::from_secs(1));
        let rotated = logs.join(format!("agent.jsonl.{n}"));
        match rotation {
            Rotation::RenameCreate | Rotation::RenameGz => {
                std::fs::rename(&path, &rotated).unwrap();
                std::fs::File::create(&path).unwrap();
                reopen.store(true, Ordering::SeqCst);
                if rotation == Rotation::RenameGz && n > 1 {
                    // delaycompress: the previous rotation is compressed now.
                    let prev = logs.join(format!("agent.jsonl.{}", n - 1));
                    let data = std::fs::read(&prev).unwrap();
                    let gz = logs.join(format!("agent.jsonl.{}.gz", n - 1));
                    let mut enc = flate2::write::GzEncoder::new(
                        std::fs::File::create(&gz).unwrap(),
                        flate2::Compression::fast(),
                    );
                    enc.write_all(&data).unwrap();
                    enc.finish().unwrap();
                    std::fs::remove_file(&prev).unwrap();
                }
            }
            Rotation::CopyTruncate => {
                std::fs::copy(&path, &rotated).unwrap();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(0)
                    .unwrap();
            }
        }
        if restart_at == Some(n) {
            daemon = start_daemon(&config);
            restart_at = None;
        }
        if kill_at.contains(&n) {
            daemon.kill().unwrap(); // SIGKILL
            daemon.wait().unwrap();
            if Some(&n) == kill_at.last() {
                // Down across a rotation, as after a restart delay: files
                // deleted while it was up are freed by the kill, and their
                // inodes go to the files created next.
                restart_at = Some(n + 1);
            } else {
                daemon = start_daemon(&config);
            }
        }
    }
    if restart_at.is_some() {
        daemon = start_daemon(&config);
    }
    stop.store(true, Ordering::SeqCst);
    let total = w.join().unwrap();

    // Wait until every line written has arrived, or nothing new arrives
    // for 15 s. (Counting unique ids would take a line under two ids for
    // two lines.)
    let mut store = StoreReader::new(&receiver.store);
    let start = Instant::now();
    let mut last_news = Instant::now();
    loop {
        if store.poll() {
            last_news = Instant::now();
        }
        if store.seqs_below(total) == total {
            break;
        }
        if last_news.elapsed() > Duration::from_secs(15)
            || start.elapsed() > Duration::from_secs(180)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = terminate(&mut daemon);
    assert!(
        status.success(),
        "daemon exit status after SIGTERM: {status}"
    );
    store.poll();
    let by_seq = store.by_seq;
    let missing: Vec<u64> = (0..total).filter(|s| !by_seq.contains_key(s)).collect();
    let multi = by_seq.values().filter(|ids| ids.len() > 1).count();
    assert!(
        by_seq.keys().all(|&s| s < total),
        "lines that were never written arrived"
    );
    eprintln!(
        "{rotation:?}: {total} lines written in {secs} s ({} lines/s), {} missing, {multi} under two event ids, {kills} kill -9",
        total / secs.max(1),
        missing.len()
    );
    if let (Some(first), Some(last)) = (missing.first(), missing.last()) {
        let runs = missing.windows(2).filter(|w| w[1] != w[0] + 1).count() + 1;
        eprintln!("{rotation:?}: missing seqs from {first} to {last} in {runs} runs");
    }
    (total, missing, multi)
}

/// Follows the receiver's store as it grows: the event ids each `seq`
/// arrived under.
struct StoreReader {
    path: PathBuf,
    /// Bytes of the store already read (up to the last complete line).
    offset: u64,
    by_seq: BTreeMap<u64, BTreeSet<String>>,
}

impl StoreReader {
    fn new(path: &Path) -> StoreReader {
        StoreReader {
            path: path.to_path_buf(),
            offset: 0,
            by_seq: BTreeMap::new(),
        }
    }

    /// Reads the lines stored since the last call; true if there were any.
    fn poll(&mut self) -> bool {
        use std::io::{Read, Seek};
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return false; // nothing stored yet
        };
        file.seek(std::io::SeekFrom::Start(self.offset)).unwrap();
        let mut text = Vec::new();
        file.read_to_end(&mut text).unwrap();
        // The receiver may be halfway through writing its last line.
        let Some(end) = text.iter().rposition(|&b| b == b'\n') else {
            return false;
        };
        let events: Vec<serde_json::Value> = text[..end]
            .split(|&b| b == b'\n')
            .map(|l| serde_json::from_slice(l).expect("stored line is JSON"))
            .collect();
        for (seq, ids) in ids_by_seq(&events) {
            self.by_seq.entry(seq).or_default().extend(ids);
        }
        self.offset += end as u64 + 1;
        true
    }

    /// How many of the seqs 0..total have arrived.
    fn seqs_below(&self, total: u64) -> u64 {
        self.by_seq.range(..total).count() as u64
    }
}

fn assert_writer_kept_pace(total: u64) {
    assert!(
        total >= LINES_PER_SEC * seconds() * 9 / 10,
        "writer too slow: {total}"
    );
}

/// Every line written arrived, under one event id.
fn assert_all_once(total: u64, missing: &[u64], multi: usize) {
    assert_writer_kept_pace(total);
    assert!(
        missing.is_empty(),
        "{} lines lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(multi, 0, "lines delivered under two event ids");
}

#[test]
fn rename_rotation_every_second_with_kill_9_loses_nothing() {
    let kills = std::env::var("THOTH_ROTATION_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(2);
    let (total, missing, multi) = run(Rotation::RenameCreate, kills);
    assert_all_once(total, &missing, multi);
}

#[test]
fn rotation_into_gz_every_second_with_kill_9_reads_nothing_twice() {
    let (total, missing, multi) = run(Rotation::RenameGz, 2);
    assert_all_once(total, &missing, multi);
}

#[test]
fn copytruncate_every_second_loses_only_the_window() {
    let (total, missing, multi) = run(Rotation::CopyTruncate, 0);
    assert_writer_kept_pace(total);
    assert_eq!(multi, 0, "lines delivered under two event ids");
    // The window between the copy and the truncate, 30 times: lines the
    // copy has and the tailer had not read yet. Bounded, and reported.
    assert!(
        (missing.len() as u64) < total / 100,
        "{} of {total} lines lost: more than the copytruncate window explains",
        missing.len()
    );
}

//! The file tailer's own work, and the tailer with its parser and queue.
//!
//! - `read_split_fingerprint/1GiB`: a 1 GiB file of 353-byte JSON lines, in
//!   the page cache (it is read once before measuring): fingerprint its
//!   start, read it in the tailer's 4 MiB chunks, cut it into lines and clean
//!   each one (CR strip, UTF-8 check), as `FileSource` does before parsing.
//! - `file_to_queue/200k_lines`: `FileSource` over a file of 200,000 lines
//!   (json parser, redaction on) until every event is committed to a fresh
//!   queue with its checkpoint, fsyncs included.
//!
//! Run: `cargo bench --bench tailer`. Set THOTH_BENCH_DIR to put the 1 GiB
//! file elsewhere than the system's temporary directory.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use thoth_ingest::config::{Config, Env};
use thoth_ingest::queue::Queue;
use thoth_ingest::source::file::identity::fingerprint_of;
use thoth_ingest::source::file::lines::LineCutter;
use thoth_ingest::stage::SourceStats;

fn line(seq: u64) -> String {
    format!(
        r#"{{"timestamp":"2026-11-28T10:00:00.000Z","agent":"bench","session_id":"s-{}","tool":"bash","content":"line {seq}","seq":{seq},"pad":"{}"}}"#,
        seq / 100,
        "x".repeat(200)
    ) + "\n"
}

fn write_lines(path: &Path, bytes: u64) -> u64 {
    let mut f = std::io::BufWriter::with_capacity(8 << 20, File::create(path).unwrap());
    let (mut seq, mut written) = (0u64, 0u64);
    while written < bytes {
        let l = line(seq);
        f.write_all(l.as_bytes()).unwrap();
        written += l.len() as u64;
        seq += 1;
    }
    f.flush().unwrap();
    seq
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("THOTH_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

/// What the tailer does to a file before the parser sees a line.
fn read_split(path: &PathBuf) -> u64 {
    let file = File::open(path).unwrap();
    let size = file.metadata().unwrap().len();
    let mut start = vec![0u8; 1024];
    let n = file.read_at(&mut start, 0).unwrap();
    assert!(fingerprint_of(&start[..n], 1024, false).is_some());
    let mut cutter = LineCutter::new(1 << 20, None);
    let mut buf = vec![0u8; 4 << 20];
    let mut offset = 0u64;
    let mut lines = 0u64;
    let mut bytes_ok = 0u64;
    while offset < size {
        let want = ((size - offset) as usize).min(buf.len());
        let mut got = 0;
        while got < want {
            let r = file
                .read_at(&mut buf[got..want], offset + got as u64)
                .unwrap();
            if r == 0 {
                break;
            }
            got += r;
        }
        let consumed = cutter.feed(&buf[..got], offset, offset + got as u64 >= size, &mut |l| {
            let (clean, _) = thoth_ingest::parse::clean_line(l.bytes);
            lines += 1;
            bytes_ok += clean.len() as u64;
        });
        offset += consumed as u64;
    }
    std::hint::black_box(bytes_ok);
    lines
}

fn read_split_fingerprint(c: &mut Criterion) {
    let dir = bench_dir();
    let path = dir.path().join("big.log");
    let lines = write_lines(&path, 1 << 30);
    assert_eq!(read_split(&path), lines); // and warms the page cache
    let mut g = c.benchmark_group("read_split_fingerprint");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Bytes(std::fs::metadata(&path).unwrap().len()));
    g.bench_function("1GiB", |b| b.iter(|| read_split(&path)));
    g.finish();
    eprintln!("read_split_fingerprint: {lines} lines per iteration");
}

fn file_to_queue(c: &mut Criterion) {
    const LINES: u64 = 200_000;
    let dir = bench_dir();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/a.log");
    let mut text = String::new();
    for s in 0..LINES {
        text.push_str(&line(s));
    }
    std::fs::write(&log, text).unwrap();
    let mut g = c.benchmark_group("file_to_queue");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    g.throughput(Throughput::Elements(LINES));
    let mut run = 0u32;
    g.bench_function("200k_lines", |b| {
        b.iter(|| {
            run += 1;
            let state = dir.path().join(format!("state-{run}"));
            let toml = format!(
                "[api]\nbase_url = \"http://127.0.0.1:9\"\ntenant_id = \"acme\"\n[state]\ndir = {:?}\n[[sources]]\nname = \"b\"\ntype = \"file\"\ninclude = [{:?}]\nparser = \"json\"\n",
                state.display().to_string(),
                dir.path().join("logs/*.log").display().to_string()
            );
            let config = Config::from_toml(&toml, Path::new("(bench)"), &Env::default()).unwrap();
            let queue = Arc::new(Queue::open(&config.state.dir, 64 << 20).unwrap());
            let mut source = thoth_ingest::stage::file_source(
                &config,
                &config.sources[0],
                queue.clone(),
                Arc::new(SourceStats::default()),
                Arc::new(AtomicBool::new(false)),
            )
            .unwrap();
            while source.step().unwrap() {}
            assert_eq!(queue.committed_events(), LINES);
            drop(source);
            queue.close().unwrap();
            drop(queue);
            std::fs::remove_dir_all(&state).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, read_split_fingerprint, file_to_queue);
criterion_main!(benches);

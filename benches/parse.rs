//! Parser throughput per preset, redaction on (the built-in detectors), on
//! one core: the fixture of each preset repeated to about 4 MiB, with call
//! and message ids made unique per repetition so state behaves as in a real
//! log. Criterion reports MB/s; lines/s is printed beside it as the line
//! count of the input (lines/s = MB/s / mean line size).

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use thoth_ingest::config::JsonFields;
use thoth_ingest::event::Timestamp;
use thoth_ingest::parse::{build_named, EventBuf, EventContext, Record, Redaction};

const TARGET_BYTES: usize = 4 << 20;

fn fixture(preset: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(preset);
    let log = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("dir entry").path())
        .find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name != "golden.jsonl" && name != "explain.txt"
        })
        .expect("fixture log");
    std::fs::read_to_string(log).expect("fixture text")
}

/// The fixture repeated, ids unique per repetition.
fn input(preset: &str) -> String {
    let base = fixture(preset);
    let mut out = String::with_capacity(TARGET_BYTES + base.len());
    let mut rep = 0u64;
    while out.len() < TARGET_BYTES {
        let tag = format!("r{rep}x");
        out.push_str(
            &base
                .replace("msg_", &format!("msg_{tag}"))
                .replace("toolu_", &format!("toolu_{tag}"))
                .replace("call_", &format!("call_{tag}")),
        );
        rep += 1;
    }
    out
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_secs(1));
    group.measurement_time(std::time::Duration::from_secs(4));
    for preset in [
        "claude-code",
        "codex",
        "mcp-claude-desktop",
        "otel-genai",
        "json",
    ] {
        let text = if preset == "json" {
            input("otel-genai")
        } else {
            input(preset)
        };
        let lines: Vec<(u64, &[u8])> = {
            let mut pos = 0u64;
            text.split_inclusive('\n')
                .map(|l| {
                    let start = pos;
                    pos += l.len() as u64;
                    (start, l.trim_end_matches('\n').as_bytes())
                })
                .collect()
        };
        eprintln!(
            "{preset}: {} bytes, {} lines, {:.0} bytes/line",
            text.len(),
            lines.len(),
            text.len() as f64 / lines.len() as f64
        );
        let ctx = EventContext::preview("bench", "bench");
        let red = Arc::new(Redaction::builtin(ctx.content_max_bytes));
        let mut parser =
            build_named(preset, ctx, red, &JsonFields::default()).expect("known preset");
        let mut out = EventBuf::default();
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(preset, |b| {
            b.iter(|| {
                let read_at = Timestamp::from_unix_micros(0);
                let mut events = 0usize;
                for (position, line) in &lines {
                    out.clear();
                    let rec = Record {
                        stream: "bench/0123456789abcdef",
                        position: *position,
                        line,
                        read_at,
                    };
                    events += parser.parse(&rec, &mut out).unwrap_or(0);
                }
                events
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

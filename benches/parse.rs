//! Parser throughput per preset, redaction on (the built-in detectors), on
//! one core: the fixture of each preset repeated to about 4 MiB, with call
//! and message ids made unique per repetition so state behaves as in a real
//! log. Criterion reports MB/s; lines/s is printed beside it as the line
//! count of the input (lines/s = MB/s / mean line size).
//!
//! `rules-regex` and `rules-json` are the rules parsers of
//! `tests/fixtures/rules/config.toml` on their fixture logs (every rule kind,
//! skips included), through the config's redaction.

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use thoth_ingest::config::JsonFields;
use thoth_ingest::config::{Config, Env};
use thoth_ingest::event::Timestamp;
use thoth_ingest::parse::{build, build_named, EventBuf, EventContext, Parser, Record, Redaction};

const TARGET_BYTES: usize = 4 << 20;

/// Rules parsers: bench name, source of the fixture config, log file.
const RULES: [(&str, &str, &str); 2] = [
    ("rules-regex", "my-agent-logs", "my-agent.log"),
    ("rules-json", "json-agent-logs", "json-agent.jsonl"),
];

fn rules_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules")
}

fn fixture(preset: &str) -> String {
    if let Some((_, _, log)) = RULES.iter().find(|(name, _, _)| *name == preset) {
        return std::fs::read_to_string(rules_dir().join(log)).expect("rules fixture");
    }
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

/// Lines shaped like `benches/gen_lines.py`'s (the end-to-end benchmark's):
/// an agent's own JSON log with no secret and no escape in it, the common
/// case, where all that redaction costs is its screen.
fn plain_lines() -> String {
    let tools = ["bash", "read_file", "write_file", "web_search", "query_db"];
    let mut out = String::with_capacity(TARGET_BYTES + 512);
    let mut seq = 0u64;
    while out.len() < TARGET_BYTES {
        let tool = tools[(seq % 5) as usize];
        out.push_str(&format!(
            r#"{{"timestamp":"2026-11-28T10:{:02}:{:02}.{:03}Z","agent":"bench-agent","session_id":"5d0c1f5e-7c2a-4a51-a0a4-{:012}","user":"alice@example.com","event_type":"{}","tool":"{tool}","content":"ran {tool} with arguments for step {seq}","cwd":"/srv/agents/bench","seq":{seq},"pad":"{}"}}"#,
            (seq / 60000) % 60,
            (seq / 1000) % 60,
            seq % 1000,
            seq / 1000,
            if seq % 2 == 0 { "TOOL_CALL_PRE" } else { "TOOL_CALL_POST" },
            "x".repeat(60),
        ));
        out.push('\n');
        seq += 1;
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
        "json-plain",
        "rules-regex",
        "rules-json",
    ] {
        let text = match preset {
            "json" => input("otel-genai"),
            "json-plain" => plain_lines(),
            _ => input(preset),
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
        let mut parser = parser(preset);
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

fn parser(name: &str) -> Box<dyn Parser> {
    if let Some((_, source, _)) = RULES.iter().find(|(n, _, _)| *n == name) {
        let config =
            Config::load(&rules_dir().join("config.toml"), &Env::default()).expect("config");
        let source = config
            .sources
            .iter()
            .find(|s| s.name.get_ref() == source)
            .expect("source");
        return build(&config, source).expect("the fixture parser builds");
    }
    let ctx = EventContext::preview("bench", "bench");
    let red = Arc::new(Redaction::builtin(ctx.content_max_bytes));
    let name = if name == "json-plain" { "json" } else { name };
    build_named(name, ctx, red, &JsonFields::default()).expect("known preset")
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Rules parsers (`[parsers.NAME]` in the config) against their fixtures
//! (`tests/fixtures/rules/`): a regex format and a JSON format, each with
//! every condition kind, tables, timestamp formats, drop rules and missing
//! fields; the golden output is what `thoth-ingest parse --source` prints
//! (tests/parse_cli.rs runs the binary on the same files). Arbitrary input
//! never panics.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use thoth_ingest::config::{Config, Env};
use thoth_ingest::event::Timestamp;
use thoth_ingest::parse::{build, parse_counted, EventBuf, ParseStats, Parser, Record};

/// Source name, log file and golden prefix of each fixture.
const FIXTURES: [(&str, &str, &str); 2] = [
    ("my-agent-logs", "my-agent.log", "my-agent"),
    ("json-agent-logs", "json-agent.jsonl", "json-agent"),
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules")
}

fn config() -> Config {
    thoth_ingest::parse::check::load_config(&dir().join("config.toml"), &Env::default())
        .expect("fixture config loads")
}

/// Loaded once for the property tests.
static CONFIG: std::sync::LazyLock<Config> = std::sync::LazyLock::new(config);

fn parser(config: &Config, source: &str) -> Box<dyn Parser> {
    let s = config
        .sources
        .iter()
        .find(|s| s.name.get_ref() == source)
        .expect("fixture source");
    build(config, s).expect("the fixture parser builds")
}

/// Runs the log through the parser as `thoth-ingest parse --source` does
/// (stream `<source>/preview`, positions are byte offsets).
fn run(parser: &mut dyn Parser, stream: &str, text: &[u8]) -> (Vec<String>, ParseStats) {
    let mut stats = ParseStats::default();
    let mut buf = EventBuf::default();
    let mut out = Vec::new();
    let mut pos = 0u64;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let rec = Record {
            stream,
            position: pos,
            line: body,
            read_at: Timestamp::from_unix_micros(0),
        };
        buf.clear();
        parse_counted(parser, &rec, &mut buf, &mut stats);
        out.extend(buf.iter().map(|e| String::from_utf8(e.to_vec()).unwrap()));
        pos += line.len() as u64;
    }
    (out, stats)
}

#[test]
fn each_rules_parser_gives_its_golden_output() {
    let config = config();
    for (source, log, golden) in FIXTURES {
        let text = std::fs::read(dir().join(log)).unwrap();
        let (out, stats) = run(
            parser(&config, source).as_mut(),
            &format!("{source}/preview"),
            &text,
        );
        let want: Vec<String> =
            std::fs::read_to_string(dir().join(format!("{golden}.golden.jsonl")))
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
        assert_eq!(out, want, "{source}");
        assert_eq!(stats.events, want.len() as u64);
        assert!(
            stats.skipped_total() >= 6,
            "{source}: fixtures include skipped lines"
        );
        for line in &out {
            let e: serde_json::Value = serde_json::from_str(line).unwrap();
            // The line's own time, never the read time (0 here).
            assert!(
                e["occurred_at"].as_str().unwrap().starts_with("2026-03-13"),
                "{line}"
            );
            assert_eq!(e["tenant_id"], "acme");
            assert_eq!(e["user_id"], "ops");
        }
    }
}

#[test]
fn fixtures_cover_every_event_type_condition_and_skip_kind() {
    let config = config();
    let mut types = std::collections::BTreeSet::new();
    let mut reasons = std::collections::BTreeSet::new();
    for (source, log, _) in FIXTURES {
        let text = std::fs::read(dir().join(log)).unwrap();
        let (out, stats) = run(parser(&config, source).as_mut(), "t", &text);
        for line in out {
            let e: serde_json::Value = serde_json::from_str(&line).unwrap();
            types.insert(e["event_type"].as_str().unwrap().to_string());
        }
        reasons.extend(stats.skipped.keys().map(|k| k.as_str().to_string()));
    }
    assert_eq!(
        types.into_iter().collect::<Vec<_>>(),
        [
            "LLM_INVOCATION",
            "TOOL_CALL_BLOCK",
            "TOOL_CALL_POST",
            "TOOL_CALL_PRE"
        ]
    );
    for want in [
        "dropped by rule `drop-heartbeats`",
        "dropped by rule `drop-debug`",
        "rule `shells`: no value for `session` (session_id)",
        "rule `tools`: no value for `ctx.session` (session_id)",
        "rule `shells`: value of `phase` not in table `phase` (event_type)",
        "rule `calls`: occurred_at value is not a timestamp in format `rfc3339`",
        "rule `tools`: occurred_at value is not a timestamp in format `epoch_s`",
        "no rule's pattern matches the line",
        "no rule matches the line",
        "invalid JSON",
        "JSON but not an object",
    ] {
        assert!(
            reasons.contains(want),
            "missing skip reason {want:?}: {reasons:?}"
        );
    }
    let text = std::fs::read_to_string(dir().join("config.toml")).unwrap();
    for condition in ["equals =", "one_of =", "matches =", "exists ="] {
        assert!(text.contains(condition), "{condition}");
    }
    for format in [
        "\"rfc3339\"",
        "\"epoch_s\"",
        "\"epoch_ms\"",
        "\"%Y-%m-%d %H:%M:%S%.f\"",
    ] {
        assert!(text.contains(format), "{format}");
    }
}

#[test]
fn redaction_and_the_content_bound_apply_to_rules() {
    let text = std::fs::read_to_string(dir().join("config.toml"))
        .unwrap()
        .replace(
            "[defaults]",
            "[redaction]\ncontent_max_bytes = 40\nmetadata_allow = [\"model\"]\n[defaults]",
        );
    let config = Config::from_toml(&text, Path::new("config.toml"), &Env::default()).unwrap();
    let log = std::fs::read(dir().join("json-agent.jsonl")).unwrap();
    let (out, _) = run(parser(&config, "json-agent-logs").as_mut(), "t", &log);
    let post: serde_json::Value = serde_json::from_str(&out[1]).unwrap();
    assert_eq!(post["content"], "DB_URL=postgres://app:[REDACTED:url-pass");
    assert_eq!(post["metadata"], serde_json::json!({"call_id": "k1"}));
    let llm: serde_json::Value = serde_json::from_str(&out[3]).unwrap();
    assert_eq!(
        llm["metadata"],
        serde_json::json!({"model": "claude-sonnet-4"})
    );
    assert!(out
        .iter()
        .all(|e| !e.contains("hunter2") && !e.contains("s3cret")));
}

#[test]
fn hostile_lines_are_skipped_not_panicked_on() {
    let mut parsers = all_parsers();
    let deep = format!(
        r#"{{"kind":"tool_start","ctx":{}}}"#,
        "[".repeat(100_000) + &"]".repeat(100_000)
    );
    let deep_path = format!(
        r#"{{"payload":{{"tool":{}1{}}}}}"#,
        r#"{"name":"#.repeat(5_000),
        "}".repeat(5_000)
    );
    let long = format!(
        "2026-03-13T12:00:00Z pre bash id=c session=s {}",
        "x".repeat(4 << 20)
    );
    let cases: Vec<Vec<u8>> = vec![
        deep.into_bytes(),
        deep_path.into_bytes(),
        long.into_bytes(),
        br#"{"t":1e400,"kind":"tool_start","ctx":{"session":1e400},"payload":{"tool":{"name":1e400}}}"#.to_vec(),
        br#"{"t":18446744073709551616999,"kind":"tool_end","ctx":{"session":"s"},"payload":{"tool":{"name":"x"}}}"#.to_vec(),
        b"2026-03-13T12:00:00Z pre b\xffash id=c session=s \xfe\xfe".to_vec(),
        b"\0\0\0".to_vec(),
        br#"{"ctx":{"session":"s"},"ctx":"dup","kind":"refused","payload":{"tool":{"name":"x"}},"t":1}"#.to_vec(),
    ];
    for line in &cases {
        parse_everywhere(&mut parsers, line);
    }
    // The long line's content is cut to the bound.
    let config = config();
    let mut p = parser(&config, "my-agent-logs");
    let mut buf = EventBuf::default();
    let rec = Record {
        stream: "t",
        position: 0,
        line: &cases[2],
        read_at: Timestamp::from_unix_micros(0),
    };
    assert_eq!(p.parse(&rec, &mut buf), Ok(1));
    assert!(buf.get(0).len() < 6000);
}

/// The daemon itself: a file source whose parser is a `[parsers.NAME]`
/// delivers what `parse` shows, with the source's own event ids.
#[test]
fn the_daemon_runs_a_rules_parser() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = common::ReceiverProc::start(dir.path(), &[]);
    let config = common::write_config(dir.path(), &receiver.addr, "");
    let fixture = std::fs::read_to_string(self::dir().join("config.toml")).unwrap();
    let parsers = &fixture[fixture.find("[parsers.json-agent]").unwrap()..];
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("parser = \"json\"", "parser = \"json-agent\"");
    std::fs::write(&config, format!("{text}\n{parsers}")).unwrap();
    std::fs::copy(
        self::dir().join("json-agent.jsonl"),
        dir.path().join("logs/agent.jsonl"),
    )
    .unwrap();
    let mut daemon = common::start_daemon(&config);
    receiver.wait_unique(5, Duration::from_secs(30));
    assert!(common::terminate(&mut daemon).success());

    let strip = |mut e: serde_json::Value| {
        for k in ["event_id", "tenant_id", "user_id"] {
            e.as_object_mut().unwrap().remove(k);
        }
        e
    };
    // The daemon adds where each event comes from; `parse` shows the rest.
    let log = dir.path().join("logs/agent.jsonl").display().to_string();
    let without_provenance = |mut e: serde_json::Value| {
        let meta = e["metadata"].as_object_mut().unwrap();
        assert_eq!(meta.remove("source_path"), Some(log.clone().into()));
        assert!(meta.remove("host").is_some_and(|h| h.is_string()));
        assert!(meta.remove("file_owner").is_some_and(|o| o.is_string()));
        meta.remove("machine_id");
        strip(e)
    };
    let mut got: Vec<serde_json::Value> = receiver
        .stored()
        .into_iter()
        .map(without_provenance)
        .collect();
    got.sort_by_key(|e| e["occurred_at"].as_str().unwrap().to_string());
    let want: Vec<serde_json::Value> =
        std::fs::read_to_string(self::dir().join("json-agent.golden.jsonl"))
            .unwrap()
            .lines()
            .map(|l| strip(serde_json::from_str(l).unwrap()))
            .collect();
    assert_eq!(got, want);
    assert!(receiver
        .stored()
        .iter()
        .all(|e| e["tenant_id"] == "it-tenant"
            && e["event_id"].as_str().unwrap().starts_with("it-tenant:")));
}

/// Arbitrary JSON values, nested a few levels.
fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
        prop::sample::select(vec![
            "tool_start",
            "tool_end",
            "refused",
            "debug",
            "1773403200"
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "t", "t_ms", "kind", "level", "ctx", "session", "agent", "payload", "tool",
                    "name", "call_id", "args", "output", "files", "0", "usage", "model", "x",
                ])
                .prop_map(str::to_string),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn parse_everywhere(parsers: &mut [Box<dyn Parser>], bytes: &[u8]) {
    let mut buf = EventBuf::default();
    for p in parsers.iter_mut() {
        let rec = Record {
            stream: "prop",
            position: 0,
            line: bytes,
            read_at: Timestamp::from_unix_micros(0),
        };
        buf.clear();
        if let Ok(n) = p.parse(&rec, &mut buf) {
            assert_eq!(buf.len(), n);
            for e in buf.iter() {
                serde_json::from_slice::<serde_json::Value>(e).expect("events are JSON");
            }
        }
    }
}

fn all_parsers() -> Vec<Box<dyn Parser>> {
    FIXTURES
        .iter()
        .map(|(source, _, _)| parser(&CONFIG, source))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_everywhere(&mut all_parsers(), &bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(value in arb_json()) {
        parse_everywhere(&mut all_parsers(), value.to_string().as_bytes());
    }

    #[test]
    fn lines_near_the_format_never_panic(
        ts in prop_oneof![Just("2026-03-13T12:00:00Z".to_string()), ".{0,30}"],
        phase in prop_oneof![Just("pre".to_string()), Just("deny".to_string()), "\\PC{0,6}"],
        tool in "\\PC{0,12}",
        rest in "\\PC{0,40}",
    ) {
        let line = format!("{ts} {phase} {tool} id=x session=s {rest}");
        parse_everywhere(&mut all_parsers(), line.as_bytes());
        let line = format!("{ts} LLM model={tool} in=1 out=2");
        parse_everywhere(&mut all_parsers(), line.as_bytes());
    }
}

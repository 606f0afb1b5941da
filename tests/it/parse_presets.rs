//! The presets against their synthetic fixtures (`tests/fixtures/<preset>/`):
//! golden output, a restart at every line boundary, bounded state, and
//! arbitrary input that must never panic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use thoth_ingest::config::JsonFields;
use thoth_ingest::event::Timestamp;
use thoth_ingest::parse::{
    build_named, parse_counted, EventBuf, EventContext, ParseStats, Parser, Record, Redaction, Skip,
};

const PRESETS: [&str; 4] = ["claude-code", "codex", "mcp-claude-desktop", "otel-genai"];

fn fixture_dir(preset: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(preset)
}

/// The log of a preset's fixture directory (the one file that is not an output).
fn fixture_log(preset: &str) -> PathBuf {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(fixture_dir(preset))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name != "golden.jsonl" && name != "explain.txt"
        })
        .collect();
    assert_eq!(logs.len(), 1, "one log per fixture dir: {logs:?}");
    logs.pop().unwrap()
}

fn parser(preset: &str) -> Box<dyn Parser> {
    let ctx = EventContext::preview("preview", "preview");
    let red = Arc::new(Redaction::builtin(ctx.content_max_bytes));
    build_named(preset, ctx, red, &JsonFields::default()).unwrap()
}

/// The lines of `text` with the byte offset of each, as the file source cuts them.
fn lines(text: &[u8]) -> Vec<(u64, &[u8])> {
    let mut out = Vec::new();
    let mut pos = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        out.push((pos as u64, body));
        pos += line.len();
    }
    out
}

/// Runs `lines` through `parser`, appending each event's JSON line to `out`.
fn run(parser: &mut dyn Parser, lines: &[(u64, &[u8])], out: &mut Vec<String>) -> ParseStats {
    let mut stats = ParseStats::default();
    let mut buf = EventBuf::default();
    for (position, line) in lines {
        let rec = Record {
            stream: "preview",
            position: *position,
            line,
            read_at: Timestamp::from_unix_micros(0),
        };
        buf.clear();
        parse_counted(parser, &rec, &mut buf, &mut stats);
        out.extend(buf.iter().map(|e| String::from_utf8(e.to_vec()).unwrap()));
    }
    stats
}

fn golden(preset: &str) -> Vec<String> {
    std::fs::read_to_string(fixture_dir(preset).join("golden.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn each_preset_gives_its_golden_output() {
    for preset in PRESETS {
        let text = std::fs::read(fixture_log(preset)).unwrap();
        let mut out = Vec::new();
        let stats = run(parser(preset).as_mut(), &lines(&text), &mut out);
        assert_eq!(out, golden(preset), "{preset}");
        assert!(
            stats.skipped_total() > 0,
            "{preset}: fixtures include skipped lines"
        );
        assert_eq!(
            stats.lines,
            stats.skipped_total() + lines_with_events(&text, preset)
        );
    }
}

fn lines_with_events(text: &[u8], preset: &str) -> u64 {
    let mut p = parser(preset);
    let mut n = 0;
    let mut buf = EventBuf::default();
    for (position, line) in lines(text) {
        let rec = Record {
            stream: "preview",
            position,
            line,
            read_at: Timestamp::from_unix_micros(0),
        };
        if p.parse(&rec, &mut buf).is_ok() {
            n += 1;
        }
    }
    n
}

#[test]
fn fixtures_cover_every_event_type() {
    let mut seen = std::collections::HashSet::new();
    for preset in PRESETS {
        for line in golden(preset) {
            let e: serde_json::Value = serde_json::from_str(&line).unwrap();
            seen.insert((preset, e["event_type"].as_str().unwrap().to_string()));
            // Every event carries the line's own time, never the read time (0 here).
            assert!(e["occurred_at"].as_str().unwrap().starts_with("2026-03-13"));
            if e["event_type"] != "LLM_INVOCATION" {
                assert!(e["metadata"]["call_id"].is_string(), "{preset}: {line}");
            }
        }
    }
    for (preset, types) in [
        (
            "claude-code",
            &[
                "TOOL_CALL_PRE",
                "TOOL_CALL_POST",
                "TOOL_CALL_BLOCK",
                "LLM_INVOCATION",
            ][..],
        ),
        (
            "codex",
            &[
                "TOOL_CALL_PRE",
                "TOOL_CALL_POST",
                "TOOL_CALL_BLOCK",
                "LLM_INVOCATION",
            ],
        ),
        ("mcp-claude-desktop", &["TOOL_CALL_PRE", "TOOL_CALL_POST"]),
        ("otel-genai", &["TOOL_CALL_POST", "LLM_INVOCATION"]),
    ] {
        for t in types {
            assert!(
                seen.contains(&(preset, t.to_string())),
                "{preset} lacks {t}"
            );
        }
    }
}

#[test]
fn no_secret_of_the_fixtures_reaches_an_event() {
    let secrets = [
        "AKIAIOSFODNN7EXAMPLE",
        "s3cretPass",
        "hunter2",
        "ghp_0123456789abcdef",
        "sk_live_0123456789abcdef",
        "thoth_live_9f8e7d6c5b4a3210",
        "pa55word",
        "xoxb-123456789012",
    ];
    for preset in PRESETS {
        for line in golden(preset) {
            for s in secrets {
                assert!(!line.contains(s), "{preset} leaks {s}: {line}");
            }
        }
    }
}

#[test]
fn a_restart_at_any_line_gives_the_uninterrupted_events() {
    for preset in PRESETS {
        let text = std::fs::read(fixture_log(preset)).unwrap();
        let all = lines(&text);
        let expected = golden(preset);
        for split in 0..=all.len() {
            let mut first = parser(preset);
            let mut out = Vec::new();
            run(first.as_mut(), &all[..split], &mut out);
            let state = first.save_state();
            drop(first);
            // As after a restart: a new parser, given only the saved bytes.
            let mut second = parser(preset).fresh();
            second.load_state(&state);
            run(second.as_mut(), &all[split..], &mut out);
            assert_eq!(out, expected, "{preset}, restart after line {split}");
        }
    }
}

/// A Codex rollout whose `session_meta` line is missing (cut off, or a
/// version that wrote none) takes its session from the uuid of its file name,
/// which the source gives with `set_origin`, also after a restart.
#[test]
fn codex_session_from_the_file_name_when_no_session_meta_says() {
    let uuid = "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "tests/fixtures/codex-file-session/rollout-2026-03-13T09-00-00-{uuid}.jsonl"
    ));
    let text = std::fs::read(&log).unwrap();
    let all = lines(&text);
    let sessions = |out: &[String]| -> Vec<String> {
        out.iter()
            .map(|l| {
                let e: serde_json::Value = serde_json::from_str(l).unwrap();
                e["session_id"].as_str().unwrap().to_string()
            })
            .collect()
    };
    // Without an origin: the context's default session.
    let mut out = Vec::new();
    run(parser("codex").as_mut(), &all, &mut out);
    assert!(!out.is_empty());
    assert!(sessions(&out).iter().all(|s| s == "preview"));

    let mut p = parser("codex");
    p.set_origin(&log);
    let mut expected = Vec::new();
    run(p.as_mut(), &all, &mut expected);
    assert_eq!(expected.len(), out.len());
    assert!(
        sessions(&expected).iter().all(|s| s == uuid),
        "{expected:?}"
    );
    for split in 0..=all.len() {
        let mut first = parser("codex");
        first.set_origin(&log);
        let mut out = Vec::new();
        run(first.as_mut(), &all[..split], &mut out);
        let state = first.save_state();
        let mut second = parser("codex").fresh();
        second.load_state(&state);
        second.set_origin(&log);
        run(second.as_mut(), &all[split..], &mut out);
        assert_eq!(out, expected, "restart after line {split}");
    }

    // A session_meta line wins over the file name.
    let mut p = parser("codex");
    p.set_origin(&log);
    let mut out = Vec::new();
    run(
        p.as_mut(),
        &lines(&std::fs::read(fixture_log("codex")).unwrap()),
        &mut out,
    );
    assert_eq!(out, golden("codex"));
}

#[test]
fn damaged_state_costs_names_not_the_parser() {
    for preset in PRESETS {
        let mut p = parser(preset);
        p.load_state(b"\xff{not json");
        let text = std::fs::read(fixture_log(preset)).unwrap();
        let mut out = Vec::new();
        run(p.as_mut(), &lines(&text), &mut out);
        // Read from the first line, the damaged state is rebuilt as it goes:
        // the same events as a fresh parser, field for field.
        assert_eq!(out, golden(preset), "{preset}");

        // Damaged halfway: what the lost state named (a tool, a session)
        // may be missing, but every event still comes, under its own id,
        // type and time.
        let all = lines(&text);
        let half = all.len() / 2;
        let mut first = parser(preset);
        let mut out = Vec::new();
        run(first.as_mut(), &all[..half], &mut out);
        let mut second = parser(preset).fresh();
        second.load_state(b"\xff{not json");
        run(second.as_mut(), &all[half..], &mut out);
        let stable = |line: &String| {
            let e: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                e["event_id"].clone(),
                e["event_type"].clone(),
                e["timestamp"].clone(),
            )
        };
        let got: Vec<_> = out.iter().map(stable).collect();
        let want: Vec<_> = golden(preset).iter().map(stable).collect();
        assert_eq!(got, want, "{preset}, state damaged after line {half}");
    }
}

#[test]
fn a_million_unmatched_calls_keep_state_bounded() {
    let mut p = parser("mcp-claude-desktop");
    let mut buf = EventBuf::default();
    let mut stats = ParseStats::default();
    for i in 0..1_000_000u64 {
        let line = format!(
            r#"2026-03-13T10:00:00.000Z [s] [info] Message from client: {{"method":"tools/call","params":{{"name":"t","arguments":{{}}}},"jsonrpc":"2.0","id":{i}}}"#
        );
        let rec = Record {
            stream: "s",
            position: i,
            line: line.as_bytes(),
            read_at: Timestamp::from_unix_micros(0),
        };
        buf.clear();
        parse_counted(p.as_mut(), &rec, &mut buf, &mut stats);
    }
    assert_eq!(stats.events, 1_000_000);
    let kept = thoth_ingest::parse::presets::STATE_MAX_ENTRIES as u64;
    assert_eq!(stats.state_evictions, 1_000_000 - kept);
    assert!(p.save_state().len() < 40 * kept as usize);
    // The newest calls are still matched.
    let answer = br#"2026-03-13T10:00:01.000Z [s] [info] Message from server: {"jsonrpc":"2.0","id":999999,"result":{"content":[]}}"#;
    let rec = Record {
        stream: "s",
        position: 2_000_000,
        line: answer,
        read_at: Timestamp::from_unix_micros(0),
    };
    assert_eq!(p.parse(&rec, &mut buf), Ok(1));
    // The oldest were evicted: their answers are counted as unmatched.
    let old = br#"2026-03-13T10:00:01.000Z [s] [info] Message from server: {"jsonrpc":"2.0","id":0,"result":{"content":[]}}"#;
    let rec = Record { line: old, ..rec };
    assert_eq!(p.parse(&rec, &mut buf), Err(Skip::UnmatchedResponse));
}

#[test]
fn hostile_lines_are_skipped_not_panicked_on() {
    let deep_array = "[".repeat(100_000);
    let deep_object = r#"{"a":"#.repeat(50_000);
    let deep_field = format!(
        r#"{{"type":"assistant","message":{{"content":[{{"type":"tool_use","input":{}}}]}}}}"#,
        "[".repeat(10_000) + &"]".repeat(10_000)
    );
    let huge_numbers = r#"{"timestamp":1e99999,"type":"event_msg","payload":{"type":"token_count","info":{"last_token_usage":{"input_tokens":184467440737095516160000}}},"timeUnixNano":"99999999999999999999999999","gen_ai.operation.name":"chat"}"#;
    let wrong_types = r#"{"type":"user","sessionId":[1],"timestamp":true,"message":{"content":[{"type":"tool_result","tool_use_id":5,"content":{"x":1},"is_error":"yes"}]}}"#;
    let invalid_utf8: &[u8] = b"{\"type\":\"assistant\",\"message\":{\"id\":\"\xff\xfe\"}}";
    let mcp_odd = "2026-03-13T10:00:00Z [x] [info] Message from server: {\"id\":{\"deep\":[[[]]]},\"result\":1}";
    let inputs: Vec<&[u8]> = vec![
        deep_array.as_bytes(),
        deep_object.as_bytes(),
        deep_field.as_bytes(),
        huge_numbers.as_bytes(),
        wrong_types.as_bytes(),
        invalid_utf8,
        mcp_odd.as_bytes(),
        b"\0\0\0",
        b"{}",
        b"",
    ];
    for preset in PRESETS {
        let mut p = parser(preset);
        let mut buf = EventBuf::default();
        for (i, line) in inputs.iter().enumerate() {
            let rec = Record {
                stream: "s",
                position: i as u64,
                line,
                read_at: Timestamp::from_unix_micros(0),
            };
            let result = p.parse(&rec, &mut buf);
            // Lines that hold no event (unterminated nesting, NULs, an empty
            // object, nothing) are skipped, each for a stated reason.
            if [0, 1, 7, 8, 9].contains(&i) {
                assert!(result.is_err(), "{preset}: line {i} made {result:?}");
            }
            if i == 9 {
                assert!(
                    matches!(result, Err(Skip::EmptyLine | Skip::NotJsonRpc)),
                    "{preset}: the empty line: {result:?}"
                );
            }
            if i == 0 && preset != "mcp-claude-desktop" {
                assert_eq!(result, Err(Skip::InvalidJson), "{preset}: deep array");
            }
        }
        for e in buf.iter() {
            serde_json::from_slice::<serde_json::Value>(e).expect("events are valid JSON");
        }
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        ".{0,20}".prop_map(Value::String),
        prop_oneof![
            Just("tool_use"),
            Just("tool_result"),
            Just("assistant"),
            Just("user"),
            Just("function_call"),
            Just("token_count"),
            Just("tools/call"),
            Just("chat"),
            Just("execute_tool"),
            Just("2026-03-13T12:00:00Z"),
            Just("declined"),
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((".{0,12}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A fixture line with one subtree replaced by `value`: real shapes with
/// wrong types and odd values where the parser looks.
fn mutate(line: &str, path: &[usize], value: serde_json::Value) -> String {
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_string();
    };
    replace_at(&mut v, path, value);
    v.to_string()
}

fn replace_at(v: &mut serde_json::Value, path: &[usize], value: serde_json::Value) {
    let Some((&step, rest)) = path.split_first() else {
        *v = value;
        return;
    };
    match v {
        serde_json::Value::Object(map) if !map.is_empty() => {
            let n = map.len();
            if let Some((_, child)) = map.iter_mut().nth(step % n) {
                replace_at(child, rest, value);
            }
        }
        serde_json::Value::Array(items) if !items.is_empty() => {
            let n = items.len();
            replace_at(&mut items[step % n], rest, value);
        }
        _ => *v = value,
    }
}

fn all_fixture_lines() -> Vec<(usize, String)> {
    PRESETS
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            std::fs::read_to_string(fixture_log(p))
                .unwrap()
                .lines()
                .map(move |l| (i, l.to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn parse_everywhere(line: &[u8]) {
    for preset in PRESETS {
        let mut p = parser(preset);
        let mut buf = EventBuf::default();
        let rec = Record {
            stream: "s",
            position: 0,
            line,
            read_at: Timestamp::from_unix_micros(0),
        };
        let _ = p.parse(&rec, &mut buf);
        for e in buf.iter() {
            serde_json::from_slice::<serde_json::Value>(e).expect("events are valid JSON");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_everywhere(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(value in arb_json()) {
        parse_everywhere(value.to_string().as_bytes());
    }

    #[test]
    fn mutated_fixture_lines_never_panic(
        pick in any::<prop::sample::Index>(),
        path in prop::collection::vec(any::<usize>(), 0..6),
        value in arb_json(),
    ) {
        let lines = all_fixture_lines();
        let (_, line) = &lines[pick.index(lines.len())];
        let mutated = mutate(line, &path, value);
        parse_everywhere(mutated.as_bytes());
        // MCP lines wrap their JSON in a log prefix.
        let wrapped = format!("2026-03-13T10:00:00.000Z [s] [info] Message from client: {mutated}");
        parse_everywhere(wrapped.as_bytes());
        let wrapped = format!("2026-03-13T10:00:00.000Z [s] [info] Message from server: {mutated}");
        parse_everywhere(wrapped.as_bytes());
    }
}

/// A user can write call ids and message ids of any length: the state a
/// parser keeps (and saves with every checkpoint) stays bounded in bytes,
/// not only in entries.
#[test]
fn parser_state_is_bounded_in_bytes_whatever_the_ids() {
    for preset in ["claude-code", "codex", "mcp-claude-desktop"] {
        let mut p = parser(preset);
        let mut text = Vec::new();
        for i in 0..5_000 {
            let id = format!("{i}{}", "i".repeat(900));
            let line = match preset {
                "claude-code" => format!(
                    r#"{{"sessionId":"s","type":"assistant","timestamp":"2026-03-13T12:00:01.900Z","message":{{"id":"m{id}","role":"assistant","model":"claude","content":[{{"type":"tool_use","id":"{id}","name":"{}","input":{{}}}}]}}}}"#,
                    "N".repeat(100)
                ),
                "codex" => format!(
                    r#"{{"timestamp":"2026-03-13T12:00:01.900Z","type":"response_item","payload":{{"type":"function_call","name":"shell","arguments":"{{}}","call_id":"{id}"}}}}"#
                ),
                _ => format!(
                    r#"2026-03-13T12:00:01.900Z [info] [fs] Message from client: {{"method":"tools/call","params":{{"name":"read","arguments":{{}}}},"jsonrpc":"2.0","id":"{id}"}}"#
                ),
            };
            text.extend_from_slice(line.as_bytes());
            text.push(b'\n');
        }
        let mut out = Vec::new();
        let stats = run(p.as_mut(), &lines(&text), &mut out);
        assert!(
            stats.events >= 5_000,
            "{preset}: every call is an event: {stats:?}"
        );
        let state = p.save_state();
        assert!(
            state.len() < 600 << 10,
            "{preset}: {} bytes of state",
            state.len()
        );
        assert!(stats.state_evictions > 4_000, "{preset}: {stats:?}");
    }
}

/// The agent of every event of the codex fixture under a config whose
/// source and `[defaults]` are `source_agent` and `default_agent`.
fn codex_agents(source_agent: Option<&str>, default_agent: Option<&str>) -> Vec<serde_json::Value> {
    let mut text = String::from(
        "[api]\nbase_url = \"https://api.example.com\"\ntenant_id = \"t\"\n[defaults]\n",
    );
    if let Some(a) = default_agent {
        text.push_str(&format!("agent_id = \"{a}\"\n"));
    }
    text.push_str("[[sources]]\nname = \"s\"\ntype = \"file\"\ninclude = [\"/x/*.jsonl\"]\nparser = \"codex\"\n");
    if let Some(a) = source_agent {
        text.push_str(&format!("agent_id = \"{a}\"\nuser_id = \"alice\"\n"));
    }
    let config = thoth_ingest::config::Config::from_toml(
        &text,
        Path::new("test.toml"),
        &thoth_ingest::config::Env::default(),
    )
    .unwrap();
    let mut parser = thoth_ingest::parse::build(&config, &config.sources[0]).unwrap();
    let text = std::fs::read(fixture_log("codex")).unwrap();
    let mut out = Vec::new();
    run(parser.as_mut(), &lines(&text), &mut out);
    assert!(!out.is_empty());
    out.iter()
        .map(|e| {
            let e: serde_json::Value = serde_json::from_str(e).unwrap();
            if source_agent.is_some() {
                assert_eq!(e["user_id"], "alice");
            }
            e["agent_id"].clone()
        })
        .collect()
}

#[test]
fn the_agent_is_the_sources_else_the_defaults_else_the_presets() {
    let all = |agents: Vec<serde_json::Value>, want: &str| {
        assert!(agents.iter().all(|a| a == want), "{agents:?} != {want}")
    };
    all(codex_agents(None, None), "codex");
    all(codex_agents(None, Some("fleet-codex")), "fleet-codex");
    all(
        codex_agents(Some("build-bot"), Some("fleet-codex")),
        "build-bot",
    );
}

//! `thoth-ingest parse`, the real binary, on each preset's fixture: stdout is
//! the golden output, `--explain` lists the skipped lines, stdin works, and
//! `--source` takes the parser and redaction from the config.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PRESETS: [&str; 4] = ["claude-code", "codex", "mcp-claude-desktop", "otel-genai"];

fn fixture_dir(preset: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(preset)
}

fn fixture_log(preset: &str) -> PathBuf {
    std::fs::read_dir(fixture_dir(preset))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name != "golden.jsonl" && name != "explain.txt"
        })
        .unwrap()
}

fn thoth() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_thoth-ingest"));
    c.env_remove("THOTH_INGEST_CONFIG");
    c
}

#[test]
fn parse_prints_the_golden_output_of_each_fixture() {
    for preset in PRESETS {
        let out = thoth()
            .args(["parse", "--preset", preset])
            .arg(fixture_log(preset))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{preset}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let golden = std::fs::read_to_string(fixture_dir(preset).join("golden.jsonl")).unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), golden, "{preset}");
        assert!(out.stderr.is_empty(), "{preset}: quiet without --explain");
    }
}

#[test]
fn explain_lists_each_skipped_line_with_its_reason() {
    for preset in PRESETS {
        let out = thoth()
            .args(["parse", "--explain", "--preset", preset])
            .arg(fixture_log(preset))
            .output()
            .unwrap();
        assert!(out.status.success());
        let expected = std::fs::read_to_string(fixture_dir(preset).join("explain.txt")).unwrap();
        assert_eq!(String::from_utf8(out.stderr).unwrap(), expected, "{preset}");
    }
    let explain = std::fs::read_to_string(fixture_dir("codex").join("explain.txt")).unwrap();
    assert!(explain.contains("line 1 (byte 0): session or turn context, kept as parser state"));
    assert!(explain.contains("27 lines, 16 events, 11 lines skipped"));
}

#[test]
fn parse_reads_stdin() {
    let mut child = thoth()
        .args(["parse", "--preset", "otel-genai"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let text = std::fs::read(fixture_log("otel-genai")).unwrap();
    child.stdin.take().unwrap().write_all(&text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let golden = std::fs::read_to_string(fixture_dir("otel-genai").join("golden.jsonl")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), golden);
}

#[test]
fn parse_with_a_configured_source_uses_its_redaction() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        r#"
[api]
base_url = "http://127.0.0.1:9"
tenant_id = "acme"
[redaction]
content_max_bytes = 64
metadata_allow = ["server"]
patterns = [{ name = "repo", regex = "acme/shop" }]
[[sources]]
name = "mcp"
type = "file"
include = ["/nonexistent/*.log"]
parser = "mcp-claude-desktop"
"#,
    )
    .unwrap();
    let out = thoth()
        .args(["parse", "--source", "mcp", "--config"])
        .arg(&config)
        .arg(fixture_log("mcp-claude-desktop"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 10);
    for e in &events {
        assert_eq!(e["tenant_id"], "acme");
        assert!(e["content"].as_str().unwrap().len() <= 64);
        let keys: Vec<&String> = e["metadata"].as_object().unwrap().keys().collect();
        assert!(
            keys.iter().all(|k| *k == "server" || *k == "call_id"),
            "{keys:?}"
        );
    }
    // The user pattern applies on top of the built-in detectors.
    assert!(events.iter().all(|e| !e.to_string().contains("acme/shop")));
    assert!(events[1]["content"]
        .as_str()
        .unwrap()
        .contains("[REDACTED:"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("acme/shop", "(unclosed"),
    )
    .unwrap();
    let out = thoth()
        .args(["parse", "--source", "mcp", "--config"])
        .arg(&bad)
        .arg(fixture_log("mcp-claude-desktop"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("redaction.patterns") && err.contains("repo"),
        "{err}"
    );
}

#[test]
fn parse_refuses_an_unknown_preset() {
    let out = thoth()
        .args(["parse", "--preset", "yaml"])
        .arg(fixture_log("codex"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown preset `yaml`") && err.contains("claude-code"),
        "{err}"
    );
}

/// `parse --source NAME --explain` on each rules fixture: the golden events
/// on stdout, the skipped lines with their reasons on stderr.
#[test]
fn parse_a_rules_source_with_explain_gives_the_golden_output() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules");
    for (source, log, golden) in [
        ("my-agent-logs", "my-agent.log", "my-agent"),
        ("json-agent-logs", "json-agent.jsonl", "json-agent"),
    ] {
        let out = thoth()
            .args(["parse", "--explain", "--source", source, "--config"])
            .arg(dir.join("config.toml"))
            .arg(dir.join(log))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{source}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = std::fs::read_to_string(dir.join(format!("{golden}.golden.jsonl"))).unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), want, "{source}");
        let want = std::fs::read_to_string(dir.join(format!("{golden}.explain.txt"))).unwrap();
        assert_eq!(String::from_utf8(out.stderr).unwrap(), want, "{source}");
    }
    let explain = std::fs::read_to_string(dir.join("my-agent.explain.txt")).unwrap();
    assert!(
        explain.contains("line 6 (byte 406): rule `shells`: no value for `session` (session_id)")
    );
    assert!(explain.contains("13 lines, 7 events, 6 lines skipped"));
}

/// `--parser NAME` previews a `[parsers.NAME]` that no source uses yet.
#[test]
fn parse_with_a_named_rules_parser() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules");
    let out = thoth()
        .args(["parse", "--parser", "json-agent", "--config"])
        .arg(dir.join("config.toml"))
        .arg(dir.join("json-agent.jsonl"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 5);
    assert_eq!(events[0]["tool_name"], "read_file");

    let out = thoth()
        .args(["parse", "--parser", "yaml-agent", "--config"])
        .arg(dir.join("config.toml"))
        .arg(dir.join("json-agent.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no parser `yaml-agent`") && err.contains("json-agent, my-agent"),
        "{err}"
    );
}

/// `thoth-ingest validate` refuses a rule that names a capture group the
/// pattern lacks: exit 1, and the message names the file, line, parser and rule.
#[test]
fn validate_names_the_rule_of_a_bad_template() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules/config.toml"),
    )
    .unwrap()
    .replacen("tool_name = \"${tool}\"", "tool_name = \"${tol}\"", 1);
    std::fs::write(&config, text).unwrap();
    let out = thoth()
        .args(["validate", "--config"])
        .arg(&config)
        .env("THOTH_API_KEY", "thoth_test_abc")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "invalid: {}:55: `parsers.my-agent.rules[3]`: rule `calls`: `tool_name`: \
             template ${{tol}}: no capture group named `tol` (the pattern has: ts, phase, tool, \
             id, session, rest; `_line` is the whole line)",
            config.display()
        )),
        "{err}"
    );
}

/// `parse` tells the parser the input's path, as the file source does: a
/// Codex rollout without `session_meta` gets the uuid of its file name.
#[test]
fn parse_gives_codex_the_session_of_the_file_name() {
    let uuid = "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "tests/fixtures/codex-file-session/rollout-2026-03-13T09-00-00-{uuid}.jsonl"
    ));
    let out = thoth()
        .args(["parse", "--preset", "codex"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 13);
    for line in stdout.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(e["session_id"], uuid);
    }
}

//! The command line: `validate` exit codes and messages, and `demo`.

use crate::common;

use std::process::Command;

use common::*;

#[test]
fn validate_lists_matching_files_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "127.0.0.1:9", "");
    std::fs::write(dir.path().join("logs/a.jsonl"), "{}\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config"])
        .arg(&config)
        .arg("validate")
        .env("THOTH_API_KEY", KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("a.jsonl"), "{stdout}");
    assert!(
        stdout.contains("environment variable THOTH_API_KEY"),
        "{stdout}"
    );
    assert!(!stdout.contains(KEY), "the key must never be printed");
}

#[test]
fn validate_names_the_bad_key_and_line_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "127.0.0.1:9", "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("linger = \"100ms\"", "linger = \"100 parsecs\"");
    let line = 1 + text.lines().position(|l| l.contains("parsecs")).unwrap();
    std::fs::write(&config, text).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("validate")
        .env("THOTH_API_KEY", KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("delivery.linger") && stderr.contains(&format!("config.toml:{line}:")),
        "{stderr}"
    );
}

#[test]
fn validate_refuses_a_malformed_key_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "127.0.0.1:9", "");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("validate")
        .env("THOTH_API_KEY", "sk_live_leakme")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("thoth_live_") && !stderr.contains("leakme"),
        "{stderr}"
    );
}

#[test]
fn demo_delivers_every_sample_event() {
    let out = Command::new(BIN)
        .arg("demo")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("events delivered:  400 (400 unique ids)"),
        "{stdout}"
    );
}

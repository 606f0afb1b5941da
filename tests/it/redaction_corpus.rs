//! Redaction measured on a corpus (`tests/fixtures/secrets/`, written by its
//! `generate.py`): lines an agent could log, each through its preset. A
//! positive line's secret must survive nowhere in the events (no string of
//! them, decoded, and not the raw JSON either); a negative line's `keep`
//! must survive whole in some string. Prints recall and damaged negatives;
//! both must be perfect.

use std::path::Path;
use std::sync::Arc;

use thoth_ingest::config::JsonFields;
use thoth_ingest::event::Timestamp;
use thoth_ingest::parse::{build_named, EventBuf, EventContext, Record, Redaction};

#[derive(serde::Deserialize)]
struct Case {
    preset: String,
    what: String,
    line: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    keep: Option<String>,
}

fn cases(name: &str) -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/secrets")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The events a line makes, as JSON text.
fn events(preset: &str, line: &str) -> Vec<String> {
    let ctx = EventContext::preview("preview", "preview");
    let red = Arc::new(Redaction::builtin(ctx.content_max_bytes));
    let mut parser = build_named(preset, ctx, red, &JsonFields::default()).unwrap();
    let mut buf = EventBuf::default();
    let rec = Record {
        stream: "corpus",
        position: 0,
        line: line.as_bytes(),
        read_at: Timestamp::from_unix_micros(0),
    };
    let _ = parser.parse(&rec, &mut buf);
    buf.iter()
        .map(|e| String::from_utf8(e.to_vec()).unwrap())
        .collect()
}

/// Every string of a JSON value, keys included, decoded.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|i| strings(i, out)),
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                out.push(k.clone());
                strings(v, out);
            }
        }
        other => out.push(other.to_string()),
    }
}

fn all_strings(events: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for e in events {
        strings(&serde_json::from_str(e).unwrap(), &mut out);
    }
    out
}

/// `s` with JSON escapes decoded, over and over (a secret may sit behind
/// escapes in JSON inside a JSON string).
fn unescaped(s: &str) -> String {
    let mut text = s.to_string();
    for _ in 0..3 {
        let mut out = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                        Some(d) => out.push(d),
                        None => out.push_str(&hex),
                    }
                }
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            }
        }
        text = out;
    }
    text
}

#[test]
fn redaction_catches_every_secret_of_the_corpus_and_damages_no_negative() {
    let positive = cases("positive.jsonl");
    let negative = cases("negative.jsonl");
    assert!(positive.len() >= 150 && negative.len() >= 100);
    let mut leaked = Vec::new();
    for c in &positive {
        let secret = c.secret.as_deref().unwrap();
        assert!(
            unescaped(&c.line).contains(secret),
            "{}: the secret is not in the line",
            c.what
        );
        let events = events(&c.preset, &c.line);
        assert!(!events.is_empty(), "{}: the line made no event", c.what);
        let found = all_strings(&events).iter().any(|s| s.contains(secret))
            || events.iter().any(|e| e.contains(secret));
        if found {
            leaked.push(format!(
                "{}: {secret}\n    {}",
                c.what,
                events.join("\n    ")
            ));
        }
    }
    let mut damaged = Vec::new();
    for c in &negative {
        let keep = c.keep.as_deref().unwrap();
        let events = events(&c.preset, &c.line);
        assert!(!events.is_empty(), "{}: the line made no event", c.what);
        if !all_strings(&events).iter().any(|s| s.contains(keep)) {
            damaged.push(format!("{}: {keep}\n    {}", c.what, events.join("\n    ")));
        }
    }
    let caught = positive.len() - leaked.len();
    eprintln!(
        "redaction corpus: recall {caught}/{} ({:.1}%), {} of {} negatives damaged",
        positive.len(),
        100.0 * caught as f64 / positive.len() as f64,
        damaged.len(),
        negative.len()
    );
    assert!(
        leaked.is_empty() && damaged.is_empty(),
        "leaked ({}):\n{}\n\ndamaged ({}):\n{}",
        leaked.len(),
        leaked.join("\n"),
        damaged.len(),
        damaged.join("\n")
    );
}

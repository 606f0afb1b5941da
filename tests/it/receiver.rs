//! The local receiver answers as thoth-api.md says: 202 with the rate-limit
//! headers, 401, 400 with the documented error body, and 429 with Retry-After.

use crate::common;

use common::*;
use reqwest::blocking::Client;
use serde_json::{json, Value};

fn event(id: &str) -> Value {
    json!({
      "event_id": id, "tenant_id": "acme", "agent_id": null, "session_id": "s",
      "user_id": "u", "source_type": "agent_tool_call", "event_type": "TOOL_CALL_PRE",
      "tool_name": "t", "content": "c", "metadata": {}, "approved_scope": [],
      "enforcement_mode": "observe", "session_tool_calls": [],
      "occurred_at": "2026-03-13T12:00:00.123456+00:00", "ttl": 1781352000, "violation_id": null
    })
}

fn post(
    client: &Client,
    addr: &str,
    key: Option<&str>,
    body: &Value,
) -> reqwest::blocking::Response {
    let mut req = client
        .post(format!("http://{addr}/v1/events/batch"))
        .json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().expect("request")
}

#[test]
fn answers_per_the_api_contract() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(
        dir.path(),
        &[
            "--limit",
            "3",
            "--window",
            "1h",
            "--api-key",
            "thoth_test_good",
        ],
    );
    let client = Client::new();
    let addr = &receiver.addr;

    let r = post(
        &client,
        addr,
        Some("thoth_test_good"),
        &json!([event("acme:1"), event("acme:2")]),
    );
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(r.headers()["x-ratelimit-limit"], "3");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "2");
    let reset: u64 = r.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        reset > now && reset <= now + 3601,
        "reset {reset} is a Unix time within the window"
    );

    let r = post(&client, addr, None, &json!([event("acme:3")]));
    assert_eq!(r.status().as_u16(), 401);
    assert!(
        r.headers().contains_key("x-ratelimit-remaining"),
        "rate headers on every answer"
    );
    let r = post(
        &client,
        addr,
        Some("thoth_test_other"),
        &json!([event("acme:3")]),
    );
    assert_eq!(r.status().as_u16(), 401);

    let mut bad = event("acme:4");
    bad.as_object_mut().unwrap().remove("user_id");
    let r = post(
        &client,
        addr,
        Some("thoth_test_good"),
        &json!([event("acme:5"), bad]),
    );
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "INVALID_REQUEST");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("user_id"),
        "{body}"
    );
    assert!(body["error"]["requestId"]
        .as_str()
        .unwrap()
        .starts_with("req_"));

    // Third request of the window is still allowed; the fourth is not.
    let r = post(
        &client,
        addr,
        Some("thoth_test_good"),
        &json!([event("acme:1")]),
    );
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let r = post(
        &client,
        addr,
        Some("thoth_test_good"),
        &json!([event("acme:6")]),
    );
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 3600, "Retry-After {retry}");
    assert!(r.headers().contains_key("x-ratelimit-reset"));

    let health = client.get(format!("http://{addr}/healthz")).send().unwrap();
    assert_eq!(health.status().as_u16(), 200);

    let stats = receiver.stats();
    assert_eq!(stats.requests, 6);
    assert_eq!(stats.accepted_events, 3);
    assert_eq!(stats.unique_event_ids, 2);
    assert_eq!(stats.duplicate_events, 1);
    assert_eq!(stats.status.get(&202), Some(&2));
    assert_eq!(stats.status.get(&401), Some(&2));
    assert_eq!(stats.status.get(&400), Some(&1));
    assert_eq!(stats.status.get(&429), Some(&1));
}

#[test]
fn fail_ratio_one_fails_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &["--fail-ratio", "1"]);
    let r = post(
        &Client::new(),
        &receiver.addr,
        Some(KEY),
        &json!([event("acme:1")]),
    );
    assert_eq!(r.status().as_u16(), 500);
    assert_eq!(receiver.stats().accepted_events, 0);
}

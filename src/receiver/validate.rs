//! The checks of a batch against `thoth-api.md`: a JSON array of events,
//! each with the required fields, the documented types and enumerations and
//! an RFC 3339 `occurred_at`. Written apart from the event model on purpose.

const EVENT_TYPES: &[&str] = &[
    "TOOL_CALL_PRE",
    "TOOL_CALL_POST",
    "TOOL_CALL_BLOCK",
    "LLM_INVOCATION",
];
const SOURCE_TYPES: &[&str] = &["agent_tool_call", "agent_llm_invocation"];
const MODES: &[&str] = &["observe", "step_up", "block", "progressive"];

/// An event that passed the checks: its id and its JSON as sent.
#[derive(Debug)]
pub struct Checked<'a> {
    pub event_id: std::borrow::Cow<'a, str>,
    pub raw: &'a serde_json::value::RawValue,
}

/// The event fields thoth-api.md names, typed as it says. Fields it does not
/// name (the older model's `hostname`, `chain_index`, ...) are allowed.
#[derive(serde::Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow)]
    event_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    tenant_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    session_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    user_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    agent_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    source_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    event_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    tool_name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    metadata: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    approved_scope: Option<Vec<std::borrow::Cow<'a, str>>>,
    #[serde(borrow)]
    enforcement_mode: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    session_tool_calls: Option<Vec<std::borrow::Cow<'a, str>>>,
    #[serde(borrow)]
    occurred_at: Option<std::borrow::Cow<'a, str>>,
    ttl: Option<i64>,
    #[serde(default, borrow)]
    violation_id: Option<std::borrow::Cow<'a, str>>,
}

/// Checks a body against thoth-api.md; the message names the event and field.
pub fn validate_batch(body: &[u8]) -> Result<Vec<Checked<'_>>, String> {
    validate_batch_with(body, None)
}

/// [`validate_batch`], also refusing events whose content contains `reject`.
pub fn validate_batch_with<'a>(
    body: &'a [u8],
    reject: Option<&str>,
) -> Result<Vec<Checked<'a>>, String> {
    let events: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body).map_err(|e| {
        if body.first().is_some_and(|b| *b == b'[') {
            format!("body is not a JSON array of events: {e}")
        } else {
            "body must be a JSON array of events".to_string()
        }
    })?;
    events
        .into_iter()
        .enumerate()
        .map(|(i, raw)| validate_event(raw, reject).map_err(|m| format!("event {i}: {m}")))
        .collect()
}

fn validate_event<'a>(
    raw: &'a serde_json::value::RawValue,
    reject: Option<&str>,
) -> Result<Checked<'a>, String> {
    if !raw.get().starts_with('{') {
        return Err("not a JSON object".into());
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let e: WireEvent = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let field = err.path().to_string();
        let inner = err.into_inner().to_string();
        let inner = inner
            .split(" at line")
            .next()
            .unwrap_or_default()
            .to_string();
        format!("field `{field}`: {inner}")
    })?;
    let required = |v: &Option<std::borrow::Cow<'_, str>>, k: &str| match v {
        Some(_) => Ok(()),
        None => Err(format!("field `{k}` is required")),
    };
    required(&e.event_id, "event_id")?;
    required(&e.tenant_id, "tenant_id")?;
    required(&e.session_id, "session_id")?;
    required(&e.user_id, "user_id")?;
    required(&e.event_type, "event_type")?;
    if e.tenant_id.as_deref().is_some_and(str::is_empty) {
        return Err("field `tenant_id` must not be empty".into());
    }
    let one_of =
        |v: &Option<std::borrow::Cow<'_, str>>, k: &str, allowed: &[&str]| match v.as_deref() {
            Some(s) if !allowed.contains(&s) => Err(format!(
                "field `{k}`: \"{s}\" is not one of {}",
                allowed.join(", ")
            )),
            _ => Ok(()),
        };
    one_of(&e.source_type, "source_type", SOURCE_TYPES)?;
    one_of(&e.event_type, "event_type", EVENT_TYPES)?;
    one_of(&e.enforcement_mode, "enforcement_mode", MODES)?;
    if e.metadata.is_some_and(|m| !m.get().starts_with('{')) {
        return Err("field `metadata` must be an object".into());
    }
    if let Some(t) = e.occurred_at.as_deref() {
        if !is_rfc3339_with_offset(t) {
            return Err(format!(
                "field `occurred_at`: \"{t}\" is not an RFC 3339 timestamp with offset"
            ));
        }
    }
    if let (Some(bad), Some(content)) = (reject, e.content.as_deref()) {
        if content.contains(bad) {
            return Err(format!(
                "field `content`: contains `{bad}`, refused by this receiver"
            ));
        }
    }
    let _ = (&e.agent_id, &e.tool_name, &e.approved_scope);
    let _ = (&e.session_tool_calls, &e.ttl, &e.violation_id);
    Ok(Checked {
        event_id: e.event_id.unwrap_or_default(),
        raw,
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)`, checked by shape.
fn is_rfc3339_with_offset(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn event() -> Value {
        json!({
          "event_id": "acme:1", "tenant_id": "acme", "agent_id": null, "session_id": "s",
          "user_id": "u", "source_type": "agent_tool_call", "event_type": "TOOL_CALL_PRE",
          "tool_name": "t", "content": "c", "metadata": {}, "approved_scope": [],
          "enforcement_mode": "observe", "session_tool_calls": [],
          "occurred_at": "2026-03-13T12:00:00.123456+00:00", "ttl": 1781352000, "violation_id": null
        })
    }

    #[test]
    fn validation_names_event_and_field() {
        assert!(validate_batch(&serde_json::to_vec(&json!([event()])).unwrap()).is_ok());
        let mut bad = event();
        bad["metadata"] = json!("text");
        let e = validate_batch(&serde_json::to_vec(&json!([bad])).unwrap())
            .err()
            .unwrap();
        assert!(e.starts_with("event 0: field `metadata`"), "{e}");
        let mut bad = event();
        bad["ttl"] = json!("soon");
        let e = validate_batch(&serde_json::to_vec(&json!([bad])).unwrap())
            .err()
            .unwrap();
        assert!(e.starts_with("event 0: field `ttl`"), "{e}");
        let mut bad = event();
        bad["approved_scope"] = json!([1]);
        assert!(validate_batch(&serde_json::to_vec(&json!([bad])).unwrap()).is_err());
        let mut bad = event();
        bad.as_object_mut().unwrap().remove("session_id");
        let e = validate_batch(&serde_json::to_vec(&json!([event(), bad])).unwrap()).unwrap_err();
        assert_eq!(e, "event 1: field `session_id` is required");
        let mut bad = event();
        bad["occurred_at"] = json!("2026-03-13 12:00");
        assert!(validate_batch(&serde_json::to_vec(&json!([bad])).unwrap()).is_err());
        let mut bad = event();
        bad["event_type"] = json!("TOOL_CALL");
        assert!(validate_batch(&serde_json::to_vec(&json!([bad])).unwrap()).is_err());
        assert!(validate_batch(b"{}").is_err());
        assert!(validate_batch(b"[").is_err());
    }

    #[test]
    fn rfc3339_shapes() {
        assert!(is_rfc3339_with_offset("2026-03-13T12:00:00Z"));
        assert!(is_rfc3339_with_offset("2026-03-13T12:00:00.1-05:30"));
        assert!(!is_rfc3339_with_offset("2026-03-13T12:00:00"));
        assert!(!is_rfc3339_with_offset("2026-03-13T12:00:00."));
    }
}

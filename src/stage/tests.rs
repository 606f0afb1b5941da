//! The stage's own rules, apart from any source: facts over claims.

use super::*;
use crate::config::JsonFields;
use crate::event::Timestamp;
use crate::parse::json::JsonParser;
use crate::parse::{EventContext, Redaction};

fn stage(from: UserIdFrom) -> Stage {
    let parser = JsonParser::new(
        EventContext::preview("acme", "agents"),
        &JsonFields::default(),
    );
    let provenance = Provenance::new(None, Arc::new(Redaction::builtin(4096)));
    Stage::dry_run(Box::new(parser), Arc::new(SourceStats::default()))
        .with_provenance(provenance)
        .with_user_id_from(Some(from))
        .with_default_user("configured")
}

fn record<'a>(line: &'a [u8], fields: &'a [(&'static str, String)]) -> RecordIn<'a> {
    RecordIn {
        stream: "agents/x",
        position: 0,
        bytes: line,
        read_at: Timestamp::from_unix_micros(0),
        metadata: None,
        fields,
    }
}

fn event(stage: &Stage, i: usize) -> serde_json::Value {
    serde_json::from_slice(stage.events.get(i)).expect("event JSON")
}

#[test]
fn a_journal_entry_is_of_its_uid_whatever_its_message_claims() {
    let mut stage = stage(UserIdFrom::JournalUid);
    let slot = stage.open_stream(None, None, None);
    let fields = [("uid", "65534".to_string()), ("user", "nobody".to_string())];
    stage.record(slot, record(br#"{"user":"root","content":"x"}"#, &fields));
    stage.record(slot, record(br#"{"user":"nobody","content":"y"}"#, &fields));
    stage.record(slot, record(br#"{"content":"z"}"#, &fields));
    let claimed = event(&stage, 0);
    assert_eq!(claimed["user_id"], "nobody", "{claimed}");
    assert_eq!(claimed["metadata"]["claimed_user_id"], "root", "{claimed}");
    for i in [1, 2] {
        let honest = event(&stage, i);
        assert_eq!(honest["user_id"], "nobody", "{honest}");
        assert!(
            honest["metadata"].get("claimed_user_id").is_none(),
            "{honest}"
        );
    }
    // An entry without `_UID` (the kernel's) keeps what the line says.
    stage.record(
        slot,
        record(br#"{"user":"kernel-said","content":"k"}"#, &[]),
    );
    assert_eq!(event(&stage, 3)["user_id"], "kernel-said");
    // Without a claim either: the configured user, not the last entry's.
    stage.record(slot, record(br#"{"content":"k2"}"#, &[]));
    assert_eq!(event(&stage, 4)["user_id"], "configured");
}

#[test]
fn a_file_line_is_of_the_files_owner_whatever_it_claims() {
    let mut stage = stage(UserIdFrom::FileOwner);
    let slot = stage.open_stream(Some(Path::new("/home/a/x.jsonl")), Some(0), None);
    stage.record(slot, record(br#"{"user_id":"daemon","content":"x"}"#, &[]));
    let e = event(&stage, 0);
    assert_eq!(e["user_id"], "root", "{e}");
    assert_eq!(e["metadata"]["claimed_user_id"], "daemon", "{e}");
}

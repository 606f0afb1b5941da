//! One line of `journalctl --output=json`: an entry's cursor, its message
//! (text, or an array of bytes when it is not valid UTF-8 or holds control
//! characters), its time, and the fields that go to the events' metadata.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{Metadata, Timestamp};
use crate::ops::users::UserNames;

/// What an entry tells of itself, by name: in `metadata.journald`, and as
/// `journald.NAME` fields to a rules parser.
pub const FIELD_NAMES: [&str; 9] = [
    "systemd_unit",
    "syslog_identifier",
    "pid",
    "comm",
    "hostname",
    "priority",
    "uid",
    "user",
    "cursor",
];

/// Entry fields copied to every event's metadata, under the names given
/// (`uid` is followed by `user`, its name).
const METADATA_FIELDS: [(&str, &str); 7] = [
    ("_SYSTEMD_UNIT", "systemd_unit"),
    ("SYSLOG_IDENTIFIER", "syslog_identifier"),
    ("_PID", "pid"),
    ("_COMM", "comm"),
    ("_HOSTNAME", "hostname"),
    ("PRIORITY", "priority"),
    ("_UID", "uid"),
];

/// The fields read from journalctl (besides __CURSOR and the timestamps,
/// which it always writes).
pub const FIELDS: [&str; 8] = [
    "MESSAGE",
    "_SYSTEMD_UNIT",
    "SYSLOG_IDENTIFIER",
    "_PID",
    "_COMM",
    "_HOSTNAME",
    "PRIORITY",
    "_UID",
];

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "__CURSOR")]
    cursor: Option<String>,
    #[serde(rename = "__REALTIME_TIMESTAMP")]
    realtime: Option<&'a str>,
    #[serde(rename = "MESSAGE", borrow)]
    message: Option<&'a RawValue>,
    #[serde(rename = "_SYSTEMD_UNIT", borrow)]
    unit: Option<&'a RawValue>,
    #[serde(rename = "SYSLOG_IDENTIFIER", borrow)]
    identifier: Option<&'a RawValue>,
    #[serde(rename = "_PID", borrow)]
    pid: Option<&'a RawValue>,
    #[serde(rename = "_COMM", borrow)]
    comm: Option<&'a RawValue>,
    #[serde(rename = "_HOSTNAME", borrow)]
    hostname: Option<&'a RawValue>,
    #[serde(rename = "PRIORITY", borrow)]
    priority: Option<&'a RawValue>,
    #[serde(rename = "_UID", borrow)]
    uid: Option<&'a RawValue>,
}

/// A journal entry as the source hands it on.
#[derive(Debug)]
pub struct Entry {
    pub cursor: String,
    /// `MESSAGE` as bytes: the stage repairs what is not UTF-8.
    pub message: Vec<u8>,
    /// `__REALTIME_TIMESTAMP`, when the entry was written.
    pub written_at: Option<Timestamp>,
    pub metadata: Metadata<'static>,
    /// The same as `metadata`, by name (one of [`FIELD_NAMES`]).
    pub fields: Vec<(&'static str, String)>,
}

/// Why a line is not an entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("not a JSON object of journal fields: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no __CURSOR field")]
    NoCursor,
}

impl Entry {
    /// Reads one line; `users` names the entry's `_UID` (journald sets it
    /// from the writer's credentials, so it says who ran the process).
    pub fn parse(line: &[u8], users: &mut UserNames) -> Result<Entry, EntryError> {
        let raw: Raw<'_> = serde_json::from_slice(line)?;
        let cursor = raw.cursor.ok_or(EntryError::NoCursor)?;
        let message = raw.message.map(field_bytes).unwrap_or_default();
        let written_at = raw
            .realtime
            .and_then(|t| t.parse::<i64>().ok())
            .and_then(Timestamp::from_unix_micros_checked);
        let mut metadata = Metadata::builder();
        let mut fields = Vec::with_capacity(FIELD_NAMES.len());
        let values = [
            raw.unit,
            raw.identifier,
            raw.pid,
            raw.comm,
            raw.hostname,
            raw.priority,
            raw.uid,
        ];
        for ((_, name), value) in METADATA_FIELDS.iter().zip(values) {
            if let Some(value) = value {
                let text = String::from_utf8_lossy(&field_bytes(value)).into_owned();
                metadata.str(name, &text);
                if *name == "uid" {
                    if let Ok(uid) = text.parse::<u32>() {
                        let user = users.name(uid).into_owned();
                        metadata.str("user", &user);
                        fields.push(("user", user));
                    }
                }
                fields.push((*name, text));
            }
        }
        metadata.str("cursor", &cursor);
        fields.push(("cursor", cursor.clone()));
        Ok(Entry {
            cursor,
            message,
            written_at,
            metadata: metadata.finish(),
            fields,
        })
    }
}

/// A field's value as bytes: journalctl writes a string, an array of byte
/// values (not UTF-8, or control characters), an array of those (a field
/// the entry holds more than once: the first is taken), or null (too long
/// without `--all`).
fn field_bytes(value: &RawValue) -> Vec<u8> {
    // Nearly every value is a string: read it without serde's untagged
    // buffering, which costs an allocation per field of every entry.
    if value.get().starts_with('"') {
        return serde_json::from_str::<std::borrow::Cow<'_, str>>(value.get())
            .map(|s| s.into_owned().into_bytes())
            .unwrap_or_default();
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Field {
        Text(String),
        Bytes(Vec<u8>),
        Many(Vec<serde_json::Value>),
        Null,
    }
    match serde_json::from_str::<Field>(value.get()) {
        Ok(Field::Text(s)) => s.into_bytes(),
        Ok(Field::Bytes(b)) => b,
        Ok(Field::Many(values)) => values
            .first()
            .and_then(|v| serde_json::value::to_raw_value(v).ok())
            .map(|v| field_bytes(&v))
            .unwrap_or_default(),
        Ok(Field::Null) | Err(_) => Vec::new(),
    }
}

/// The stream and position every event id of an entry derives from: the
/// cursor's sequence-number id (which names the journal's numbering, the
/// same on every machine that reads those files) and its sequence number.
/// A cursor of another shape gets a hash of itself as its position.
pub fn stream_and_position(source: &str, cursor: &str) -> (String, u64) {
    let (id, position) = seqnum_of(cursor);
    (
        match id {
            Some(id) => format!("journald/{source}/{id}"),
            None => format!("journald/{source}/cursor"),
        },
        position,
    )
}

/// The cursor's sequence-number id (None if it has none) and the position
/// in it: its sequence number, or a hash of a cursor of another shape.
pub fn seqnum_of(cursor: &str) -> (Option<&str>, u64) {
    let mut seqnum_id = None;
    let mut seqnum = None;
    for part in cursor.split(';') {
        match part.split_once('=') {
            Some(("s", v)) => seqnum_id = Some(v),
            Some(("i", v)) => seqnum = u64::from_str_radix(v, 16).ok(),
            _ => {}
        }
    }
    match (seqnum_id, seqnum) {
        (Some(id), Some(n)) => (Some(id), n),
        _ => (None, fnv1a(cursor.as_bytes())),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_binary_and_repeated_messages() {
        let users = &mut UserNames::default();
        let e = Entry::parse(
            br#"{"__CURSOR":"s=ab;i=1f;b=c;m=1;t=2;x=3","__REALTIME_TIMESTAMP":"1700000000123456","MESSAGE":"hello","_SYSTEMD_UNIT":"agent.service","_PID":"42","PRIORITY":"6","_UID":"0"}"#,
            users,
        )
        .unwrap();
        assert_eq!(e.message, b"hello");
        assert_eq!(
            e.written_at,
            Some(Timestamp::from_unix_micros(1_700_000_000_123_456))
        );
        let meta: serde_json::Value = serde_json::from_str(e.metadata.as_json()).unwrap();
        assert_eq!(meta["systemd_unit"], "agent.service");
        assert_eq!(meta["pid"], "42");
        assert_eq!(meta["uid"], "0");
        assert_eq!(meta["user"], "root", "_UID resolved to its name");
        assert_eq!(meta["cursor"], "s=ab;i=1f;b=c;m=1;t=2;x=3");
        let e = Entry::parse(
            br#"{"__CURSOR":"c","MESSAGE":[98,97,100,32,255,10,120]}"#,
            users,
        )
        .unwrap();
        assert_eq!(e.message, b"bad \xff\nx");
        let e = Entry::parse(br#"{"__CURSOR":"c","MESSAGE":["first","second"]}"#, users).unwrap();
        assert_eq!(e.message, b"first");
        let e = Entry::parse(br#"{"__CURSOR":"c","MESSAGE":null}"#, users).unwrap();
        assert_eq!(e.message, b"");
        assert!(matches!(
            Entry::parse(br#"{"MESSAGE":"x"}"#, users),
            Err(EntryError::NoCursor)
        ));
        assert!(Entry::parse(b"not json", users).is_err());
    }

    #[test]
    fn positions_come_from_the_cursor() {
        assert_eq!(
            stream_and_position("j", "s=ab12;i=1f;b=c;m=1;t=2;x=3"),
            ("journald/j/ab12".to_string(), 31)
        );
        let (stream, a) = stream_and_position("j", "odd");
        assert_eq!(stream, "journald/j/cursor");
        assert_ne!(a, stream_and_position("j", "other").1);
    }
}

//! Metadata entries every event of one stream carries (the host, the file's
//! path and owner), rendered once per stream and spliced into each event's
//! `metadata` object as it is written: no event is rebuilt for them. An
//! entry whose key the event's own metadata already has is left out, so the
//! object never holds a key twice (a line's own `host` is kept).

use memchr::memmem::Finder;

use super::Metadata;

struct Entry {
    /// `"key":`, to find the key in an event's metadata quickly.
    key: Finder<'static>,
    /// `"key"`, to tell a top-level key from one nested deeper.
    quoted: Vec<u8>,
    /// `"key":value`.
    text: String,
}

/// The entries of one stream; empty adds nothing.
#[derive(Default)]
pub struct StreamMetadata {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for StreamMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.text))
            .finish()
    }
}

impl StreamMetadata {
    /// The entries of `metadata`, an object built by this crate.
    pub fn new(metadata: Metadata<'_>) -> StreamMetadata {
        let json = metadata.as_json();
        let Ok(map) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json)
        else {
            return StreamMetadata::default();
        };
        let entries = map
            .iter()
            .map(|(k, v)| {
                let mut quoted = Vec::new();
                super::push_str(&mut quoted, k);
                let mut key = quoted.clone();
                key.push(b':');
                let mut text = key.clone();
                if let Err(e) = serde_json::to_writer(&mut text, v) {
                    unreachable!("a JSON value always serializes into memory: {e}");
                }
                Entry {
                    key: Finder::new(&key).into_owned(),
                    quoted,
                    text: String::from_utf8_lossy(&text).into_owned(),
                }
            })
            .collect();
        StreamMetadata { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries as they are added to an empty object.
    pub fn entries(&self) -> String {
        let mut out = Vec::new();
        self.write_merged("{}", &mut out);
        String::from_utf8_lossy(&out[1..out.len() - 1]).into_owned()
    }

    /// Writes the object `metadata` (JSON text of an object) with these
    /// entries added.
    pub fn write_merged(&self, metadata: &str, out: &mut Vec<u8>) {
        let body = metadata
            .strip_prefix('{')
            .and_then(|m| m.strip_suffix('}'))
            .unwrap_or_default();
        out.push(b'{');
        out.extend_from_slice(body.as_bytes());
        let mut empty = body.trim().is_empty();
        for entry in &self.entries {
            if !empty
                && entry.key.find(body.as_bytes()).is_some()
                && has_top_level_key(body.as_bytes(), &entry.quoted)
            {
                continue;
            }
            if !empty {
                out.push(b',');
            }
            out.extend_from_slice(entry.text.as_bytes());
            empty = false;
        }
        out.push(b'}');
    }

    /// `metadata` with these entries added.
    pub fn merged(&self, metadata: &Metadata<'_>) -> Metadata<'static> {
        let mut out = Vec::with_capacity(metadata.as_json().len() + 128);
        self.write_merged(metadata.as_json(), &mut out);
        match String::from_utf8(out) {
            Ok(text) => Metadata(std::borrow::Cow::Owned(text)),
            Err(e) => unreachable!("built from str pieces: {e}"),
        }
    }
}

/// Whether the members of a JSON object (`body`, its text without the
/// braces) have the key `quoted` (with its quotes, as JSON writes it) at
/// their own level, not in an object nested in a value.
fn has_top_level_key(body: &[u8], quoted: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut expect_key = true;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < body.len() {
                    match body[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                let end = (i + 1).min(body.len());
                if depth == 0 && expect_key {
                    if &body[start..end] == quoted {
                        return true;
                    }
                    expect_key = false;
                }
                i = end;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => expect_key = true,
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> StreamMetadata {
        let mut b = Metadata::builder();
        b.str("host", "web-1");
        b.str("source_path", "/var/log/a \"b\".log");
        StreamMetadata::new(b.finish())
    }

    #[test]
    fn entries_are_added_once_and_the_events_own_keys_win() {
        let s = stream();
        let merged = |m: &str| {
            let mut out = Vec::new();
            s.write_merged(m, &mut out);
            let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            (String::from_utf8(out).unwrap(), v)
        };
        let (_, v) = merged("{}");
        assert_eq!(v["host"], "web-1");
        assert_eq!(v["source_path"], "/var/log/a \"b\".log");
        let (text, v) = merged(r#"{"host":"agent-box","n":1}"#);
        assert_eq!(v["host"], "agent-box");
        assert_eq!(text.matches("\"host\"").count(), 1, "{text}");
        assert_eq!(v["n"], 1);
        assert_eq!(v["source_path"], "/var/log/a \"b\".log");
        assert!(StreamMetadata::default().entries().is_empty());
        // Only a key of the object itself counts, not one nested in a value
        // or written inside a string.
        let (_, v) = merged(r#"{"args":{"host":"api.x"},"note":"\"host\": no"}"#);
        assert_eq!(v["host"], "web-1");
        assert_eq!(v["args"]["host"], "api.x");
    }
}

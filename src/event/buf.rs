//! A batch of events serialized back to back: what a parser writes, what
//! the queue stores in one commit.

use super::bound;
use super::{Event, Metadata, StreamMetadata, Timestamp};

/// Events serialized back to back, with the end offset of each. No event is
/// longer than `max_event_bytes`: a longer one is cut to fit and marked
/// (see [`bound`]).
#[derive(Debug, Clone)]
pub struct EventBuf {
    pub bytes: Vec<u8>,
    pub ends: Vec<u32>,
    max_event_bytes: usize,
    /// Events cut to fit `max_event_bytes`, ever.
    pub events_truncated: u64,
    /// What the source knows of the record being parsed (a journal entry's
    /// unit, pid, ...): added to every event's metadata under its key.
    record_metadata: Option<(&'static str, Metadata<'static>)>,
    /// Only events whose time falls in it are kept (replay's `--since` and
    /// `--until`), by [`EventBuf::drop_outside_window`] once a record's
    /// events are made (and cut to the per-record cap).
    window: Option<TimeWindow>,
    /// With a window: the time of each event.
    times: Vec<Timestamp>,
    /// Entries the events of the stream being parsed carry (host, path).
    stream: Option<std::sync::Arc<StreamMetadata>>,
    /// The user the kernel vouches for (a file's owner, a journal entry's
    /// `_UID`), when the source takes `user_id` from it: an event whose
    /// line names another user gets this one, the claim going to
    /// `metadata.claimed_user_id`.
    trusted_user: Option<std::sync::Arc<str>>,
}

/// Longest claimed user id kept in metadata, in bytes.
const MAX_CLAIMED_USER_BYTES: usize = 256;

/// A span of event times: `since` included, `until` excluded; an open end
/// is unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeWindow {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

impl TimeWindow {
    pub fn contains(&self, t: Timestamp) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }
}

impl Default for EventBuf {
    fn default() -> Self {
        EventBuf::with_max_event_bytes(bound::DEFAULT_MAX_EVENT_BYTES)
    }
}

impl EventBuf {
    pub fn with_max_event_bytes(max_event_bytes: usize) -> EventBuf {
        EventBuf {
            bytes: Vec::new(),
            ends: Vec::new(),
            max_event_bytes,
            events_truncated: 0,
            record_metadata: None,
            window: None,
            times: Vec::new(),
            stream: None,
            trusted_user: None,
        }
    }

    /// Sets the entries every event pushed next carries in its metadata.
    pub fn set_stream_metadata(&mut self, stream: Option<std::sync::Arc<StreamMetadata>>) {
        self.stream = stream;
    }

    /// Sets the user every event pushed next is of (see `trusted_user`).
    pub fn set_trusted_user(&mut self, user: Option<std::sync::Arc<str>>) {
        self.trusted_user = user;
    }

    /// Keeps only events whose `occurred_at` falls in `window` (see
    /// [`EventBuf::drop_outside_window`]).
    pub fn with_window(mut self, window: Option<TimeWindow>) -> EventBuf {
        self.window = window;
        self
    }

    pub fn window(&self) -> Option<TimeWindow> {
        self.window
    }

    /// Drops the events from index `from` on whose time is outside the
    /// window; returns how many. Nothing without a window.
    pub fn drop_outside_window(&mut self, from: usize) -> u64 {
        let Some(window) = self.window else {
            return 0;
        };
        let start = from.checked_sub(1).map_or(0, |i| self.ends[i] as usize);
        let mut write = start;
        let mut kept = from;
        let mut dropped = 0;
        for i in from..self.ends.len() {
            let begin = if i == 0 { 0 } else { self.ends[i - 1] as usize };
            let end = self.ends[i] as usize;
            if window.contains(self.times[i]) {
                self.bytes.copy_within(begin..end, write);
                write += end - begin;
                self.ends[kept] = write as u32;
                self.times[kept] = self.times[i];
                kept += 1;
            } else {
                dropped += 1;
            }
        }
        self.bytes.truncate(write);
        self.ends.truncate(kept);
        self.times.truncate(kept);
        dropped
    }

    /// Sets what the source knows of the records parsed next, and the
    /// metadata key it goes under (None: nothing).
    pub fn set_record_metadata(&mut self, metadata: Option<(&'static str, Metadata<'static>)>) {
        self.record_metadata = metadata;
    }

    pub fn push(&mut self, event: &Event<'_>) {
        if self.window.is_some() {
            self.times.push(event.occurred_at);
        }
        let claim_differs = self
            .trusted_user
            .as_deref()
            .is_some_and(|user| event.user_id != user);
        if self.record_metadata.is_none() && !claim_differs {
            return self.push_as_is(event);
        }
        let mut event = event.clone();
        if let (true, Some(user)) = (claim_differs, &self.trusted_user) {
            let claimed = crate::event::truncate_utf8(&event.user_id, MAX_CLAIMED_USER_BYTES);
            event.metadata = event.metadata.with_str_entry("claimed_user_id", claimed);
            event.user_id = std::borrow::Cow::Owned(user.to_string());
        }
        if let Some((key, extra)) = &self.record_metadata {
            event.metadata = event.metadata.with_entry(key, extra);
        }
        self.push_as_is(&event);
    }

    fn push_as_is(&mut self, event: &Event<'_>) {
        let start = self.bytes.len();
        let stream = self.stream.as_deref();
        event.write_json_with(&mut self.bytes, stream);
        let len = self.bytes.len() - start;
        if len > self.max_event_bytes {
            self.bytes.truncate(start);
            match stream {
                Some(stream) if !stream.is_empty() => {
                    let mut merged = event.clone();
                    merged.metadata = stream.merged(&event.metadata);
                    bound::write_bounded(&merged, len, self.max_event_bytes, &mut self.bytes);
                }
                _ => bound::write_bounded(event, len, self.max_event_bytes, &mut self.bytes),
            }
            self.events_truncated += 1;
        }
        self.ends.push(self.bytes.len() as u32);
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.times.clear();
    }

    /// Keeps the first `len` events.
    pub fn truncate(&mut self, len: usize) {
        if len < self.ends.len() {
            let end = len.checked_sub(1).map_or(0, |i| self.ends[i] as usize);
            self.bytes.truncate(end);
            self.ends.truncate(len);
            self.times.truncate(len.min(self.times.len()));
        }
    }

    /// The JSON of event `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EnforcementMode, EventType};
    use std::borrow::Cow;

    fn at(second: i64, content: &str) -> Event<'static> {
        Event {
            event_id: format!("t:{second}"),
            tenant_id: "t".into(),
            agent_id: None,
            session_id: "s".into(),
            user_id: "u".into(),
            source_type: EventType::ToolCallPre.source_type(),
            event_type: EventType::ToolCallPre,
            tool_name: "bash".into(),
            content: Cow::Owned(content.to_string()),
            metadata: Metadata::empty(),
            approved_scope: Vec::new(),
            enforcement_mode: EnforcementMode::Observe,
            session_tool_calls: Vec::new(),
            occurred_at: Timestamp::from_unix_micros(second * 1_000_000),
            ttl: 0,
            violation_id: None,
        }
    }

    #[test]
    fn a_window_keeps_since_and_drops_until_and_what_is_outside() {
        let window = TimeWindow {
            since: Some(Timestamp::from_unix_micros(10_000_000)),
            until: Some(Timestamp::from_unix_micros(20_000_000)),
        };
        let mut buf = EventBuf::default().with_window(Some(window));
        buf.push(&at(5, "kept: before the record"));
        buf.push(&at(9, "out"));
        buf.push(&at(10, "in"));
        buf.push(&at(15, "in too"));
        buf.push(&at(20, "out: until is excluded"));
        // The first event belongs to an earlier record: not looked at.
        assert_eq!(buf.drop_outside_window(1), 2);
        let contents: Vec<String> = buf
            .iter()
            .map(|e| serde_json::from_slice::<serde_json::Value>(e).unwrap()["content"].to_string())
            .collect();
        assert_eq!(
            contents,
            ["\"kept: before the record\"", "\"in\"", "\"in too\""]
        );
        buf.truncate(2);
        buf.push(&at(30, "out"));
        assert_eq!(buf.drop_outside_window(2), 1);
        assert_eq!(buf.len(), 2);
        // Without a window nothing is dropped.
        let mut plain = EventBuf::default();
        plain.push(&at(1, "x"));
        assert_eq!(plain.drop_outside_window(0), 0);
        assert_eq!(plain.len(), 1);
    }
}

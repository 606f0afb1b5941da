//! A batch of events serialized back to back: what a parser writes, what
//! the queue stores in one commit.

use super::bound;
use super::{Event, Metadata, Timestamp};

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
    /// `--until`); the others are counted and dropped as they are pushed.
    window: Option<TimeWindow>,
    /// Events dropped for falling outside `window`, ever.
    pub events_outside_window: u64,
}

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
            events_outside_window: 0,
        }
    }

    /// Keeps only events whose `occurred_at` falls in `window`.
    pub fn with_window(mut self, window: Option<TimeWindow>) -> EventBuf {
        self.window = window;
        self
    }

    /// Sets what the source knows of the records parsed next, and the
    /// metadata key it goes under (None: nothing).
    pub fn set_record_metadata(&mut self, metadata: Option<(&'static str, Metadata<'static>)>) {
        self.record_metadata = metadata;
    }

    pub fn push(&mut self, event: &Event<'_>) {
        if let Some(window) = &self.window {
            if !window.contains(event.occurred_at) {
                self.events_outside_window += 1;
                return;
            }
        }
        let Some((key, extra)) = &self.record_metadata else {
            return self.push_as_is(event);
        };
        let mut event = event.clone();
        event.metadata = event.metadata.with_entry(key, extra);
        self.push_as_is(&event);
    }

    fn push_as_is(&mut self, event: &Event<'_>) {
        let start = self.bytes.len();
        event.write_json(&mut self.bytes);
        let len = self.bytes.len() - start;
        if len > self.max_event_bytes {
            self.bytes.truncate(start);
            bound::write_bounded(event, len, self.max_event_bytes, &mut self.bytes);
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
    }

    /// Keeps the first `len` events.
    pub fn truncate(&mut self, len: usize) {
        if len < self.ends.len() {
            let end = len.checked_sub(1).map_or(0, |i| self.ends[i] as usize);
            self.bytes.truncate(end);
            self.ends.truncate(len);
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

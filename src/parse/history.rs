//! The tools a session has called so far: what fills an event's
//! `session_tool_calls`, as the Thoth SDK fills it.
//!
//! One history per stream, kept in its parser and saved with the parser's
//! state in every checkpoint, so a restart continues the history an
//! uninterrupted run would have had. Everything in it comes from lines a
//! user writes, so it is bounded: the last [`TOOLS_KEPT`] names of a session
//! (older ones are dropped, and the count of them goes into the event's
//! `metadata.session_tool_calls_dropped`), [`SESSIONS_KEPT`] sessions and
//! [`HISTORY_MAX_BYTES`] per stream (beyond them the least recently used
//! session goes, counted as a state eviction), names cut to
//! [`NAME_MAX_BYTES`].
//!
//! A call enters the history once: at its TOOL_CALL_PRE for formats that
//! log the request, at its TOOL_CALL_POST or TOOL_CALL_BLOCK for formats
//! that log only the outcome (OTel's `execute_tool`). So an event lists the
//! calls made before it: a PRE does not list its own call, its POST does.

use std::borrow::Cow;
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{truncate_utf8, MetaWriter, Redaction};
use crate::event::{Event, EventType};

/// Names kept per session, newest last.
pub const TOOLS_KEPT: usize = 64;
/// Sessions kept per stream (a Claude Code or Codex file is one session;
/// an OTel export may interleave several).
pub const SESSIONS_KEPT: usize = 32;
/// Bytes of names and session ids kept per stream: the state is written
/// with every checkpoint.
pub const HISTORY_MAX_BYTES: usize = 64 << 10;
/// Longest tool name or session id kept (a longer one is cut).
pub const NAME_MAX_BYTES: usize = 256;
/// Most bytes of names one event lists; older names beyond it are left
/// out of that event and counted as dropped. Whatever the names, the list
/// then never crowds the event's own content out of `max_event_bytes`.
pub const EVENT_LIST_MAX_BYTES: usize = 8 << 10;
/// Bytes of a tool name screened before it is cut: a secret that crosses
/// the cut is still seen whole, and redacted whole.
const SCREEN_WINDOW_BYTES: usize = 4 * NAME_MAX_BYTES;

/// Which events bring their call into the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntersAt {
    /// TOOL_CALL_PRE: the format logs each request.
    Pre,
    /// TOOL_CALL_POST and TOOL_CALL_BLOCK: the format logs only outcomes.
    Outcome,
}

impl EntersAt {
    fn admits(self, event_type: EventType) -> bool {
        match self {
            EntersAt::Pre => event_type == EventType::ToolCallPre,
            EntersAt::Outcome => matches!(
                event_type,
                EventType::ToolCallPost | EventType::ToolCallBlock
            ),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Session {
    id: String,
    tools: VecDeque<String>,
    /// Names dropped from the front since the session began.
    dropped: u64,
}

impl Session {
    fn bytes(&self) -> usize {
        self.id.len() + self.tools.iter().map(String::len).sum::<usize>()
    }
}

/// A call to add once its event is written: the session and the tool name
/// as screened by the redaction.
#[derive(Debug)]
pub struct Entry {
    session: String,
    tool: String,
}

/// The histories of the sessions of one stream.
#[derive(Debug, Clone)]
pub struct SessionHistory {
    enters_at: EntersAt,
    /// Least recently used first.
    sessions: Vec<Session>,
    bytes: usize,
    evicted: u64,
}

/// The saved form: sessions least recently used first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SavedHistory(Vec<Session>);

impl SessionHistory {
    pub fn new(enters_at: EntersAt) -> SessionHistory {
        SessionHistory {
            enters_at,
            sessions: Vec::new(),
            bytes: 0,
            evicted: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    fn find(&self, session: &str) -> Option<usize> {
        let session = truncate_utf8(session, NAME_MAX_BYTES);
        self.sessions.iter().rposition(|s| s.id == session)
    }

    /// Fills `e.session_tool_calls` with the calls its session made before
    /// it, and `meta` with how many older ones were dropped. Returns the
    /// call to [`SessionHistory::record`] once the event is written, when
    /// this event brings one.
    pub fn fill<'h>(
        &'h self,
        red: &Redaction,
        e: &mut Event<'h>,
        meta: &mut MetaWriter<'_>,
    ) -> Option<Entry> {
        if let Some(s) = self.find(&e.session_id).map(|i| &self.sessions[i]) {
            // The newest names within the event's budget (each costs its
            // quotes and comma too).
            let mut budget = EVENT_LIST_MAX_BYTES;
            let listed = s
                .tools
                .iter()
                .rev()
                .take_while(|t| match budget.checked_sub(t.len() + 3) {
                    Some(left) => {
                        budget = left;
                        true
                    }
                    None => false,
                })
                .count();
            let left_out = s.tools.len() - listed;
            e.session_tool_calls = s
                .tools
                .iter()
                .skip(left_out)
                .map(|t| Cow::Borrowed(t.as_str()))
                .collect();
            let dropped = s.dropped.saturating_add(left_out as u64);
            if dropped > 0 {
                meta.u64("session_tool_calls_dropped", dropped);
            }
        }
        if !self.enters_at.admits(e.event_type) || e.tool_name.is_empty() {
            return None;
        }
        Some(Entry {
            session: truncate_utf8(&e.session_id, NAME_MAX_BYTES).to_string(),
            tool: history_name(red, &e.tool_name),
        })
    }

    /// Adds a call [`SessionHistory::fill`] returned.
    pub fn record(&mut self, entry: Option<Entry>) {
        let Some(Entry { session, tool }) = entry else {
            return;
        };
        let at = match self.find(&session) {
            Some(i) => {
                // Most recently used last: move it there.
                if i + 1 != self.sessions.len() {
                    let s = self.sessions.remove(i);
                    self.sessions.push(s);
                }
                self.sessions.len() - 1
            }
            None => {
                self.bytes += session.len();
                self.sessions.push(Session {
                    id: session,
                    ..Session::default()
                });
                self.sessions.len() - 1
            }
        };
        let s = &mut self.sessions[at];
        self.bytes += tool.len();
        s.tools.push_back(tool);
        while s.tools.len() > TOOLS_KEPT {
            if let Some(old) = s.tools.pop_front() {
                self.bytes = self.bytes.saturating_sub(old.len());
                s.dropped = s.dropped.saturating_add(1);
            }
        }
        self.enforce_bounds();
    }

    fn enforce_bounds(&mut self) {
        // The newest session always stays: alone it is within the bounds.
        while self.sessions.len() > 1
            && (self.sessions.len() > SESSIONS_KEPT || self.bytes > HISTORY_MAX_BYTES)
        {
            let gone = self.sessions.remove(0);
            self.bytes = self.bytes.saturating_sub(gone.bytes());
            self.evicted += 1;
        }
    }

    /// Sessions evicted since the last call.
    pub fn take_evictions(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
    }

    pub fn save(&self) -> SavedHistory {
        SavedHistory(self.sessions.clone())
    }

    /// Restores a saved history, bounded again (the bytes come from disk)
    /// and screened again with `red` (a restart may have added a detector;
    /// a name redacted before stays redacted).
    pub fn load(&mut self, saved: SavedHistory, red: &Redaction) {
        self.sessions.clear();
        self.bytes = 0;
        for mut s in saved.0 {
            s.id = truncate_utf8(&s.id, NAME_MAX_BYTES).to_string();
            while s.tools.len() > TOOLS_KEPT {
                s.tools.pop_front();
                s.dropped = s.dropped.saturating_add(1);
            }
            for t in s.tools.iter_mut() {
                *t = history_name(red, t);
            }
            // A session saved twice (damaged state): the later, newer one.
            if let Some(i) = self.find(&s.id) {
                let old = self.sessions.remove(i);
                self.bytes = self.bytes.saturating_sub(old.bytes());
            }
            self.bytes += s.bytes();
            self.sessions.push(s);
        }
        self.enforce_bounds();
        self.evicted = 0;
    }
}

/// A tool name as the history keeps it: screened (over a window past the
/// cut, so a secret across it is redacted whole), control characters made
/// spaces (each would cost six bytes escaped, in every later event), then
/// cut to [`NAME_MAX_BYTES`].
fn history_name(red: &Redaction, name: &str) -> String {
    let screened = red.screen_history_name(truncate_utf8(name, SCREEN_WINDOW_BYTES));
    let clean: String = truncate_utf8(&screened, NAME_MAX_BYTES)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate_utf8(&clean, NAME_MAX_BYTES).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Timestamp;
    use crate::parse::{EventBuf, EventContext, Record};

    fn red() -> Redaction {
        Redaction::builtin(1000)
    }

    /// Writes one event of `session` and returns its tool history.
    fn event(
        h: &mut SessionHistory,
        red: &Redaction,
        ctx: &EventContext,
        session: &str,
        event_type: EventType,
        tool: &str,
    ) -> serde_json::Value {
        let rec = Record {
            stream: "s/0",
            position: 0,
            line: b"",
            read_at: Timestamp::from_unix_micros(0),
        };
        let mut e = ctx.base_event(&rec, 0, event_type, rec.read_at);
        e.session_id = Cow::Borrowed(session);
        e.tool_name = Cow::Borrowed(tool);
        let mut meta = red.metadata();
        let entry = h.fill(red, &mut e, &mut meta);
        e.metadata = meta.finish();
        let mut out = EventBuf::default();
        red.push(&mut out, &mut e);
        h.record(entry);
        let v: serde_json::Value = serde_json::from_slice(out.get(0)).expect("event JSON");
        serde_json::json!({
            "calls": v["session_tool_calls"],
            "dropped": v["metadata"]["session_tool_calls_dropped"],
        })
    }

    #[test]
    fn a_call_enters_at_its_pre_and_sessions_are_apart() {
        let (red, ctx) = (red(), EventContext::preview("t", "d"));
        let mut h = SessionHistory::new(EntersAt::Pre);
        let pre = EventType::ToolCallPre;
        let post = EventType::ToolCallPost;
        assert_eq!(
            event(&mut h, &red, &ctx, "a", pre, "Read")["calls"],
            serde_json::json!([])
        );
        assert_eq!(
            event(&mut h, &red, &ctx, "a", post, "Read")["calls"],
            serde_json::json!(["Read"])
        );
        assert_eq!(
            event(&mut h, &red, &ctx, "b", pre, "Bash")["calls"],
            serde_json::json!([])
        );
        assert_eq!(
            event(&mut h, &red, &ctx, "a", pre, "Edit")["calls"],
            serde_json::json!(["Read"])
        );
        let v = event(&mut h, &red, &ctx, "a", EventType::LlmInvocation, "");
        assert_eq!(v["calls"], serde_json::json!(["Read", "Edit"]));
        assert!(v["dropped"].is_null());
        assert_eq!(
            event(&mut h, &red, &ctx, "b", post, "Bash")["calls"],
            serde_json::json!(["Bash"])
        );
    }

    #[test]
    fn outcome_formats_enter_at_the_post() {
        let (red, ctx) = (red(), EventContext::preview("t", "d"));
        let mut h = SessionHistory::new(EntersAt::Outcome);
        let post = EventType::ToolCallPost;
        assert_eq!(
            event(&mut h, &red, &ctx, "a", post, "x")["calls"],
            serde_json::json!([])
        );
        assert_eq!(
            event(&mut h, &red, &ctx, "a", EventType::ToolCallBlock, "y")["calls"],
            serde_json::json!(["x"])
        );
        assert_eq!(
            event(&mut h, &red, &ctx, "a", EventType::ToolCallPre, "z")["calls"],
            serde_json::json!(["x", "y"])
        );
    }

    #[test]
    fn the_last_64_are_kept_and_the_rest_counted_across_a_save() {
        let (red, ctx) = (red(), EventContext::preview("t", "d"));
        let mut h = SessionHistory::new(EntersAt::Pre);
        for i in 0..100 {
            event(
                &mut h,
                &red,
                &ctx,
                "a",
                EventType::ToolCallPre,
                &format!("t{i}"),
            );
        }
        let saved = serde_json::to_vec(&h.save()).expect("state");
        let mut back = SessionHistory::new(EntersAt::Pre);
        back.load(serde_json::from_slice(&saved).expect("saved"), &red);
        for h in [&mut h, &mut back] {
            let v = event(h, &red, &ctx, "a", EventType::LlmInvocation, "");
            let calls = v["calls"].as_array().expect("list");
            assert_eq!(calls.len(), TOOLS_KEPT);
            assert_eq!(calls[0], "t36");
            assert_eq!(calls[63], "t99");
            assert_eq!(v["dropped"], 36);
        }
    }

    #[test]
    fn sessions_and_bytes_stay_bounded_whatever_the_lines() {
        let (red, ctx) = (red(), EventContext::preview("t", "d"));
        let mut h = SessionHistory::new(EntersAt::Pre);
        let long = "n".repeat(10_000);
        for i in 0..1_000 {
            let session = format!("{i}{long}");
            event(&mut h, &red, &ctx, &session, EventType::ToolCallPre, &long);
        }
        assert!(h.sessions.len() <= SESSIONS_KEPT);
        let held: usize = h.sessions.iter().map(Session::bytes).sum();
        assert_eq!(held, h.bytes);
        assert!(h.bytes <= HISTORY_MAX_BYTES, "{}", h.bytes);
        assert!(h.take_evictions() > 900);
        assert!(h
            .sessions
            .iter()
            .all(|s| s.id.len() <= NAME_MAX_BYTES
                && s.tools.iter().all(|t| t.len() <= NAME_MAX_BYTES)));
        // A damaged or hostile saved state is bounded again on load.
        let mut big = SavedHistory::default();
        for i in 0..100 {
            big.0.push(Session {
                id: format!("{i}{long}"),
                tools: std::iter::repeat_n(long.clone(), 200).collect(),
                dropped: u64::MAX,
            });
        }
        h.load(big, &red);
        assert!(h.sessions.len() <= SESSIONS_KEPT && h.bytes <= HISTORY_MAX_BYTES);
        let v = event(&mut h, &red, &ctx, "x", EventType::ToolCallPre, "t");
        assert_eq!(v["calls"], serde_json::json!([]));
    }

    #[test]
    fn names_are_screened_when_they_enter() {
        let (red, ctx) = (red(), EventContext::preview("t", "d"));
        let mut h = SessionHistory::new(EntersAt::Pre);
        let secret = "ghp_0123456789abcdefghijABCDEFGHIJ012345";
        event(&mut h, &red, &ctx, "a", EventType::ToolCallPre, secret);
        let v = event(&mut h, &red, &ctx, "a", EventType::ToolCallPre, "Read");
        let calls = v["calls"].to_string();
        assert!(!calls.contains(secret), "{calls}");
        assert!(calls.contains("REDACTED"), "{calls}");
    }

    #[test]
    fn a_secret_across_the_cut_is_redacted_whole_and_controls_are_spaces() {
        let (red, ctx) = (red(), EventContext::preview("t", "d"));
        let mut h = SessionHistory::new(EntersAt::Pre);
        // The token starts 20 bytes before the cut at 256.
        let name = format!(
            "{} ghp_0123456789abcdefghijABCDEFGHIJ012345",
            "x".repeat(235)
        );
        event(&mut h, &red, &ctx, "a", EventType::ToolCallPre, &name);
        event(
            &mut h,
            &red,
            &ctx,
            "a",
            EventType::ToolCallPre,
            "a\u{1}b\nc",
        );
        let v = event(&mut h, &red, &ctx, "a", EventType::LlmInvocation, "");
        let calls = v["calls"].as_array().expect("list");
        let first = calls[0].as_str().expect("name");
        assert!(!first.contains("ghp_"), "{first}");
        assert!(first.len() <= NAME_MAX_BYTES);
        assert_eq!(calls[1], "a b c");
    }

    #[test]
    fn an_events_list_stays_within_its_byte_budget() {
        let (red, ctx) = (red(), EventContext::preview("t", "d"));
        let mut h = SessionHistory::new(EntersAt::Pre);
        for i in 0..64 {
            let name = format!("{i:03}{}", "n".repeat(250));
            event(&mut h, &red, &ctx, "a", EventType::ToolCallPre, &name);
        }
        let v = event(&mut h, &red, &ctx, "a", EventType::LlmInvocation, "");
        let calls = v["calls"].as_array().expect("list");
        let bytes: usize = calls
            .iter()
            .map(|c| c.as_str().unwrap_or("").len() + 3)
            .sum();
        assert!(bytes <= EVENT_LIST_MAX_BYTES, "{bytes}");
        assert_eq!(calls.len(), EVENT_LIST_MAX_BYTES / 256);
        assert!(calls.last().unwrap().as_str().unwrap().starts_with("063"));
        assert_eq!(v["dropped"], 64 - calls.len() as u64);
    }
}

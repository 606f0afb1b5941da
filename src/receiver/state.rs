//! The receiver's state, shared by its connections behind one lock: the
//! per-key rate-limit windows, the counters `GET /stats` reports, the event
//! ids seen (to count duplicates) and the optional store of accepted events.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;

use super::validate::Checked;
use super::{ReceiverConfig, ReceiverStats};

pub(super) struct Window {
    pub(super) started: Instant,
    pub(super) used: u32,
}

pub(super) struct Inner {
    pub(super) windows: HashMap<String, Window>,
    pub(super) stats: ReceiverStats,
    pub(super) ids: HashSet<Box<str>>,
    pub(super) store: Option<BufWriter<File>>,
    pub(super) request_counter: u64,
}

pub(super) struct Shared {
    pub(super) config: ReceiverConfig,
    pub(super) started: Instant,
    pub(super) inner: Mutex<Inner>,
}

pub(super) fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Inner> {
    shared.inner.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn accept(inner: &mut Inner, events: &[Checked<'_>]) {
    for e in events {
        inner.stats.accepted_events += 1;
        if inner.ids.insert(e.event_id.as_ref().into()) {
            inner.stats.unique_event_ids += 1;
        } else {
            inner.stats.duplicate_events += 1;
        }
        if let Some(store) = inner.store.as_mut() {
            let raw = e.raw.get();
            if raw.contains('\n') {
                // Pretty-printed by the sender: one line per event in the store.
                let v: Value = serde_json::from_str(raw).unwrap_or_default();
                let _ = serde_json::to_writer(&mut *store, &v);
            } else {
                let _ = store.write_all(raw.as_bytes());
            }
            let _ = store.write_all(b"\n");
        }
    }
    if let Some(store) = inner.store.as_mut() {
        let _ = store.flush();
    }
}

//! Redactions counted by detector, for the metrics. Process-wide, so every
//! source's redactor (and the ones a reload builds) add to one monotonic
//! count per kind; touched only when a secret is replaced, which is rare.

use std::collections::BTreeMap;
use std::sync::Mutex;

static COUNTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Counts one replacement by detector `kind`.
pub(super) fn add(kind: &str) {
    let mut counts = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
    match counts.get_mut(kind) {
        Some(n) => *n = n.saturating_add(1),
        None => {
            counts.insert(kind.to_string(), 1);
        }
    }
}

/// Every detector that replaced something since the process started, with
/// its count.
pub fn redactions_by_detector() -> Vec<(String, u64)> {
    let counts = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
    counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

//! What `parse --explain` reports of redaction: which detector fired on
//! which field. Recorded per thread, and only while a preview asks for it,
//! so the daemon's hot path pays one thread-local read per replacement.

use std::cell::RefCell;

/// One replacement: the detector and the field (`content`,
/// `metadata.env.TOKEN`, `tool_name`, ...).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fired {
    pub detector: String,
    pub field: String,
}

thread_local! {
    static FIRED: RefCell<Option<Vec<Fired>>> = const { RefCell::new(None) };
}

/// Starts recording on this thread (dropping anything recorded before).
pub fn explain_start() {
    FIRED.with(|f| *f.borrow_mut() = Some(Vec::new()));
}

/// What was recorded since the last call (recording goes on).
pub fn explain_take() -> Vec<Fired> {
    FIRED.with(|f| {
        f.borrow_mut()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    })
}

pub(super) fn active() -> bool {
    FIRED.with(|f| f.borrow().is_some())
}

pub(super) fn record(detector: &str, field: &str) {
    FIRED.with(|f| {
        if let Some(list) = f.borrow_mut().as_mut() {
            list.push(Fired {
                detector: detector.to_string(),
                field: field.to_string(),
            });
        }
    });
}

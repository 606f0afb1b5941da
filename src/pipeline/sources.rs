//! The running sources of a pipeline, each on a thread of its own with its
//! own stop flag, so a reload can stop, start or replace one source and
//! leave the others reading.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tracing::warn;

use crate::config::SourceConfig;
use crate::source::Source;
use crate::stage::SourceStats;

/// A source ready to start, with its name, counters and the flag it stops
/// on.
pub struct Started {
    pub name: String,
    pub stats: Arc<SourceStats>,
    pub source: Box<dyn Source>,
    pub stop: Arc<AtomicBool>,
}

/// One source's thread.
pub(super) struct Running {
    pub(super) name: String,
    /// As the config file gave it (None: a replay's), for a reload to tell
    /// whether it changed.
    pub(super) config: Option<SourceConfig>,
    pub(super) stats: Arc<SourceStats>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// Every running source, and where their fatal errors go.
pub(super) struct Sources {
    pub(super) running: Vec<Running>,
    failures: mpsc::UnboundedSender<anyhow::Error>,
    /// What `status` and the metrics see of `running`, kept in step.
    listing: Listing,
}

/// The running sources as others see them (the admin endpoint), without
/// the pipeline's lock.
pub type Listing = Arc<std::sync::Mutex<Vec<Listed>>>;

/// One running source: its name, type and counters.
#[derive(Clone)]
pub struct Listed {
    pub name: String,
    /// `file`, `journald`, or `replay`.
    pub kind: &'static str,
    pub stats: Arc<SourceStats>,
}

impl Sources {
    pub(super) fn new(failures: mpsc::UnboundedSender<anyhow::Error>) -> Sources {
        Sources {
            running: Vec::new(),
            failures,
            listing: Listing::default(),
        }
    }

    pub(super) fn listing(&self) -> Listing {
        self.listing.clone()
    }

    /// Lists `running` again for those who read [`Listing`].
    fn publish(&self) {
        let listed = self
            .running
            .iter()
            .filter(|r| !r.stop.load(Ordering::SeqCst))
            .map(|r| Listed {
                name: r.name.clone(),
                kind: match r.config.as_ref().map(|c| c.kind) {
                    Some(crate::config::SourceKind::File) => "file",
                    Some(crate::config::SourceKind::Journald) => "journald",
                    None => "replay",
                },
                stats: r.stats.clone(),
            })
            .collect();
        *self.listing.lock().unwrap_or_else(|p| p.into_inner()) = listed;
    }

    /// Starts `started` on its own thread. A panic there is a bug: it must
    /// end the process (non-zero, so the service manager restarts it), not
    /// leave a healthy-looking daemon that reads nothing.
    pub(super) fn spawn(
        &mut self,
        started: Started,
        config: Option<SourceConfig>,
    ) -> anyhow::Result<()> {
        let Started {
            name,
            stats,
            source,
            stop,
        } = started;
        let fail = self.failures.clone();
        let source_name = name.clone();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("src-{name}"))
            .spawn(move || {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    source.run_until_shutdown()
                })) {
                    Ok(Ok(())) => {}
                    // Its commit gave up waiting for room because it was
                    // asked to stop: nothing was committed, its checkpoint
                    // did not move, and its next self reads on from there.
                    Ok(Err(e)) if stopped.load(Ordering::SeqCst) && ended_by_closing(&e) => {
                        tracing::debug!(source = %source_name, "stopped while waiting for room in the queue");
                    }
                    Ok(Err(e)) => {
                        let _ = fail.send(anyhow::Error::new(e));
                    }
                    Err(payload) => {
                        let _ = fail.send(anyhow::anyhow!(
                            "source `{source_name}` panicked: {}",
                            crate::ops::panic_message(payload)
                        ));
                    }
                }
            })
            .context("cannot start a source thread")?;
        self.running.push(Running {
            name,
            config,
            stats,
            stop,
            thread,
        });
        self.publish();
        Ok(())
    }

    /// Asks every source to stop.
    pub(super) fn stop_all(&self) {
        for r in &self.running {
            r.stop.store(true, Ordering::SeqCst);
        }
    }

    /// Waits until every source thread ended or `deadline`; names the ones
    /// still running then.
    pub(super) async fn wait_all(&self, deadline: tokio::time::Instant) {
        for r in &self.running {
            while !r.thread.is_finished() {
                if tokio::time::Instant::now() >= deadline {
                    warn!(source = %r.name, "source did not stop within the shutdown bound (stuck reading?); stopping without it, its uncommitted reads are read again at the next start");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    pub(super) fn all_finished(&self) -> bool {
        self.running.iter().all(|r| r.thread.is_finished())
    }

    /// Stops the sources at `indexes` (asked at once) and waits up to
    /// `bound` for their threads. Those that ended are removed; each one
    /// still running is named in the result and stays listed, marked as
    /// stopping, until [`Sources::forget_stopped`] finds it ended: a new
    /// instance must not read beside it.
    pub(super) async fn stop(&mut self, indexes: &[usize], bound: Duration) -> Vec<String> {
        for &i in indexes {
            self.running[i].stop.store(true, Ordering::SeqCst);
        }
        let deadline = tokio::time::Instant::now() + bound;
        while indexes
            .iter()
            .any(|&i| !self.running[i].thread.is_finished())
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut problems = Vec::new();
        for &i in indexes {
            let r = &self.running[i];
            if r.thread.is_finished() {
                tracing::info!(source = %r.name, "source stopped by the reload");
            } else {
                problems.push(format!(
                    "source `{}` did not stop within {bound:?} (stuck reading, or waiting for room in a full queue)",
                    r.name
                ));
            }
        }
        self.forget_stopped();
        problems
    }

    /// Removes the sources asked to stop whose threads have ended.
    pub(super) fn forget_stopped(&mut self) {
        self.running
            .retain(|r| !(r.stop.load(Ordering::SeqCst) && r.thread.is_finished()));
        self.publish();
    }
}

/// Whether a source ended because its commit was refused by a closing queue
/// (or its own stop flag), not by a fault.
fn ended_by_closing(e: &crate::source::SourceError) -> bool {
    match e {
        crate::source::SourceError::Store { err, .. } => matches!(
            err.0.downcast_ref::<crate::queue::QueueError>(),
            Some(crate::queue::QueueError::Closing)
        ),
        _ => false,
    }
}

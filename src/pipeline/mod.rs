//! Wires sources, parsers, the queue and the flusher into one running
//! pipeline, and stops it cleanly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{ApiKey, Config};
use crate::flush::{FlushStats, Flusher, Reload, ReloadSlot};
use crate::queue::Queue;
use crate::source::Source;
use crate::stage::SourceStats;

/// A source ready to start, with its name and counters.
pub struct Started {
    pub name: String,
    pub stats: Arc<SourceStats>,
    pub source: Box<dyn Source>,
}

/// Opens the queue in `dir` with the config's bounds.
pub fn open_queue(config: &Config, dir: &std::path::Path) -> anyhow::Result<Arc<Queue>> {
    let queue = Arc::new(Queue::open(dir, config.queue.cache.0)?);
    queue.set_bound(
        config.queue.max_bytes.0,
        config.queue.when_full == crate::config::WhenFull::DropOldest,
    );
    queue.set_dead_letter_bound(config.queue.dead_letter_max_bytes.0)?;
    Ok(queue)
}

pub struct Pipeline {
    pub queue: Arc<Queue>,
    pub sources: Vec<(String, Arc<SourceStats>)>,
    pub flush_stats: Arc<FlushStats>,
    source_threads: Vec<std::thread::JoinHandle<()>>,
    flusher: tokio::task::JoinHandle<()>,
    shutdown: Arc<AtomicBool>,
    failures: mpsc::UnboundedReceiver<anyhow::Error>,
    reload: ReloadSlot,
}

impl Pipeline {
    /// Opens the queue and starts every source and the flusher. Call from
    /// within a tokio runtime.
    pub fn start(config: &Config, key: &ApiKey) -> anyhow::Result<Pipeline> {
        let queue = open_queue(config, &config.state.dir)?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let open_files_each = crate::source::file::handles::default_max_open_files(
            crate::ops::fd_limit(),
            config.sources.len(),
        );
        let mut sources = Vec::new();
        for source_config in &config.sources {
            let name = source_config.name.get_ref().clone();
            let stats = Arc::new(SourceStats::default());
            let mut source_config = source_config.clone();
            source_config.max_open_files.get_or_insert(open_files_each);
            let source = crate::stage::source(
                config,
                &source_config,
                queue.clone(),
                stats.clone(),
                shutdown.clone(),
            )
            .with_context(|| format!("source `{name}`"))?;
            sources.push(Started {
                name,
                stats,
                source,
            });
        }
        Pipeline::launch(config, key, queue, shutdown, sources)
    }

    /// Starts `sources` (each on a thread of its own) and the flusher of
    /// `queue`. `shutdown` is the flag the sources stop on. Call from within
    /// a tokio runtime.
    pub fn launch(
        config: &Config,
        key: &ApiKey,
        queue: Arc<Queue>,
        shutdown: Arc<AtomicBool>,
        to_start: Vec<Started>,
    ) -> anyhow::Result<Pipeline> {
        let (fail_tx, failures) = mpsc::unbounded_channel();
        let mut sources = Vec::new();
        let mut source_threads = Vec::new();
        for Started {
            name,
            stats,
            source,
        } in to_start
        {
            let fail = fail_tx.clone();
            let source_name = name.clone();
            let thread = std::thread::Builder::new()
                .name(format!("src-{name}"))
                .spawn(move || {
                    // A panic is a bug: it must end the process (non-zero, so
                    // the service manager restarts it), not leave a healthy-
                    // looking daemon that reads nothing.
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        source.run_until_shutdown()
                    })) {
                        Ok(Ok(())) => {}
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
            sources.push((name, stats));
            source_threads.push(thread);
        }
        let flush_stats = Arc::new(FlushStats::default());
        let flusher = Flusher::new(config, key, queue.clone(), flush_stats.clone())?;
        let reload = flusher.reload_slot();
        let flag = shutdown.clone();
        let flusher = tokio::spawn(async move {
            use futures::FutureExt;
            match std::panic::AssertUnwindSafe(flusher.run(flag))
                .catch_unwind()
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = fail_tx.send(anyhow::Error::new(e).context("delivery stopped"));
                }
                Err(payload) => {
                    let _ = fail_tx.send(anyhow::anyhow!(
                        "delivery stopped: the flusher panicked: {}",
                        crate::ops::panic_message(payload)
                    ));
                }
            }
        });
        info!(
            sources = sources.len(),
            state = %config.state.dir.display(),
            url = %config.api.base_url.get_ref(),
            "pipeline started"
        );
        Ok(Pipeline {
            queue,
            sources,
            flush_stats,
            source_threads,
            flusher,
            shutdown,
            failures,
            reload,
        })
    }

    /// Applies a reloaded configuration to what can change while running:
    /// the key, `[api]`'s URL, CA file and timeout, `[delivery]`, and the
    /// queue's bound. Sources, parsers and the state directory keep their
    /// start-up configuration. On an error nothing changes.
    pub fn reload(&self, config: &Config, key: &ApiKey) -> anyhow::Result<()> {
        let settings = Reload::new(config, key)?;
        self.queue.set_bound(
            config.queue.max_bytes.0,
            config.queue.when_full == crate::config::WhenFull::DropOldest,
        );
        self.queue
            .set_dead_letter_bound(config.queue.dead_letter_max_bytes.0)?;
        *self.reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(settings);
        Ok(())
    }

    /// True when every source has read all it can see and every event it
    /// produced has been accepted by the server.
    pub fn is_drained(&self) -> bool {
        self.sources.iter().all(|(_, s)| s.is_caught_up())
            && self.flush_stats.in_flight.load(Ordering::SeqCst) == 0
            && self.queue.is_empty()
    }

    /// Every source thread has ended (a replay read all its files).
    pub fn sources_finished(&self) -> bool {
        self.source_threads.iter().all(|t| t.is_finished())
    }

    /// Resolves with the first fatal error of a source or the flusher.
    pub async fn failed(&mut self) -> anyhow::Error {
        match self.failures.recv().await {
            Some(e) => e,
            None => std::future::pending().await,
        }
    }

    /// Stops reading, lets a request in flight finish, and makes the queue
    /// durable, all within `grace`: a source stuck in I/O (a dead network
    /// file system) is left behind, and what it had not committed is read
    /// again at the next start.
    pub async fn stop(self, grace: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + grace;
        self.shutdown.store(true, Ordering::SeqCst);
        self.queue.start_closing();
        self.queue.appended.notify_one();
        for (thread, (name, _)) in self.source_threads.iter().zip(&self.sources) {
            while !thread.is_finished() {
                if tokio::time::Instant::now() >= deadline {
                    warn!(source = %name, "source did not stop within the shutdown bound (stuck reading?); stopping without it, its uncommitted reads are read again at the next start");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // The flusher has its own shutdown_timeout for requests in flight.
        let mut flusher = self.flusher;
        if tokio::time::timeout_at(deadline, &mut flusher)
            .await
            .is_err()
        {
            info!("a request was still in flight at shutdown; its events stay queued");
            // Its hold on the queue ends with it, so the state can be opened again.
            flusher.abort();
        }
        self.queue.close()?;
        info!("pipeline stopped");
        Ok(())
    }
}

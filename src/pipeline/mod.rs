//! Wires sources, parsers, the queue and the flusher into one running
//! pipeline, applies a reloaded configuration to it (sources added, removed
//! or changed, delivery settings), and stops it cleanly.

mod orphans;
mod sources;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::SourceConfig;
use crate::config::{ApiKey, Config};
use crate::flush::{FlushStats, Flusher, Reload, ReloadSlot};
use crate::queue::Queue;
use crate::source::preflight::{self, Depth};
use crate::stage::SourceStats;

use sources::Sources;
pub use sources::{Listed, Listing, Started};

/// How long a reload waits for a removed or changed source to stop.
const SOURCE_STOP_BOUND: Duration = Duration::from_secs(10);

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

/// The signs of life the last [`Pipeline::check_liveness`] saw.
#[derive(Debug, Default)]
pub struct Liveness {
    /// Each source's heartbeat and bytes read, by name.
    sources: Vec<(String, (u64, u64))>,
    flusher: Option<u64>,
}

/// What the admin endpoint reads of a running pipeline: shared handles
/// to its counters, readable while the pipeline reloads.
#[derive(Clone)]
pub struct Observed {
    pub queue: Arc<Queue>,
    pub flush: Arc<FlushStats>,
    pub sources: Listing,
    pub started_at: std::time::SystemTime,
    pub state_dir: std::path::PathBuf,
}

pub struct Pipeline {
    pub queue: Arc<Queue>,
    pub flush_stats: Arc<FlushStats>,
    sources: Sources,
    flusher: tokio::task::JoinHandle<()>,
    /// The flusher's stop flag (each source has its own).
    shutdown: Arc<AtomicBool>,
    failures: mpsc::UnboundedReceiver<anyhow::Error>,
    reload: ReloadSlot,
    /// The configuration the sources run with (what a reload compares).
    applied: Config,
    started_at: std::time::SystemTime,
}

impl Pipeline {
    /// Opens the queue and starts every source and the flusher. Call from
    /// within a tokio runtime.
    pub fn start(config: &Config, key: &ApiKey) -> anyhow::Result<Pipeline> {
        let queue = open_queue(config, &config.state.dir)?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let mut started = Vec::new();
        for source_config in &config.sources {
            started.push((
                build_source(config, source_config, &queue)?,
                Some(source_config.clone()),
            ));
        }
        let pipeline = Pipeline::launch_with(config, key, queue, shutdown, started)?;
        pipeline.sweep_orphan_checkpoints();
        Ok(pipeline)
    }

    /// Starts `sources` (each on a thread of its own, stopping on its own
    /// flag) and the flusher of `queue`, which stops on `shutdown`. Call
    /// from within a tokio runtime.
    pub fn launch(
        config: &Config,
        key: &ApiKey,
        queue: Arc<Queue>,
        shutdown: Arc<AtomicBool>,
        to_start: Vec<Started>,
    ) -> anyhow::Result<Pipeline> {
        let started = to_start.into_iter().map(|s| (s, None)).collect();
        Pipeline::launch_with(config, key, queue, shutdown, started)
    }

    fn launch_with(
        config: &Config,
        key: &ApiKey,
        queue: Arc<Queue>,
        shutdown: Arc<AtomicBool>,
        to_start: Vec<(Started, Option<SourceConfig>)>,
    ) -> anyhow::Result<Pipeline> {
        let (fail_tx, failures) = mpsc::unbounded_channel();
        let mut sources = Sources::new(fail_tx.clone());
        for (started, source_config) in to_start {
            sources.spawn(started, source_config)?;
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
        if config.api.base_url.get_ref().starts_with("http://") {
            warn!(url = %config.api.base_url.get_ref(),
                "base_url is plain http: the API key goes in clear to whatever listens on that loopback port, and any local user who binds it first (while the relay or proxy there is down) receives the key; use https, or a unix-socket or root-only port for the local hop");
        }
        info!(
            sources = sources.running.len(),
            state = %config.state.dir.display(),
            url = %config.api.base_url.get_ref(),
            "pipeline started"
        );
        Ok(Pipeline {
            queue,
            flush_stats,
            sources,
            flusher,
            shutdown,
            failures,
            reload,
            applied: config.clone(),
            started_at: std::time::SystemTime::now(),
        })
    }

    /// Marks and, after the default `checkpoint_retention`, deletes the
    /// file checkpoints of sources the config no longer names (at start,
    /// at each reload, and hourly from `run`). A failure is logged: the
    /// checkpoints stay a little longer, nothing else depends on it.
    pub fn sweep_orphan_checkpoints(&self) {
        let live: Vec<&str> = self
            .applied
            .sources
            .iter()
            .map(|s| s.name.get_ref().as_str())
            .collect();
        let retention = crate::config::DEFAULT_CHECKPOINT_RETENTION;
        match orphans::sweep_orphans(&self.queue, &live, retention) {
            Ok(0) => {}
            Ok(n) => info!(checkpoints = n, "forgot the checkpoints of removed sources"),
            Err(e) => warn!(error = %e, "cannot sweep the checkpoints of removed sources"),
        }
    }

    /// Shared handles to the counters, for the admin endpoint.
    pub fn observed(&self) -> Observed {
        Observed {
            queue: self.queue.clone(),
            flush: self.flush_stats.clone(),
            sources: self.sources.listing(),
            started_at: self.started_at,
            state_dir: self.applied.state.dir.clone(),
        }
    }

    /// The configuration the sources run with.
    pub fn applied(&self) -> &Config {
        &self.applied
    }

    /// Each running source's name and counters.
    pub fn sources(&self) -> impl Iterator<Item = (&str, &Arc<SourceStats>)> + '_ {
        self.sources
            .running
            .iter()
            .map(|r| (r.name.as_str(), &r.stats))
    }

    /// Applies a reloaded configuration: the key, `[api]`'s URL, CA file
    /// and timeout, `[delivery]`, the queue's bound, and the sources. A
    /// source that keeps its name and its settings (and the parsers,
    /// redaction and defaults it uses) keeps running; one removed stops;
    /// one added starts; one changed stops and starts again with its new
    /// settings, where it was (positions are per source name, in the
    /// queue). The state directory, the tenant and the queue's cache need a
    /// restart. Err: the new delivery settings are refused and nothing
    /// changed. Ok: applied, but for the problems listed (a source that
    /// did not stop within the bound stays asked to, and its new self
    /// starts once it has: see [`Pipeline::start_missing_sources`]).
    pub async fn reload(&mut self, config: &Config, key: &ApiKey) -> anyhow::Result<Vec<String>> {
        // A source added or changed that could not start would end the
        // daemon once its thread failed: refuse the reload, as `validate`
        // would (`ExecReload=` runs it first; a raw SIGHUP does not).
        let new_sources: Vec<SourceConfig> = config
            .sources
            .iter()
            .filter(|s| !self.applied.sources.contains(s))
            .cloned()
            .collect();
        let cannot_start = tokio::task::spawn_blocking(move || {
            new_sources
                .iter()
                .filter_map(|s| preflight::check(s, Depth::CanStart).err())
                .collect::<Vec<_>>()
        })
        .await?;
        if !cannot_start.is_empty() {
            anyhow::bail!("{}", cannot_start.join("; "));
        }
        let settings = Reload::new(config, key)?;
        self.queue.set_bound(
            config.queue.max_bytes.0,
            config.queue.when_full == crate::config::WhenFull::DropOldest,
        );
        self.queue
            .set_dead_letter_bound(config.queue.dead_letter_max_bytes.0)?;
        *self.reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(settings);
        Ok(self.reload_sources(config).await)
    }

    async fn reload_sources(&mut self, config: &Config) -> Vec<String> {
        let stages_changed = stage_inputs(&self.applied) != stage_inputs(config);
        // Removed or changed: all asked at once, then waited for under one
        // bound, so a changed source never reads beside its new self.
        let to_stop: Vec<usize> = self
            .sources
            .running
            .iter()
            .enumerate()
            .filter(|(_, r)| match &r.config {
                None => false,
                Some(old) => {
                    let new = config.sources.iter().find(|s| s.name.get_ref() == &r.name);
                    stages_changed || new != Some(old)
                }
            })
            .map(|(i, _)| i)
            .collect();
        let mut problems = self.sources.stop(&to_stop, SOURCE_STOP_BOUND).await;
        self.applied = config.clone();
        problems.extend(self.start_missing_sources());
        self.sweep_orphan_checkpoints();
        problems
    }

    /// Starts each source of the applied configuration that does not run:
    /// added by a reload, or changed by one while its old thread had not
    /// stopped yet (stuck, or waiting for room in a full queue), which
    /// `run` calls this again for until it has. Returns what failed.
    pub fn start_missing_sources(&mut self) -> Vec<String> {
        self.sources.forget_stopped();
        let mut problems = Vec::new();
        let config = &self.applied;
        for source_config in &config.sources {
            let name = source_config.name.get_ref();
            if self.sources.running.iter().any(|r| &r.name == name) {
                continue;
            }
            match build_source(config, source_config, &self.queue)
                .and_then(|started| self.sources.spawn(started, Some(source_config.clone())))
            {
                Ok(()) => info!(source = %name, "source started by the reload"),
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        problems
    }

    /// Whether every source and the flusher showed a sign of life (their
    /// loops turned, a source read) since the check that filled `last`; a
    /// source whose commit waits for room in a full queue (or for disk
    /// space) is paused by design. Err names one that did not. The first
    /// check only records.
    pub fn check_liveness(&self, last: &mut Liveness) -> Result<(), String> {
        let sources: Vec<(String, (u64, u64), bool)> = self
            .sources()
            .map(|(name, s)| {
                let signs = (
                    s.read.heartbeat.load(Ordering::Relaxed),
                    s.read.bytes_read.load(Ordering::Relaxed),
                );
                let paused = s.read.waiting_for_room.load(Ordering::Relaxed);
                (name.to_string(), signs, paused)
            })
            .collect();
        let flusher = self.flush_stats.heartbeat.load(Ordering::Relaxed);
        let mut stuck = None;
        for (name, now, paused) in &sources {
            // A source started since the last check is judged at the next.
            let then = last.sources.iter().find(|(n, _)| n == name).map(|(_, s)| s);
            if then == Some(now) && !paused {
                stuck = Some(format!("source `{name}` has not turned its loop"));
            }
        }
        if last.flusher == Some(flusher) {
            stuck = Some("the flusher has not turned its loop".to_string());
        }
        *last = Liveness {
            sources: sources.into_iter().map(|(n, s, _)| (n, s)).collect(),
            flusher: Some(flusher),
        };
        stuck.map_or(Ok(()), Err)
    }

    /// A line for the service manager's `STATUS=`: what waits, what went,
    /// and the last answer.
    pub fn status_line(&self) -> String {
        let queued = self.queue.pending_events();
        let delivered = self.flush_stats.delivered_events.load(Ordering::Relaxed);
        let last = self.flush_stats.last_outcome.lock().ok().and_then(|l| *l);
        match last {
            Some((what, at)) => {
                let ago = at.elapsed().map(|d| d.as_secs()).unwrap_or(0);
                format!("{queued} events queued, {delivered} delivered; last answer: {what}, {ago} s ago")
            }
            None => format!("{queued} events queued, {delivered} delivered; no request yet"),
        }
    }

    /// True when every source has read all it can see and every event it
    /// produced has been accepted by the server.
    pub fn is_drained(&self) -> bool {
        self.sources().all(|(_, s)| s.is_caught_up())
            && self.flush_stats.in_flight.load(Ordering::SeqCst) == 0
            && self.queue.is_empty()
    }

    /// Every source thread has ended (a replay read all its files).
    pub fn sources_finished(&self) -> bool {
        self.sources.all_finished()
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
        self.sources.stop_all();
        self.queue.start_closing();
        self.queue.appended.notify_one();
        self.sources.wait_all(deadline).await;
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

/// What every source's stage is built from besides its own table: a change
/// there restarts every source at a reload.
fn stage_inputs(config: &Config) -> impl PartialEq + '_ {
    (
        &config.defaults,
        &config.redaction,
        &config.parsers,
        config.redaction.event_bound(&config.delivery),
    )
}

/// The source `source_config` of `config`, built to read into `queue`,
/// with a stop flag of its own.
fn build_source(
    config: &Config,
    source_config: &SourceConfig,
    queue: &Arc<Queue>,
) -> anyhow::Result<Started> {
    let name = source_config.name.get_ref().clone();
    let stats = Arc::new(SourceStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut effective = source_config.clone();
    effective
        .max_open_files
        .get_or_insert(crate::source::file::handles::default_max_open_files(
            crate::ops::fd_limit(),
            config.sources.len(),
        ));
    let source = crate::stage::source(
        config,
        &effective,
        queue.clone(),
        stats.clone(),
        stop.clone(),
    )
    .with_context(|| format!("source `{name}`"))?;
    Ok(Started {
        name,
        stats,
        source,
        stop,
    })
}

//! `thoth-ingest run`: the daemon. Starts the pipeline (waiting while the
//! state's disk is full), applies SIGHUP reloads, stops on SIGINT or SIGTERM,
//! and starts again from what is durable when sled meets a full disk. Under
//! systemd it says when it is ready, reloading or stopping, keeps a status
//! line, and pings the watchdog while the pipeline shows signs of life.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use thoth_ingest::config::{self, Config, Env};
use thoth_ingest::ops;
use thoth_ingest::pipeline::{Liveness, Pipeline};
use tracing::{error, info, warn};

use thoth_ingest::admin::{save_report, Admin};

use super::reload::{reload, restart_only_tables};

/// How often `STATUS=` is brought up to date under systemd.
const STATUS_EVERY: Duration = Duration::from_secs(10);

pub async fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let mut signals = ops::StopSignals::install().context("cannot install signal handlers")?;
    ops::raise_fd_limit();
    let mut hups = ops::ReloadSignals::install().context("cannot install signal handlers")?;
    let env = Env::from_process();
    let mut config = thoth_ingest::parse::check::load_config(path, &env)?;
    let (mut key, origin) = config.resolve_api_key(&env)?;
    info!(key_from = %origin, "configuration loaded from {}", path.display());
    let mut restart_only = restart_only_tables(path);
    let notifier = ops::Notifier::from_env();
    // The endpoint lives as long as the process, across the pipeline's
    // restarts on a full disk.
    let admin = Admin::new(
        &config.state.dir,
        source_names(&config),
        config.admin.stuck_after,
    );
    admin.start_sampling();
    admin.serve(config.admin.endpoint().map_err(anyhow::Error::msg)?);
    loop {
        let Some(mut pipeline) =
            start_when_disk_has_room(&config, &key, &mut signals, &notifier).await?
        else {
            notifier.stopping();
            return Ok(ExitCode::SUCCESS);
        };
        admin.attach(Some(pipeline.observed()));
        notifier.ready(&pipeline.status_line());
        let watchdog = notifier.watchdog_interval();
        // systemd's advice: ping at half the interval.
        let mut watchdog_tick =
            tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| w / 2));
        let mut status_tick = tokio::time::interval(STATUS_EVERY);
        let mut sweep_tick = tokio::time::interval(Duration::from_secs(3600));
        let mut resume_tick = tokio::time::interval(Duration::from_secs(5));
        sweep_tick.tick().await; // the start swept already
        let mut liveness = Liveness::default();
        let mut stuck_said = false;
        let outcome = loop {
            tokio::select! {
                signal = signals.recv() => {
                    info!(signal, "stopping");
                    break Ok(());
                }
                () = hups.recv() => {
                    notifier.reloading();
                    reload(path, &mut pipeline, &restart_only).await;
                    admin.set_configured(source_names(pipeline.applied()));
                    notifier.reloaded(&pipeline.status_line());
                }
                e = pipeline.failed() => break Err(e),
                _ = watchdog_tick.tick(), if watchdog.is_some() => {
                    match pipeline.check_liveness(&mut liveness) {
                        Ok(()) => {
                            notifier.watchdog();
                            stuck_said = false;
                        }
                        // No ping: the service manager restarts a stuck pipeline.
                        Err(why) if !stuck_said => {
                            error!("{why}: not pinging the watchdog");
                            stuck_said = true;
                        }
                        Err(_) => {}
                    }
                }
                _ = sweep_tick.tick() => pipeline.sweep_orphan_checkpoints(),
                // A source a reload changed whose old thread took long to stop.
                _ = resume_tick.tick() => {
                    for problem in pipeline.start_missing_sources() {
                        error!("{problem}");
                    }
                }
                _ = status_tick.tick() => {
                    notifier.status(&pipeline.status_line());
                    if let Some(report) = admin.report() {
                        save_report(&config.state.dir, &report);
                    }
                }
            }
        };
        if !outcome.as_ref().is_err_and(is_disk_full) {
            notifier.stopping();
        }
        // The flusher gives requests in flight shutdown_timeout; this is the backstop.
        let stopped = pipeline
            .stop(config.delivery.shutdown_timeout + Duration::from_secs(5))
            .await;
        // What `status` shows while the daemon is stopped.
        if let Some(mut report) = admin.report() {
            report.running = false;
            report.ready = false;
            save_report(&config.state.dir, &report);
        }
        admin.attach(None);
        match outcome {
            Ok(()) => return stopped.map(|()| ExitCode::SUCCESS),
            // sled met the full disk before the reserve check did (another
            // process took the space): start again from what is durable
            // rather than exit into a restart loop.
            Err(e) if is_disk_full(&e) && stopped.as_ref().err().is_none_or(is_disk_full) => {
                error!("disk full: {e:#}; starting again once there is room");
                // Like a restart, the new start reads the config file again
                // (so what SIGHUP applied is not undone).
                let env = Env::from_process();
                match thoth_ingest::parse::check::load_config(path, &env).and_then(|c| {
                    let (k, _) = c.resolve_api_key(&env)?;
                    Ok((c, k))
                }) {
                    Ok((c, k)) => {
                        config = c;
                        key = k;
                        restart_only = restart_only_tables(path);
                    }
                    Err(err) => {
                        warn!("config not read again for the new start: {err}; keeping the one in use")
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The names of the sources `config` asks for.
fn source_names(config: &Config) -> Vec<String> {
    config
        .sources
        .iter()
        .map(|s| s.name.get_ref().clone())
        .collect()
}

/// Whether an error comes from a full disk under the state directory.
fn is_disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(thoth_ingest::queue::is_disk_full)
}

/// Starts the pipeline, waiting while the state's disk is too full to open
/// the queue (a crash would only have systemd start us into the same full
/// disk again). None if a stop signal came first.
async fn start_when_disk_has_room(
    config: &Config,
    key: &config::ApiKey,
    signals: &mut ops::StopSignals,
    notifier: &ops::Notifier,
) -> anyhow::Result<Option<Pipeline>> {
    let mut warned = false;
    loop {
        match Pipeline::start(config, key) {
            Ok(p) => return Ok(Some(p)),
            Err(e) if is_disk_full(&e) => {
                if !warned {
                    error!("disk full: {e}; retrying every 5 s until space is freed");
                    warned = true;
                }
                // Up and waiting, not failed: systemd neither times the
                // start out nor kills a silent watchdog meanwhile.
                notifier.ready("waiting: the state's disk is full");
                notifier.watchdog();
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            signal = signals.recv() => {
                info!(signal, "stopping");
                return Ok(None);
            }
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

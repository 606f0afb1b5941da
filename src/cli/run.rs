//! `thoth-ingest run`: the daemon. Starts the pipeline (waiting while the
//! state's disk is full), applies SIGHUP reloads, stops on SIGINT or SIGTERM,
//! and starts again from what is durable when sled meets a full disk.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use thoth_ingest::config::{self, Config, Env};
use thoth_ingest::ops;
use thoth_ingest::pipeline::Pipeline;
use tracing::{error, info, warn};

use super::reload::{reload, restart_only_tables};

pub async fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let mut signals = ops::StopSignals::install().context("cannot install signal handlers")?;
    ops::raise_fd_limit();
    let mut hups = ops::ReloadSignals::install().context("cannot install signal handlers")?;
    let env = Env::from_process();
    let mut config = thoth_ingest::parse::check::load_config(path, &env)?;
    let (mut key, origin) = config.resolve_api_key(&env)?;
    info!(key_from = %origin, "configuration loaded from {}", path.display());
    let mut restart_only = restart_only_tables(path);
    loop {
        let Some(mut pipeline) = start_when_disk_has_room(&config, &key, &mut signals).await?
        else {
            return Ok(ExitCode::SUCCESS);
        };
        let outcome = loop {
            tokio::select! {
                signal = signals.recv() => {
                    info!(signal, "stopping");
                    break Ok(());
                }
                () = hups.recv() => reload(path, &pipeline, &restart_only),
                e = pipeline.failed() => break Err(e),
            }
        };
        // The flusher gives requests in flight shutdown_timeout; this is the backstop.
        let stopped = pipeline
            .stop(config.delivery.shutdown_timeout + Duration::from_secs(5))
            .await;
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

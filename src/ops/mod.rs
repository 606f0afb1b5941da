//! Operating the daemon: signals (stop, reload) and logging set-up.

use tracing_subscriber::EnvFilter;

/// Logs to stderr (journald picks it up under systemd). `RUST_LOG` wins over
/// `default_level`.
pub fn init_logging(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// SIGINT and SIGTERM, caught from the moment this is created: create it
/// before any slow start-up work, so an early stop request is not fatal.
pub struct StopSignals(signal_hook_tokio::Signals);

impl StopSignals {
    pub fn install() -> std::io::Result<StopSignals> {
        signal_hook_tokio::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
            .map(StopSignals)
    }

    /// Resolves with the number of the first stop signal.
    pub async fn recv(&mut self) -> i32 {
        use futures::StreamExt;
        self.0.next().await.unwrap_or(signal_hook::consts::SIGTERM)
    }
}

/// SIGHUP: reload the configuration.
pub struct ReloadSignals(signal_hook_tokio::Signals);

impl ReloadSignals {
    pub fn install() -> std::io::Result<ReloadSignals> {
        signal_hook_tokio::Signals::new([signal_hook::consts::SIGHUP]).map(ReloadSignals)
    }

    /// Resolves at the next SIGHUP.
    pub async fn recv(&mut self) {
        use futures::StreamExt;
        if self.0.next().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

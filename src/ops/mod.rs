//! Operating the daemon: signals and logging set-up.

use tracing_subscriber::EnvFilter;

/// Logs to stderr (journald picks it up under systemd). `RUST_LOG` wins over
/// `default_level`.
pub fn init_logging(default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn stop_signal() -> std::io::Result<i32> {
    use futures::StreamExt;
    let mut signals = signal_hook_tokio::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    Ok(signals.next().await.unwrap_or(signal_hook::consts::SIGTERM))
}

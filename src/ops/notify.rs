//! Talking to the service manager (`sd_notify`): readiness, a status line,
//! reload and stop notices, and watchdog pings. Without `NOTIFY_SOCKET`
//! (not started by systemd with `Type=notify`) nothing is attempted.

use std::time::Duration;

use sd_notify::NotifyState;

/// The service manager's socket, when there is one.
#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// How often the manager wants a ping (`WatchdogSec=`), when it does:
    /// `WATCHDOG_USEC`, for this process when `WATCHDOG_PID` names it or is
    /// unset (as libsystemd's `sd_watchdog_enabled` reads them).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID") {
            if pid.parse::<u32>().ok() != Some(std::process::id()) {
                return None;
            }
        }
        (usec > 0).then(|| Duration::from_micros(usec))
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::debug!(error = %e, "cannot notify the service manager");
        }
    }

    /// State open and every source started.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn reloading(&self) {
        self.send(&[NotifyState::Reloading, NotifyState::Status("reloading")]);
    }

    /// Ready again after a reload.
    pub fn reloaded(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

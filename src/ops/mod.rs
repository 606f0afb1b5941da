//! Operating the daemon: signals (stop, reload), logging set-up, the
//! service manager's notifications, and the process limits it starts with.

mod logging;
mod notify;
pub mod users;

pub use logging::{init_logging, LogFormat};
pub use notify::Notifier;

/// Raises the soft limit on open files to the hard limit: a source may follow
/// thousands of files, and the distributions' soft default (1,024) is meant
/// for interactive programs. Returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let Some(lim) = nofile() else {
        return 1024;
    };
    let mut now = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            now = lim.rlim_max;
        }
    }
    tracing::debug!(open_files = now, "file descriptor limit");
    now
}

/// The soft limit on open files in force (1,024 if it cannot be read).
pub fn fd_limit() -> u64 {
    nofile().map_or(1024, |l| l.rlim_cur)
}

fn nofile() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim)
}

/// The message a panic was raised with (a `&str` or a `String`).
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "(a panic without a message)".to_string(),
        },
    }
}

/// `text` with every control character written as an escape (`\n`,
/// `\u{1b}`): a file name is a user's choice, and one with a newline or a
/// terminal escape in it must not forge a log line or drive a terminal.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A path as shown to an operator outside the logs (`validate`, `status`):
/// control characters escaped.
pub fn shown_path(path: &std::path::Path) -> String {
    escape_controls(&path.display().to_string()).into_owned()
}

/// Whether the test hook `name` is on (`THOTH_INGEST_TEST_HOOK`, comma
/// separated). Only the integration tests set it, to make the real binary
/// misbehave in ways no input can force (a source stuck in I/O).
pub fn test_hook(name: &str) -> bool {
    std::env::var("THOTH_INGEST_TEST_HOOK").is_ok_and(|v| v.split(',').any(|h| h == name))
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

//! The daemon's own logs, on stderr, in the form its reader wants: text
//! for a person at a terminal (colours only there), lines for the journal
//! (no colours, no timestamps: journald stamps each line itself; a `<N>`
//! syslog priority prefix, which journald turns into the entry's
//! priority), or JSON lines for people who ship the daemon's logs.

use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `journal` when stderr is the journal's stream (systemd sets
    /// `JOURNAL_STREAM`), else `text`.
    Auto,
    /// Timestamped lines; colours when stderr is a terminal.
    Text,
    /// Lines with a syslog priority prefix, without colours or timestamps.
    Journal,
    /// One JSON object a line.
    Json,
}

impl LogFormat {
    /// What `Auto` means for this process.
    pub fn resolve(self) -> LogFormat {
        match self {
            LogFormat::Auto if stderr_is_journal() => LogFormat::Journal,
            LogFormat::Auto => LogFormat::Text,
            other => other,
        }
    }
}

/// Logs to stderr in `format`. `RUST_LOG` wins over `default_level`.
pub fn init_logging(default_level: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .fmt_fields(escaped_fields());
    // A second init (tests) keeps the first: nothing to report.
    let _ = match format.resolve() {
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
        LogFormat::Journal => builder
            .with_ansi(false)
            .event_format(PriorityPrefix(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_target(false)
                    .with_ansi(false),
            ))
            .try_init(),
        LogFormat::Text | LogFormat::Auto => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// Fields as the default formatter writes them (`name=value`, the message
/// bare), with control characters escaped: a file name or a server's
/// words with a newline in them would otherwise start a forged log line
/// in text and journal output (JSON escapes them itself).
fn escaped_fields() -> impl for<'w> FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let text = format!("{value:?}");
        let text = super::escape_controls(&text);
        match field.name() {
            "message" => write!(writer, "{text}"),
            // The `log` crate's origin fields (sled's), as the default
            // formatter leaves them out.
            name if name.starts_with("log.") => Ok(()),
            name => write!(writer, "{name}={text}"),
        }
    })
    .delimited(" ")
}

/// True when stderr is the stream systemd connected to the journal:
/// `JOURNAL_STREAM` holds its `device:inode` (a child whose stderr was
/// redirected elsewhere inherits the variable, so it is checked).
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat(2) fills the zeroed struct for fd 2, which stays open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

/// The syslog priority of a level, as journald reads it from `<N>`.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Writes `<N>` before each event as `F` formats it.
struct PriorityPrefix<F>(F);

impl<S, N, F> FormatEvent<S, N> for PriorityPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        // journald makes each line an entry: a message of several lines
        // (an error chain, a child's stderr) stays one, newlines escaped.
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.strip_suffix('\n').unwrap_or(&line);
        writeln!(
            writer,
            "<{}>{}",
            priority(event.metadata().level()),
            body.replace('\n', "\\n")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}

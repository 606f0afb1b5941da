//! `thoth-ingest status`: what the daemon of this config is doing, for a
//! person (or, with `--json`, a script). It asks the running daemon's admin
//! endpoint; when none answers it reads the last report the daemon left in
//! the state directory (a file: no lock taken, nothing written) and says
//! the daemon is stopped. The exit status is for monitors: 0 running and
//! ready, 1 running but not ready, 3 not running.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use thoth_ingest::admin::client::{self, ClientError};
use thoth_ingest::admin::report::{Report, STATUS_FILE};
use thoth_ingest::admin::ADDRESS_FILE;
use thoth_ingest::config::{AdminListen, Config, Env};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Print the report as JSON (the admin endpoint's `/status`), with
    /// `running` false when it comes from a stopped daemon's last report.
    #[arg(long)]
    json: bool,
}

/// Exit status when no daemon runs.
const STOPPED: u8 = 3;

pub fn status(path: &Path, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let env = Env::from_process();
    let config = thoth_ingest::parse::check::load_config(path, &env)?;
    let (report, note) = match ask_daemon(&config)? {
        Some(report) => (report, None),
        None => last_report(&config, now())?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report, note.as_deref(), now()));
    }
    Ok(ExitCode::from(match (report.running, report.ready) {
        (true, true) => 0,
        (true, false) => 1,
        (false, _) => STOPPED,
    }))
}

/// The running daemon's report, or None when nothing answers.
fn ask_daemon(config: &Config) -> anyhow::Result<Option<Report>> {
    // Where the daemon says it listens (a port it was given as :0), then
    // where the config says.
    let named = std::fs::read_to_string(config.state.dir.join(ADDRESS_FILE))
        .ok()
        .and_then(|a| parse_address(a.trim()));
    let configured = config.admin.endpoint().map_err(anyhow::Error::msg)?;
    let mut endpoints = Vec::new();
    endpoints.extend(named);
    if !endpoints.contains(&configured) {
        endpoints.push(configured);
    }
    for endpoint in &endpoints {
        match client::get(endpoint, "/status") {
            Ok((200, body)) => {
                let report = serde_json::from_str(&body)
                    .context("the admin endpoint's /status is not a report")?;
                return Ok(Some(report));
            }
            // Up, but no pipeline yet (waiting for disk space).
            Ok((code, body)) => anyhow::bail!("the daemon answers {code}: {}", body.trim()),
            Err(ClientError::NotListening(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

fn parse_address(text: &str) -> Option<AdminListen> {
    if let Some(path) = text.strip_prefix("unix:") {
        return Some(AdminListen::Unix(path.into()));
    }
    text.parse().ok().map(AdminListen::Tcp)
}

/// The report the daemon left at its last stop (or its last 10 s tick,
/// if it was killed), marked not running; with a note on its age. A
/// daemon that serves no endpoint (`listen = "off"`) but whose process
/// lives and whose report is fresh is running: its report says so.
fn last_report(config: &Config, now: f64) -> anyhow::Result<(Report, Option<String>)> {
    let path = config.state.dir.join(STATUS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!(
                "thoth-ingest is not running, and has left no report in {} (has it ever run with this config?)",
                config.state.dir.display()
            )
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", path.display()));
        }
    };
    let mut report: Report = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a status report", path.display()))?;
    let fresh = now - report.as_of < 30.0;
    if report.running && fresh && process_lives(report.pid) {
        let note =
            "the admin endpoint is off: this report is from the state directory, up to 10 s old";
        return Ok((report, Some(note.to_string())));
    }
    let note = if report.running {
        "it did not stop cleanly: the report is from its last 10 s tick"
    } else {
        "the report is from its stop"
    };
    report.running = false;
    report.ready = false;
    Ok((report, Some(note.to_string())))
}

/// Whether a process `pid` exists (signal 0 checks without sending).
fn process_lives(pid: u32) -> bool {
    // (0 and -1 would name a group of processes, not one.)
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks the pid.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `12m 5s` for a number of seconds.
fn span(seconds: f64) -> String {
    let rounded = Duration::from_secs(seconds.max(0.0).round() as u64);
    if rounded.is_zero() {
        return "0s".into();
    }
    humantime::format_duration(rounded).to_string()
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The report for a terminal.
fn render(r: &Report, note: Option<&str>, now: f64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let ago = |t: f64| span(now - t);
    if r.running {
        let _ = writeln!(
            out,
            "thoth-ingest {}: running (pid {}, up {}), {}",
            r.version,
            r.pid,
            ago(r.started_at),
            if r.ready { "ready" } else { "NOT READY" }
        );
        if let Some(note) = note {
            let _ = writeln!(out, "  ({note})");
        }
    } else {
        let _ = writeln!(
            out,
            "thoth-ingest {}: STOPPED; last report {} ago ({})",
            r.version,
            ago(r.as_of),
            note.unwrap_or("")
        );
    }
    for p in &r.problems {
        let _ = writeln!(out, "  ! {p}");
    }
    let _ = writeln!(out, "sources");
    if r.sources.is_empty() {
        let _ = writeln!(out, "  (none running)");
    }
    for s in &r.sources {
        let mut line = format!(
            "  {:<16} {:<8} read {:>9}  lines {:>10}  events {:>10}",
            s.name,
            s.kind,
            bytes(s.bytes_read),
            s.lines,
            s.events
        );
        if s.kind == "file" {
            let _ = write!(
                line,
                "  files {}  at {}  lag {}",
                s.files,
                bytes(s.position_bytes),
                bytes(s.lag_bytes)
            );
        }
        if let Some(age) = s.cursor_age_seconds {
            let _ = write!(line, "  cursor {} old", span(age));
        }
        if s.waiting_for_room {
            line.push_str("  (paused: queue full)");
        } else if s.caught_up {
            line.push_str("  (caught up)");
        }
        let _ = writeln!(out, "{line}");
        let skipped: u64 = s.skipped.values().sum();
        if skipped + s.truncated_lines + s.invalid_utf8_lines > 0 {
            let _ = writeln!(
                out,
                "  {:<16} skipped {skipped}, truncated {}, invalid UTF-8 {}",
                "", s.truncated_lines, s.invalid_utf8_lines
            );
        }
    }
    let q = &r.queue;
    let oldest = q
        .oldest_event_age_seconds
        .map(|a| format!(", oldest {} old", span(a)))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "queue      {} events ({}){oldest}; {} dead letters, {} dropped since start",
        q.events,
        bytes(q.bytes),
        q.dead_lettered_events,
        q.dropped_events
    );
    let d = &r.delivery;
    let _ = writeln!(
        out,
        "delivery   {:.1} events/s and {} requests over the last minute; {} events delivered since start",
        d.events_per_second, d.requests_last_minute, d.delivered_events
    );
    let answers: Vec<String> = d.answers.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
    let _ = writeln!(
        out,
        "           answers: {}; retries {}; 429s {}; budget waits {}",
        if answers.is_empty() {
            "none yet".to_string()
        } else {
            answers.join(", ")
        },
        d.retries,
        d.rate_limited,
        d.budget_waits
    );
    let _ = writeln!(
        out,
        "           budget: {} of {} requests used in the {} window; batches up to {} events, {}",
        d.budget.used,
        d.budget.limit,
        if d.budget.window_seconds < 60.0 {
            format!("{:.2}s", d.budget.window_seconds)
        } else {
            span(d.budget.window_seconds)
        },
        d.batch_max_events,
        bytes(d.batch_max_bytes)
    );
    let success = d
        .last_success_at
        .map(|t| format!("last batch accepted {} ago", ago(t)))
        .unwrap_or_else(|| "no batch accepted yet".into());
    let error = d
        .last_error
        .as_ref()
        .map(|e| format!("; last error {} ago: {}", ago(e.at), e.what))
        .unwrap_or_default();
    let _ = writeln!(out, "           {success}{error}");
    let drain = &r.drain;
    if q.events == 0 {
        let _ = writeln!(out, "drain      nothing waits");
    } else {
        let at_budget = drain
            .eta_seconds
            .map(|s| format!("~{} at the budget", span(s)))
            .unwrap_or_else(|| "unknown at the budget".into());
        let recent = drain
            .eta_at_recent_rate_seconds
            .map(|s| format!("; ~{} at the last minute's rate", span(s)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "drain      {at_budget} ({} requests of {} events){recent}",
            drain.requests, drain.events_per_request
        );
    }
    out
}

//! The `thoth-ingest` command line: run the daemon, check a config, replay
//! history, run the demo, or start a local receiver.
//!
//! Each command lives in its own module under `cli/`; this file holds the
//! command line, the process setup and the dispatch.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use thoth_ingest::config;
use thoth_ingest::ops;

use cli::dead_letter::DeadLetterArgs;
use cli::demo::DemoArgs;
use cli::parse::ParseCmdArgs;
use cli::receiver::ReceiverArgs;
use cli::replay::ReplayArgs;
use cli::status::StatusArgs;

#[derive(Parser)]
#[command(
    name = "thoth-ingest",
    version,
    about = "Ships the logs of AI agents to the Thoth ingest API as behavioral events"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = config::DEFAULT_CONFIG_PATH, env = "THOTH_INGEST_CONFIG")]
    config: PathBuf,
    /// Log level when RUST_LOG is not set (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Form of the daemon's own logs on stderr: `auto` is `journal` under
    /// systemd (no colours or timestamps, a syslog priority per line) and
    /// `text` elsewhere (colours only on a terminal); `json` is one object a
    /// line.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        env = "THOTH_INGEST_LOG_FORMAT"
    )]
    log_format: ops::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: follow the sources and deliver their events until SIGINT or SIGTERM.
    Run,
    /// Check the configuration and the API key; list the files each source matches now.
    Validate,
    /// What the daemon is doing: sources, queue, delivery, budget and the
    /// time to drain the backlog.
    ///
    /// Asks the running daemon's admin endpoint; when none answers, shows
    /// the last report the daemon left in its state directory. Exit status:
    /// 0 running and ready, 1 running but not ready (the reasons are
    /// printed), 3 not running, 1 also on an error.
    Status(StatusArgs),
    /// Run the whole pipeline against a built-in local receiver on the sample logs.
    Demo(DemoArgs),
    /// Run a local Thoth-compatible ingest endpoint (for tests, benchmarks and demos).
    ///
    /// Besides the API's own endpoints it serves `GET /stats`, a receiver-only
    /// summary: requests, accepted_events, unique_event_ids, duplicate_events
    /// and a count per status code.
    Receiver(ReceiverArgs),
    /// Read historical files once (plain and .gz) and deliver their events,
    /// with the ids the live daemon gives the same lines.
    ///
    /// Uses its own state (queue and positions), so it runs beside a live
    /// daemon and, interrupted, resumes where it stopped. Exit status: 0 when
    /// every event was delivered, 3 when a file was unreadable or the server
    /// refused events (dead letters), 130 when interrupted, 1 on an error
    /// (2: a bad command line).
    Replay(ReplayArgs),
    /// Show the events each line of a log becomes, as JSON lines on stdout.
    Parse(ParseCmdArgs),
    /// Events the API refused (400) and that were set aside: list, retry or purge them.
    ///
    /// Works while the daemon is stopped; the state directory is locked by a
    /// running daemon.
    #[command(name = "dead-letter")]
    DeadLetter(DeadLetterArgs),
}

fn main() -> ExitCode {
    thoth_ingest::private_fs::restrict_umask();
    tune_malloc();
    let parsed = Cli::parse();
    ops::init_logging(&parsed.log_level, parsed.log_format);
    let result = match parsed.command {
        Command::Validate => cli::validate::validate(&parsed.config),
        Command::Status(args) => cli::status::status(&parsed.config, args),
        Command::Run => cli::runtime().and_then(|rt| rt.block_on(cli::run::run(&parsed.config))),
        Command::Demo(args) => cli::runtime().and_then(|rt| rt.block_on(cli::demo::demo(args))),
        Command::Receiver(args) => {
            cli::runtime().and_then(|rt| rt.block_on(cli::receiver::receiver(args)))
        }
        Command::Replay(args) => {
            cli::runtime().and_then(|rt| rt.block_on(cli::replay::replay(&parsed.config, args)))
        }
        Command::Parse(args) => cli::parse::parse_preview(&parsed.config, args),
        Command::DeadLetter(cmd) => cli::dead_letter::dead_letter(&parsed.config, cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("thoth-ingest: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// glibc hands every buffer above 128 KiB back to the kernel when it is freed
/// and faults it in again on the next batch; a batch body or a chunk is larger
/// than that. Keeping such buffers in the heap saves a page fault per 4 KiB of
/// every event; memory stays bounded by the pipeline's working set.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

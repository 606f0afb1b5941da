//! `thoth-ingest replay`: reads historical files once (plain and `.gz`)
//! through the live daemon's parser, redaction, queue and flusher, with the
//! event ids the live daemon gives the same lines, and waits until every
//! event is delivered. Its state (queue and positions) is its own, so it
//! runs beside a live daemon and resumes after an interruption.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use thoth_ingest::config::{Config, Env, SourceConfig, SourceKind};
use thoth_ingest::event::{TimeWindow, Timestamp};
use thoth_ingest::ops;
use thoth_ingest::pipeline::{self, Pipeline, Started};
use thoth_ingest::source::file::stream_index::{self, StreamIndex};
use thoth_ingest::source::replay::{ReplaySource, ReplayStats};
use thoth_ingest::stage::{SourceStats, Stage};
use tracing::{info, warn};

use super::progress::{Progress, ProgressMode, Snapshot};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["source", "preset"])))]
pub struct ReplayArgs {
    /// A file source of the config: its globs (unless PATHs are given),
    /// parser and options, and the event ids the live daemon gives its lines.
    #[arg(long)]
    source: Option<String>,
    /// A built-in parser for files of no configured source (PATHs required).
    #[arg(long)]
    preset: Option<String>,
    /// Files or directories (read recursively) to replay instead of the
    /// source's globs. The source's `exclude` does not apply to them.
    paths: Vec<PathBuf>,
    /// Only events at or after this time: RFC 3339 (2026-11-30T00:00:00Z)
    /// or an age (2d, 12h).
    #[arg(long, value_parser = parse_time)]
    since: Option<Timestamp>,
    /// Only events before this time: RFC 3339 or an age.
    #[arg(long, value_parser = parse_time)]
    until: Option<Timestamp>,
    /// Parse and count, but queue and send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replay's own state (queue and positions). Default: `replay` in the
    /// daemon's state directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Forget where earlier replays of this source stopped and read every
    /// file again (events still queued are delivered all the same).
    #[arg(long)]
    restart: bool,
    /// Progress: a bar on a terminal, else a line every 10 s.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
}

/// An RFC 3339 time, or an age before now (`2d`).
fn parse_time(s: &str) -> Result<Timestamp, String> {
    if let Some(t) = Timestamp::parse_rfc3339(s) {
        return Ok(t);
    }
    let age = humantime::parse_duration(s).map_err(|e| {
        format!(
            "`{s}` is neither an RFC 3339 time (2026-11-30T08:00:00Z) nor an age (2d, 12h): {e}"
        )
    })?;
    let micros = i64::try_from(age.as_micros()).map_err(|_| format!("`{s}`: too long ago"))?;
    Ok(Timestamp::from_unix_micros(
        Timestamp::now().unix_micros.saturating_sub(micros),
    ))
}

pub async fn replay(config_path: &Path, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let env = Env::from_process();
    let config = thoth_ingest::parse::check::load_config(config_path, &env)?;
    let source = replay_source(&config, config_path, &args)?;
    let name = source.name.get_ref().clone();
    if let (Some(since), Some(until)) = (args.since, args.until) {
        if since >= until {
            bail!("--since must be before --until");
        }
    }
    let window = (args.since.is_some() || args.until.is_some()).then_some(TimeWindow {
        since: args.since,
        until: args.until,
    });
    let live = live_index(&config, &args, &name);
    let shutdown = Arc::new(AtomicBool::new(false));
    let replay_stats = Arc::new(ReplayStats::default());
    let source_stats = Arc::new(SourceStats {
        read: replay_stats.read.clone(),
        ..SourceStats::default()
    });
    let parser = thoth_ingest::parse::build(&config, &source)?;
    let event_bound = config.redaction.event_bound(&config.delivery);
    let mut signals = ops::StopSignals::install().context("cannot install signal handlers")?;
    let mut progress = Progress::new(args.progress, &config.delivery);
    let started = Instant::now();
    // The same stage whether it commits or not.
    let dress = |stage: Stage| {
        stage
            .with_max_event_bytes(event_bound)
            .with_provenance(thoth_ingest::stage::provenance(&config))
            .with_user_id_from(source.user_id_from)
            .with_window(window)
    };

    if args.dry_run {
        let stage = dress(Stage::dry_run(parser, source_stats.clone()));
        let replay = ReplaySource::new(
            source,
            live,
            Box::new(stage),
            replay_stats.clone(),
            shutdown.clone(),
        )?;
        let thread = std::thread::Builder::new()
            .name(format!("replay-{name}"))
            .spawn(move || replay.run())
            .context("cannot start the replay thread")?;
        let mut interrupted = false;
        while !thread.is_finished() {
            tokio::select! {
                _ = signals.recv(), if !interrupted => {
                    interrupted = true;
                    shutdown.store(true, Ordering::SeqCst);
                }
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            progress.update(&snapshot(&replay_stats, &source_stats, None, None));
        }
        let result = thread
            .join()
            .map_err(|p| anyhow::anyhow!("replay panicked: {}", ops::panic_message(p)))?;
        result?;
        let last = snapshot(&replay_stats, &source_stats, None, None);
        progress.finish(&last);
        return Ok(summary(&last, &replay_stats, started, interrupted, None));
    }

    let key = config.resolve_api_key(&env)?.0;
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| config.state.dir.join("replay"));
    if same_dir(&state_dir, &config.state.dir) {
        bail!(
            "--state-dir {} is the daemon's own state directory; replay needs one of its own",
            state_dir.display()
        );
    }
    let queue = pipeline::open_queue(&config, &state_dir).with_context(|| {
        format!(
            "cannot open the replay state in {} (is another replay of it running?)",
            state_dir.display()
        )
    })?;
    // Never drop_oldest: a backfill is read as fast as the disk allows, and
    // what it reads is already on disk; it waits for room instead.
    queue.set_bound(config.queue.max_bytes.0, false);
    if args.restart {
        forget_positions(&queue, &name)?;
    }
    let stage = dress(Stage::new(parser, queue.clone(), source_stats.clone()));
    let replay = ReplaySource::new(
        source,
        live,
        Box::new(stage),
        replay_stats.clone(),
        shutdown.clone(),
    )?;
    info!(state = %state_dir.display(), "replay state");
    let mut pipeline = Pipeline::launch(
        &config,
        &key,
        queue.clone(),
        shutdown.clone(),
        vec![Started {
            name: name.clone(),
            stats: source_stats.clone(),
            source: Box::new(replay),
            stop: shutdown,
        }],
    )?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let outcome = loop {
        tokio::select! {
            _ = signals.recv() => break Ok(true),
            e = pipeline.failed() => break Err(e),
            _ = tick.tick() => {
                let now = snapshot(&replay_stats, &source_stats, Some(&pipeline), Some(&queue));
                progress.update(&now);
                if pipeline.sources_finished() && pipeline.is_drained() {
                    break Ok(false);
                }
            }
        }
    };
    let last = snapshot(&replay_stats, &source_stats, Some(&pipeline), Some(&queue));
    progress.finish(&last);
    let stopped = pipeline
        .stop(config.delivery.shutdown_timeout + Duration::from_secs(5))
        .await;
    let interrupted = outcome?;
    stopped?;
    Ok(summary(
        &last,
        &replay_stats,
        started,
        interrupted,
        Some(&state_dir),
    ))
}

/// The source to replay: a configured file source (its paths replaced by
/// the operator's, if given), or a preset over the operator's paths.
fn replay_source(
    config: &Config,
    config_path: &Path,
    args: &ReplayArgs,
) -> anyhow::Result<SourceConfig> {
    let mut source = match (&args.source, &args.preset) {
        (Some(name), _) => {
            let source = config
                .sources
                .iter()
                .find(|s| s.name.get_ref() == name)
                .with_context(|| format!("no source `{name}` in {}", config_path.display()))?;
            if source.kind != SourceKind::File {
                bail!(
                    "source `{name}` is not a file source: replay reads files (a journald \
                     source's checkpoint lets the daemon read the journal's backlog itself)"
                );
            }
            source.clone()
        }
        (None, Some(preset)) => {
            if !thoth_ingest::parse::PARSER_NAMES.contains(&preset.as_str()) {
                bail!(
                    "unknown preset `{preset}`; known: {}",
                    thoth_ingest::parse::PARSER_NAMES.join(", ")
                );
            }
            if args.paths.is_empty() {
                bail!("--preset needs the files or directories to replay");
            }
            preset_source(preset)?
        }
        (None, None) => bail!("give --source NAME or --preset NAME"),
    };
    if !args.paths.is_empty() {
        source.include = args
            .paths
            .iter()
            .map(|p| path_pattern(p))
            .collect::<anyhow::Result<_>>()?;
        source.exclude.clear();
    }
    Ok(source)
}

/// A file source named `replay-<preset>` reading with the preset.
fn preset_source(preset: &str) -> anyhow::Result<SourceConfig> {
    #[derive(serde::Serialize)]
    struct Minimal<'a> {
        name: String,
        #[serde(rename = "type")]
        kind: &'a str,
        parser: &'a str,
    }
    let text = toml::to_string(&Minimal {
        name: format!("replay-{preset}"),
        kind: "file",
        parser: preset,
    })
    .context("cannot describe the preset's source")?;
    toml::from_str(&text).context("cannot describe the preset's source")
}

/// The glob that matches exactly `path` (a file) or every file below it
/// (a directory).
fn path_pattern(path: &Path) -> anyhow::Result<String> {
    let absolute = std::path::absolute(path)
        .with_context(|| format!("{}: cannot make the path absolute", path.display()))?;
    let meta = std::fs::metadata(&absolute)
        .with_context(|| format!("cannot replay {}", absolute.display()))?;
    let text = absolute
        .to_str()
        .with_context(|| format!("{}: only UTF-8 paths can be replayed", path.display()))?;
    let escaped = globset::escape(text.trim_end_matches('/'));
    Ok(if meta.is_dir() {
        format!("{escaped}/**/*")
    } else {
        escaped
    })
}

/// The streams the live daemon named for this source, so that rotated
/// copies get its ids; empty for a preset or when there is no index.
fn live_index(config: &Config, args: &ReplayArgs, name: &str) -> StreamIndex {
    if args.source.is_none() {
        return StreamIndex::default();
    }
    let published = thoth_ingest::queue::published::dir(&config.state.dir);
    match stream_index::read(&published, name) {
        Ok(Some(index)) => {
            info!(
                source = name,
                streams = index.len(),
                "read the live daemon's stream index"
            );
            index
        }
        Ok(None) => {
            warn!(source = name, state = %config.state.dir.display(), "no stream index from a live daemon: rotated copies of files the daemon read get ids of their own (the daemon publishes the index while it runs)");
            StreamIndex::new(name, Vec::new())
        }
        Err(e) => {
            warn!(
                source = name,
                "{e}; rotated copies of files the daemon read get ids of their own"
            );
            StreamIndex::new(name, Vec::new())
        }
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Drops the replay checkpoints of source `name`.
fn forget_positions(queue: &thoth_ingest::queue::Queue, name: &str) -> anyhow::Result<()> {
    let prefix = thoth_ingest::source::file::identity::source_prefix(name);
    let all = queue.checkpoints_with_prefix(&prefix)?;
    for (key, _) in &all {
        queue.remove_checkpoint(key)?;
    }
    info!(
        source = name,
        files = all.len(),
        "--restart: earlier replay positions forgotten"
    );
    Ok(())
}

fn snapshot(
    replay: &ReplayStats,
    source: &SourceStats,
    pipeline: Option<&Pipeline>,
    queue: Option<&thoth_ingest::queue::Queue>,
) -> Snapshot {
    let parse = source.snapshot();
    Snapshot {
        files_total: replay.files_total.load(Ordering::Relaxed),
        files_done: replay.files_done.load(Ordering::Relaxed),
        disk_bytes_total: replay.disk_bytes_total.load(Ordering::Relaxed),
        disk_bytes_done: replay.disk_bytes_done.load(Ordering::Relaxed),
        lines: parse.lines,
        events: parse.events,
        events_outside_window: parse.events_outside_window,
        delivered: pipeline.map(|p| p.flush_stats.delivered_events.load(Ordering::Relaxed)),
        pending: queue.map(|q| q.pending_events()),
        // Every letter in the replay's store, also those of an earlier run.
        dead_letters: queue.map(|q| q.dead_letters() as u64).unwrap_or(0),
        read_finished: replay.is_finished(),
    }
}

/// Prints what the replay did; the exit status says whether all went well.
fn summary(
    s: &Snapshot,
    replay: &ReplayStats,
    started: Instant,
    interrupted: bool,
    state_dir: Option<&Path>,
) -> ExitCode {
    let dry_run = state_dir.is_none();
    let elapsed = started.elapsed();
    let unreadable = replay.unreadable_files();
    let refused = replay.files_refused.load(Ordering::Relaxed);
    eprintln!(
        "replay{}: {} of {} files read, {} lines, {} events{}",
        if dry_run { " (dry run)" } else { "" },
        s.files_done,
        s.files_total,
        s.lines,
        s.events,
        if s.events_outside_window > 0 {
            format!(
                " ({} more outside --since/--until)",
                s.events_outside_window
            )
        } else {
            String::new()
        }
    );
    if let Some(delivered) = s.delivered {
        eprintln!(
            "replay: {delivered} events delivered, {} dead-lettered, in {:.1?}",
            s.dead_letters, elapsed
        );
    }
    let capped = replay.walk_capped.load(Ordering::Relaxed);
    if refused > 0 {
        eprintln!("replay: {refused} paths not read (links, FIFOs, devices: see the log)");
    }
    if capped {
        eprintln!("replay: more files matched than max_files (or the walk's directory cap): some were not read; give fewer paths per run");
    }
    let gone = replay.files_gone.load(Ordering::Relaxed);
    if gone > 0 {
        eprintln!("replay: {gone} files went away before their turn (rotated out?)");
    }
    for problem in &unreadable {
        eprintln!("replay: unreadable: {problem}");
    }
    if interrupted {
        eprintln!("replay: interrupted; run the same command again to resume where it stopped");
        return ExitCode::from(130);
    }
    if !unreadable.is_empty() || refused > 0 || capped || s.dead_letters > 0 {
        if s.dead_letters > 0 {
            eprintln!(
                "replay: the server refused {} events; they are kept: `thoth-ingest dead-letter --state-dir {} list`",
                s.dead_letters,
                state_dir.map_or_else(|| "<replay state>".into(), |d| d.display().to_string())
            );
        }
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}

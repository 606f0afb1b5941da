//! The `thoth-ingest` command line: run the daemon, check a config, run the
//! demo, or start a local receiver.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use thoth_ingest::config::{self, Config, Env};
use thoth_ingest::ops;
use thoth_ingest::pipeline::Pipeline;
use thoth_ingest::receiver::{Receiver, ReceiverConfig};
use thoth_ingest::source::file::FileMatcher;
use tracing::{error, info, warn};

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: follow the sources and deliver their events until SIGINT or SIGTERM.
    Run,
    /// Check the configuration and the API key; list the files each source matches now.
    Validate,
    /// Run the whole pipeline against a built-in local receiver on the sample logs.
    Demo(DemoArgs),
    /// Run a local Thoth-compatible ingest endpoint (for tests, benchmarks and demos).
    ///
    /// Besides the API's own endpoints it serves `GET /stats`, a receiver-only
    /// summary: requests, accepted_events, unique_event_ids, duplicate_events
    /// and a count per status code.
    Receiver(ReceiverArgs),
    /// Show the events each line of a log becomes, as JSON lines on stdout.
    Parse(ParseCmdArgs),
    /// Events the API refused (400) and that were set aside: list, retry or purge them.
    ///
    /// Works while the daemon is stopped; the state directory is locked by a
    /// running daemon.
    #[command(name = "dead-letter", subcommand)]
    DeadLetter(DeadLetterCmd),
}

#[derive(Subcommand)]
enum DeadLetterCmd {
    /// Print each dead letter as a JSON line: the server's reason and the event.
    List,
    /// Put every dead letter back into the queue, under its original event id.
    Retry,
    /// Delete every dead letter.
    Purge,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["preset", "source", "parser"])))]
struct ParseCmdArgs {
    /// A built-in parser: json, claude-code, codex, mcp-claude-desktop, otel-genai.
    #[arg(long)]
    preset: Option<String>,
    /// A source of the config file: its parser, redaction and defaults.
    #[arg(long)]
    source: Option<String>,
    /// A rules parser of the config file ([parsers.NAME]), with the config's
    /// tenant, defaults and redaction; for writing rules before a source uses them.
    #[arg(long)]
    parser: Option<String>,
    /// On stderr, list the lines that made no event, with the reason.
    #[arg(long)]
    explain: bool,
    /// The log file; stdin when absent.
    file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Directory of sample logs (*.jsonl). Default: config/samples of this checkout.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Give up if delivery has not finished after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(clap::Args)]
struct ReceiverArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
    /// Append accepted events to this file as JSON lines.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Requests allowed per tenant in each window.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Length of the fixed rate-limit window.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    window: Duration,
    /// A key to accept (repeatable). Without any, every well-formed key is accepted.
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// Share of requests to answer with 500, from 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    fail_ratio: f64,
    /// Delay added before each answer to a batch.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Answer 413 to bodies larger than this many bytes (after gzip decoding).
    #[arg(long, default_value_t = 16 << 20)]
    max_body: usize,
    /// Refuse every key (401) for this long after start.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    refuse_keys_for: Duration,
    /// Refuse (400) events whose content contains this text.
    #[arg(long)]
    reject_content: Option<String>,
    /// Serve HTTPS with this certificate (PEM, the chain); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Answer batches from this script first: one JSON step a line
    /// (status, headers, body, delay_ms, accept, close), then healthily.
    #[arg(long, conflicts_with = "tls_cert")]
    script: Option<PathBuf>,
}

fn main() -> ExitCode {
    thoth_ingest::private_fs::restrict_umask();
    tune_malloc();
    let cli = Cli::parse();
    ops::init_logging(&cli.log_level);
    let result = match cli.command {
        Command::Validate => validate(&cli.config),
        Command::Run => runtime().and_then(|rt| rt.block_on(run(&cli.config))),
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(demo(args))),
        Command::Receiver(args) => runtime().and_then(|rt| rt.block_on(receiver(args))),
        Command::Parse(args) => parse_preview(&cli.config, args),
        Command::DeadLetter(cmd) => dead_letter(&cli.config, cmd),
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

fn dead_letter(path: &Path, cmd: DeadLetterCmd) -> anyhow::Result<ExitCode> {
    let config = thoth_ingest::parse::check::load_config(path, &Env::from_process())?;
    let queue = thoth_ingest::queue::Queue::open(&config.state.dir, config.queue.cache.0)?;
    match cmd {
        DeadLetterCmd::List => {
            let letters = queue.dead_letter_list()?;
            for (_, letter) in &letters {
                println!("{}", serde_json::to_string(letter)?);
            }
            eprintln!(
                "{} dead letter(s) ({} bytes) in {}; {} older ones deleted by queue.dead_letter_max_bytes",
                letters.len(),
                queue.dead_letter_bytes(),
                config.state.dir.display(),
                queue.dead_letters_dropped(),
            );
        }
        DeadLetterCmd::Retry => {
            let n = queue.dead_letter_retry()?;
            println!("{n} dead letter(s) queued again; the daemon sends them on its next start");
        }
        DeadLetterCmd::Purge => {
            let n = queue.dead_letter_purge()?;
            println!("{n} dead letter(s) deleted");
        }
    }
    queue.close()?;
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    let env = Env::from_process();
    let config = match thoth_ingest::parse::check::load_config(path, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let origin = match config.resolve_api_key(&env) {
        Ok((_, origin)) => origin,
        Err(e) => {
            eprintln!("invalid: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    println!("{}: valid", path.display());
    println!(
        "  API: {} (tenant {})",
        config.api.base_url.get_ref(),
        config.api.tenant_id.get_ref()
    );
    println!("  key: from {origin}");
    println!("  state: {}", config.state.dir.display());
    for source in &config.sources {
        let files = FileMatcher::new(source)?.matching_files();
        println!(
            "  source `{}` (parser {}): {} file(s) match now",
            source.name.get_ref(),
            source.parser.get_ref(),
            files.len()
        );
        for f in files {
            println!("    {}", f.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(path: &Path) -> anyhow::Result<ExitCode> {
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

/// The parts of the config file a reload does not apply, as written.
fn restart_only_tables(path: &Path) -> Vec<(&'static str, Option<toml::Value>)> {
    let doc: Option<toml::Table> = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse().ok());
    let get = |name: &str| -> Option<toml::Value> {
        let doc = doc.as_ref()?;
        match name {
            "api.tenant_id" => doc.get("api")?.get("tenant_id").cloned(),
            other => doc.get(other).cloned(),
        }
    };
    ["sources", "state", "defaults", "redaction", "api.tenant_id"]
        .into_iter()
        .map(|name| (name, get(name)))
        .collect()
}

/// SIGHUP: reads the config file and the key again and applies what can
/// change while running (see `Pipeline::reload`). A config or key that does
/// not load changes nothing.
fn reload(path: &Path, pipeline: &Pipeline, restart_only: &[(&'static str, Option<toml::Value>)]) {
    let env = Env::from_process();
    let loaded = thoth_ingest::parse::check::load_config(path, &env).and_then(|c| {
        let key = c.resolve_api_key(&env)?;
        Ok((c, key))
    });
    let (config, (key, origin)) = match loaded {
        Ok(x) => x,
        Err(e) => {
            error!("reload refused, the running configuration stays: {e}");
            return;
        }
    };
    if let Err(e) = pipeline.reload(&config, &key) {
        error!("reload refused, the running configuration stays: {e:#}");
        return;
    }
    let now = restart_only_tables(path);
    for ((name, before), (_, after)) in restart_only.iter().zip(&now) {
        if before != after {
            warn!("`{name}` changed: it takes effect at the next restart");
        }
    }
    info!(key_from = %origin, "reloaded {}", path.display());
}

fn parse_preview(config: &Path, args: ParseCmdArgs) -> anyhow::Result<ExitCode> {
    let args = thoth_ingest::parse::cli::ParseArgs {
        preset: args.preset,
        source: args.source,
        parser: args.parser,
        config: config.to_path_buf(),
        input: args.file,
        explain: args.explain,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    thoth_ingest::parse::cli::run(&args, &mut out, &mut std::io::stderr())?;
    Ok(ExitCode::SUCCESS)
}

async fn receiver(args: ReceiverArgs) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.fail_ratio) {
        bail!(
            "--fail-ratio must be between 0 and 1, not {}",
            args.fail_ratio
        );
    }
    let config = ReceiverConfig {
        listen: args.listen,
        store: args.store,
        limit: args.limit,
        window: args.window,
        api_keys: args.api_keys,
        fail_ratio: args.fail_ratio,
        latency: args.latency,
        max_body: args.max_body,
        refuse_keys_for: args.refuse_keys_for,
        reject_content: args.reject_content,
        tls: args.tls_cert.zip(args.tls_key),
        script: match &args.script {
            Some(path) => Some(
                thoth_ingest::receiver::script::load(path)
                    .map_err(|e| anyhow::anyhow!("--script {e}"))?,
            ),
            None => None,
        },
    };
    let mut signals = ops::StopSignals::install().context("cannot install signal handlers")?;
    let (server, handle) = Receiver::bind(config.clone())
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    info!(addr = %handle.addr, "receiver listening");
    // The actual address on stdout, so scripts can use --listen 127.0.0.1:0.
    println!("listening on {}", handle.addr);
    server
        .serve(async move {
            signals.recv().await;
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

fn samples_dir(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = arg {
        return Ok(dir);
    }
    let candidates = [
        PathBuf::from("config/samples"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples"),
        PathBuf::from("/usr/share/thoth-ingest/samples"),
    ];
    candidates
        .into_iter()
        .find(|p| p.is_dir())
        .context("no sample logs found; pass --samples DIR")
}

async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let samples = samples_dir(args.samples)?;
    let state = tempfile::tempdir().context("cannot create a temporary state directory")?;
    let (server, handle) = Receiver::bind(ReceiverConfig::default()).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server.serve(async {
        let _ = stop_rx.await;
    }));
    let toml = format!(
        r#"
[api]
base_url = "http://{addr}"
tenant_id = "demo-tenant"
[state]
dir = {state:?}
[delivery]
linger = "200ms"
[[sources]]
name = "samples"
type = "file"
include = [{glob:?}]
parser = "json"
"#,
        addr = handle.addr,
        state = state.path().display().to_string(),
        glob = samples.join("*.jsonl").display().to_string(),
    );
    let config = Config::from_toml(&toml, Path::new("(demo config)"), &Env::default())?;
    thoth_ingest::parse::check::check(&config)?;
    let key = config::ApiKey::new("thoth_test_demo")?;
    println!(
        "demo: receiver on http://{}, samples in {}",
        handle.addr,
        samples.display()
    );
    let started = Instant::now();
    let pipeline = Pipeline::start(&config, &key)?;
    let deadline = started + args.timeout;
    // Drained once twice in a row, so a file noticed late is not missed.
    let mut drained_checks = 0;
    while drained_checks < 2 {
        if Instant::now() > deadline {
            error!("demo timed out before every event was delivered");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if pipeline.is_drained() {
            drained_checks += 1;
        } else {
            drained_checks = 0;
        }
    }
    let elapsed = started.elapsed();
    let lines: u64 = pipeline.sources.iter().map(|(_, s)| s.lines()).sum();
    let skipped: u64 = pipeline
        .sources
        .iter()
        .map(|(_, s)| s.snapshot().skipped_total())
        .sum();
    let committed = pipeline.queue.committed_events();
    let stats = handle.stats();
    let drained = pipeline.is_drained();
    pipeline.stop(Duration::from_secs(5)).await?;
    let _ = stop_tx.send(());
    let _ = server.await;
    println!("lines read:        {lines} ({skipped} skipped: not JSON objects)");
    println!(
        "events delivered:  {} ({} unique ids)",
        stats.accepted_events, stats.unique_event_ids
    );
    println!("requests:          {}", stats.requests);
    println!("elapsed:           {:.2?}", elapsed);
    if drained && stats.unique_event_ids == committed && committed > 0 {
        println!("demo: every event was delivered");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "demo: FAILED: {committed} events made, {} delivered",
            stats.unique_event_ids
        );
        Ok(ExitCode::from(1))
    }
}

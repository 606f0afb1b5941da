//! `thoth-ingest demo`: runs the whole pipeline on the sample logs against a
//! built-in local receiver and reports whether every event was delivered.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use thoth_ingest::config::{self, Config, Env};
use thoth_ingest::pipeline::Pipeline;
use thoth_ingest::receiver::{Receiver, ReceiverConfig};
use tracing::error;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Directory of sample logs (*.jsonl). Default: config/samples of this checkout.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Give up if delivery has not finished after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
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

pub async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
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
    let lines: u64 = pipeline.sources().map(|(_, s)| s.lines()).sum();
    let skipped: u64 = pipeline
        .sources()
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

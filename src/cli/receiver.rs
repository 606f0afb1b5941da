//! `thoth-ingest receiver`: runs the library's local Thoth-compatible ingest
//! endpoint with the options of the command line until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use thoth_ingest::ops;
use thoth_ingest::receiver::{Receiver, ReceiverConfig};
use tracing::info;

#[derive(clap::Args)]
pub struct ReceiverArgs {
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

pub async fn receiver(args: ReceiverArgs) -> anyhow::Result<ExitCode> {
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

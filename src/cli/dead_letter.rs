//! `thoth-ingest dead-letter`: lists, retries or purges the events the API
//! refused (400) and that were set aside in the queue.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use thoth_ingest::config::Env;

#[derive(clap::Args)]
pub struct DeadLetterArgs {
    /// The state directory whose dead letters to handle: a replay's
    /// (`replay` in the daemon's state directory by default). Default: the
    /// daemon's.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: DeadLetterCmd,
}

#[derive(Subcommand)]
pub enum DeadLetterCmd {
    /// Print each dead letter as a JSON line: the server's reason and the event.
    List,
    /// Put every dead letter back into the queue, under its original event id.
    Retry,
    /// Delete every dead letter.
    Purge,
}

pub fn dead_letter(path: &Path, args: DeadLetterArgs) -> anyhow::Result<ExitCode> {
    let config = thoth_ingest::parse::check::load_config(path, &Env::from_process())?;
    let dir = args.state_dir.unwrap_or(config.state.dir);
    let queue = thoth_ingest::queue::Queue::open(&dir, config.queue.cache.0)?;
    match args.cmd {
        DeadLetterCmd::List => {
            let letters = queue.dead_letter_list()?;
            for (_, letter) in &letters {
                println!("{}", serde_json::to_string(letter)?);
            }
            eprintln!(
                "{} dead letter(s) ({} bytes) in {}; {} older ones deleted by queue.dead_letter_max_bytes",
                letters.len(),
                queue.dead_letter_bytes(),
                dir.display(),
                queue.dead_letters_dropped(),
            );
        }
        DeadLetterCmd::Retry => {
            let n = queue.dead_letter_retry()?;
            println!("{n} dead letter(s) queued again; the daemon (or, for a replay's state, the next replay) sends them on its next start");
        }
        DeadLetterCmd::Purge => {
            let n = queue.dead_letter_purge()?;
            println!("{n} dead letter(s) deleted");
        }
    }
    queue.close()?;
    Ok(ExitCode::SUCCESS)
}

//! `thoth-ingest dead-letter`: lists, retries or purges the events the API
//! refused (400) and that were set aside in the queue.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use thoth_ingest::config::Env;

#[derive(Subcommand)]
pub enum DeadLetterCmd {
    /// Print each dead letter as a JSON line: the server's reason and the event.
    List,
    /// Put every dead letter back into the queue, under its original event id.
    Retry,
    /// Delete every dead letter.
    Purge,
}

pub fn dead_letter(path: &Path, cmd: DeadLetterCmd) -> anyhow::Result<ExitCode> {
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

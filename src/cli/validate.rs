//! `thoth-ingest validate`: checks the configuration and the API key, and
//! lists the files each source matches now.

use std::path::Path;
use std::process::ExitCode;

use thoth_ingest::config::{Env, SourceConfig, SourceKind};
use thoth_ingest::source::file::FileMatcher;
use thoth_ingest::source::journald::{self, child::Access};

pub fn validate(path: &Path) -> anyhow::Result<ExitCode> {
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
    let mut unreadable = false;
    for source in &config.sources {
        if source.kind == SourceKind::Journald {
            unreadable |= !journal_readable(source);
            continue;
        }
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
    Ok(if unreadable {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Says whether a journald source's journal is readable and how many
/// entries its filters match now; false if it cannot be read.
fn journal_readable(source: &SourceConfig) -> bool {
    let name = source.name.get_ref();
    let what = match &source.directory {
        Some(dir) => format!("journal directory {}", dir.display()),
        None => "the system journal".to_string(),
    };
    let access = journald::child::access(source).map_err(|e| journalctl_error(source, e));
    match access {
        Ok(Access::Readable) => match journald::child::count_entries(source) {
            Ok(n) => {
                println!(
                    "  source `{name}` (journald, parser {}): {what} readable, {n} entries match now",
                    source.parser.get_ref()
                );
                true
            }
            Err(e) => {
                eprintln!("invalid: source `{name}`: {}", journalctl_error(source, e));
                false
            }
        },
        Ok(Access::NoFiles) => {
            println!(
                "  source `{name}` (journald, parser {}): {what} has no journal files yet",
                source.parser.get_ref()
            );
            true
        }
        Ok(Access::Denied(why)) => {
            eprintln!("invalid: source `{name}`: cannot read {what}: {why}");
            false
        }
        Err(e) => {
            eprintln!("invalid: source `{name}`: {e}");
            false
        }
    }
}

fn journalctl_error(source: &SourceConfig, e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!(
            "journalctl not found at `{}`: install systemd's journalctl, or set journalctl_path",
            source.journalctl_path.display()
        )
    } else {
        format!("journalctl: {e}")
    }
}

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
    // Sources first: "valid" is said only when every source can be read.
    let mut report = Vec::new();
    let mut problems = Vec::new();
    for source in &config.sources {
        let name = source.name.get_ref();
        if source.kind == SourceKind::Journald {
            match journal_state(source) {
                Ok(line) => report.push(line),
                Err(problem) => problems.push(format!("source `{name}`: {problem}")),
            }
            continue;
        }
        let files = match FileMatcher::new(source) {
            Ok(matcher) => matcher.matching_files(),
            Err(e) => {
                problems.push(format!("source `{name}`: {e}"));
                continue;
            }
        };
        report.push(format!(
            "  source `{name}` (parser {}): {} file(s) match now",
            source.parser.get_ref(),
            files.len()
        ));
        report.extend(files.iter().map(|f| format!("    {}", f.display())));
    }
    if !problems.is_empty() {
        for problem in problems {
            eprintln!("invalid: {problem}");
        }
        return Ok(ExitCode::from(1));
    }
    println!("{}: valid", path.display());
    println!(
        "  API: {} (tenant {})",
        config.api.base_url.get_ref(),
        config.api.tenant_id.get_ref()
    );
    println!("  key: from {origin}");
    println!("  state: {}", config.state.dir.display());
    for line in report {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What a journald source reads now: whether its journal is readable and
/// how many entries its filters match; why not, if it cannot be read.
fn journal_state(source: &SourceConfig) -> Result<String, String> {
    let name = source.name.get_ref();
    let parser = source.parser.get_ref();
    let what = match &source.directory {
        Some(dir) => format!("journal directory {}", dir.display()),
        None => "the system journal".to_string(),
    };
    match journald::child::access(source, &|| {}).map_err(|e| journalctl_error(source, e))? {
        Access::Readable => {
            let n =
                journald::child::count_entries(source).map_err(|e| journalctl_error(source, e))?;
            Ok(format!(
                "  source `{name}` (journald, parser {parser}): {what} readable, {n} entries match now"
            ))
        }
        Access::NoFiles => Ok(format!(
            "  source `{name}` (journald, parser {parser}): {what} has no journal files yet"
        )),
        Access::Denied(why) => Err(format!("cannot read {what}: {why}")),
    }
}

fn journalctl_error(source: &SourceConfig, e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        journald::child::not_found_message(source)
    } else {
        format!("journalctl: {e}")
    }
}

//! `thoth-ingest validate`: checks the configuration and the API key, and
//! lists the files each source matches now.

use std::path::Path;
use std::process::ExitCode;

use thoth_ingest::config::Env;
use thoth_ingest::source::preflight::{self, Depth};

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
        match preflight::check(source, Depth::Report) {
            Ok(lines) => report.extend(lines),
            Err(problem) => problems.push(problem),
        }
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
    if config.api.base_url.get_ref().starts_with("http://") {
        println!(
            "  warning: base_url is plain http: a local user who binds that port first receives the key"
        );
    }
    println!(
        "  state: {}",
        thoth_ingest::ops::shown_path(&config.state.dir)
    );
    for line in report {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

//! `thoth-ingest validate`: checks the configuration and the API key, and
//! lists the files each source matches now.

use std::path::Path;
use std::process::ExitCode;

use thoth_ingest::config::Env;
use thoth_ingest::source::file::FileMatcher;

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

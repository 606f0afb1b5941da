//! `thoth-ingest parse`: shows the events each line of a log becomes, as
//! JSON lines on stdout (the work is the library's `parse::cli`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["preset", "source", "parser"])))]
pub struct ParseCmdArgs {
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

pub fn parse_preview(config: &Path, args: ParseCmdArgs) -> anyhow::Result<ExitCode> {
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

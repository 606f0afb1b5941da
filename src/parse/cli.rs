//! `thoth-ingest parse`: shows an operator what each line of a log becomes,
//! with a preset, a configured source's parser, or a `[parsers.NAME]` of the
//! config, before anything is deployed.
//!
//! Events go to `out` as JSON lines, exactly as they would be queued. With
//! `explain`, each line that made no event, and a tally by reason, go to
//! `notes`. Event ids use the stream `preview` (or `<source>/preview`), so the
//! output of a file is the same on every run.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use std::sync::Arc;

use super::{
    build, build_named, parse_counted, EventBuf, EventContext, ParseStats, Record, Redaction, Skip,
};
use crate::config::{ConfigError, Env, JsonFields, SourceKind};
use crate::event::Timestamp;
use crate::source::journald::entry::{self as journal_entry, Entry};

/// What the command was asked to do.
#[derive(Debug, Clone)]
pub struct ParseArgs {
    /// A built-in parser, with a preview context (tenant `preview`).
    pub preset: Option<String>,
    /// A source of the config file, with its parser and context.
    pub source: Option<String>,
    /// A rules parser of the config file (`[parsers.NAME]`), with the
    /// config's tenant, defaults and redaction.
    pub parser: Option<String>,
    pub config: PathBuf,
    /// The log to read; stdin when None.
    pub input: Option<PathBuf>,
    pub explain: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseCliError {
    #[error("give one of --preset, --source or --parser")]
    NeedOneParser,
    #[error("no parser `{name}` in {path}; its [parsers] define: {known}")]
    UnknownParser {
        name: String,
        path: PathBuf,
        known: String,
    },
    #[error("unknown preset `{0}`; known: {known}", known = super::PARSER_NAMES.join(", "))]
    UnknownPreset(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no source `{name}` in {path}")]
    UnknownSource { name: String, path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Input {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

/// Runs the command; returns the tally of lines, events and skips.
pub fn run(
    args: &ParseArgs,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<ParseStats, ParseCliError> {
    // A journald source reads `journalctl --output=json` lines: each is an
    // entry whose MESSAGE is parsed, as the daemon does.
    // With the config's redaction, which screens each entry's fields.
    let mut journal: Option<Redaction> = None;
    let (mut parser, stream, event_bound) = match (&args.preset, &args.source, &args.parser) {
        (Some(name), None, None) => {
            let ctx = EventContext::preview("preview", "preview");
            let redaction = Arc::new(Redaction::builtin(ctx.content_max_bytes));
            let parser = build_named(name, ctx, redaction, &JsonFields::default())
                .ok_or_else(|| ParseCliError::UnknownPreset(name.clone()))?;
            (
                parser,
                "preview".to_string(),
                super::bound::DEFAULT_MAX_EVENT_BYTES,
            )
        }
        (None, Some(name), None) => {
            let config = super::check::load_config(&args.config, &Env::from_process())?;
            let source = config
                .sources
                .iter()
                .find(|s| s.name.get_ref() == name)
                .ok_or_else(|| ParseCliError::UnknownSource {
                    name: name.clone(),
                    path: args.config.clone(),
                })?;
            if source.kind == SourceKind::Journald {
                journal = Some(Redaction::from_config(&config));
            }
            (
                build(&config, source)?,
                format!("{name}/preview"),
                config.redaction.event_bound(&config.delivery),
            )
        }
        (None, None, Some(name)) => {
            let config = super::check::load_config(&args.config, &Env::from_process())?;
            let set = super::check::rule_set(&config, name)?.ok_or_else(|| {
                ParseCliError::UnknownParser {
                    name: name.clone(),
                    path: args.config.clone(),
                    known: if config.parsers.is_empty() {
                        "none".to_string()
                    } else {
                        config
                            .parsers
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                }
            })?;
            let ctx = EventContext::for_config(&config, name);
            let redaction = Arc::new(Redaction::from_config(&config));
            let parser: Box<dyn super::Parser> =
                Box::new(super::rules::RulesParser::new(set, ctx, redaction));
            (
                parser,
                format!("{name}/preview"),
                config.redaction.event_bound(&config.delivery),
            )
        }
        _ => return Err(ParseCliError::NeedOneParser),
    };
    if let Some(path) = &args.input {
        parser.set_origin(path);
    }

    let input_name = args
        .input
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "stdin".to_string());
    let input_err = |source| ParseCliError::Input {
        path: input_name.clone(),
        source,
    };
    let mut reader: Box<dyn BufRead> = match &args.input {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).map_err(input_err)?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin().lock())),
    };

    let mut stats = ParseStats::default();
    let mut redactions: std::collections::BTreeMap<String, u64> = Default::default();
    if args.explain {
        super::redact::explain_start();
    }
    let mut events = EventBuf::with_max_event_bytes(event_bound);
    let mut buf = Vec::new();
    let mut offset = 0u64;
    let mut users = crate::ops::users::UserNames::default();
    let mut number = 0u64;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(input_err)?;
        if n == 0 {
            break;
        }
        number += 1;
        let mut line = buf.as_slice();
        if let [rest @ .., b'\n'] = line {
            line = rest;
        }
        let mut read_at = Timestamp::now();
        let mut record_stream = None;
        let mut position = offset;
        let entry;
        if let Some(journal_redaction) = &journal {
            entry = match Entry::parse(line, &mut users) {
                Ok(entry) => entry,
                Err(e) => {
                    if args.explain {
                        writeln!(
                            notes,
                            "line {number} (byte {offset}): not a journal entry: {e}"
                        )
                        .map_err(ParseCliError::Output)?;
                    }
                    *stats.skipped.entry(Skip::NotAJournalEntry).or_default() += 1;
                    offset += n as u64;
                    continue;
                }
            };
            line = &entry.message;
            read_at = entry.written_at.unwrap_or(read_at);
            let (s, p) = journal_entry::stream_and_position(
                args.source.as_deref().unwrap_or_default(),
                &entry.cursor,
            );
            record_stream = Some(s);
            position = p;
            events.set_record_metadata(
                journal_redaction
                    .screen_record_metadata("journald", &entry.metadata)
                    .map(|m| ("journald", m)),
            );
            parser.set_record_fields(&entry.fields);
        }
        let (line, _) = super::clean_line(line);
        let line: &[u8] = &line;
        let rec = Record {
            stream: record_stream.as_deref().unwrap_or(&stream),
            position,
            line,
            read_at,
        };
        events.clear();
        let skipped_before = stats.skipped.clone();
        parse_counted(parser.as_mut(), &rec, &mut events, &mut stats);
        for e in events.iter() {
            out.write_all(e).map_err(ParseCliError::Output)?;
            out.write_all(b"\n").map_err(ParseCliError::Output)?;
        }
        if args.explain {
            let mut fired = super::redact::explain_take();
            fired.sort();
            fired.dedup();
            for f in fired {
                writeln!(
                    notes,
                    "line {number} (byte {offset}): redacted {} ({})",
                    f.field, f.detector
                )
                .map_err(ParseCliError::Output)?;
                *redactions.entry(f.detector).or_default() += 1;
            }
        }
        if args.explain && events.is_empty() {
            let reason = stats
                .skipped
                .iter()
                .find(|(k, v)| skipped_before.get(k) != Some(v))
                .map(|(k, _)| k.as_str())
                .unwrap_or("no event");
            writeln!(notes, "line {number} (byte {offset}): {reason}")
                .map_err(ParseCliError::Output)?;
        }
        offset += n as u64;
    }
    if args.explain {
        writeln!(
            notes,
            "{} lines, {} events, {} lines skipped",
            stats.lines,
            stats.events,
            stats.skipped_total()
        )
        .map_err(ParseCliError::Output)?;
        for (reason, count) in &stats.skipped {
            writeln!(notes, "  {count:>8}  {}", reason.as_str()).map_err(ParseCliError::Output)?;
        }
        for (detector, count) in &redactions {
            writeln!(notes, "  {count:>8}  redacted by {detector}")
                .map_err(ParseCliError::Output)?;
        }
        if stats.state_evictions > 0 {
            writeln!(notes, "  {} state entries evicted", stats.state_evictions)
                .map_err(ParseCliError::Output)?;
        }
        if stats.events_truncated > 0 {
            writeln!(
                notes,
                "  {} events cut to max_event_bytes ({event_bound}), marked metadata._truncated",
                stats.events_truncated
            )
            .map_err(ParseCliError::Output)?;
        }
        if stats.events_cut > 0 {
            writeln!(
                notes,
                "  {} events dropped: their line made more than {}",
                stats.events_cut,
                super::MAX_EVENTS_PER_LINE
            )
            .map_err(ParseCliError::Output)?;
        }
    }
    out.flush().map_err(ParseCliError::Output)?;
    Ok(stats)
}

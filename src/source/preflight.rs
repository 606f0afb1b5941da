//! The checks a source must pass before it starts, shared by `validate` and
//! by a reload: a SIGHUP that adds or changes a source that could not start
//! (a `journalctl` that is missing or may not read the journal, globs that
//! do not compile) is refused with the running configuration kept, as
//! `validate` refuses it, instead of ending the daemon when the new source's
//! thread fails.

use crate::config::{SourceConfig, SourceKind};
use crate::source::file::FileMatcher;
use crate::source::journald::{self, child::Access};

/// How much to find out beyond whether the source can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Whether it can start: what a reload needs, quickly.
    CanStart,
    /// Also what it would read now (the files that match, the entries
    /// that the filters select): what `validate` shows.
    Report,
}

/// Ok: lines for the operator (empty for [`Depth::CanStart`]); Err: why the
/// source cannot start, naming it.
pub fn check(source: &SourceConfig, depth: Depth) -> Result<Vec<String>, String> {
    let name = source.name.get_ref();
    let parser = source.parser.get_ref();
    if source.kind == SourceKind::Journald {
        return journal(source, depth)
            .map(|line| line.into_iter().collect())
            .map_err(|problem| format!("source `{name}`: {problem}"));
    }
    let matcher = FileMatcher::new(source).map_err(|e| format!("source `{name}`: {e}"))?;
    if depth == Depth::CanStart {
        return Ok(Vec::new());
    }
    let files = matcher.matching_files();
    let mut lines = vec![format!(
        "  source `{name}` (parser {parser}): {} file(s) match now",
        files.len()
    )];
    lines.extend(
        files
            .iter()
            .map(|f| format!("    {}", crate::ops::shown_path(f))),
    );
    Ok(lines)
}

fn journal(source: &SourceConfig, depth: Depth) -> Result<Option<String>, String> {
    let name = source.name.get_ref();
    let parser = source.parser.get_ref();
    let what = match &source.directory {
        Some(dir) => format!("journal directory {}", crate::ops::shown_path(dir)),
        None => "the system journal".to_string(),
    };
    match journald::child::access(source, &|| {}).map_err(|e| journalctl_error(source, e))? {
        Access::Readable if depth == Depth::CanStart => Ok(None),
        Access::Readable => {
            let n =
                journald::child::count_entries(source).map_err(|e| journalctl_error(source, e))?;
            Ok(Some(format!(
                "  source `{name}` (journald, parser {parser}): {what} readable, {n} entries match now"
            )))
        }
        Access::NoFiles => Ok(Some(format!(
            "  source `{name}` (journald, parser {parser}): {what} has no journal files yet"
        ))),
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

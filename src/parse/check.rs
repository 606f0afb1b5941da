//! What the config says about parsing, checked and compiled: the rules
//! parsers (`[parsers.NAME]`), the parser each source names, and the
//! redaction patterns and detectors. The config itself is plain data; this
//! is called by `validate`, at start-up and on reload, and its errors name
//! the file, the key and its line like the config's own.

use std::path::Path;
use std::sync::Arc;

use super::redact::{RedactError, Redactor};
use super::rules::{self, RuleSet};
use super::PARSER_NAMES;
use crate::config::{Config, ConfigError, Env};

/// Reads the config file and checks it whole: its own checks, then parsing's.
pub fn load_config(path: &Path, env: &Env) -> Result<Config, ConfigError> {
    let config = Config::load(path, env)?;
    check(&config)?;
    Ok(config)
}

/// Compiles every `[parsers.NAME]`, and checks the parser of every source
/// and the `[redaction]` patterns and detector names.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    for name in config.parsers.keys() {
        rule_set(config, name)?;
    }
    if let Err(e) = Redactor::with_disabled(&config.redaction.patterns, &config.redaction.disable) {
        let key = match e {
            RedactError::UnknownDetector(_) => "redaction.disable",
            _ => "redaction.patterns",
        };
        return Err(config.invalid_at(0..0, key, e.to_string()));
    }
    for (i, source) in config.sources.iter().enumerate() {
        let name = source.parser.get_ref();
        if knows_parser(config, name) {
            continue;
        }
        let known: Vec<&str> = PARSER_NAMES
            .iter()
            .copied()
            .chain(config.parsers.keys().map(|k| k.as_str()))
            .collect();
        return Err(config.invalid_at(
            source.parser.span(),
            &format!("sources[{i}].parser"),
            format!(
                "unknown parser `{name}`; known: {} (or define [parsers.{name}])",
                known.join(", "),
            ),
        ));
    }
    Ok(())
}

/// Whether `parser = "name"` names a preset or a `[parsers.NAME]`.
pub fn knows_parser(config: &Config, name: &str) -> bool {
    PARSER_NAMES.contains(&name) || config.parsers.contains_key(name)
}

/// The rules parser `name` of the config compiled, or None if the config
/// defines none of that name. An error names the parser, the rule and the
/// line the rule starts on.
pub fn rule_set(config: &Config, name: &str) -> Result<Option<Arc<RuleSet>>, ConfigError> {
    let Some(spec) = config.parsers.get(name) else {
        return Ok(None);
    };
    let set = rules::compile(name, spec).map_err(|e| {
        // A parser's table may be implicit (only `[[parsers.NAME.rules]]`
        // written), so it has no span of its own: its pattern's or its
        // first rule's line stands in.
        let span = match e.rule {
            Some(i) => spec.rules.get(i).map(|r| r.span()),
            None => spec.pattern.as_ref().map(|p| p.span()),
        }
        .or_else(|| spec.rules.first().map(|r| r.span()));
        let key = if e.key.is_empty() {
            format!("parsers.{name}")
        } else {
            format!("parsers.{name}.{}", e.key)
        };
        config.invalid_at(span.unwrap_or(0..0), &key, e.message)
    })?;
    Ok(Some(Arc::new(set)))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::tests::GOOD;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let config = Config::from_toml(
            text,
            Path::new("/etc/thoth-ingest/config.toml"),
            &Env::default(),
        )?;
        check(&config)?;
        Ok(config)
    }

    #[test]
    fn unknown_parser_is_named() {
        let text = GOOD.replace("parser = \"json\"", "parser = \"yaml\"");
        let e = load(&text).unwrap_err().to_string();
        assert!(
            e.contains("sources[0].parser") && e.contains("yaml") && e.contains(":22"),
            "{e}"
        );
    }

    #[test]
    fn bad_redaction_names_its_key() {
        let text = format!("{GOOD}\n[redaction]\ndisable = [\"no-such-detector\"]\n");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains("redaction.disable"), "{e}");
        let text = format!("{GOOD}\n[redaction]\npatterns = [{{ name = \"x\", regex = \"(\" }}]\n");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains("redaction.patterns"), "{e}");
    }
}

//! The checks that need nothing but the config: ranges and shapes of keys,
//! source names and globs, and the rule that the API is reached over https
//! (plain http only to loopback). Errors name the key and its line.

use super::{Config, ConfigError, SourceConfig, SourceKind, UserIdFrom, MIN_MAX_EVENT_BYTES};

impl Config {
    pub(super) fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let url = &self.api.base_url;
        check_base_url(url.get_ref())
            .map_err(|m| self.invalid(text, url.span(), "api.base_url", m))?;
        let tenant = &self.api.tenant_id;
        if tenant.get_ref().trim().is_empty() {
            return Err(self.invalid(
                text,
                tenant.span(),
                "api.tenant_id",
                "must not be empty".into(),
            ));
        }
        if let Err(m) = self.admin.endpoint() {
            let span = self.admin.listen.span();
            return Err(self.invalid(text, span, "admin.listen", m));
        }
        if self.admin.stuck_after.is_zero() {
            return Err(self.invalid(
                text,
                0..0,
                "admin.stuck_after",
                "must be more than zero".into(),
            ));
        }
        if self.delivery.requests_per_minute == 0 {
            return Err(self.invalid(
                text,
                0..0,
                "delivery.requests_per_minute",
                "must be at least 1".into(),
            ));
        }
        if let Some(b) = &self.delivery.budget {
            if b.requests == 0 || b.per.is_zero() {
                return Err(self.invalid(
                    text,
                    0..0,
                    "delivery.budget",
                    "needs requests >= 1 and a non-zero `per`".into(),
                ));
            }
        }
        if self.delivery.max_in_flight == 0 {
            return Err(self.invalid(
                text,
                0..0,
                "delivery.max_in_flight",
                "must be at least 1".into(),
            ));
        }
        if self.delivery.batch_max_bytes.0 < 4096 {
            return Err(self.invalid(
                text,
                0..0,
                "delivery.batch_max_bytes",
                "must be at least 4KiB".into(),
            ));
        }
        if self.queue.dead_letter_max_bytes.0 < 64 << 10 {
            return Err(self.invalid(
                text,
                0..0,
                "queue.dead_letter_max_bytes",
                "must be at least 64KiB".into(),
            ));
        }
        let max_event = self.redaction.max_event_bytes.0;
        let min_event = MIN_MAX_EVENT_BYTES as u64;
        if !(min_event..=8 << 20).contains(&max_event) {
            return Err(self.invalid(
                text,
                0..0,
                "redaction.max_event_bytes",
                "must be between 4KiB and 8MiB".into(),
            ));
        }
        if let Some(ca) = &self.api.ca_file {
            if !ca.is_file() {
                return Err(self.invalid(
                    text,
                    0..0,
                    "api.ca_file",
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        if self.delivery.batch_max_events == 0 {
            return Err(self.invalid(
                text,
                0..0,
                "delivery.batch_max_events",
                "must be at least 1".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let name = source.name.get_ref();
            let key = |k: &str| format!("sources[{i}].{k}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(self.invalid(
                    text,
                    source.name.span(),
                    &key("name"),
                    format!("`{name}`: use letters, digits, `-`, `_` and `.` only"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(self.invalid(
                    text,
                    source.name.span(),
                    &key("name"),
                    format!("`{name}` is used by two sources"),
                ));
            }
            if source.kind == SourceKind::Journald {
                if let Some((field, problem)) = journald_problem(source) {
                    return Err(self.invalid(text, source.name.span(), &key(field), problem));
                }
                if source.user_id_from == Some(UserIdFrom::FileOwner) {
                    return Err(self.invalid(
                        text,
                        source.name.span(),
                        &key("user_id_from"),
                        "\"file_owner\" applies to file sources; a journald source takes \"journal_uid\" (the entry's `_UID`)".into(),
                    ));
                }
            } else if let Some(field) = journald_key_on_a_file_source(source) {
                return Err(self.invalid(
                    text,
                    source.name.span(),
                    &key(field),
                    "is a key of journald sources (type = \"journald\")".into(),
                ));
            } else if source.user_id_from == Some(UserIdFrom::JournalUid) {
                return Err(self.invalid(
                    text,
                    source.name.span(),
                    &key("user_id_from"),
                    "\"journal_uid\" applies to journald sources; a file source takes \"file_owner\"".into(),
                ));
            } else if source.include.is_empty() {
                return Err(self.invalid(
                    text,
                    source.name.span(),
                    &key("include"),
                    "needs at least one glob".into(),
                ));
            }
            for pattern in source.include.iter().chain(&source.exclude) {
                if let Err(e) = globset::Glob::new(pattern) {
                    return Err(self.invalid(
                        text,
                        source.name.span(),
                        &key("include"),
                        format!("`{pattern}`: {e}"),
                    ));
                }
            }
            for (field, interval) in [
                ("poll_interval", source.poll_interval),
                ("glob_interval", source.glob_interval),
            ] {
                if interval.is_zero() {
                    return Err(self.invalid(
                        text,
                        source.name.span(),
                        &key(field),
                        "must be more than 0s (0s would spin a core)".into(),
                    ));
                }
            }
            if !(16..=1 << 20).contains(&source.fingerprint_bytes) {
                return Err(self.invalid(
                    text,
                    source.name.span(),
                    &key("fingerprint_bytes"),
                    "must be between 16 and 1048576".into(),
                ));
            }
            if !(64..=1 << 30).contains(&source.max_line_bytes.0) {
                return Err(self.invalid(
                    text,
                    source.name.span(),
                    &key("max_line_bytes"),
                    "must be between 64B and 1GiB".into(),
                ));
            }
            if source.max_open_files.is_some_and(|n| n < 2) {
                return Err(self.invalid(
                    text,
                    source.name.span(),
                    &key("max_open_files"),
                    "must be at least 2 (one file read while another is checked)".into(),
                ));
            }
            if let Some(m) = &source.multiline {
                if let Err(e) = regex::bytes::Regex::new(&m.start_pattern) {
                    return Err(self.invalid(
                        text,
                        source.name.span(),
                        &key("multiline.start_pattern"),
                        format!("not a valid regex: {e}"),
                    ));
                }
            }
            if crate::event::EventType::parse(&source.fields.default_event_type).is_none() {
                return Err(self.invalid(
                    text,
                    source.name.span(),
                    &key("fields.default_event_type"),
                    "must be TOOL_CALL_PRE, TOOL_CALL_POST, TOOL_CALL_BLOCK or LLM_INVOCATION"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

/// Refuses plain HTTP unless the host is loopback: the key must never cross a
/// network in clear.
pub fn check_base_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "`{url}` uses plain http to a host that is not loopback; \
                     the API key would cross the network in clear. Use https://"
                ))
            }
        }
        other => Err(format!(
            "`{url}`: scheme `{other}` is not supported; use https://"
        )),
    }
}

/// Syslog levels by name, most urgent first: a priority is one of these or
/// its number.
pub const PRIORITY_NAMES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// What is wrong with a journald source's keys, if anything: the key and why.
fn journald_problem(source: &SourceConfig) -> Option<(&'static str, String)> {
    if !source.include.is_empty() {
        return Some((
            "include",
            "a journald source reads the journal, not files: use units, identifiers or matches"
                .into(),
        ));
    }
    for m in &source.matches {
        let field = m.split_once('=').map(|(f, _)| f).unwrap_or("");
        let well_formed = !field.is_empty()
            && !field.starts_with(|c: char| c.is_ascii_digit())
            && field
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !well_formed {
            return Some((
                "matches",
                format!("`{m}`: write FIELD=value, the field in capitals (for example _SYSTEMD_UNIT=agent.service)"),
            ));
        }
    }
    for (name, values) in [
        ("units", &source.units),
        ("identifiers", &source.identifiers),
    ] {
        if let Some(v) = values
            .iter()
            .find(|v| v.is_empty() || v.contains(['\n', '\0']))
        {
            return Some((name, format!("`{}` is not a name", v.escape_debug())));
        }
    }
    if let Some(p) = &source.priority {
        if !PRIORITY_NAMES.contains(&p.as_str()) && !matches!(p.parse::<u8>(), Ok(0..=7)) {
            return Some((
                "priority",
                format!("`{p}`: use 0 to 7 or one of {}", PRIORITY_NAMES.join(", ")),
            ));
        }
    }
    None
}

/// A journald key set on a file source, if any.
fn journald_key_on_a_file_source(source: &SourceConfig) -> Option<&'static str> {
    [
        ("units", !source.units.is_empty()),
        ("identifiers", !source.identifiers.is_empty()),
        ("matches", !source.matches.is_empty()),
        ("priority", source.priority.is_some()),
        ("directory", source.directory.is_some()),
        ("current_boot_only", source.current_boot_only),
    ]
    .into_iter()
    .find_map(|(key, set)| set.then_some(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{load, GOOD};
    use crate::config::Env;
    use std::path::Path;

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1/x",
            "http://[::1]:9",
        ] {
            let text = GOOD.replace("https://api.atensecurity.com", ok);
            assert!(load(&text).is_ok(), "{ok} should be accepted");
        }
        for bad in [
            "http://api.atensecurity.com",
            "http://10.0.0.1:8080",
            "ftp://x",
        ] {
            let text = GOOD.replace("https://api.atensecurity.com", bad);
            let e = load(&text).unwrap_err().to_string();
            assert!(e.contains("api.base_url") && e.contains(":3"), "{e}");
        }
    }

    #[test]
    fn the_admin_endpoint_stays_local_unless_told() {
        let with = |admin: &str| format!("{GOOD}\n[admin]\n{admin}\n");
        for ok in [
            "listen = \"127.0.0.1:9977\"",
            "listen = \"[::1]:0\"",
            "listen = \"unix:/run/thoth-ingest/admin.sock\"",
            "listen = \"off\"",
            "listen = \"0.0.0.0:9977\"\nallow_remote = true",
        ] {
            assert!(load(&with(ok)).is_ok(), "{ok} should be accepted");
        }
        for (bad, says) in [
            ("listen = \"0.0.0.0:9977\"", "allow_remote"),
            ("listen = \"10.1.2.3:9977\"", "allow_remote"),
            ("listen = \"localhost:9977\"", "not IP:port"),
            ("listen = \"unix:admin.sock\"", "absolute"),
            ("stuck_after = \"0s\"", "admin.stuck_after"),
        ] {
            let e = load(&with(bad)).unwrap_err().to_string();
            assert!(e.contains("admin.") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn env_overrides_base_url_and_is_validated() {
        let env = Env {
            api_url: Some("http://example.com".into()),
            ..Env::default()
        };
        let e = Config::from_toml(GOOD, Path::new("c.toml"), &env).unwrap_err();
        assert!(e.to_string().contains("api.base_url"), "{e}");
    }

    #[test]
    fn zero_intervals_and_journald_keys_are_refused() {
        let with =
            |extra: &str| GOOD.replace("parser = \"json\"", &format!("parser = \"json\"\n{extra}"));
        for field in ["poll_interval", "glob_interval"] {
            let e = load(&with(&format!("{field} = \"0s\"")))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field) && e.contains("more than 0s"), "{e}");
        }
        let e = load(&with("units = [\"a.service\"]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("units") && e.contains("journald"), "{e}");
        let journald = GOOD.replace("type = \"file\"", "type = \"journald\"");
        let e = load(&journald).unwrap_err().to_string();
        assert!(e.contains("include") && e.contains("journal"), "{e}");
        let journald = |extra: &str| {
            journald
                .lines()
                .filter(|l| !l.starts_with("include"))
                .collect::<Vec<_>>()
                .join("\n")
                .replace("parser = \"json\"", &format!("parser = \"json\"\n{extra}"))
        };
        assert!(load(&journald(
            "units = [\"agent.service\"]\npriority = \"warning\""
        ))
        .is_ok());
        for (bad, field) in [
            ("matches = [\"--output=cat\"]", "matches"),
            ("matches = [\"lower=x\"]", "matches"),
            ("priority = \"loud\"", "priority"),
            ("priority = \"8\"", "priority"),
            ("units = [\"\"]", "units"),
        ] {
            let e = load(&journald(bad)).unwrap_err().to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
    }
}

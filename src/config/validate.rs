//! The checks that need nothing but the config: ranges and shapes of keys,
//! source names and globs, and the rule that the API is reached over https
//! (plain http only to loopback). Errors name the key and its line.

use super::{Config, ConfigError, MIN_MAX_EVENT_BYTES};

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
            if source.include.is_empty() {
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
    fn env_overrides_base_url_and_is_validated() {
        let env = Env {
            api_url: Some("http://example.com".into()),
            ..Env::default()
        };
        let e = Config::from_toml(GOOD, Path::new("c.toml"), &env).unwrap_err();
        assert!(e.to_string().contains("api.base_url"), "{e}");
    }
}

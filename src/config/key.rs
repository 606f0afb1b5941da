//! The API key: its checked shape, kept out of `Debug` and `Display`, and
//! its resolution from the environment, the systemd credential or the
//! config's `api.api_key_file`, with where it was found for messages.

use std::fmt;
use std::path::PathBuf;

use super::{Config, ConfigError, Env, SYSTEMD_CREDENTIAL};

/// The API key. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Checks the documented shape: `thoth_live_…` or `thoth_test_…`, printable
    /// ASCII, no whitespace (it goes into an HTTP header).
    pub fn new(key: &str) -> Result<ApiKey, ConfigError> {
        let key = key.trim();
        let body = key
            .strip_prefix("thoth_live_")
            .or_else(|| key.strip_prefix("thoth_test_"));
        match body {
            None => Err(ConfigError::ApiKey(
                "it does not start with `thoth_live_` or `thoth_test_`; \
                 check that the whole key was copied"
                    .into(),
            )),
            Some("") => Err(ConfigError::ApiKey(
                "it has a prefix but nothing after it".into(),
            )),
            Some(rest) if !rest.bytes().all(|b| b.is_ascii_graphic()) => Err(ConfigError::ApiKey(
                "it contains whitespace or non-ASCII characters".into(),
            )),
            Some(_) => Ok(ApiKey(key.to_string())),
        }
    }

    /// The secret itself, for the HTTP headers and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the key was found, for messages (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    EnvKey,
    EnvFile(PathBuf),
    Credential(PathBuf),
    ConfigFile(PathBuf),
}

impl fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyOrigin::EnvKey => f.write_str("environment variable THOTH_API_KEY"),
            KeyOrigin::EnvFile(p) => write!(f, "THOTH_API_KEY_FILE ({})", p.display()),
            KeyOrigin::Credential(p) => write!(f, "systemd credential {}", p.display()),
            KeyOrigin::ConfigFile(p) => write!(f, "api.api_key_file ({})", p.display()),
        }
    }
}

impl Config {
    /// Finds the API key: `THOTH_API_KEY`, then `THOTH_API_KEY_FILE`, then the
    /// systemd credential `thoth-api-key`, then `api.api_key_file`.
    pub fn resolve_api_key(&self, env: &Env) -> Result<(ApiKey, KeyOrigin), ConfigError> {
        if let Some(key) = &env.api_key {
            return ApiKey::new(key)
                .map(|k| (k, KeyOrigin::EnvKey))
                .map_err(|e| with_origin(e, &KeyOrigin::EnvKey));
        }
        let mut candidates = Vec::new();
        if let Some(p) = &env.api_key_file {
            candidates.push(KeyOrigin::EnvFile(p.clone()));
        }
        if let Some(dir) = &env.credentials_directory {
            let p = dir.join(SYSTEMD_CREDENTIAL);
            if p.exists() {
                candidates.push(KeyOrigin::Credential(p));
            }
        }
        if let Some(p) = &self.api.api_key_file {
            candidates.push(KeyOrigin::ConfigFile(p.clone()));
        }
        let Some(origin) = candidates.into_iter().next() else {
            return Err(ConfigError::ApiKey(
                "none configured: set api.api_key_file, THOTH_API_KEY_FILE, THOTH_API_KEY, \
                 or the systemd credential `thoth-api-key`"
                    .into(),
            ));
        };
        let path = match &origin {
            KeyOrigin::EnvFile(p) | KeyOrigin::Credential(p) | KeyOrigin::ConfigFile(p) => p,
            KeyOrigin::EnvKey => unreachable!("handled above"),
        };
        crate::private_fs::check_key_file(path)
            .map_err(|e| ConfigError::ApiKey(format!("{origin}: {e}")))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::ApiKey(format!("cannot read {origin}: {e}")))?;
        ApiKey::new(&text)
            .map(|k| (k, origin.clone()))
            .map_err(|e| with_origin(e, &origin))
    }
}

fn with_origin(e: ConfigError, origin: &KeyOrigin) -> ConfigError {
    match e {
        ConfigError::ApiKey(m) => {
            ConfigError::ApiKey(format!("the key from {origin} is refused: {m}"))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{load, GOOD};

    #[test]
    fn malformed_key_is_refused_without_echoing_it() {
        for bad in [
            "sk-live-12345",
            "thoth_live_",
            "thoth_prod_abc",
            "thoth_live_ab cd",
        ] {
            let e = ApiKey::new(bad).unwrap_err().to_string();
            assert!(!bad.is_empty() && !e.contains(bad), "{e} echoes the key");
        }
        assert!(ApiKey::new("thoth_test_abc123\n").is_ok());
        let c = load(GOOD).unwrap();
        let env = Env {
            api_key: Some("wrong_abc".into()),
            ..Env::default()
        };
        let e = c.resolve_api_key(&env).unwrap_err().to_string();
        assert!(
            e.contains("THOTH_API_KEY") && !e.contains("wrong_abc"),
            "{e}"
        );
    }

    #[test]
    fn key_never_shows_in_debug() {
        let env = Env {
            api_key: Some("thoth_live_supersecret".into()),
            ..Env::default()
        };
        assert!(!format!("{env:?}").contains("supersecret"), "{env:?}");
        let key = ApiKey::new("thoth_live_supersecret").unwrap();
        assert!(!format!("{key:?}").contains("supersecret"));
        assert!(!format!("{key}").contains("supersecret"));
        assert_eq!(key.expose(), "thoth_live_supersecret");
    }

    #[test]
    fn key_sources_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "thoth_test_fromfile\n").unwrap();
        let text = GOOD.replace("/etc/thoth-ingest/api-key", &file.display().to_string());
        let c = load(&text).unwrap();
        let (k, origin) = c.resolve_api_key(&Env::default()).unwrap();
        assert_eq!(k.expose(), "thoth_test_fromfile");
        assert_eq!(origin, KeyOrigin::ConfigFile(file.clone()));
        std::fs::write(dir.path().join(SYSTEMD_CREDENTIAL), "thoth_test_cred").unwrap();
        let env = Env {
            credentials_directory: Some(dir.path().to_path_buf()),
            ..Env::default()
        };
        assert_eq!(
            c.resolve_api_key(&env).unwrap().0.expose(),
            "thoth_test_cred"
        );
        let env = Env {
            api_key: Some("thoth_test_env".into()),
            ..env
        };
        assert_eq!(
            c.resolve_api_key(&env).unwrap().0.expose(),
            "thoth_test_env"
        );
    }
}

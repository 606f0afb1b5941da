//! The TOML configuration as plain data: its keys, their defaults,
//! environment overrides, the checks that need nothing but the config, and
//! the resolution of the API key. Parsers and redaction patterns are
//! compiled and checked by `crate::parse::check`, which reports through
//! [`Config::invalid_at`] in the same words.
//!
//! Every error names the file, the key and, where the key is in the file, its
//! line, because it is read by an operator fixing a broken deploy.
//!
//! Here: reading a file into a [`Config`] (`load`, `from_toml`), the
//! environment it reads, its errors and their line numbers. The keys are in
//! `schema.rs`, their defaults in `defaults.rs`, sizes in `size.rs`, the API
//! key in `key.rs` and the checks in `validate.rs`, all re-exported here.

mod defaults;
mod key;
pub mod parsers;
mod schema;
mod size;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Spanned;

pub use key::{ApiKey, KeyOrigin};
pub use schema::{
    AdminConfig, AdminListen, ApiConfig, BudgetConfig, Compression, Config, Defaults,
    DeliveryConfig, JsonFields, MultilineConfig, QueueConfig, RedactionConfig, SourceConfig,
    SourceKind, StartAt, StateConfig, UserIdFrom, UserPattern, WhenFull,
};
pub use size::ByteSize;
pub use validate::check_base_url;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/thoth-ingest/config.toml";
pub const DEFAULT_BASE_URL: &str = "https://api.atensecurity.com";
/// Name of the systemd credential (`LoadCredential=thoth-api-key:...`).
pub const SYSTEMD_CREDENTIAL: &str = "thoth-api-key";
pub use crate::event::bound::{DEFAULT_MAX_EVENT_BYTES, MIN_MAX_EVENT_BYTES};
/// Default bound of `content`, in bytes.
pub const CONTENT_MAX_BYTES: usize = 4096;
/// How long the checkpoints of files gone (and of sources removed) are kept.
pub const DEFAULT_CHECKPOINT_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: the config file {why}: they could make the daemon run any program \
         (journalctl_path) or send events anywhere; make it root's, not writable by others \
         (chown root; chmod 640)"
    )]
    Unsafe { path: PathBuf, why: String },
    #[error("{path}:{line}:{column}: `{key}`: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    #[error("{path}{}: `{key}`: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        key: String,
        message: String,
    },
    #[error("API key: {0}")]
    ApiKey(String),
}

/// The text a config was read from; left out of `Debug`.
#[derive(Clone, Default)]
struct ConfigText(Arc<str>);

impl fmt::Debug for ConfigText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({} bytes)", self.0.len())
    }
}

/// Environment the config reads, passed in so tests do not touch the process's.
/// Its `Debug` shows whether a key is set, never the key.
#[derive(Clone, Default)]
pub struct Env {
    pub api_url: Option<String>,
    pub api_key: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub credentials_directory: Option<PathBuf>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("api_url", &self.api_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("api_key_file", &self.api_key_file)
            .field("credentials_directory", &self.credentials_directory)
            .finish()
    }
}

impl Env {
    pub fn from_process() -> Env {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            api_url: var("THOTH_API_URL"),
            api_key: var("THOTH_API_KEY"),
            api_key_file: var("THOTH_API_KEY_FILE").map(PathBuf::from),
            credentials_directory: var("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        }
    }
}

impl Config {
    /// Reads, parses and validates the file, then applies `env`'s overrides.
    /// A file that another user than root and the daemon's own may change
    /// is refused, as a key file is.
    pub fn load(path: &Path, env: &Env) -> Result<Config, ConfigError> {
        use std::io::Read as _;
        use std::os::unix::fs::MetadataExt as _;
        let read = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(read)?;
        let meta = file.metadata().map_err(read)?;
        let mode = meta.mode() & 0o7777;
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        let me = unsafe { libc::geteuid() };
        let why = if mode & 0o002 != 0 {
            Some(format!("is writable by every user (mode {mode:04o})"))
        } else if meta.uid() != 0 && meta.uid() != me {
            Some(format!(
                "belongs to uid {}, neither root nor the daemon's user",
                meta.uid()
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(ConfigError::Unsafe {
                path: path.to_path_buf(),
                why,
            });
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(read)?;
        Config::from_toml(&text, path, env)
    }

    pub fn from_toml(text: &str, path: &Path, env: &Env) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            // A `Spanned` table shows in the path as serde's private field.
            let key = e
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "");
            let inner = e.into_inner();
            let (line, column) = inner
                .span()
                .map(|s| line_col(text, s.start))
                .unwrap_or((0, 0));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message: inner.message().trim().to_string(),
            }
        })?;
        config.path = path.to_path_buf();
        config.text = ConfigText(text.into());
        if let Some(url) = &env.api_url {
            config.api.base_url = Spanned::new(0..0, url.clone());
        }
        config.validate(text)?;
        Ok(config)
    }

    /// An error about `key`, at `span` of the file when known (0..0: the
    /// key's line is not known), for checks made after loading.
    pub fn invalid_at(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: String,
    ) -> ConfigError {
        self.invalid(&self.text.0, span, key, message)
    }

    fn invalid(
        &self,
        text: &str,
        span: std::ops::Range<usize>,
        key: &str,
        message: String,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            line: (span.end > 0).then(|| line_col(text, span.start).0),
            key: key.to_string(),
            message,
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) const GOOD: &str = r#"
[api]
base_url = "https://api.atensecurity.com"
tenant_id = "acme-corp"
api_key_file = "/etc/thoth-ingest/api-key"

[state]
dir = "/var/lib/thoth-ingest"

[delivery]
requests_per_minute = 1000
batch_max_events = 500
linger = "1s"

[defaults]
user_id = "system"

[[sources]]
name = "agents"
type = "file"
include = ["/var/log/agents/*.jsonl"]
parser = "json"
"#;

    pub(super) fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            Path::new("/etc/thoth-ingest/config.toml"),
            &Env::default(),
        )
    }

    #[test]
    fn the_documented_example_loads() {
        let c = load(GOOD).expect("valid config");
        assert_eq!(c.api.tenant_id.get_ref(), "acme-corp");
        assert_eq!(c.delivery.linger, Duration::from_secs(1));
        assert_eq!(c.queue.cache, ByteSize(64 << 20));
        assert_eq!(c.sources[0].include, vec!["/var/log/agents/*.jsonl"]);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = GOOD.replace("linger = \"1s\"", "linger = \"1s\"\nlingr = \"2s\"");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains("config.toml:14:"), "{e}");
        assert!(e.contains("lingr"), "{e}");
        assert!(e.contains("delivery"), "{e}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let text = GOOD.replace("batch_max_events = 500", "batch_max_events = \"many\"");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains(":12:"), "{e}");
        assert!(e.contains("delivery.batch_max_events"), "{e}");
    }

    #[test]
    fn bad_duration_names_key_and_line() {
        let text = GOOD.replace("linger = \"1s\"", "linger = \"soon\"");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains(":13:"), "{e}");
        assert!(e.contains("delivery.linger"), "{e}");
    }

    #[test]
    fn bad_size_names_key() {
        let text = format!("{GOOD}\n[queue]\ncache = \"lots\"\n");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains("queue.cache"), "{e}");
    }

    #[test]
    fn the_shipped_example_config_loads() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/config.example.toml"
        ));
        let c = Config::load(path, &Env::default()).expect("config/config.example.toml is valid");
        assert_eq!(c.defaults.ttl, Duration::from_secs(90 * 24 * 3600));
        assert_eq!(
            c.sources[0].fields.content,
            vec!["content", "message", "msg"]
        );
    }
}

//! The TOML configuration as plain data: its keys, their defaults,
//! environment overrides, the checks that need nothing but the config, and
//! the resolution of the API key. Parsers and redaction patterns are
//! compiled and checked by `crate::parse::check`, which reports through
//! [`Config::invalid_at`] in the same words.
//!
//! Every error names the file, the key and, where the key is in the file, its
//! line, because it is read by an operator fixing a broken deploy.

pub mod parsers;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::event::EnforcementMode;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/thoth-ingest/config.toml";
pub const DEFAULT_BASE_URL: &str = "https://api.atensecurity.com";
/// Name of the systemd credential (`LoadCredential=thoth-api-key:...`).
pub const SYSTEMD_CREDENTIAL: &str = "thoth-api-key";
pub use crate::event::bound::{DEFAULT_MAX_EVENT_BYTES, MIN_MAX_EVENT_BYTES};
/// Default bound of `content`, in bytes.
pub const CONTENT_MAX_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub api: ApiConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub redaction: RedactionConfig,
    /// Rules parsers for in-house formats (`[parsers.NAME]`), by name.
    #[serde(default)]
    pub parsers: BTreeMap<String, parsers::ParserSpec>,
    /// Where the file was read from, for messages.
    #[serde(skip)]
    pub path: PathBuf,
    /// The file's text, to turn a key's place in it into a line number.
    #[serde(skip)]
    text: ConfigText,
}

/// The text a config was read from; left out of `Debug`.
#[derive(Clone, Default)]
struct ConfigText(Arc<str>);

impl fmt::Debug for ConfigText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({} bytes)", self.0.len())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_base_url")]
    pub base_url: Spanned<String>,
    pub tenant_id: Spanned<String>,
    pub api_key_file: Option<PathBuf>,
    /// PEM file of extra CA certificates (a private CA or a TLS-inspecting proxy).
    pub ca_file: Option<PathBuf>,
    /// Time allowed for one request, from connect to the last byte of the answer.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: default_state_dir(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    #[serde(default = "default_rpm")]
    pub requests_per_minute: u32,
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// How long a partial batch may wait for more events before it is sent.
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// Longest wait between retries of a failed request.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// The request budget as `{ requests = N, per = "DURATION" }`; when set it
    /// replaces `requests_per_minute` (tests use short windows).
    pub budget: Option<BudgetConfig>,
    /// Largest request body, in bytes.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: ByteSize,
    #[serde(default)]
    pub compression: Compression,
    /// Requests in flight at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How long SIGTERM waits for requests in flight.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl DeliveryConfig {
    /// Requests allowed per window, and the window.
    pub fn budget(&self) -> (u32, Duration) {
        match &self.budget {
            Some(b) => (b.requests, b.per),
            None => (self.requests_per_minute, Duration::from_secs(60)),
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            requests_per_minute: default_rpm(),
            batch_max_events: default_batch_max_events(),
            linger: default_linger(),
            max_backoff: default_max_backoff(),
            budget: None,
            batch_max_bytes: default_batch_max_bytes(),
            compression: Compression::default(),
            max_in_flight: default_max_in_flight(),
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    pub requests: u32,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

/// What a full queue does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Sources stop reading; files and the journal are the overflow buffer.
    #[default]
    Block,
    /// The oldest undelivered events are dropped, and counted.
    DropOldest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// sled's page cache; sled's own default (1 GiB) would let RSS grow far past
    /// what a per-host agent may use.
    #[serde(default = "default_cache")]
    pub cache: ByteSize,
    /// Bound on the events waiting for delivery, as stored.
    #[serde(default = "default_queue_max_bytes")]
    pub max_bytes: ByteSize,
    #[serde(default)]
    pub when_full: WhenFull,
    /// Bound on the events the API refused, kept for `dead-letter list`:
    /// past it the oldest are deleted and counted.
    #[serde(default = "default_dead_letter_max_bytes")]
    pub dead_letter_max_bytes: ByteSize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            cache: default_cache(),
            max_bytes: default_queue_max_bytes(),
            when_full: WhenFull::default(),
            dead_letter_max_bytes: default_dead_letter_max_bytes(),
        }
    }
}

/// Event fields that no log line provides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default = "default_user_id")]
    pub user_id: String,
    pub agent_id: Option<String>,
    /// Session of events whose line names none; by default the source's name.
    pub session_id: Option<String>,
    #[serde(default)]
    pub enforcement_mode: EnforcementMode,
    /// Retention the API is asked for, counted from the event's time.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            user_id: default_user_id(),
            agent_id: None,
            session_id: None,
            enforcement_mode: EnforcementMode::default(),
            ttl: default_ttl(),
        }
    }
}

/// What of a line may be copied into an event (`[redaction]`). The built-in
/// secret detectors run unless named in `disable`; `patterns` add to them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionConfig {
    /// Longest `content` (tool arguments or output) copied into an event.
    #[serde(default = "default_content_max_bytes")]
    pub content_max_bytes: ByteSize,
    /// When set, only these metadata keys are kept (`call_id` always is).
    #[serde(default)]
    pub metadata_allow: Option<Vec<String>>,
    /// Longest event, as JSON, every field and metadata included: a longer
    /// one has its longest values cut and is marked `metadata._truncated`.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: ByteSize,
    /// More secrets to replace: `{ name = "...", regex = "..." }`.
    #[serde(default)]
    pub patterns: Vec<UserPattern>,
    /// Built-in detectors not to run, by name (`jwt`, `cookie`, ...).
    #[serde(default)]
    pub disable: Vec<String>,
}

/// A user-defined pattern: every match is replaced by `[REDACTED:<name>]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPattern {
    pub name: String,
    pub regex: String,
}

impl RedactionConfig {
    /// The bound events are held to: `max_event_bytes`, and never more than
    /// one request may carry.
    pub fn event_bound(&self, delivery: &DeliveryConfig) -> usize {
        let request = delivery.batch_max_bytes.0.saturating_sub(2);
        usize::try_from(self.max_event_bytes.0.min(request)).unwrap_or(usize::MAX)
    }
}

impl Default for RedactionConfig {
    fn default() -> Self {
        RedactionConfig {
            content_max_bytes: default_content_max_bytes(),
            metadata_allow: None,
            max_event_bytes: default_max_event_bytes(),
            patterns: Vec::new(),
            disable: Vec::new(),
        }
    }
}

fn default_max_event_bytes() -> ByteSize {
    ByteSize(DEFAULT_MAX_EVENT_BYTES as u64)
}

fn default_content_max_bytes() -> ByteSize {
    ByteSize(CONTENT_MAX_BYTES as u64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    File,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: SourceKind,
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default = "default_parser")]
    pub parser: Spanned<String>,
    /// Which JSON keys feed which event fields (parser `json`).
    #[serde(default)]
    pub fields: JsonFields,
    /// How often files are checked for new data when no change notice arrives.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often the include globs are expanded again to find new files.
    #[serde(default = "default_glob_interval", with = "humantime_serde")]
    pub glob_interval: Duration,
    /// A file is identified by its first line, or by this many first bytes if
    /// the first line is longer.
    #[serde(default = "default_fingerprint_bytes")]
    pub fingerprint_bytes: usize,
    /// Where to start in a file that has no checkpoint and was already there
    /// when the daemon started. Files that appear later are read from their
    /// beginning whatever this says, so their first lines are not lost.
    #[serde(default)]
    pub start_at: StartAt,
    /// Files not modified for longer than this are not followed (until they
    /// change again).
    #[serde(default, with = "humantime_serde")]
    pub ignore_older: Option<Duration>,
    /// Longer lines are cut to this length (and counted); the rest is skipped.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: ByteSize,
    /// Lines that continue a record (stack traces, pretty-printed JSON).
    #[serde(default)]
    pub multiline: Option<MultilineConfig>,
    /// How long a file that was renamed away or deleted stays open after its
    /// last line, for a writer that has not yet reopened its log.
    #[serde(default = "default_rotate_wait", with = "humantime_serde")]
    pub rotate_wait: Duration,
    /// Checkpoints of files gone for longer than this are forgotten.
    #[serde(default = "default_checkpoint_retention", with = "humantime_serde")]
    pub checkpoint_retention: Duration,
    /// Follow symbolic links in the walk and at open, each only to a target
    /// owned by the link's owner. Off: users can make links to anything.
    #[serde(default)]
    pub follow_symlinks: bool,
    /// Most files one source follows; more matching files are left out, with
    /// one warning.
    #[serde(default = "default_max_files")]
    pub max_files: usize,
    /// Most files the source keeps open at once; the least recently active
    /// are closed and reopened by identity when they change. Default: the
    /// descriptor limit, less a reserve for sockets and the queue, shared
    /// among the file sources.
    #[serde(default)]
    pub max_open_files: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    #[default]
    Beginning,
    End,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultilineConfig {
    /// A line matching this regex starts a record; other lines continue the
    /// record the last start line began.
    pub start_pattern: String,
    /// A record with no new line for this long is complete.
    #[serde(default = "default_multiline_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// For each event field, the top-level JSON keys tried in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonFields {
    #[serde(default = "keys_agent_id", deserialize_with = "one_or_many")]
    pub agent_id: Vec<String>,
    #[serde(default = "keys_session_id", deserialize_with = "one_or_many")]
    pub session_id: Vec<String>,
    #[serde(default = "keys_user_id", deserialize_with = "one_or_many")]
    pub user_id: Vec<String>,
    #[serde(default = "keys_tool_name", deserialize_with = "one_or_many")]
    pub tool_name: Vec<String>,
    #[serde(default = "keys_event_type", deserialize_with = "one_or_many")]
    pub event_type: Vec<String>,
    #[serde(default = "keys_content", deserialize_with = "one_or_many")]
    pub content: Vec<String>,
    #[serde(default = "keys_occurred_at", deserialize_with = "one_or_many")]
    pub occurred_at: Vec<String>,
    /// Event type of lines whose `event_type` key is missing or not one of the
    /// API's four values.
    #[serde(default = "default_event_type")]
    pub default_event_type: String,
}

impl Default for JsonFields {
    fn default() -> Self {
        JsonFields {
            agent_id: keys_agent_id(),
            session_id: keys_session_id(),
            user_id: keys_user_id(),
            tool_name: keys_tool_name(),
            event_type: keys_event_type(),
            content: keys_content(),
            occurred_at: keys_occurred_at(),
            default_event_type: default_event_type(),
        }
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => Ok(vec![s]),
        OneOrMany::Many(v) => Ok(v),
    }
}

fn strings(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| k.to_string()).collect()
}
fn keys_agent_id() -> Vec<String> {
    strings(&["agent_id", "agent"])
}
fn keys_session_id() -> Vec<String> {
    strings(&["session_id", "sessionId", "session"])
}
fn keys_user_id() -> Vec<String> {
    strings(&["user_id", "user"])
}
fn keys_tool_name() -> Vec<String> {
    strings(&["tool_name", "tool"])
}
fn keys_event_type() -> Vec<String> {
    strings(&["event_type"])
}
fn keys_content() -> Vec<String> {
    strings(&["content", "message", "msg"])
}
fn keys_occurred_at() -> Vec<String> {
    strings(&["occurred_at", "timestamp", "@timestamp", "time", "ts"])
}
fn default_event_type() -> String {
    "TOOL_CALL_POST".into()
}
fn default_base_url() -> Spanned<String> {
    Spanned::new(0..0, DEFAULT_BASE_URL.to_string())
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/thoth-ingest")
}
fn default_rpm() -> u32 {
    1000
}
fn default_batch_max_events() -> usize {
    500
}
fn default_linger() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}
fn default_batch_max_bytes() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_max_in_flight() -> usize {
    2
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_queue_max_bytes() -> ByteSize {
    ByteSize(1 << 30)
}
fn default_dead_letter_max_bytes() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_cache() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_user_id() -> String {
    "system".into()
}
fn default_ttl() -> Duration {
    Duration::from_secs(crate::event::DEFAULT_TTL_SECS as u64)
}
fn default_parser() -> Spanned<String> {
    Spanned::new(0..0, "json".to_string())
}
fn default_poll_interval() -> Duration {
    Duration::from_millis(250)
}
fn default_glob_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_fingerprint_bytes() -> usize {
    1024
}
fn default_max_line_bytes() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_rotate_wait() -> Duration {
    Duration::from_secs(5)
}
fn default_max_files() -> usize {
    10_000
}
fn default_checkpoint_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_multiline_timeout() -> Duration {
    Duration::from_secs(1)
}

/// A size in bytes, written as a number or as `"64MiB"`, `"512 KiB"`, `"1GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size such as 64MiB"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            other => return Err(format!("unknown size unit `{other}` (use KiB, MiB or GiB)")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes or a string such as \"64MiB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

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

/// Environment the config reads, passed in so tests do not touch the process's.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub api_url: Option<String>,
    pub api_key: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub credentials_directory: Option<PathBuf>,
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
    pub fn load(path: &Path, env: &Env) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
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

    fn validate(&self, text: &str) -> Result<(), ConfigError> {
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

    fn load(text: &str) -> Result<Config, ConfigError> {
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

    #[test]
    fn budget_table_replaces_requests_per_minute() {
        let text = GOOD.replace(
            "linger = \"1s\"",
            "linger = \"1s\"\nbudget = { requests = 20, per = \"5s\" }",
        );
        let c = load(&text).unwrap();
        assert_eq!(c.delivery.budget(), (20, Duration::from_secs(5)));
        assert_eq!(
            load(GOOD).unwrap().delivery.budget(),
            (1000, Duration::from_secs(60))
        );
        let text = GOOD.replace(
            "linger = \"1s\"",
            "linger = \"1s\"\nbudget = { requests = 20 }",
        );
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains("delivery.budget") && e.contains("per"), "{e}");
    }

    #[test]
    fn queue_bound_and_policy() {
        let text = format!("{GOOD}\n[queue]\nmax_bytes = \"10MiB\"\nwhen_full = \"drop_oldest\"\n");
        let c = load(&text).unwrap();
        assert_eq!(c.queue.max_bytes, ByteSize(10 << 20));
        assert_eq!(c.queue.when_full, WhenFull::DropOldest);
        let text = format!("{GOOD}\n[queue]\nwhen_full = \"panic\"\n");
        assert!(load(&text)
            .unwrap_err()
            .to_string()
            .contains("queue.when_full"));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("64MiB"), Ok(ByteSize(64 << 20)));
        assert_eq!(ByteSize::parse("512 KiB"), Ok(ByteSize(512 << 10)));
        assert_eq!(ByteSize::parse("1000"), Ok(ByteSize(1000)));
        assert!(ByteSize::parse("12 parsecs").is_err());
    }
}

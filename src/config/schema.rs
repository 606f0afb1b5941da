//! The TOML schema of the config file: the `Config` struct and its sections
//! (`[api]`, `[state]`, `[delivery]`, `[queue]`, `[defaults]`, `[[sources]]`,
//! `[redaction]`) as serde reads them, with the small accessors they carry.
//! Default values live in `defaults.rs`, sizes in `size.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::defaults::*;
use super::{parsers, ByteSize, ConfigText};
use crate::event::EnforcementMode;

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
    #[serde(default)]
    pub admin: AdminConfig,
    /// Rules parsers for in-house formats (`[parsers.NAME]`), by name.
    #[serde(default)]
    pub parsers: BTreeMap<String, parsers::ParserSpec>,
    /// Where the file was read from, for messages.
    #[serde(skip)]
    pub path: PathBuf,
    /// The file's text, to turn a key's place in it into a line number.
    #[serde(skip)]
    pub(super) text: ConfigText,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    #[serde(default = "default_rpm")]
    pub requests_per_minute: u32,
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// How long a partial batch may wait for more events before it is sent.
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// How long a partial batch may wait at most while the tenant's budget
    /// is shared and our share of it is small (see README, "Sharing the
    /// budget across a fleet").
    #[serde(default = "default_max_linger", with = "humantime_serde")]
    pub max_linger: Duration,
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
            max_linger: default_max_linger(),
            max_backoff: default_max_backoff(),
            budget: None,
            batch_max_bytes: default_batch_max_bytes(),
            compression: Compression::default(),
            max_in_flight: default_max_in_flight(),
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

/// The admin endpoint: metrics, health, readiness and `status`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `IP:port` (loopback unless `allow_remote`), `unix:/path/to.sock`,
    /// or `off`.
    #[serde(default = "default_admin_listen")]
    pub listen: Spanned<String>,
    #[serde(default)]
    pub allow_remote: bool,
    /// Readiness fails when events wait and no batch was accepted for
    /// this long.
    #[serde(default = "default_stuck_after", with = "humantime_serde")]
    pub stuck_after: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            allow_remote: false,
            stuck_after: default_stuck_after(),
        }
    }
}

/// Where the admin endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    Off,
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl AdminConfig {
    /// `listen` read, and checked against `allow_remote`.
    pub fn endpoint(&self) -> Result<AdminListen, String> {
        let listen = self.listen.get_ref().trim();
        if listen == "off" {
            return Ok(AdminListen::Off);
        }
        if let Some(path) = listen.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!("`{listen}`: a socket path must be absolute"));
            }
            return Ok(AdminListen::Unix(path));
        }
        let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
            format!("`{listen}` is not IP:port (e.g. 127.0.0.1:9977), unix:/path or off")
        })?;
        if !addr.ip().is_loopback() && !self.allow_remote {
            return Err(format!(
                "`{listen}` is reachable from other hosts; the endpoint has no authentication, \
                 so set admin.allow_remote = true to mean it (and firewall it), or listen on 127.0.0.1"
            ));
        }
        Ok(AdminListen::Tcp(addr))
    }
}

/// Event fields that no log line provides.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Every event carries `metadata.host` and `metadata.machine_id`.
    #[serde(default = "default_true")]
    pub host_metadata: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            user_id: default_user_id(),
            agent_id: None,
            session_id: None,
            enforcement_mode: EnforcementMode::default(),
            ttl: default_ttl(),
            host_metadata: true,
        }
    }
}

/// What of a line may be copied into an event (`[redaction]`). The built-in
/// secret detectors run unless named in `disable`; `patterns` add to them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    File,
    Journald,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: SourceKind,
    /// Globs of the files a file source follows.
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default = "default_parser")]
    pub parser: Spanned<String>,
    /// The `agent_id` of this source's events, over `[defaults]` and over
    /// what a preset names (`claude-code`, `codex`, `mcp:<server>`, ...).
    pub agent_id: Option<String>,
    /// The `user_id` of this source's events, over `[defaults]`.
    pub user_id: Option<String>,
    /// Where each file's `user_id` comes from instead: `"file_owner"`.
    pub user_id_from: Option<UserIdFrom>,
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
    // The keys of a journald source (`type = "journald"`). Filters are
    // journalctl's own: entries of any of `units`, of any of `identifiers`,
    // matching `matches` (one field ORed, different fields ANDed), at
    // `priority` or more urgent. Kept in this table, not a flattened one:
    // serde's flatten would lose the spans errors point at.
    /// Systemd units (`agent.service`).
    #[serde(default)]
    pub units: Vec<String>,
    /// `SYSLOG_IDENTIFIER`s.
    #[serde(default)]
    pub identifiers: Vec<String>,
    /// `FIELD=value` matches.
    #[serde(default)]
    pub matches: Vec<String>,
    /// The least urgent level read: 0 (emerg) to 7 (debug), or its name.
    #[serde(default)]
    pub priority: Option<String>,
    /// A journal directory to read instead of the system journal
    /// (containers, tests).
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// Only the entries of the current boot.
    #[serde(default)]
    pub current_boot_only: bool,
    #[serde(default = "default_journalctl_path")]
    pub journalctl_path: PathBuf,
}

/// Where a source's events take their `user_id` from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserIdFrom {
    /// The owner of the file (by name, else the uid): file sources.
    FileOwner,
    /// The entry's `_UID` (by name, else the uid), which journald sets from
    /// the writer's credentials: journald sources.
    JournalUid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    #[default]
    Beginning,
    End,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{load, GOOD};

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
}

//! The serde default functions of the schema: the value of every key the
//! file may leave out, and the JSON keys tried for each event field.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::{ByteSize, CONTENT_MAX_BYTES, DEFAULT_BASE_URL, DEFAULT_MAX_EVENT_BYTES};

pub(super) fn default_max_event_bytes() -> ByteSize {
    ByteSize(DEFAULT_MAX_EVENT_BYTES as u64)
}

pub(super) fn default_content_max_bytes() -> ByteSize {
    ByteSize(CONTENT_MAX_BYTES as u64)
}

fn strings(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| k.to_string()).collect()
}
pub(super) fn keys_agent_id() -> Vec<String> {
    strings(&["agent_id", "agent"])
}
pub(super) fn keys_session_id() -> Vec<String> {
    strings(&["session_id", "sessionId", "session"])
}
pub(super) fn keys_user_id() -> Vec<String> {
    strings(&["user_id", "user"])
}
pub(super) fn keys_tool_name() -> Vec<String> {
    strings(&["tool_name", "tool"])
}
pub(super) fn keys_event_type() -> Vec<String> {
    strings(&["event_type"])
}
pub(super) fn keys_content() -> Vec<String> {
    strings(&["content", "message", "msg"])
}
pub(super) fn keys_occurred_at() -> Vec<String> {
    strings(&["occurred_at", "timestamp", "@timestamp", "time", "ts"])
}
pub(super) fn default_event_type() -> String {
    "TOOL_CALL_POST".into()
}
/// The admin endpoint's default address: loopback only.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9977";

pub(super) fn default_admin_listen() -> Spanned<String> {
    Spanned::new(0..0, DEFAULT_ADMIN_LISTEN.to_string())
}
pub(super) fn default_stuck_after() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn default_base_url() -> Spanned<String> {
    Spanned::new(0..0, DEFAULT_BASE_URL.to_string())
}
pub(super) fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/thoth-ingest")
}
pub(super) fn default_rpm() -> u32 {
    1000
}
pub(super) fn default_batch_max_events() -> usize {
    500
}
pub(super) fn default_linger() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_max_linger() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn default_batch_max_bytes() -> ByteSize {
    ByteSize(1 << 20)
}
pub(super) fn default_max_in_flight() -> usize {
    2
}
pub(super) fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_queue_max_bytes() -> ByteSize {
    ByteSize(1 << 30)
}
pub(super) fn default_dead_letter_max_bytes() -> ByteSize {
    ByteSize(64 << 20)
}
pub(super) fn default_cache() -> ByteSize {
    ByteSize(64 << 20)
}
pub(super) fn default_user_id() -> String {
    "system".into()
}
pub(super) fn default_ttl() -> Duration {
    Duration::from_secs(crate::event::DEFAULT_TTL_SECS as u64)
}
pub(super) fn default_parser() -> Spanned<String> {
    Spanned::new(0..0, "json".to_string())
}
pub(super) fn default_poll_interval() -> Duration {
    Duration::from_millis(250)
}
pub(super) fn default_glob_interval() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_fingerprint_bytes() -> usize {
    1024
}
pub(super) fn default_journalctl_path() -> PathBuf {
    PathBuf::from("journalctl")
}
pub(super) fn default_max_line_bytes() -> ByteSize {
    ByteSize(1 << 20)
}
pub(super) fn default_rotate_wait() -> Duration {
    Duration::from_secs(5)
}
pub(super) fn default_max_files() -> usize {
    10_000
}
pub(super) fn default_checkpoint_retention() -> Duration {
    super::DEFAULT_CHECKPOINT_RETENTION
}
pub(super) fn default_multiline_timeout() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_true() -> bool {
    true
}

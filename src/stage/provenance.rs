//! Where an event comes from, beyond its line: the host (its name and
//! machine id) and, for a file, its path and its owner. The stage renders
//! these once per stream, through the parser's redaction and
//! `metadata_allow`, into metadata entries every event of the stream
//! carries (see [`crate::event::StreamMetadata`]).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::event::StreamMetadata;
#[cfg(test)]
use crate::ops::users::user_name;
use crate::ops::users::UserNames;
use crate::parse::Redaction;

/// The host this daemon runs on, as read at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    /// `/etc/machine-id` when readable and well-formed.
    pub machine_id: Option<String>,
}

impl Host {
    pub fn current() -> Host {
        Host {
            name: hostname().unwrap_or_default(),
            machine_id: machine_id(Path::new("/etc/machine-id")),
        }
    }
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok()
}

/// The machine id in `path`: 32 hex digits, or None.
pub fn machine_id(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let id = text.trim();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// Bumped by each reload: every provenance reads the host again.
static HOST_EPOCH: AtomicU64 = AtomicU64::new(0);

/// Asks every stage to read the host's name and machine id again, before
/// its next record (a reload: a host renamed while the daemon runs).
pub fn reread_host() {
    HOST_EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// What the stage adds to a stream's events, and how it screens it.
pub struct Provenance {
    /// None: `[defaults] host_metadata = false`.
    host: Option<Host>,
    /// The [`HOST_EPOCH`] `host` was read in.
    host_epoch: u64,
    redaction: Arc<Redaction>,
    owners: UserNames,
}

impl Provenance {
    pub fn new(host: Option<Host>, redaction: Arc<Redaction>) -> Provenance {
        Provenance {
            host,
            host_epoch: HOST_EPOCH.load(Ordering::Relaxed),
            redaction,
            owners: UserNames::default(),
        }
    }

    /// Reads the host again when [`reread_host`] was called since it was
    /// last read; true when it changed (the streams' entries are then
    /// stale).
    pub fn refresh_host(&mut self) -> bool {
        let epoch = HOST_EPOCH.load(Ordering::Relaxed);
        if epoch == self.host_epoch {
            return false;
        }
        self.host_epoch = epoch;
        let Some(host) = self.host.as_mut() else {
            return false;
        };
        let now = Host::current();
        if now == *host {
            return false;
        }
        *host = now;
        true
    }

    /// The redaction and `metadata_allow` the entries go through.
    pub fn redaction(&self) -> &Redaction {
        &self.redaction
    }

    /// The name of `uid`, resolved once.
    pub fn owner(&mut self, uid: u32) -> String {
        self.owners.name(uid).into_owned()
    }

    /// The entries of a stream from `path`, owned by `owner`.
    pub fn for_stream(&mut self, path: Option<&Path>, owner: Option<u32>) -> StreamMetadata {
        let owner = owner.map(|uid| self.owner(uid));
        let mut meta = self.redaction.metadata();
        if let Some(host) = &self.host {
            if !host.name.is_empty() {
                meta.str("host", &host.name);
            }
            meta.opt_str("machine_id", host.machine_id.as_deref());
        }
        if let Some(path) = path {
            meta.str("source_path", &path.to_string_lossy());
        }
        meta.opt_str("file_owner", owner.as_deref());
        StreamMetadata::new(meta.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_read_only_when_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("machine-id");
        std::fs::write(&p, "0123456789ABCDEF0123456789abcdef\n").unwrap();
        assert_eq!(
            machine_id(&p).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        std::fs::write(&p, "not an id\n").unwrap();
        assert_eq!(machine_id(&p), None);
        assert_eq!(machine_id(&dir.path().join("missing")), None);
    }

    #[test]
    fn users_have_names_and_unknown_uids_their_number() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(4_000_000_000), "4000000000");
    }

    #[test]
    fn stream_entries_go_through_redaction_and_metadata_allow() {
        let host = Host {
            name: "web-1".into(),
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
        };
        let red = Arc::new(Redaction::builtin(4096));
        let mut p = Provenance::new(Some(host), red);
        let m = p.for_stream(Some(Path::new("/home/a/.claude/x.jsonl")), Some(0));
        assert_eq!(
            m.entries(),
            r#""host":"web-1","machine_id":"0123456789abcdef0123456789abcdef","source_path":"/home/a/.claude/x.jsonl","file_owner":"root""#
        );
        let mut p = Provenance::new(None, Arc::new(Redaction::builtin(4096)));
        assert_eq!(p.for_stream(None, None).entries(), "");
    }
}

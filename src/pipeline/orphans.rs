//! The checkpoints of file sources the config no longer names: a reload
//! (or a restart) that removes a source leaves them; they are marked when
//! first found orphaned and deleted after the default
//! `checkpoint_retention`, so a source put back within it resumes.

use std::time::{Duration, SystemTime};

use crate::queue::{Queue, QueueError};
use crate::source::file::identity::Checkpoint;

/// The checkpoints of file sources the config no longer names (`live` are
/// the names it does): each is marked with the time it was first found
/// orphaned, and deleted `retention` later. Returns how many were deleted.
/// A source put back in the config within that time resumes where it was.
pub fn sweep_orphans(queue: &Queue, live: &[&str], retention: Duration) -> Result<u64, QueueError> {
    let now = unix_now();
    let mut deleted = 0;
    for (key, value) in queue.checkpoints_with_prefix(b"file/")? {
        let Some(name) = key
            .strip_prefix(b"file/".as_slice())
            .and_then(|rest| rest.split(|b| *b == b'/').next())
        else {
            continue;
        };
        if live.iter().any(|l| l.as_bytes() == name) {
            continue;
        }
        let Some(mut cp) = Checkpoint::decode(&value) else {
            continue;
        };
        if cp.closed_at == 0 {
            cp.closed_at = now;
            queue.put_checkpoint(&key, &cp.encode())?;
        } else if now.saturating_sub(cp.closed_at) > retention.as_secs() {
            queue.remove_checkpoint(&key)?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_of_removed_sources_are_marked_then_forgotten() {
        let dir = tempfile::tempdir().expect("temp dir");
        let queue = Queue::open(dir.path(), 1 << 20).expect("queue");
        let open = Checkpoint {
            offset: 10,
            stream: "s".into(),
            ..Checkpoint::default()
        };
        for key in ["file/kept/1", "file/gone/1", "file/gone.too/2"] {
            queue
                .put_checkpoint(key.as_bytes(), &open.encode())
                .expect("put");
        }
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(sweep_orphans(&queue, &["kept"], day).expect("sweep"), 0);
        let closed_at = |key: &str| {
            let all = queue.checkpoints_with_prefix(key.as_bytes()).expect("scan");
            all.first()
                .and_then(|(_, v)| Checkpoint::decode(v))
                .map(|c| c.closed_at)
        };
        assert_eq!(
            closed_at("file/kept/1"),
            Some(0),
            "a live source's is its own"
        );
        assert!(closed_at("file/gone/1").is_some_and(|t| t > 0), "marked");
        // Marked long ago: gone.
        let old = Checkpoint {
            closed_at: unix_now() - 2 * day.as_secs(),
            ..open.clone()
        };
        queue
            .put_checkpoint(b"file/gone/1", &old.encode())
            .expect("put");
        assert_eq!(sweep_orphans(&queue, &["kept"], day).expect("sweep"), 1);
        assert_eq!(closed_at("file/gone/1"), None);
        assert!(closed_at("file/gone.too/2").is_some());
        assert_eq!(closed_at("file/kept/1"), Some(0));
    }
}

//! The checkpoints of file sources the config no longer names: a reload
//! (or a restart) that removes a source leaves them; they are deleted the
//! default `checkpoint_retention` after a sweep first found them orphaned,
//! so a source put back within it resumes where it was.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::queue::{Queue, QueueError};
#[cfg(test)]
use crate::source::file::identity::Checkpoint;

/// Where the time a source was first found orphaned is kept, beside the
/// checkpoints (which are left as they were, so a source put back resumes
/// from them exactly).
fn marker_key(source: &[u8]) -> Vec<u8> {
    let mut key = b"orphaned/".to_vec();
    key.extend_from_slice(source);
    key
}

/// The file checkpoints of sources the config no longer names (`live` are
/// the names it does): the first sweep that finds a source orphaned notes
/// the time; one `retention` later its checkpoints are deleted. A source
/// named again loses its note. Returns how many checkpoints were deleted.
pub fn sweep_orphans(queue: &Queue, live: &[&str], retention: Duration) -> Result<u64, QueueError> {
    let now = unix_now();
    let mut orphans: BTreeSet<Vec<u8>> = BTreeSet::new();
    for (key, _) in queue.checkpoints_with_prefix(b"file/")? {
        let name = key
            .strip_prefix(b"file/".as_slice())
            .and_then(|rest| rest.split(|b| *b == b'/').next());
        if let Some(name) = name.filter(|n| !live.iter().any(|l| l.as_bytes() == *n)) {
            orphans.insert(name.to_vec());
        }
    }
    for (key, _) in queue.checkpoints_with_prefix(b"orphaned/")? {
        let name = &key[b"orphaned/".len()..];
        if !orphans.contains(name) {
            queue.remove_checkpoint(&key)?;
        }
    }
    let mut deleted = 0;
    for name in orphans {
        let marker = marker_key(&name);
        let since = queue
            .checkpoint(&marker)?
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok());
        let Some(since) = since else {
            queue.put_checkpoint(&marker, now.to_string().as_bytes())?;
            continue;
        };
        if now.saturating_sub(since) > retention.as_secs() {
            let mut prefix = b"file/".to_vec();
            prefix.extend_from_slice(&name);
            prefix.push(b'/');
            for (key, _) in queue.checkpoints_with_prefix(&prefix)? {
                queue.remove_checkpoint(&key)?;
                deleted += 1;
            }
            queue.remove_checkpoint(&marker)?;
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
    fn checkpoints_of_removed_sources_go_a_retention_after_they_are_found() {
        let dir = tempfile::tempdir().expect("temp dir");
        let queue = Queue::open(dir.path(), 1 << 20).expect("queue");
        let open = Checkpoint {
            offset: 10,
            stream: "s".into(),
            ..Checkpoint::default()
        }
        .encode();
        for key in ["file/kept/1", "file/gone/1", "file/gone/2", "file/back/1"] {
            queue.put_checkpoint(key.as_bytes(), &open).expect("put");
        }
        let count = |prefix: &str| {
            queue
                .checkpoints_with_prefix(prefix.as_bytes())
                .expect("scan")
                .len()
        };
        let day = Duration::from_secs(24 * 3600);
        // Found orphaned: noted, nothing deleted, the checkpoints untouched.
        assert_eq!(sweep_orphans(&queue, &["kept"], day).expect("sweep"), 0);
        assert_eq!(count("orphaned/"), 2);
        assert_eq!(
            queue.checkpoint(b"file/gone/1").expect("get").as_deref(),
            Some(open.as_slice())
        );
        // `back` is named again: its note goes, its checkpoints stay.
        assert_eq!(
            sweep_orphans(&queue, &["kept", "back"], day).expect("sweep"),
            0
        );
        assert_eq!(count("orphaned/"), 1);
        // `gone` found two days ago: its checkpoints go, and its note.
        let old = (unix_now() - 2 * day.as_secs()).to_string();
        queue
            .put_checkpoint(b"orphaned/gone", old.as_bytes())
            .expect("put");
        assert_eq!(
            sweep_orphans(&queue, &["kept", "back"], day).expect("sweep"),
            2
        );
        assert_eq!(count("file/gone/"), 0);
        assert_eq!(count("orphaned/"), 0);
        assert_eq!(count("file/kept/"), 1);
        assert_eq!(count("file/back/"), 1);
    }
}

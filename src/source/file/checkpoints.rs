//! Checkpoints of files no longer followed: marked with the time they were
//! last seen, and forgotten after `checkpoint_retention`.

use super::*;

impl FileSource {
    /// Marks checkpoints of files no longer followed with the time they were
    /// last seen, and forgets those gone longer than `checkpoint_retention`.
    pub(super) fn sweep_checkpoints(&mut self) -> Result<(), SourceError> {
        self.last_sweep = Some(Instant::now());
        let err = |err| SourceError::Store {
            source_name: self.name.clone(),
            err,
        };
        let live: HashSet<&[u8]> = self
            .tracked
            .values()
            .filter_map(|t| t.ident.as_ref().map(|i| i.key.as_slice()))
            .collect();
        let now = unix_now();
        let retention = self.config.checkpoint_retention.as_secs();
        let all = self
            .sink
            .checkpoints_with_prefix(&identity::source_prefix(&self.name))
            .map_err(err)?;
        for (key, value) in all {
            if live.contains(&key[..]) {
                continue;
            }
            let Some(mut cp) = Checkpoint::decode(&value) else {
                continue;
            };
            if cp.closed_at == 0 {
                // Tracked but not yet identified files have no key in `live`,
                // and neither do files ignored by age: only mark, never drop.
                // An identified file on the key's inode is another file that
                // reused the inode of one deleted while we were stopped.
                let maybe_unidentified = self
                    .tracked
                    .iter()
                    .any(|(id, t)| t.ident.is_none() && identity::key_file_id(&key) == Some(*id));
                if !maybe_unidentified {
                    cp.closed_at = now;
                    self.sink.put_checkpoint(&key, &cp.encode()).map_err(err)?;
                    self.streams_changed = true;
                }
            } else if now.saturating_sub(cp.closed_at) > retention {
                debug!(source = %self.name, key = %String::from_utf8_lossy(&key), "forgetting the checkpoint of a file gone longer than the retention");
                self.sink.remove_checkpoint(&key).map_err(err)?;
                self.streams_changed = true;
            }
        }
        Ok(())
    }
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

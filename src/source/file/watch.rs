//! Change notices: a `notify` watcher on the directories that hold matching
//! files wakes the source's loop, a rename or creation with a rescan, a
//! write with a read; directories past the inotify limit are polled.

use super::*;

impl FileSource {
    pub(super) fn start_watcher(
        &self,
        wake: mpsc::SyncSender<Wake>,
    ) -> Option<notify::RecommendedWatcher> {
        use notify::event::{EventKind, ModifyKind};
        let handler = move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            let what = match event.kind {
                // A file appeared, went or was renamed: the globs may match differently.
                EventKind::Create(_)
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Name(_)) => Wake::Rescan,
                EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) | EventKind::Any => {
                    Wake::Read
                }
                // Opens, reads and closes, including our own: not news.
                _ => return,
            };
            // A full channel already holds a wake-up; a Rescan behind a Read is
            // caught by the periodic scan.
            let _ = wake.try_send(what);
        };
        match notify::recommended_watcher(handler) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(source = %self.name, error = %e, "no change notices; polling every {:?}", self.config.poll_interval);
                None
            }
        }
    }

    /// Watches `dir` (not recursively) unless it already is.
    pub(super) fn watch(&mut self, dir: &Path) {
        if self.watched.contains(dir) || self.watch_limit_warned {
            return;
        }
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        match watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watched.insert(dir.to_path_buf());
            }
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                self.watch_limit_warned = true;
                warn!(source = %self.name, dir = %dir.display(),
                    "inotify watch limit reached (raise fs.inotify.max_user_watches); directories without a watch are polled every {:?}",
                    self.config.poll_interval);
            }
            Err(e) => {
                debug!(source = %self.name, dir = %dir.display(), error = %e, "cannot watch; polling it")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    Read,
    Rescan,
}

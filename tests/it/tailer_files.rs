//! The file tailer on bad and unusual input, driven step by step in-process:
//! huge lines, binary garbage, invalid UTF-8, empty files, a file replaced by
//! a directory, symlinks, partial last lines, `start_at`, `ignore_older`,
//! multiline records and checkpoint retention. The unreadable-file case runs
//! the real binary as an unprivileged user (root reads anything).

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thoth_ingest::config::Config;
use thoth_ingest::queue::Queue;
use thoth_ingest::source::file::FileSource;
use thoth_ingest::stage::SourceStats;

struct Tailer {
    dir: tempfile::TempDir,
    config: Config,
    queue: Arc<Queue>,
    source: FileSource,
    stats: Arc<SourceStats>,
}

impl Tailer {
    fn new(extra: &str) -> Tailer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        Tailer::in_dir(dir, extra)
    }

    fn in_dir(dir: tempfile::TempDir, extra: &str) -> Tailer {
        let config = common::in_process_config(
            &dir.path().join("state"),
            "t",
            &[dir.path().join("logs/*.log").display().to_string()],
            "json",
            &format!("rotate_wait = \"0s\"\n{extra}"),
        );
        let queue = Arc::new(common::open_queue(&config.state.dir));
        let stats = Arc::new(SourceStats::default());
        let source = common::first_file_source(
            &config,
            queue.clone(),
            stats.clone(),
            Arc::new(AtomicBool::new(false)),
        );
        Tailer {
            dir,
            config,
            queue,
            source,
            stats,
        }
    }

    /// Stops and starts again on the same state, like a restart.
    fn restart(self, extra: &str) -> Tailer {
        let Tailer {
            dir, queue, source, ..
        } = self;
        drop(source);
        drop(queue);
        Tailer::in_dir(dir, extra)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(name)
    }

    fn append(&self, name: &str, bytes: &[u8]) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(name))
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    fn drain(&mut self) {
        for _ in 0..100 {
            if !self.source.step().unwrap() && !self.source.step().unwrap() {
                return;
            }
        }
        panic!("the tailer never caught up");
    }

    /// (event_id, content) of every queued event, in order.
    fn queued(&self) -> Vec<(String, String)> {
        common::queued_ids_and_contents(&self.queue)
    }

    fn contents(&self) -> Vec<String> {
        self.queued().into_iter().map(|(_, c)| c).collect()
    }
}

fn ev(content: &str) -> String {
    format!("{{\"event_type\":\"TOOL_CALL_PRE\",\"tool_name\":\"t\",\"content\":\"{content}\"}}\n")
}

#[test]
fn a_10_mib_line_is_cut_counted_and_the_next_lines_arrive() {
    let mut t = Tailer::new("");
    t.append("a.log", ev("before").as_bytes());
    let mut huge = b"{\"event_type\":\"TOOL_CALL_PRE\",\"content\":\"".to_vec();
    huge.resize(10 << 20, b'y');
    huge.extend_from_slice(b"\"}\n");
    t.append("a.log", &huge);
    t.append("a.log", ev("after").as_bytes());
    t.drain();
    assert_eq!(t.contents(), vec!["before", "after"]);
    assert_eq!(t.stats.read.truncated_lines.load(Ordering::Relaxed), 1);
    // The cut line reached the parser as 1 MiB of broken JSON: skipped, counted.
    assert_eq!(t.stats.snapshot().lines, 3);
}

#[test]
fn a_long_line_cut_across_a_restart_is_not_read_as_two() {
    let mut t = Tailer::new("max_line_bytes = \"64KiB\"");
    t.append("a.log", ev("first").as_bytes());
    t.append("a.log", &vec![b'z'; 200 << 10]); // no newline yet
    t.drain();
    let mut t = t.restart("max_line_bytes = \"64KiB\"");
    t.append("a.log", b"zzz-rest-of-the-long-line\n");
    t.append("a.log", ev("second").as_bytes());
    t.drain();
    assert_eq!(t.contents(), vec!["first", "second"]);
    // Cut before the restart; after it, the rest is skipped, not parsed: the
    // restarted source parsed one line.
    assert_eq!(t.stats.snapshot().lines, 1);
    assert_eq!(t.stats.read.truncated_lines.load(Ordering::Relaxed), 0);
}

#[test]
fn binary_garbage_and_invalid_utf8_do_not_stop_the_file() {
    let mut t = Tailer::new("");
    let mut garbage: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    garbage.push(b'\n');
    t.append("a.log", ev("one").as_bytes());
    t.append("a.log", &garbage);
    t.append(
        "a.log",
        b"{\"event_type\":\"TOOL_CALL_PRE\",\"content\":\"bad \xff\xfe bytes\"}\n",
    );
    t.append(
        "a.log",
        b"{\"event_type\":\"TOOL_CALL_PRE\",\"content\":\"nul \\u0000 ok\"}\n",
    );
    t.append("a.log", ev("two").as_bytes());
    t.drain();
    let got = t.contents();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0], "one");
    assert_eq!(got[1], "bad \u{fffd}\u{fffd} bytes");
    assert_eq!(got[2], "nul \u{0} ok");
    assert_eq!(got[3], "two");
    assert!(t.stats.invalid_utf8_lines.load(Ordering::Relaxed) >= 2);
}

#[test]
fn empty_files_wait_and_do_not_collide() {
    let mut t = Tailer::new("");
    std::fs::File::create(t.path("a.log")).unwrap();
    std::fs::File::create(t.path("b.log")).unwrap();
    t.drain();
    assert!(t.contents().is_empty());
    assert!(t
        .queue
        .checkpoints_with_prefix(b"file/t/")
        .unwrap()
        .is_empty());
    // Both get the same first line: still two files, two sets of ids.
    t.append("a.log", ev("same").as_bytes());
    t.append("b.log", ev("same").as_bytes());
    t.drain();
    let got = t.queued();
    assert_eq!(got.len(), 2);
    assert_ne!(got[0].0, got[1].0);
}

#[test]
fn a_partial_last_line_waits_for_its_newline_or_the_rotation() {
    let mut t = Tailer::new("");
    t.append(
        "a.log",
        format!("{}{}", ev("one"), ev("two").trim_end()).as_bytes(),
    );
    t.drain();
    assert_eq!(t.contents(), vec!["one"]);
    t.append("a.log", b"\n");
    t.append("a.log", ev("three").trim_end().as_bytes());
    t.drain();
    assert_eq!(t.contents(), vec!["one", "two"]);
    // Rotated away and never finished: emitted once the file is closed.
    std::fs::rename(t.path("a.log"), t.dir.path().join("logs/a.log.1")).unwrap();
    t.drain();
    assert_eq!(t.contents(), vec!["one", "two", "three"]);
}

#[test]
fn a_file_replaced_by_a_directory_or_deleted_is_let_go() {
    let mut t = Tailer::new("");
    t.append("a.log", ev("one").as_bytes());
    t.append("b.log", ev("b1").as_bytes());
    t.drain();
    std::fs::remove_file(t.path("a.log")).unwrap();
    std::fs::create_dir(t.path("a.log")).unwrap();
    t.append("b.log", ev("b2").as_bytes());
    t.drain();
    assert_eq!(t.contents(), vec!["one", "b1", "b2"]);
    assert_eq!(
        t.stats.read.files.load(Ordering::Relaxed),
        1,
        "the deleted file is closed"
    );
}

#[test]
fn symlinks_are_not_followed_unless_asked_and_then_once() {
    let mut t = Tailer::new("");
    let outside = t.dir.path().join("elsewhere.log");
    std::fs::write(&outside, ev("via link")).unwrap();
    std::os::unix::fs::symlink(&outside, t.path("link.log")).unwrap();
    std::os::unix::fs::symlink(&outside, t.path("link2.log")).unwrap();
    t.append("plain.log", ev("plain").as_bytes());
    t.drain();
    assert_eq!(t.contents(), vec!["plain"]);
    let mut t = t.restart("follow_symlinks = true");
    t.drain();
    assert_eq!(t.contents(), vec!["plain", "via link"]);
}

#[test]
fn start_at_end_skips_what_was_there_but_not_new_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    std::fs::write(dir.path().join("logs/old.log"), ev("old")).unwrap();
    let mut t = Tailer::in_dir(dir, "start_at = \"end\"");
    t.drain();
    t.append("old.log", ev("old-new").as_bytes());
    t.append("fresh.log", ev("fresh").as_bytes());
    t.drain();
    let mut got = t.contents();
    got.sort();
    assert_eq!(got, vec!["fresh", "old-new"]);
    // The position at the end was committed: a restart does not move it.
    let mut t = t.restart("start_at = \"end\"");
    t.drain();
    assert_eq!(t.contents().len(), 2);
}

#[test]
fn ignore_older_skips_stale_files_until_they_change() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let stale = dir.path().join("logs/stale.log");
    std::fs::write(&stale, ev("stale")).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(3 * 86400);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let mut t = Tailer::in_dir(dir, "ignore_older = \"1d\"");
    t.append("live.log", ev("live").as_bytes());
    t.drain();
    assert_eq!(t.contents(), vec!["live"]);
    t.append("stale.log", ev("woke").as_bytes());
    t.drain();
    assert_eq!(t.contents(), vec!["live", "stale", "woke"]);
}

#[test]
fn multiline_records_join_and_survive_a_restart() {
    let extra = "[sources.multiline]\nstart_pattern = '^\\{'\ntimeout = \"1h\"";
    let mut t = Tailer::new(extra);
    t.append(
        "a.log",
        b"{\"event_type\":\"TOOL_CALL_PRE\",\n \"content\": \"pretty\"\n}\n{\"event_type\":\"TOOL_CALL_PRE\",\n",
    );
    t.drain();
    assert_eq!(t.contents(), vec!["pretty"]);
    // The open record is not checkpointed past its start: a restart rebuilds it.
    let mut t = t.restart(extra);
    t.append(
        "a.log",
        b" \"content\": \"second\"}\n{\"event_type\":\"TOOL_CALL_PRE\",\"content\":\"third\"}\n",
    );
    t.drain();
    assert_eq!(t.contents(), vec!["pretty", "second"]);
    // The last record closes with the file.
    std::fs::remove_file(t.path("a.log")).unwrap();
    t.drain();
    assert_eq!(t.contents(), vec!["pretty", "second", "third"]);
}

#[test]
fn checkpoints_of_files_gone_longer_than_the_retention_are_forgotten() {
    let extra = "checkpoint_retention = \"1s\"";
    let mut t = Tailer::new(extra);
    t.append("a.log", ev("a").as_bytes());
    t.append("b.log", ev("b").as_bytes());
    t.drain();
    assert_eq!(
        t.queue.checkpoints_with_prefix(b"file/t/").unwrap().len(),
        2
    );
    std::fs::remove_file(t.path("a.log")).unwrap();
    t.drain();
    std::thread::sleep(Duration::from_millis(2100));
    t.drain();
    let left = t.queue.checkpoints_with_prefix(b"file/t/").unwrap();
    assert_eq!(left.len(), 1, "only b.log's checkpoint stays");
    assert!(t.stats.read.lag_bytes.load(Ordering::Relaxed) == 0);
    let _ = &t.config;
}

/// Runs the daemon through `wrapper args...` (setpriv, unshare), its log
/// going to `stderr`.
fn spawn_wrapped(
    wrapper: &Path,
    args: &[&str],
    config: &Path,
    stderr: &Path,
) -> std::process::Child {
    std::process::Command::new(wrapper)
        .args(args)
        .arg(env!("CARGO_BIN_EXE_thoth-ingest"))
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("THOTH_API_KEY", common::KEY)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn an_unreadable_file_is_logged_once_and_read_when_it_becomes_readable() {
    use common::*;
    let setpriv = Path::new("/usr/bin/setpriv");
    assert!(
        setpriv.exists(),
        "this test needs setpriv (util-linux) to run the daemon as an unprivileged user"
    );
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_config(dir.path(), &receiver.addr, "");
    let logs = dir.path().join("logs");
    std::fs::write(logs.join("open.jsonl"), line(1)).unwrap();
    std::fs::write(logs.join("closed.jsonl"), line(2)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        logs.join("closed.jsonl"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    // Open to the daemon's user: the directory sticky (as /tmp: a state
    // directory under a plain 0777 one is refused), the config readable
    // (a config others may write is refused).
    for (p, mode) in [
        (dir.path().to_path_buf(), 0o1777),
        (logs.clone(), 0o777),
        (config.clone(), 0o644),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(
        logs.join("open.jsonl"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // The daemon's user owns its state (and makes it private).
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::os::unix::fs::chown(dir.path().join("state"), Some(65534), Some(65534)).unwrap();
    let stderr = dir.path().join("daemon.err");
    let mut child = spawn_wrapped(
        setpriv,
        &["--reuid=65534", "--regid=65534", "--clear-groups", "--"],
        &config,
        &stderr,
    );
    let seqs = wait_seqs(&receiver, 1, Duration::from_secs(20));
    assert_eq!(seqs.into_iter().collect::<Vec<_>>(), vec![1]);
    wait_log(&stderr, "cannot open file", Duration::from_secs(20));
    std::fs::set_permissions(
        logs.join("closed.jsonl"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let seqs = wait_seqs(&receiver, 2, Duration::from_secs(20));
    assert_eq!(seqs.into_iter().collect::<Vec<_>>(), vec![1, 2]);
    let status = terminate(&mut child);
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(&stderr).unwrap();
    let warnings = log.matches("cannot open file").count();
    assert_eq!(
        warnings, 1,
        "one warning for the unreadable file, not one per scan:\n{log}"
    );
    assert!(
        log.contains("closed.jsonl") && log.contains("ermission denied"),
        "{log}"
    );
}

#[test]
fn exclude_globs_leave_files_out() {
    let mut t = Tailer::new(&format!(
        "exclude = [{:?}]",
        std::env::temp_dir()
            .join("**/skip-*.log")
            .display()
            .to_string()
    ));
    t.append("keep.log", ev("kept").as_bytes());
    t.append("skip-me.log", ev("skipped").as_bytes());
    t.drain();
    assert_eq!(t.contents(), vec!["kept"]);
    assert_eq!(t.stats.read.files.load(Ordering::Relaxed), 1);
}

#[test]
fn at_the_inotify_watch_limit_one_warning_and_the_rest_is_polled() {
    use common::*;
    // The limit is per user namespace (Linux >= 5.11), so a namespace of the
    // daemon's own can lower it without touching the machine's setting.
    let unshare = Path::new("/usr/bin/unshare");
    assert!(
        unshare.exists(),
        "this test needs unshare (util-linux) to lower the inotify watch limit for the daemon alone"
    );
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_config(dir.path(), &receiver.addr, "");
    let logs = dir.path().join("logs");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("{}/*.jsonl", logs.display()),
        &format!("{}/*/*.jsonl", logs.display()),
    );
    std::fs::write(&config, text).unwrap();
    for sub in ["a", "b", "c"] {
        std::fs::create_dir_all(logs.join(sub)).unwrap();
    }
    append_lines(&logs.join("a/x.jsonl"), 0..10);
    append_lines(&logs.join("b/x.jsonl"), 10..20);
    let stderr = dir.path().join("daemon.err");
    let mut child = spawn_wrapped(
        unshare,
        &[
            "--user",
            "--map-root-user",
            "--",
            "sh",
            "-c",
            // One watch: the base directory gets it, the three below do not.
            r#"echo 1 > /proc/sys/user/max_inotify_watches && exec "$0" "$@""#,
        ],
        &config,
        &stderr,
    );
    wait_seqs(&receiver, 20, Duration::from_secs(20));
    // Appends, a new file in a watched-less directory, and a new directory.
    append_lines(&logs.join("a/x.jsonl"), 20..30);
    append_lines(&logs.join("c/y.jsonl"), 30..40);
    std::fs::create_dir_all(logs.join("d")).unwrap();
    append_lines(&logs.join("d/z.jsonl"), 40..50);
    let seqs = wait_seqs(&receiver, 50, Duration::from_secs(20));
    assert_eq!(seqs, (0..50).collect());
    let status = terminate(&mut child);
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(status.success(), "{status}\n{log}");
    assert_eq!(
        log.matches("inotify watch limit reached").count(),
        1,
        "one warning when the limit is reached, not one per directory or scan:\n{log}"
    );
}

/// The race of the `.gz` rotation under kill -9 (issue 9), made certain: a
/// rotated file is compressed and deleted while the daemon is down, so its
/// inode is free, and the next file created takes it. The `.gz` must still
/// continue the deleted file's stream; the file now on its inode is not the
/// original "still followed", and the `.gz` is not read again under new ids.
#[test]
fn a_gz_continues_a_file_deleted_while_stopped_whose_inode_was_reused() {
    use std::os::unix::fs::MetadataExt;
    let mut t = Tailer::new("");
    t.append("w.log", ev("w first").as_bytes());
    t.append("w.log", ev("w read").as_bytes());
    t.drain();
    t.append("w.log", ev("w unread").as_bytes());
    let w_ino = std::fs::metadata(t.path("w.log")).unwrap().ino();
    // Restarted: the new source holds no file open until its first step.
    // Meanwhile the file is compressed (under a name the glob matches: a
    // `.gz` is known by its bytes) and deleted.
    let mut t = t.restart("");
    let data = std::fs::read(t.path("w.log")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(t.path("w-1.log")).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(&data).unwrap();
    gz.finish().unwrap();
    std::fs::remove_file(t.path("w.log")).unwrap();
    // The next files created take the freed inode: one of them becomes a new
    // log that sorts (and so is identified) before the `.gz`.
    let reused = (0..1000)
        .map(|n| {
            let p = t.path(&format!("new-{n}"));
            std::fs::File::create(&p).unwrap();
            p
        })
        .find(|p| std::fs::metadata(p).unwrap().ino() == w_ino)
        .expect(
            "this file system never reused the deleted file's inode; run the test on ext4 or xfs",
        );
    std::fs::rename(&reused, t.path("a.log")).unwrap();
    t.append("a.log", ev("a first").as_bytes());
    t.drain();
    let queued = t.queued();
    let contents: Vec<&str> = queued.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(
        contents,
        vec!["w first", "w read", "a first", "w unread"],
        "each line once: {queued:?}"
    );
}

/// A compressor's output is empty for a moment after it is created: a `.gz`
/// first seen then is still known by its bytes once they arrive, and
/// decompressed, not read as lines of binary.
#[test]
fn a_gz_first_seen_empty_is_decompressed_once_written() {
    let mut t = Tailer::new("");
    std::fs::File::create(t.path("old.log")).unwrap();
    t.drain();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::OpenOptions::new()
            .append(true)
            .open(t.path("old.log"))
            .unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(format!("{}{}", ev("one"), ev("two")).as_bytes())
        .unwrap();
    gz.finish().unwrap();
    t.drain();
    assert_eq!(t.contents(), vec!["one", "two"]);
    assert_eq!(t.stats.snapshot().lines, 2, "no line of binary was parsed");
}

//! Model-based test of the file tailer: random sequences of appends,
//! rotations (rename, copytruncate, into `.gz`), truncate-and-rewrite,
//! deletions and kill-style restarts, checked against a model of what was
//! written. The oracle: every line that must arrive is queued, every line
//! arrives under exactly one event id, no event id names two lines, nothing
//! is invented, and each file's lines first arrive in the order written.

use crate::common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use proptest::prelude::*;
use thoth_ingest::config::Config;
use thoth_ingest::queue::Queue;
use thoth_ingest::source::file::FileSource;
use thoth_ingest::stage::SourceStats;

const FILES: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Append {
        file: usize,
        lines: usize,
    },
    Step,
    RenameRotate {
        file: usize,
    },
    CopyTruncate {
        file: usize,
    },
    TruncateRewrite {
        file: usize,
        lines: usize,
    },
    Delete {
        file: usize,
    },
    GzRotate {
        file: usize,
    },
    Restart,
    /// logrotate's `compress` (with `delaycompress`): the oldest rotated
    /// plain file without a `.gz` gets one, whole or only its first half
    /// (the compressor still writing); the plain file stays for now.
    Compress {
        partial: bool,
    },
    /// Every `.gz` still being written is finished.
    FinishGz,
    /// The rotated plain files whose `.gz` is finished are deleted.
    DeleteCompressed,
}

/// The operations of every variant; `logrotate` adds compression of rotated
/// files that are still there, as logrotate's `delaycompress` does it.
fn op(logrotate: bool) -> BoxedStrategy<Op> {
    let base = base_op();
    if !logrotate {
        return base.boxed();
    }
    prop_oneof![
        12 => base,
        1 => any::<bool>().prop_map(|partial| Op::Compress { partial }),
        1 => Just(Op::FinishGz),
        1 => Just(Op::DeleteCompressed),
    ]
    .boxed()
}

fn base_op() -> impl Strategy<Value = Op> {
    let file = 0..FILES;
    prop_oneof![
        6 => (file.clone(), 1..12usize).prop_map(|(file, lines)| Op::Append { file, lines }),
        5 => Just(Op::Step),
        1 => file.clone().prop_map(|file| Op::RenameRotate { file }),
        1 => file.clone().prop_map(|file| Op::CopyTruncate { file }),
        1 => (file.clone(), 1..12usize).prop_map(|(file, lines)| Op::TruncateRewrite { file, lines }),
        1 => file.clone().prop_map(|file| Op::Delete { file }),
        1 => file.clone().prop_map(|file| Op::GzRotate { file }),
        1 => Just(Op::Restart),
    ]
}

/// One generation of one log path: the lines written to it, and whether
/// their delivery is owed.
#[derive(Debug, Default)]
struct Generation {
    lines: Vec<String>,
    /// The tailer had the file open (a step ran while it was at its path),
    /// so its lines are owed even if it is later deleted or renamed away.
    opened: bool,
    /// Lines that may be missing: the known copytruncate window, or the file
    /// left the globs before the tailer ever saw it.
    may_miss: HashSet<String>,
    /// Still at a path the globs match (its own, or as a rotated copy).
    reachable: bool,
    /// Lines the tailer has certainly read (it read to the end at a step).
    read: usize,
}

/// A file renamed away under a rotated name (only in the `logrotate`
/// variant), and its `.gz` once compression started.
struct RotatedPlain {
    path: PathBuf,
    /// The compressed bytes and how many of them are written so far.
    gz: Option<(PathBuf, Vec<u8>, usize)>,
    deleted: bool,
}

/// How a variant of the model is run.
#[derive(Clone, Copy)]
struct Variant {
    /// Rotated names (`*.log.*`) match the globs.
    copies_matched: bool,
    /// Every generation starts with a line of its own instead of one shared
    /// header: files can then be told apart by fingerprint, and a reused
    /// inode is all they may share.
    distinct_headers: bool,
    /// `rotate_wait`: 0 closes files that went away at once; the
    /// `logrotate` variant uses an hour, so that a `.gz` of a file still
    /// there waits for its deletion instead of racing the clock.
    rotate_wait: &'static str,
    /// `max_open_files`, when the variant makes the tailer park files.
    max_open_files: Option<usize>,
}

struct World {
    dir: tempfile::TempDir,
    config: Config,
    queue: Option<Arc<Queue>>,
    source: Option<FileSource>,
    /// Current generation index of each path.
    current: Vec<usize>,
    generations: BTreeMap<(usize, usize), Generation>,
    rotated: usize,
    copies_matched: bool,
    distinct_headers: bool,
    /// Rotated plain files, oldest first (`logrotate` variant).
    plains: Vec<RotatedPlain>,
    /// The tailer may close files to stay within `max_open_files`.
    parks: bool,
}

fn shared_header() -> String {
    // Every generation of every file starts with the same line, so all their
    // fingerprints collide: identity must come from more than the first line.
    r#"{"event_type":"TOOL_CALL_PRE","tool_name":"header","content":"HEADER"}"#.to_string()
}

/// A first line of one generation's own; an ordinary line to the oracle.
fn own_header(file: usize, generation: usize) -> String {
    format!(
        r#"{{"event_type":"TOOL_CALL_PRE","tool_name":"header","content":"first f{file}g{generation}"}}"#
    )
}

fn line(file: usize, generation: usize, n: usize) -> String {
    format!(
        r#"{{"event_type":"TOOL_CALL_PRE","tool_name":"t","content":"f{file}g{generation}n{n}{pad}"}}"#,
        pad = "x".repeat((file * 7 + n * 13) % 40)
    )
}

impl World {
    fn new(variant: Variant) -> World {
        let Variant {
            copies_matched,
            distinct_headers,
            rotate_wait,
            max_open_files,
        } = variant;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        let logs = dir.path().join("logs");
        let mut include = vec![logs.join("*.log").display().to_string()];
        if copies_matched {
            include.push(logs.join("*.log.*").display().to_string());
        }
        let config = common::in_process_config(
            &dir.path().join("state"),
            "model",
            &include,
            "json",
            &match max_open_files {
                // Parked files are looked at every poll: at every step here.
                Some(n) => format!(
                    "rotate_wait = {rotate_wait:?}\nmax_open_files = {n}\npoll_interval = \"1ms\""
                ),
                None => format!("rotate_wait = {rotate_wait:?}"),
            },
        );
        let mut w = World {
            dir,
            config,
            queue: None,
            source: None,
            current: vec![0; FILES],
            generations: BTreeMap::new(),
            rotated: 0,
            copies_matched,
            distinct_headers,
            plains: Vec::new(),
            parks: max_open_files.is_some(),
        };
        w.start();
        w
    }

    fn path(&self, file: usize) -> PathBuf {
        self.dir.path().join(format!("logs/f{file}.log"))
    }

    fn start(&mut self) {
        let queue = Arc::new(common::open_queue(&self.config.state.dir));
        let source = common::first_file_source(
            &self.config,
            queue.clone(),
            Arc::new(SourceStats::default()),
            Arc::new(AtomicBool::new(false)),
        );
        self.queue = Some(queue);
        self.source = Some(source);
    }

    /// Like kill -9 between two commits: nothing is flushed on the way out
    /// that a commit did not already make durable.
    fn restart(&mut self) {
        self.source = None;
        if let Some(q) = self.queue.take() {
            drop(q);
        }
        self.start();
    }

    fn gen(&mut self, file: usize) -> &mut Generation {
        let g = self.current[file];
        self.generations
            .entry((file, g))
            .or_insert_with(|| Generation {
                reachable: true,
                ..Generation::default()
            })
    }

    fn append(&mut self, file: usize, count: usize) {
        let path = self.path(file);
        let g = self.current[file];
        let mut text = String::new();
        let header = if self.distinct_headers {
            own_header(file, g)
        } else {
            shared_header()
        };
        {
            let gen = self.gen(file);
            if gen.lines.is_empty() {
                text.push_str(&header);
                text.push('\n');
                gen.lines.push(header);
            }
        }
        for _ in 0..count {
            let n = self.gen(file).lines.len();
            let l = line(file, g, n);
            text.push_str(&l);
            text.push('\n');
            self.gen(file).lines.push(l);
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn step(&mut self) {
        for f in 0..FILES {
            if self.path(f).exists() {
                self.gen(f).opened = true;
            }
        }
        // The tailer reads every file it has open to its end, also those
        // renamed away or deleted since.
        for gen in self.generations.values_mut() {
            if gen.opened {
                gen.read = gen.lines.len();
            }
        }
        // Read until caught up, as the daemon does before it waits.
        if let Some(s) = self.source.as_mut() {
            for _ in 0..20 {
                if !s.step().unwrap() {
                    break;
                }
            }
        }
    }

    /// Lines of the current generation written since the last step: in the
    /// copytruncate window when the copy is not followed.
    fn unread(&mut self, file: usize) -> Vec<String> {
        let gen = self.gen(file);
        gen.lines[gen.read..].to_vec()
    }

    /// A restart closes files that left the globs: what was not read from
    /// them by then is gone with them.
    fn lose_unreachable(&mut self) {
        for gen in self.generations.values_mut() {
            if !gen.reachable {
                let lost = gen.lines[gen.read..].to_vec();
                gen.may_miss.extend(lost);
            }
        }
    }

    /// The path starts a new generation; the old one stays reachable only
    /// if it now lives at a path the globs match.
    fn new_generation(&mut self, file: usize, old_reachable: bool) {
        self.gen(file).reachable = old_reachable;
        self.current[file] += 1;
        self.gen(file).reachable = true;
    }

    /// The file was renamed out of its path: unless the tailer had it open
    /// or follows rotated names, its lines may never be seen.
    fn rotated_away(&mut self, file: usize) {
        if !self.gen(file).opened && !self.copies_matched {
            let lines = self.gen(file).lines.clone();
            self.gen(file).may_miss.extend(lines);
        }
        let reachable = self.copies_matched;
        self.new_generation(file, reachable);
    }

    fn rotated_name(&mut self, file: usize) -> PathBuf {
        self.rotated += 1;
        self.dir
            .path()
            .join(format!("logs/f{file}.log.{}", self.rotated))
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Append { file, lines } => self.append(file, lines),
            Op::Step => self.step(),
            Op::Restart => {
                self.lose_unreachable();
                for gen in self.generations.values_mut() {
                    gen.opened = false;
                }
                self.restart()
            }
            Op::RenameRotate { file } => {
                if !self.path(file).exists() {
                    return;
                }
                let to = self.rotated_name(file);
                std::fs::rename(self.path(file), &to).unwrap();
                self.rotated_away(file);
                self.plains.push(RotatedPlain {
                    path: to,
                    gz: None,
                    deleted: false,
                });
            }
            Op::CopyTruncate { file } => {
                if !self.path(file).exists() {
                    return;
                }
                let to = self.rotated_name(file);
                std::fs::copy(self.path(file), &to).unwrap();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(self.path(file))
                    .unwrap()
                    .set_len(0)
                    .unwrap();
                if !self.copies_matched {
                    let window = self.unread(file);
                    self.gen(file).may_miss.extend(window);
                }
                let reachable = self.copies_matched;
                self.new_generation(file, reachable);
            }
            Op::TruncateRewrite { file, lines } => {
                if !self.path(file).exists() {
                    return;
                }
                // The unavoidable window: what was written since the tailer last looked.
                let window = self.unread(file);
                self.gen(file).may_miss.extend(window);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(self.path(file))
                    .unwrap()
                    .set_len(0)
                    .unwrap();
                self.new_generation(file, false);
                self.append(file, lines);
            }
            Op::Delete { file } => {
                if !self.path(file).exists() {
                    return;
                }
                std::fs::remove_file(self.path(file)).unwrap();
                if !self.gen(file).opened {
                    let lines = self.gen(file).lines.clone();
                    self.gen(file).may_miss.extend(lines);
                } else if self.parks {
                    // The tailer may have closed it (parked) since it last
                    // read it: what came after that left with the file.
                    let unread = self.unread(file);
                    self.gen(file).may_miss.extend(unread);
                }
                self.new_generation(file, false);
            }
            Op::GzRotate { file } => {
                if !self.path(file).exists() {
                    return;
                }
                let to = self.rotated_name(file);
                let data = std::fs::read(self.path(file)).unwrap();
                std::fs::remove_file(self.path(file)).unwrap();
                let gz = PathBuf::from(format!("{}.gz", to.display()));
                let mut enc = flate2::write::GzEncoder::new(
                    std::fs::File::create(&gz).unwrap(),
                    flate2::Compression::fast(),
                );
                enc.write_all(&data).unwrap();
                enc.finish().unwrap();
                self.rotated_away(file);
            }
            Op::Compress { partial } => {
                let Some(plain) = self.plains.iter_mut().find(|p| p.gz.is_none()) else {
                    return;
                };
                let data = std::fs::read(&plain.path).unwrap();
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&data).unwrap();
                let bytes = enc.finish().unwrap();
                let written = if partial {
                    bytes.len() / 2
                } else {
                    bytes.len()
                };
                let gz = PathBuf::from(format!("{}.gz", plain.path.display()));
                std::fs::write(&gz, &bytes[..written]).unwrap();
                plain.gz = Some((gz, bytes, written));
            }
            Op::FinishGz => self.finish_gz(),
            Op::DeleteCompressed => {
                for plain in &mut self.plains {
                    let finished = plain
                        .gz
                        .as_ref()
                        .is_some_and(|(_, bytes, written)| *written == bytes.len());
                    if finished && !plain.deleted {
                        std::fs::remove_file(&plain.path).unwrap();
                        plain.deleted = true;
                    }
                }
            }
        }
    }

    /// Writes the rest of every `.gz` still being written.
    fn finish_gz(&mut self) {
        for plain in &mut self.plains {
            if let Some((gz, bytes, written)) = plain.gz.as_mut() {
                if *written < bytes.len() {
                    std::fs::OpenOptions::new()
                        .append(true)
                        .open(&*gz)
                        .unwrap()
                        .write_all(&bytes[*written..])
                        .unwrap();
                    *written = bytes.len();
                }
            }
        }
    }

    /// Steps until nothing more is read (rotate_wait is zero, so files that
    /// went away close at once).
    fn drain(&mut self) {
        for _ in 0..50 {
            let progressed = self.source.as_mut().map(|s| s.step().unwrap());
            if progressed == Some(false) {
                let again = self.source.as_mut().map(|s| s.step().unwrap());
                if again == Some(false) {
                    return;
                }
            }
        }
        panic!("the tailer never stopped reading");
    }

    /// (event_id, content) of every queued event, in queue order.
    fn queued(&self) -> Vec<(String, String)> {
        self.queue
            .as_deref()
            .map(common::queued_ids_and_contents)
            .unwrap_or_default()
    }
}

fn check(ops: &[Op], variant: Variant) -> Result<(), TestCaseError> {
    let mut w = World::new(variant);
    for op in ops {
        w.apply(op);
    }
    // A compressor always finishes its file.
    w.finish_gz();
    w.drain();
    let queued = w.queued();

    // Which event ids each content arrived under, and the reverse.
    let mut ids_of: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut content_of: HashMap<&str, &str> = HashMap::new();
    for (id, content) in &queued {
        ids_of.entry(content.as_str()).or_default().insert(id);
        if let Some(prev) = content_of.insert(id, content) {
            prop_assert_eq!(prev, content.as_str(), "event id {} names two lines", id);
        }
    }
    let mut headers_owed = 0usize;
    let mut headers_may = 0usize;
    let mut written: HashSet<String> = HashSet::new();
    for ((file, g), gen) in &w.generations {
        let mut last_index = None;
        for (n, l) in gen.lines.iter().enumerate() {
            let content = serde_json::from_str::<serde_json::Value>(l).unwrap()["content"]
                .as_str()
                .unwrap()
                .to_string();
            if content == "HEADER" {
                if gen.may_miss.contains(l) {
                    headers_may += 1;
                } else {
                    headers_owed += 1;
                }
                continue;
            }
            written.insert(content.clone());
            match ids_of.get(content.as_str()) {
                None => prop_assert!(
                    gen.may_miss.contains(l),
                    "file {} generation {} line {} ({}) never arrived",
                    file,
                    g,
                    n,
                    content
                ),
                Some(ids) => {
                    prop_assert_eq!(ids.len(), 1, "{} arrived under {:?}", content, ids);
                    let first = queued.iter().position(|(_, c)| *c == content);
                    prop_assert!(
                        first > last_index,
                        "file {} generation {}: line {} arrived out of order",
                        file,
                        g,
                        n
                    );
                    last_index = first;
                }
            }
        }
    }
    for (_, content) in &queued {
        prop_assert!(
            content == "HEADER" || written.contains(content),
            "invented: {}",
            content
        );
    }
    // Each generation's header is its own event: colliding first lines must
    // not make two files one stream.
    let header_ids = ids_of.get("HEADER").map(|s| s.len()).unwrap_or(0);
    prop_assert!(
        header_ids >= headers_owed && header_ids <= headers_owed + headers_may,
        "{} header events for {} generations owed (+{} maybe)",
        header_ids,
        headers_owed,
        headers_may
    );
    Ok(())
}

fn model_cases() -> u32 {
    std::env::var("THOTH_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96)
}

proptest! {
    // THOTH_MODEL_CASES runs a longer search than CI's 96 cases.
    #![proptest_config(ProptestConfig { cases: model_cases(), .. ProptestConfig::default() })]

    #[test]
    fn every_line_once_rotated_copies_followed(ops in prop::collection::vec(op(false), 1..40)) {
        check(&ops, Variant { copies_matched: true, distinct_headers: false, rotate_wait: "0s", max_open_files: None })?;
    }

    #[test]
    fn every_line_once_rotated_copies_not_followed(ops in prop::collection::vec(op(false), 1..40)) {
        check(&ops, Variant { copies_matched: false, distinct_headers: false, rotate_wait: "0s", max_open_files: None })?;
    }

    /// logrotate with `compress` and `delaycompress` under kill -9: the
    /// previous rotation is compressed while its plain file is still there
    /// (read, half read or unread), the `.gz` may be seen half written, the
    /// plain file is deleted before or after the `.gz` appears, and every
    /// generation starts with a first line of its own.
    #[test]
    fn every_line_once_logrotate_compress(ops in prop::collection::vec(op(true), 1..40)) {
        check(&ops, Variant { copies_matched: true, distinct_headers: true, rotate_wait: "1h", max_open_files: None })?;
    }

    /// The first variant with room for two open files: the others are
    /// parked, and reopened by identity when they change.
    #[test]
    fn every_line_once_rotated_copies_followed_two_open_files(ops in prop::collection::vec(op(false), 1..40)) {
        check(&ops, Variant { copies_matched: true, distinct_headers: false, rotate_wait: "0s", max_open_files: Some(2) })?;
    }

    /// logrotate and kill -9 with room for two open files.
    #[test]
    fn every_line_once_logrotate_compress_two_open_files(ops in prop::collection::vec(op(true), 1..40)) {
        check(&ops, Variant { copies_matched: true, distinct_headers: true, rotate_wait: "1h", max_open_files: Some(2) })?;
    }
}

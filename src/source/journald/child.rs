//! The `journalctl` child: its arguments (the source's filters and where to
//! start), its output read a line at a time without blocking shutdown and
//! without holding more than a bounded line, the last of what it said on
//! stderr (to name why it ended), and its end: killed and reaped when the
//! source is done with it, and sent SIGTERM by the kernel if we die first.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::entry;
use crate::config::{SourceConfig, StartAt};

/// The pipe journalctl writes into.
const PIPE_BYTES: libc::c_int = 1 << 20;
/// Bytes of stderr kept to explain an exit.
const STDERR_KEPT: usize = 4096;

/// Where journalctl starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// After this entry: journalctl starts at it (or where it was, if the
    /// journal no longer holds it), and the reader drops it. Not
    /// `--after-cursor`, which steps over one entry more when the cursor's
    /// entry is gone or does not match the filters (journalctl 252).
    AfterCursor(String),
    /// At the oldest entry present.
    Oldest,
    /// After the newest entry present.
    Newest,
}

impl Start {
    pub fn for_new_source(config: &SourceConfig) -> Start {
        match config.start_at {
            StartAt::Beginning => Start::Oldest,
            StartAt::End => Start::Newest,
        }
    }
}

/// `--directory=D` when the source reads a journal directory.
fn directory_arg(config: &SourceConfig) -> Option<OsString> {
    config.directory.as_ref().map(|dir| {
        let mut arg = OsString::from("--directory=");
        arg.push(dir);
        arg
    })
}

/// What to tell an operator whose `journalctl_path` names nothing.
pub fn not_found_message(config: &SourceConfig) -> String {
    format!(
        "journalctl not found at `{}`: install systemd's journalctl, or set journalctl_path",
        config.journalctl_path.display()
    )
}

/// The arguments of `journalctl` for `config`, starting at `start`.
pub fn arguments(config: &SourceConfig, start: &Start, follow: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--output=json".into(),
        // Every field in full: without it journalctl writes null for a
        // value over 4096 bytes.
        "--all".into(),
        "--no-pager".into(),
        "--quiet".into(),
    ];
    // Only the fields the source uses: most of journalctl's time is writing
    // JSON, and an entry has some twenty fields (__CURSOR and the
    // timestamps always come).
    args.push(format!("--output-fields={}", entry::FIELDS.join(",")).into());
    if follow {
        args.push("--follow".into());
    }
    match start {
        Start::AfterCursor(cursor) => {
            args.push(format!("--cursor={cursor}").into());
            args.push("--no-tail".into());
        }
        Start::Oldest => args.push("--no-tail".into()),
        Start::Newest => args.push("--lines=0".into()),
    }
    args.extend(directory_arg(config));
    if config.current_boot_only {
        args.push("--boot".into());
    }
    if let Some(priority) = &config.priority {
        args.push(format!("--priority={priority}").into());
    }
    for unit in &config.units {
        args.push(format!("--unit={unit}").into());
    }
    for identifier in &config.identifiers {
        args.push(format!("--identifier={identifier}").into());
    }
    // Checked at load to be FIELD=value: none can pass for an option.
    args.extend(config.matches.iter().map(OsString::from));
    args
}

/// The cursor of the first entry at or after `cursor`, with no filter
/// (the entry read last may not match filters changed since): the same
/// cursor if the journal still holds that entry. None if the journal ends
/// before one, or journalctl says nothing within 10 s.
pub fn first_cursor_at(
    config: &SourceConfig,
    cursor: &str,
    beat: &dyn Fn(),
) -> std::io::Result<Option<String>> {
    let mut args: Vec<OsString> = vec![
        "--output=json".into(),
        "--no-pager".into(),
        "--quiet".into(),
        "--output-fields=__CURSOR".into(),
        format!("--cursor={cursor}").into(),
    ];
    args.extend(directory_arg(config));
    let mut journal = Journalctl::spawn_with(config, args)?;
    let mut line = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        beat();
        match journal.read_line(&mut line, 64 << 10, Duration::from_millis(200))? {
            Line::Whole => {
                let first = serde_json::from_slice::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("__CURSOR")?.as_str().map(str::to_string));
                return Ok(first);
            }
            Line::TooLong | Line::End => return Ok(None),
            Line::Nothing => {}
        }
    }
    Ok(None)
}

/// Whether journalctl can read what the source names.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    Readable,
    /// No journal files (yet): an empty directory, or no journald.
    NoFiles,
    /// journalctl runs but may not read the journal: why, in its words.
    Denied(String),
}

/// How long journalctl may take to say whether the journal is readable.
const ACCESS_BOUND: Duration = Duration::from_secs(30);

/// Asks journalctl whether the source's journal is readable (without
/// `--quiet`, which would hide the notice of a user outside the journal's
/// groups). `beat` is called while it runs; a journalctl that has not
/// answered within 30 s is killed (Err TimedOut).
pub fn access(config: &SourceConfig, beat: &dyn Fn()) -> std::io::Result<Access> {
    let mut command = Command::new(&config.journalctl_path);
    command
        .args(["--lines=0", "--no-pager"])
        .args(directory_arg(config));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("SYSTEMD_COLORS", "0")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .spawn()?;
    let stderr = child.stderr.take();
    // Read on a thread, so a chatty journalctl never blocks on a full pipe.
    let said = std::thread::spawn(move || {
        let mut said = Vec::new();
        if let Some(stderr) = stderr {
            let _ = stderr.take(STDERR_KEPT as u64).read_to_end(&mut said);
        }
        said
    });
    let deadline = std::time::Instant::now() + ACCESS_BOUND;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "journalctl did not answer within 30 s",
            ));
        }
        beat();
        std::thread::sleep(Duration::from_millis(20));
    };
    let said = said.join().unwrap_or_default();
    let said = String::from_utf8_lossy(&said).trim().to_string();
    Ok(classify_access(status.success(), &said))
}

fn classify_access(success: bool, stderr: &str) -> Access {
    if stderr.contains("insufficient permissions")
        || stderr.contains("not seeing messages from other users")
    {
        return Access::Denied(format!(
            "{stderr} (add the daemon's user to group systemd-journal)"
        ));
    }
    if !success {
        return Access::Denied(if stderr.is_empty() {
            "journalctl failed".into()
        } else {
            stderr.to_string()
        });
    }
    if stderr.contains("No journal files were found") {
        return Access::NoFiles;
    }
    Access::Readable
}

/// How many entries the source's filters match now.
pub fn count_entries(config: &SourceConfig) -> std::io::Result<u64> {
    let mut args = arguments(config, &Start::Oldest, false);
    args.push("--output-fields=__CURSOR".into());
    let mut journal = Journalctl::spawn_with(config, args)?;
    let mut line = Vec::new();
    let mut n = 0u64;
    loop {
        match journal.read_line(&mut line, 64 << 10, Duration::from_secs(60))? {
            Line::Whole | Line::TooLong => n += 1,
            Line::End => return Ok(n),
            Line::Nothing => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "journalctl said nothing for 60 s",
                ))
            }
        }
    }
}

/// A running journalctl and its output.
pub struct Journalctl {
    child: Child,
    out: BufReader<ChildStdout>,
    stderr: Arc<Mutex<VecDeque<u8>>>,
}

/// What one read of the output gave.
pub enum Line {
    /// A whole line (without its newline) in the buffer given.
    Whole,
    /// A line longer than the limit: skipped to its end.
    TooLong,
    /// Nothing within the wait.
    Nothing,
    /// The output ended: journalctl exited.
    End,
}

impl Journalctl {
    /// Follows the journal from `start`, through the source's filters.
    pub fn spawn(config: &SourceConfig, start: &Start) -> std::io::Result<Journalctl> {
        Journalctl::spawn_with(config, arguments(config, start, true))
    }

    fn spawn_with(config: &SourceConfig, args: Vec<OsString>) -> std::io::Result<Journalctl> {
        let mut command = Command::new(&config.journalctl_path);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "")
            // The service manager's socket is the daemon's to speak on.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        // SAFETY: prctl is async-signal-safe and touches nothing of the
        // parent's: it asks the kernel to end the child with its parent, so
        // a daemon killed by -9 leaves no journalctl behind.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("journalctl has no stdout"))?;
        // A larger pipe lets journalctl write on while a commit syncs; the
        // kernel caps it (fs.pipe-max-size), and the default 64 KiB still works.
        // SAFETY: fcntl on a descriptor this process owns.
        unsafe {
            libc::fcntl(out.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES);
        }
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(mut err) = child.stderr.take() {
            let kept = stderr.clone();
            // Drained on a thread of its own: a child blocked on a full
            // stderr pipe would stop writing entries too.
            let _ = std::thread::Builder::new()
                .name("journalctl-stderr".into())
                .spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = err.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                        kept.extend(&buf[..n]);
                        let over = kept.len().saturating_sub(STDERR_KEPT);
                        kept.drain(..over);
                    }
                });
        }
        Ok(Journalctl {
            child,
            out: BufReader::with_capacity(256 << 10, out),
            stderr,
        })
    }

    /// Reads one line into `line` (cleared first), waiting at most `wait`
    /// for output to start; a line longer than `max` is skipped.
    pub fn read_line(
        &mut self,
        line: &mut Vec<u8>,
        max: usize,
        wait: Duration,
    ) -> std::io::Result<Line> {
        line.clear();
        if self.out.buffer().is_empty() && !readable(&self.out, wait)? {
            return Ok(Line::Nothing);
        }
        let mut too_long = false;
        loop {
            let buf = match self.out.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                // A line cut by the exit is not an entry.
                return Ok(Line::End);
            }
            let (take, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            if !too_long {
                if line.len() + take > max {
                    too_long = true;
                    line.clear();
                } else {
                    line.extend_from_slice(&buf[..take]);
                }
            }
            self.out.consume(take + usize::from(done));
            if done {
                return Ok(if too_long { Line::TooLong } else { Line::Whole });
            }
        }
    }

    /// What journalctl said on stderr, last lines first cut.
    pub fn stderr_text(&self) -> String {
        let kept = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        let (a, b) = kept.as_slices();
        let mut bytes = a.to_vec();
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).trim().to_string()
    }

    /// Ends it (if it still runs) and returns how it exited.
    pub fn finish(mut self) -> std::io::Result<std::process::ExitStatus> {
        if self.child.try_wait()?.is_none() {
            let _ = self.child.kill();
        }
        let status = self.child.wait()?;
        // The stderr thread ends with the pipe; give it a moment to keep
        // the last words.
        std::thread::sleep(Duration::from_millis(20));
        Ok(status)
    }
}

impl Drop for Journalctl {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits up to `wait` for `out` to have something to read (or its end).
fn readable(out: &BufReader<ChildStdout>, wait: Duration) -> std::io::Result<bool> {
    let mut fd = libc::pollfd {
        fd: out.get_ref().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, for the length given.
    let n = unsafe { libc::poll(&mut fd, 1, ms) };
    match n {
        -1 => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_source: &str) -> SourceConfig {
        let text = format!(
            "[api]\ntenant_id = \"t\"\n[state]\ndir = \"/tmp/x\"\n[[sources]]\nname = \"j\"\ntype = \"journald\"\n{toml_source}"
        );
        crate::config::Config::from_toml(
            &text,
            std::path::Path::new("test.toml"),
            &Default::default(),
        )
        .expect("valid config")
        .sources
        .remove(0)
    }

    #[test]
    fn journalctl_notices_tell_access() {
        assert_eq!(classify_access(true, ""), Access::Readable);
        assert_eq!(
            classify_access(true, "No journal files were found."),
            Access::NoFiles
        );
        let hint = "Hint: You are currently not seeing messages from other users and the system.";
        assert!(
            matches!(classify_access(true, hint), Access::Denied(w) if w.contains("systemd-journal"))
        );
        assert!(matches!(
            classify_access(
                false,
                "No journal files were opened due to insufficient permissions."
            ),
            Access::Denied(_)
        ));
        assert!(matches!(
            classify_access(false, "Failed to open /x: No such file or directory"),
            Access::Denied(w) if w.contains("/x")
        ));
    }

    #[test]
    fn filters_and_start_become_arguments() {
        let c = config(
            "units = [\"agent.service\"]\nidentifiers = [\"mcp\"]\nmatches = [\"_UID=1000\"]\npriority = \"info\"\ndirectory = \"/j\"\n",
        );
        let args: Vec<String> = arguments(&c, &Start::AfterCursor("s=1;i=2".into()), true)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        for expected in [
            "--output=json",
            "--all",
            "--follow",
            "--cursor=s=1;i=2",
            "--no-tail",
            "--directory=/j",
            "--priority=info",
            "--unit=agent.service",
            "--identifier=mcp",
            "_UID=1000",
        ] {
            assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
        }
        let args = arguments(&c, &Start::Newest, false);
        assert!(args.iter().any(|a| a == "--lines=0"));
        assert!(!args.iter().any(|a| a == "--follow"));
    }
}

//! SIGHUP reloads the configuration: a daemon held back by a refused key
//! retries at once with the key it reads again, instead of after the slow
//! 15 s retry; a config that does not load changes nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;

const RIGHT: &str = "thoth_test_right_key";
const WRONG: &str = "thoth_test_wrong_key";

#[test]
fn sighup_reloads_the_key_file_and_retries_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &["--api-key", RIGHT]);
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, format!("{WRONG}\n")).unwrap();
    let config = write_config(dir.path(), &receiver.addr, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[api]\n",
        &format!("[api]\napi_key_file = \"{}\"\n", key_file.display()),
    );
    std::fs::write(&config, text).unwrap();
    append_lines(&dir.path().join("logs/a.jsonl"), 0..2000);
    let mut daemon = start_daemon_cmd(&config, |_| {});

    // The wrong key is refused; the daemon holds back for its slow retry.
    let start = Instant::now();
    while !receiver.stats().status.contains_key(&401) {
        assert!(start.elapsed() < Duration::from_secs(20), "no 401 seen");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let refused = receiver.stats().status.get(&401).copied().unwrap_or(0);
    assert_eq!(receiver.stats().status.get(&202), None);

    // A config that does not load is refused and changes nothing.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, "[api\n").unwrap();
    signal(&daemon, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "a bad reload stopped the daemon"
    );
    std::fs::write(&config, good).unwrap();

    // The right key, then SIGHUP: delivery resumes well before the 15 s retry.
    std::fs::write(&key_file, format!("{RIGHT}\n")).unwrap();
    let reloaded = Instant::now();
    signal(&daemon, libc::SIGHUP);
    let seqs = wait_seqs(&receiver, 2000, Duration::from_secs(10));
    let took = reloaded.elapsed();
    eprintln!(
        "reload: {} events delivered {took:?} after SIGHUP ({refused} 401s before)",
        seqs.len()
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    let stats = receiver.stats();
    assert!(
        stats.status.get(&401).copied().unwrap_or(0) <= refused + 1,
        "401s after the reload: {stats:?}"
    );
    assert!(terminate(&mut daemon).success());
}

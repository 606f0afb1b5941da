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

/// A config of file sources, one per `(name, folder, extra)`, each over
/// `<folder>/*.jsonl`.
fn sources_config(dir: &std::path::Path, receiver: &str, sources: &[(&str, &str, &str)]) -> String {
    let mut text = format!(
        r#"
[api]
base_url = "http://{receiver}"
tenant_id = "it-tenant"
[state]
dir = "{state}"
[delivery]
requests_per_minute = 100000
linger = "100ms"
"#,
        state = dir.join("state").display()
    );
    for (name, folder, extra) in sources {
        let logs = dir.join(folder);
        std::fs::create_dir_all(&logs).unwrap();
        text.push_str(&format!(
            "[[sources]]\nname = \"{name}\"\ntype = \"file\"\ninclude = [\"{}/*.jsonl\"]\nparser = \"json\"\npoll_interval = \"50ms\"\n{extra}\n",
            logs.display()
        ));
    }
    text
}

/// For each seq, the user of each time it arrived.
fn arrivals(receiver: &ReceiverProc) -> std::collections::BTreeMap<u64, Vec<String>> {
    let mut by_seq = std::collections::BTreeMap::<u64, Vec<String>>::new();
    for e in receiver.stored() {
        let seq = e["metadata"]["seq"].as_u64().unwrap();
        by_seq
            .entry(seq)
            .or_default()
            .push(e["user_id"].as_str().unwrap_or("").to_string());
    }
    by_seq
}

/// SIGHUP with a new set of sources: one kept as it was reads on, one
/// removed stops reading, one added starts, one changed goes on from its
/// position with its new settings; no line is lost or sent twice.
#[test]
fn sighup_adds_removes_and_changes_sources_keeping_positions() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = dir.path().join("config.toml");
    // seqs: kept 0.., changed 10_000.., removed 20_000.., added 30_000..
    std::fs::write(
        &config,
        sources_config(
            dir.path(),
            &receiver.addr,
            &[
                ("kept", "kept", ""),
                ("changed", "changed", "user_id = \"before\""),
                ("removed", "removed", ""),
            ],
        ),
    )
    .unwrap();
    let file = |folder: &str| dir.path().join(folder).join("a.jsonl");
    append_lines(&file("kept"), 0..100);
    append_lines(&file("changed"), 10_000..10_100);
    append_lines(&file("removed"), 20_000..20_100);
    std::fs::create_dir_all(dir.path().join("added")).unwrap();
    append_lines(&file("added"), 30_000..30_100);
    let mut daemon = start_daemon(&config);
    wait_seqs(&receiver, 300, Duration::from_secs(30));

    std::fs::write(
        &config,
        sources_config(
            dir.path(),
            &receiver.addr,
            &[
                ("kept", "kept", ""),
                ("changed", "changed", "user_id = \"after\""),
                ("added", "added", ""),
            ],
        ),
    )
    .unwrap();
    signal(&daemon, libc::SIGHUP);
    // The added source's existing lines arrive: the reload is applied.
    wait_seqs(&receiver, 400, Duration::from_secs(30));
    append_lines(&file("kept"), 100..200);
    append_lines(&file("changed"), 10_100..10_200);
    append_lines(&file("removed"), 20_100..20_200);
    append_lines(&file("added"), 30_100..30_200);
    wait_seqs(&receiver, 700, Duration::from_secs(30));
    // Time for the removed source to show it still reads, if it did.
    std::thread::sleep(Duration::from_secs(1));
    assert!(terminate(&mut daemon).success());

    let by_seq = arrivals(&receiver);
    let expect: Vec<u64> = (0..200)
        .chain(10_000..10_200)
        .chain(20_000..20_100)
        .chain(30_000..30_200)
        .collect();
    assert_eq!(by_seq.keys().copied().collect::<Vec<_>>(), expect);
    for (seq, agents) in &by_seq {
        assert_eq!(agents.len(), 1, "seq {seq} arrived {} times", agents.len());
    }
    // The changed source's new settings apply to what it reads after.
    assert_eq!(by_seq[&10_050], ["before"]);
    assert_eq!(by_seq[&10_150], ["after"]);
}

/// A reload whose config does not load keeps the running one, sources
/// included, and says why with the file and line.
#[test]
fn an_invalid_reload_keeps_the_running_sources() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = ReceiverProc::start(dir.path(), &[]);
    let config = write_config(dir.path(), &receiver.addr, "");
    let log = dir.path().join("logs/a.jsonl");
    append_lines(&log, 0..50);
    let stderr = dir.path().join("stderr.log");
    let mut daemon = start_daemon_cmd(&config, |c| {
        c.env("THOTH_API_KEY", KEY)
            .stderr(std::fs::File::create(&stderr).unwrap());
    });
    wait_seqs(&receiver, 50, Duration::from_secs(30));
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        good.replace("parser = \"json\"", "parser = \"no-such\""),
    )
    .unwrap();
    signal(&daemon, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    let said = loop {
        let said = std::fs::read_to_string(&stderr).unwrap();
        if said.contains("reload") {
            break said;
        }
        assert!(Instant::now() < deadline, "the refused reload said nothing");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        said.contains(&format!("{}:", config.display())) && said.contains("no-such"),
        "{said}"
    );
    append_lines(&log, 50..100);
    wait_seqs(&receiver, 100, Duration::from_secs(30));
    assert!(terminate(&mut daemon).success());
}

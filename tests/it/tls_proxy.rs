//! TLS and the network: `api.ca_file` makes a private CA trusted (the
//! receiver serves HTTPS with a self-signed certificate made here), and
//! `HTTPS_PROXY` / `NO_PROXY` are honoured (a CONNECT proxy in this test sees
//! the tunnel, or nothing when the host is excluded).

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// A receiver serving HTTPS with a fresh self-signed certificate for
/// 127.0.0.1 and localhost; returns it and the certificate's PEM file.
fn tls_receiver(dir: &Path) -> (ReceiverProc, PathBuf) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("generate a certificate");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let receiver = ReceiverProc::start(
        dir,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    (receiver, cert)
}

/// A config for `https://<receiver>`, with `api` added to `[api]`.
fn https_config(dir: &Path, receiver: &str, api: &str) -> PathBuf {
    let config = write_config(dir, receiver, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("base_url = \"http://", "base_url = \"https://")
        .replace("[api]\n", &format!("[api]\n{api}\n"));
    std::fs::write(&config, text).unwrap();
    config
}

fn without_proxies(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("THOTH_API_KEY", KEY)
}

#[test]
fn ca_file_makes_a_private_ca_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, cert) = tls_receiver(dir.path());
    let config = https_config(dir.path(), &receiver.addr, "");
    append_lines(&dir.path().join("logs/a.jsonl"), 0..500);
    let log = dir.path().join("daemon.err");
    let mut daemon = start_daemon_cmd(&config, |c| {
        without_proxies(c)
            .env("THOTH_API_KEY", KEY)
            .stderr(std::fs::File::create(&log).unwrap());
    });

    // Without ca_file the certificate is refused: nothing arrives, nothing
    // is lost, the daemon keeps trying.
    wait_log(&log, "delivery failed; will retry", Duration::from_secs(20));
    assert!(stored_seqs(&receiver).is_empty());
    assert!(daemon.try_wait().unwrap().is_none());

    // With it (applied by SIGHUP), everything arrives.
    let with_ca = https_config(
        dir.path(),
        &receiver.addr,
        &format!("ca_file = \"{}\"", cert.display()),
    );
    assert_eq!(with_ca, config);
    signal(&daemon, libc::SIGHUP);
    let seqs = wait_seqs(&receiver, 500, Duration::from_secs(15));
    assert_eq!(seqs, (0..500).collect());
    assert!(terminate(&mut daemon).success());
}

/// A CONNECT proxy on loopback that records each request line and tunnels.
struct ConnectProxy {
    addr: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let _ = tunnel(client, &seen);
                });
            }
        });
        ConnectProxy { addr, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn tunnel(mut client: TcpStream, seen: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let request = request.trim_end().to_string();
    seen.lock().unwrap().push(request.clone());
    let Some(target) = request
        .strip_prefix("CONNECT ")
        .and_then(|r| r.split(' ').next())
    else {
        client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")?;
        return Ok(());
    };
    let mut upstream = TcpStream::connect(target)?;
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    let (mut c2, mut u2) = (client.try_clone()?, upstream.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut upstream, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
    Ok(())
}

#[test]
fn https_proxy_is_used_and_no_proxy_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, cert) = tls_receiver(dir.path());
    let proxy = ConnectProxy::start();
    let ca = format!("ca_file = \"{}\"", cert.display());
    let proxy_url = format!("http://{}", proxy.addr);

    // HTTPS_PROXY: every connection is a tunnel through the proxy.
    let a = dir.path().join("a");
    let config_a = https_config(&a, &receiver.addr, &ca);
    append_lines(&a.join("logs/x.jsonl"), 0..300);
    let mut daemon = start_daemon_cmd(&config_a, |c| {
        without_proxies(c).env("HTTPS_PROXY", &proxy_url);
    });
    wait_seqs(&receiver, 300, Duration::from_secs(15));
    assert!(terminate(&mut daemon).success());
    let through = proxy.requests();
    eprintln!("proxy saw: {through:?}");
    assert!(!through.is_empty(), "nothing went through the proxy");
    for r in &through {
        assert!(
            r.starts_with(&format!("CONNECT {} ", receiver.addr)),
            "unexpected request at the proxy: {r}"
        );
    }

    // NO_PROXY naming the host: straight to the receiver.
    let b = dir.path().join("b");
    let config_b = https_config(&b, &receiver.addr, &ca);
    append_lines(&b.join("logs/x.jsonl"), 1000..1300);
    let mut daemon = start_daemon_cmd(&config_b, |c| {
        without_proxies(c)
            .env("HTTPS_PROXY", &proxy_url)
            .env("NO_PROXY", "127.0.0.1");
    });
    wait_seqs(&receiver, 600, Duration::from_secs(15));
    assert!(terminate(&mut daemon).success());
    assert_eq!(proxy.requests(), through, "NO_PROXY was not honoured");
}

//! The `rally` binary against a real `rallyd`: `chat` between two processes, and `ping` to an
//! SDK client that accepts.

use std::process::Stdio;
use std::time::Duration;

use rally_client::net::{Net, NetConfig, NetEvent};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(30);
/// Tests stay on loopback.
const LOOPBACK: &str = "127.0.0.1:0";

async fn server(data: &tempfile::TempDir) -> rallyd::Running {
    let data = data.path().display().to_string();
    let config = <rallyd::Config as clap::Parser>::try_parse_from([
        "rallyd",
        "--listen",
        "127.0.0.1:0",
        "--relay-listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
    ])
    .expect("config");
    rallyd::start(config).await.expect("rallyd starts")
}

fn rally(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rally"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run rally")
}

/// Reads stdout lines until one contains `needle`; returns it.
async fn line_with(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    needle: &str,
) -> String {
    let find = async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("rally ended without printing {needle:?}");
    };
    tokio::time::timeout(WAIT, find)
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} within {WAIT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chat_processes_talk_peer_to_peer() {
    let data = tempfile::tempdir().expect("tempdir");
    let running = server(&data).await;
    let url = format!("http://{}", running.grpc_addr());
    let mut ada = rally(&[
        "chat", "--server", &url, "--bind", LOOPBACK, "--user", "ada", "--room", "new",
    ]);
    let mut ada_out = BufReader::new(ada.stdout.take().expect("stdout")).lines();
    let created = line_with(&mut ada_out, "created room").await;
    let room = created
        .split_whitespace()
        .nth(2)
        .expect("the room id")
        .to_owned();
    line_with(&mut ada_out, "chatting in").await;
    let mut bob = rally(&[
        "chat", "--server", &url, "--bind", LOOPBACK, "--user", "bob", "--room", &room,
    ]);
    let mut bob_out = BufReader::new(bob.stdout.take().expect("stdout")).lines();
    line_with(&mut bob_out, "chatting in").await;
    let mut bob_in = bob.stdin.take().expect("stdin");
    bob_in
        .write_all(b"hello from bob\n")
        .await
        .expect("write a line");
    assert_eq!(
        line_with(&mut ada_out, "hello from bob").await,
        "bob: hello from bob"
    );
    // End of input leaves the chat cleanly.
    drop(bob_in);
    let status = tokio::time::timeout(WAIT, bob.wait())
        .await
        .expect("bob exits")
        .expect("status");
    assert!(status.success());
    running.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_reports_round_trips_to_a_peer_that_accepts() {
    let data = tempfile::tempdir().expect("tempdir");
    let running = server(&data).await;
    let url = format!("http://{}", running.grpc_addr());
    let session = rally_client::Rally::connect(&url)
        .await
        .expect("connect")
        .device_login("cli-test-peer-0123456789", "peer")
        .await
        .expect("login");
    let mut config = NetConfig::default();
    config.transport.bind = LOOPBACK.parse().expect("address");
    let net = Net::start(&session, config).await.expect("net");
    let accepting = {
        let net = net.clone();
        tokio::spawn(async move {
            while let Some(event) = net.next_event().await {
                if let NetEvent::PeerConnectRequest { user } = event {
                    net.accept(user).await.expect("accept");
                }
            }
        })
    };
    let peer = session.user_id().to_string();
    let mut ping = rally(&[
        "ping", "--server", &url, "--user", "pinger", "--count", "3", &peer,
    ]);
    let mut out = BufReader::new(ping.stdout.take().expect("stdout")).lines();
    let summary = line_with(&mut out, "answered").await;
    assert!(summary.starts_with("3 of 3 answered"), "{summary}");
    let status = tokio::time::timeout(WAIT, ping.wait())
        .await
        .expect("ping exits")
        .expect("status");
    assert!(status.success());
    net.shutdown();
    accepting.abort();
    running.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_reaches_a_tls_server_with_a_pinned_certificate_and_refuses_another() {
    use sha2::Digest as _;
    let data = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let pin = hex::encode(sha2::Sha256::digest(cert.der()));
    let (cert_file, key_file) = (data.path().join("tls.crt"), data.path().join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).expect("write the certificate");
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_file)
            .expect("create the key file");
        std::io::Write::write_all(&mut file, key.serialize_pem().as_bytes())
            .expect("write the key");
    }
    let dir = data.path().join("data").display().to_string();
    let (cert_flag, key_flag) = (
        cert_file.display().to_string(),
        key_file.display().to_string(),
    );
    let config = <rallyd::Config as clap::Parser>::try_parse_from([
        "rallyd",
        "--listen",
        "127.0.0.1:0",
        "--relay-listen",
        "127.0.0.1:0",
        "--data-dir",
        &dir,
        "--tls-cert-file",
        &cert_flag,
        "--tls-key-file",
        &key_flag,
    ])
    .expect("config");
    let running = rallyd::start(config).await.expect("rallyd starts");
    let url = format!("https://localhost:{}", running.grpc_addr().port());

    let mut ada = rally(&[
        "chat",
        "--server",
        &url,
        "--pin-sha256",
        &pin,
        "--bind",
        LOOPBACK,
        "--user",
        "ada",
        "--room",
        "new",
    ]);
    let mut ada_out = BufReader::new(ada.stdout.take().expect("stdout")).lines();
    line_with(&mut ada_out, "created room").await;
    drop(ada.stdin.take());
    let status = tokio::time::timeout(WAIT, ada.wait())
        .await
        .expect("ada exits")
        .expect("status");
    assert!(status.success());

    let wrong = "00".repeat(32);
    let refused = tokio::time::timeout(
        WAIT,
        Command::new(env!("CARGO_BIN_EXE_rally"))
            .args(["chat", "--server", &url, "--pin-sha256", &wrong])
            .args(["--bind", LOOPBACK, "--user", "eve", "--room", "new"])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("rally exits")
    .expect("run rally");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("TLS with rallyd failed"), "{stderr}");
    running.stop().await.expect("stop");
}

//! The `rallyd` binary as a user runs it: no configuration, then SIGTERM, then again.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rally_proto::identity::v1::identity_client::IdentityClient;
use rally_proto::identity::v1::{LoginRequest, RegisterRequest};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A `rallyd` child process and its log lines.
struct Rallyd {
    child: Child,
    lines: mpsc::Receiver<String>,
    addr: SocketAddr,
}

impl Rallyd {
    /// Starts the binary in `dir` with no flags; only the ports are made free (`RALLY_LISTEN`,
    /// `RALLY_RELAY_LISTEN`).
    fn start(dir: &std::path::Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// As [`Rallyd::start`], with more environment variables.
    fn start_with(dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rallyd"))
            .current_dir(dir)
            .envs(env.iter().copied())
            .env("RALLY_LISTEN", "127.0.0.1:0")
            .env("RALLY_RELAY_LISTEN", "127.0.0.1:0")
            .env_remove("RALLY_DATABASE_URL")
            .env_remove("RALLY_DATA_DIR")
            .env_remove("RALLY_SERVICES")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn rallyd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("rallyd| {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut this = Self {
            child,
            lines,
            addr: "0.0.0.0:0".parse().expect("addr"),
        };
        let line = this.wait_for("gRPC listening on ");
        let addr = line
            .split("gRPC listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address after the marker");
        this.addr = addr.parse().expect("socket address");
        this
    }

    /// Waits for a log line containing `marker`; fails on a line that reports the grace period
    /// running out (every client here closes its connections before the shutdown).
    fn wait_for(&mut self, marker: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return line,
                Ok(line) if line.contains("grace period over") => {
                    panic!("shutdown did not drain cleanly: {line}")
                }
                Ok(_) => {}
                Err(_) => panic!("rallyd did not log {marker:?} within 60 s"),
            }
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends SIGTERM and waits for a clean exit: status 0 and no warning logged on the way
    /// (such as a last write to the database failing because it was already closed).
    fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill failed");
        let mut logged = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // Every line until the log ends (the process closed its stdout).
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => logged.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("rallyd did not exit in 60 s"),
            }
        }
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "rallyd exited with {exit}");
        assert!(
            logged.iter().any(|line| line.contains("rallyd stopped")),
            "no \"rallyd stopped\" line: {logged:#?}"
        );
        let warnings: Vec<_> = logged
            .iter()
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            .collect();
        assert!(warnings.is_empty(), "shutdown logged {warnings:#?}");
    }
}

impl Drop for Rallyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// Multi-threaded: `terminate` blocks this thread while the clients' connection tasks must still
// run to close their connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rallyd_with_no_configuration_serves_keeps_its_data_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rallyd = Rallyd::start(dir.path());

    let channel = tonic::transport::Channel::from_shared(rallyd.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    let status = health
        .check(HealthCheckRequest::default())
        .await
        .expect("health")
        .into_inner();
    assert_eq!(status.status, 1, "SERVING");
    let mut identity = IdentityClient::connect(rallyd.url())
        .await
        .expect("connect");
    identity
        .register(RegisterRequest {
            username: "persisted".into(),
            password: "persisted password".into(),
            display_name: String::new(),
        })
        .await
        .expect("register");
    drop((health, identity));
    rallyd.terminate();

    let data = dir.path().join("rally-data");
    assert!(
        data.join("rally.db").is_file(),
        "SQLite database under ./rally-data"
    );
    let key_file = data.join("token-signing-key.pem");
    let key = std::fs::read_to_string(&key_file).expect("signing key persisted");

    // Second run: same key, same accounts.
    let rallyd = Rallyd::start(dir.path());
    let mut identity = IdentityClient::connect(rallyd.url())
        .await
        .expect("connect");
    identity
        .login(LoginRequest {
            username: "persisted".into(),
            password: "persisted password".into(),
        })
        .await
        .expect("the account survived the restart");
    assert_eq!(std::fs::read_to_string(&key_file).expect("key"), key);
    drop(identity);
    rallyd.terminate();
}

#[test]
fn sighup_rereads_the_tls_files_and_keeps_serving() {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).expect("write the certificate");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_file)
        .expect("create the key file");
    std::io::Write::write_all(&mut file, key.serialize_pem().as_bytes()).expect("write the key");
    let (cert_text, key_text) = (
        cert_file.display().to_string(),
        key_file.display().to_string(),
    );
    let mut rallyd = Rallyd::start_with(
        dir.path(),
        &[
            ("RALLY_TLS_CERT_FILE", &cert_text),
            ("RALLY_TLS_KEY_FILE", &key_text),
        ],
    );
    // Without a handler, SIGHUP would end the process.
    for _ in 0..2 {
        let status = Command::new("kill")
            .args(["-HUP", &rallyd.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill failed");
        rallyd.wait_for("SIGHUP: the TLS files are unchanged");
    }
    assert!(
        rallyd.child.try_wait().expect("try_wait").is_none(),
        "rallyd is still running"
    );
    rallyd.terminate();
}

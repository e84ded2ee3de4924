//! The control plane over TLS: the SDK reaches `rallyd` with a self-hosted CA or a pinned
//! certificate, refuses every certificate it must refuse with a clear error, and a renewed
//! certificate reaches new connections while open ones (an attachment) keep going.

use std::time::{Duration, Instant};

use rally_client::{BrokerEvent, BrokerLink, Error, Rally, RallyConfig, ServerTrust};
use rally_e2e::pki::{TestCa, TlsFolder, Validity};
use rally_e2e::{Backend, TestServer};

const WAIT: Duration = Duration::from_secs(20);

/// A TLS server on SQLite serving `folder`'s files.
async fn tls_server(folder: &TlsFolder) -> TestServer {
    let flags = folder.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    TestServer::start_with(Backend::Sqlite, &flags)
        .await
        .expect("SQLite server")
}

fn url(server: &TestServer, host: &str) -> String {
    format!("https://{host}:{}", server.addr().port())
}

fn ca_trust(ca: &TestCa) -> RallyConfig {
    RallyConfig::with_trust(ServerTrust::ca_pem(ca.pem().as_bytes()).expect("the CA parses"))
}

fn pinned(sha256: &str) -> RallyConfig {
    RallyConfig::with_trust(ServerTrust::pinned_sha256_hex(sha256).expect("a pin"))
}

async fn connect_error(url: &str, config: &RallyConfig) -> Error {
    match Rally::connect_with(url, config).await {
        Ok(_) => panic!("{url} was accepted with {config:?}"),
        Err(error) => error,
    }
}

fn tls_reason(error: Error) -> String {
    match error {
        Error::Tls(reason) => reason,
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_signs_in_and_attaches_over_tls_with_a_self_hosted_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Studio CA");
    let folder = TlsFolder::new(dir.path());
    folder.install(&ca.issue(&["localhost", "127.0.0.1"], Validity::Current));
    let server = tls_server(&folder).await;

    for host in ["localhost", "127.0.0.1"] {
        let rally = Rally::connect_with(&url(&server, host), &ca_trust(&ca))
            .await
            .expect("TLS with the studio's CA");
        let session = rally
            .device_login(&format!("tls-device-{host}-0123456789"), "Ada")
            .await
            .expect("sign in over TLS");
        let (link, mut events) =
            BrokerLink::attach(&session, rally_e2e::fixtures::announcement(0xA1))
                .await
                .expect("attach over TLS");
        assert!(matches!(
            next(&mut events).await,
            BrokerEvent::Attached { .. }
        ));
        link.room_presence()
            .await
            .expect("a request on the attachment");
        link.shutdown();
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_the_sdk_must_refuse_are_refused_with_a_tls_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Studio CA");
    let stranger = TestCa::new("Someone else's CA");
    let folder = TlsFolder::new(dir.path());
    let good = ca.issue(&["localhost"], Validity::Current);
    folder.install(&good);
    let server = tls_server(&folder).await;
    let at_localhost = url(&server, "localhost");

    let reason = tls_reason(connect_error(&at_localhost, &ca_trust(&stranger)).await);
    assert!(reason.contains("UnknownIssuer"), "another CA: {reason}");
    let reason = tls_reason(connect_error(&at_localhost, &RallyConfig::default()).await);
    assert!(reason.contains("UnknownIssuer"), "public roots: {reason}");
    let reason = tls_reason(connect_error(&url(&server, "127.0.0.1"), &ca_trust(&ca)).await);
    assert!(
        reason.contains("not valid for name"),
        "another name: {reason}"
    );
    let reason = tls_reason(connect_error(&at_localhost, &pinned(&"00".repeat(32))).await);
    assert!(
        reason.contains("ApplicationVerificationFailure"),
        "another pin: {reason}"
    );
    // The pinned certificate itself is accepted whatever name it was reached by.
    Rally::connect_with(&url(&server, "127.0.0.1"), &pinned(&good.sha256))
        .await
        .expect("the pinned certificate");

    // Plaintext toward a TLS server fails; a CA with an http:// URL is refused before sending.
    let plain = format!("http://127.0.0.1:{}", server.addr().port());
    let plain_error = match Rally::connect(&plain).await {
        Ok(rally) => rally
            .device_login("tls-plain-0123456789", "Ada")
            .await
            .expect_err("plaintext to a TLS server"),
        Err(error) => error,
    };
    assert!(
        matches!(plain_error, Error::Unreachable(_)),
        "{plain_error:?}"
    );
    assert!(matches!(
        connect_error(&plain, &ca_trust(&ca)).await,
        Error::InvalidUrl { .. }
    ));

    // An expired certificate, from the right CA for the right name.
    folder.install(&ca.issue(&["localhost"], Validity::Expired));
    assert!(server.reload_tls(), "the expired certificate is served");
    let reason = tls_reason(connect_error(&at_localhost, &ca_trust(&ca)).await);
    assert!(reason.contains("certificate expired"), "expired: {reason}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_reaches_new_connections_while_an_open_attachment_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Studio CA");
    let folder = TlsFolder::new(dir.path());
    let first = ca.issue(&["localhost"], Validity::Current);
    folder.install(&first);
    let server = tls_server(&folder).await;
    assert_eq!(
        server.tls_fingerprint().as_deref(),
        Some(first.sha256.as_str())
    );

    let rally = Rally::connect_with(&url(&server, "localhost"), &pinned(&first.sha256))
        .await
        .expect("the first certificate");
    let session = rally
        .device_login("tls-rotation-0123456789", "Ada")
        .await
        .expect("sign in");
    let (link, mut events) = BrokerLink::attach(&session, rally_e2e::fixtures::announcement(0xA1))
        .await
        .expect("attach");
    assert!(matches!(
        next(&mut events).await,
        BrokerEvent::Attached { .. }
    ));

    // Renewal in place, as cert-manager or an ACME client does it: the watcher picks it up.
    let second = ca.issue(&["localhost"], Validity::Current);
    folder.install(&second);
    let deadline = Instant::now() + WAIT;
    while server.tls_fingerprint().as_deref() != Some(second.sha256.as_str()) {
        assert!(
            Instant::now() < deadline,
            "the renewed files were not picked up in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    Rally::connect_with(&url(&server, "localhost"), &pinned(&second.sha256))
        .await
        .expect("a new connection gets the new certificate");
    let reason =
        tls_reason(connect_error(&url(&server, "localhost"), &pinned(&first.sha256)).await);
    assert!(
        reason.contains("ApplicationVerificationFailure"),
        "{reason}"
    );

    // The attachment made before the renewal still answers, and never detached.
    link.room_presence()
        .await
        .expect("the open attachment answers");
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, BrokerEvent::Detached { .. }),
            "the attachment was cut by the renewal: {event:?}"
        );
    }
    assert!(link.is_attached());
    link.shutdown();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_reach_a_plaintext_health_listener_that_serves_nothing_else() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Studio CA");
    let folder = TlsFolder::new(dir.path());
    folder.install(&ca.issue(&["localhost"], Validity::Current));
    let mut flags = folder.flags();
    flags.extend(["--health-listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = TestServer::start_with(Backend::Sqlite, &flags)
        .await
        .expect("SQLite server");
    let health = format!("http://{}", server.health_addr().expect("a health address"));
    let channel = rally_client::connect(&health)
        .await
        .expect("plaintext health");
    for service in ["", "rally.broker.v1.Broker"] {
        let answer = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers in plaintext")
            .into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32, "{service:?}");
    }
    // Nothing else is served there: no sign-in in plaintext.
    let error = Rally::from_channel(channel)
        .device_login("tls-health-0123456789", "Ada")
        .await
        .expect_err("identity is not on the health listener");
    assert!(
        matches!(
            error,
            Error::Rpc {
                code: tonic::Code::Unimplemented,
                ..
            }
        ),
        "{error:?}"
    );
    server.stop().await;
}

async fn next(events: &mut tokio::sync::mpsc::Receiver<BrokerEvent>) -> BrokerEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("the link is open")
}

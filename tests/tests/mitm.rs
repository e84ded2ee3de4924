//! A man in the middle between two SDK clients and `rallyd` that rewrites the certificate
//! fingerprints (and candidates) the broker sends: over plaintext it ends up reading what one
//! player sends the other, "end-to-end encrypted" QUIC notwithstanding; over TLS the SDK refuses
//! its certificate and no call reaches it.

use std::time::Duration;

use rally_client::net::{Net, NetConfig, NetEvent, SendPolicy};
use rally_client::{Error, Rally, RallyConfig, ServerTrust};
use rally_e2e::mitm::Mitm;
use rally_e2e::pki::{TestCa, TlsFolder, Validity};
use rally_e2e::{Backend, TestServer};

const WAIT: Duration = Duration::from_secs(20);

async fn player(url: &str, config: &RallyConfig, name: &str) -> Net {
    let session = Rally::connect_with(url, config)
        .await
        .expect("connect")
        .device_login(
            &format!("mitm-{name}-{}", uuid::Uuid::new_v4().simple()),
            name,
        )
        .await
        .expect("sign in");
    let mut net_config = NetConfig::default();
    net_config.transport.bind = "127.0.0.1:0".parse().expect("an address");
    Net::start(&session, net_config).await.expect("Net")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_plaintext_a_proxy_that_rewrites_fingerprints_reads_the_players_traffic() {
    let server = TestServer::start(Backend::Sqlite).await.expect("SQLite");
    let mitm = Mitm::start(&format!("http://{}", server.addr())).await;
    let through = format!("http://{}", mitm.addr());
    let config = RallyConfig::default();
    let ada = player(&through, &config, "ada").await;
    let bob = player(&through, &config, "bob").await;

    ada.connect(bob.user_id()).await.expect("connect");
    let accepted = async {
        loop {
            match bob.next_event().await {
                Some(NetEvent::PeerConnectRequest { user }) if user == ada.user_id() => {
                    return bob.accept(user).await;
                }
                Some(_) => {}
                None => panic!("bob's Net stopped"),
            }
        }
    };
    tokio::time::timeout(WAIT, accepted)
        .await
        .expect("the request reached bob")
        .expect("accept");
    // Ada believes she is connected to Bob: she is connected to the attacker, whose certificate
    // the rewritten PeerInfo told her to pin.
    let connected = async {
        while !ada.is_connected(bob.user_id()) {
            ada.next_event().await;
        }
    };
    tokio::time::timeout(WAIT, connected)
        .await
        .expect("ada connects to the certificate the proxy chose");
    ada.send_packet(
        bob.user_id(),
        &b"the secret plan for bob"[..],
        SendPolicy::Reliable,
    )
    .expect("send");
    let read = async {
        while !mitm.read_contains(b"the secret plan for bob") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the attacker reads ada's packet in clear");
    assert!(bob.read_packet().is_none(), "bob never got it");
    ada.shutdown();
    bob.shutdown();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_sdk_refuses_the_proxys_certificate_and_nothing_reaches_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Studio CA");
    let folder = TlsFolder::new(dir.path());
    folder.install(&ca.issue(&["localhost"], Validity::Current));
    let flags = folder.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = TestServer::start_with(Backend::Sqlite, &flags)
        .await
        .expect("SQLite");
    let config = RallyConfig::with_trust(ServerTrust::ca_pem(ca.pem().as_bytes()).expect("CA"));
    // The real server is reachable with this trust...
    Rally::connect_with(
        &format!("https://localhost:{}", server.addr().port()),
        &config,
    )
    .await
    .expect("the real server");
    // ...the proxy, with a certificate of its own for the same name, is not.
    let (mitm, handshakes) = Mitm::start_tls("localhost").await;
    let through = format!("https://localhost:{}", mitm.addr().port());
    for trust in [config.clone(), RallyConfig::default()] {
        match Rally::connect_with(&through, &trust).await {
            Err(Error::Tls(reason)) => assert!(reason.contains("UnknownIssuer"), "{reason}"),
            other => panic!("the proxy was accepted: {other:?}"),
        }
    }
    assert_eq!(handshakes.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(mitm.calls(), 0, "no call reached the proxy");
    server.stop().await;
}

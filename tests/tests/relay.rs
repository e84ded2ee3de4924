//! The relay as `rallyd` runs it: the reflector answers on the relay address; on several
//! addresses it answers from the one a binding request asks for (what a client needs to
//! classify its NAT), and the broker announces them all.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rally_e2e::{Backend, TestServer};
use rally_proto::broker::v1::attach_request::Body as Req;
use rally_proto::broker::v1::attach_response::Body;
use rally_proto::broker::v1::broker_client::BrokerClient;
use rally_proto::broker::v1::{AttachRequest, Hello, SocketAddress};
use rally_proto::identity::v1::DeviceLoginRequest;
use rally_proto::identity::v1::identity_client::IdentityClient;
use rally_relay::wire::{self, Message, RespondFrom};
use rallyd::Running;
use tokio::net::UdpSocket;

/// How long a test waits for an answer it expects.
const WAIT: Duration = Duration::from_secs(10);
/// How long a test waits to be sure that no answer comes.
const SILENCE: Duration = Duration::from_millis(300);

/// A second loopback IP (Linux routes all of 127.0.0.0/8 to `lo`).
const OTHER_LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rallyd_runs_the_reflector_on_its_relay_address() {
    let server = TestServer::start(Backend::Sqlite).await.expect("server");
    let relay = server.relay_addr().expect("the relay runs by default");
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let (from, reflected) = ask(&client, relay, RespondFrom::Same)
        .await
        .expect("an answer within 10 s");
    assert_eq!(from, relay);
    assert_eq!(reflected, client.local_addr().expect("addr"));
    assert!(server.data_dir().join("relay-grant-secret").is_file());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_the_relay_binds_no_udp_port() {
    let server = TestServer::start_with(Backend::Sqlite, &["--services", "identity"])
        .await
        .expect("server");
    assert_eq!(server.relay_addr(), None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflector_on_several_addresses_answers_from_the_address_each_request_asks_for() {
    let (rallyd, _data) = boot("127.0.0.1:0,127.0.0.2:0,127.0.0.1:0").await;
    let addrs = rallyd.relay_addrs().to_vec();
    let [first, other_ip, other_port] = addrs[..] else {
        panic!("three relay addresses, got {addrs:?}");
    };
    assert_eq!(rallyd.relay_addr(), Some(first));
    assert_eq!(first.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(other_ip.ip(), OTHER_LOOPBACK);
    assert_eq!(other_port.ip(), first.ip());
    assert_ne!(other_port.port(), first.port());

    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = client.local_addr().expect("addr");
    for (respond_from, expected) in [
        (RespondFrom::Same, first),
        (RespondFrom::OtherAddress, other_ip),
        (RespondFrom::OtherPort, other_port),
    ] {
        let (from, reflected) = ask(&client, first, respond_from)
            .await
            .unwrap_or_else(|| panic!("{respond_from:?}: no answer within {WAIT:?}"));
        assert_eq!(
            reflected, me,
            "{respond_from:?} reflects the client's address"
        );
        assert_eq!(from, expected, "{respond_from:?} answered from");
    }
    // Asked at the second IP, another address is on the first IP.
    let (from, reflected) = ask(&client, other_ip, RespondFrom::OtherAddress)
        .await
        .expect("an answer within 10 s");
    assert_eq!((from.ip(), reflected), (first.ip(), me));
    // But the second IP has no other port.
    assert_eq!(
        ask_expecting_silence(&client, other_ip, RespondFrom::OtherPort).await,
        None,
        "answered OtherPort on an IP with one port"
    );
    // Its socket handles datagrams in order: this answer proves the last request was handled.
    let (from, _) = ask(&client, other_ip, RespondFrom::Same)
        .await
        .expect("an answer within 10 s");
    assert_eq!(from, other_ip);

    let counters = rallyd.relay_counters().expect("the relay runs");
    assert_eq!(
        (counters.bindings, counters.bindings_unanswerable),
        (5, 1),
        "{counters:?}"
    );
    stop(rallyd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflector_on_one_address_leaves_requests_for_another_unanswered_and_counts_them() {
    let (rallyd, _data) = boot("127.0.0.1:0").await;
    let relay = rallyd.relay_addr().expect("the relay runs");
    assert_eq!(rallyd.relay_addrs(), [relay]);
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for respond_from in [RespondFrom::OtherAddress, RespondFrom::OtherPort] {
        assert_eq!(
            ask_expecting_silence(&client, relay, respond_from).await,
            None,
            "{respond_from:?} answered by a relay with one address"
        );
    }
    // It still answers where it can; its socket handles datagrams in order, so this answer
    // also proves both requests were handled.
    let (from, reflected) = ask(&client, relay, RespondFrom::Same)
        .await
        .expect("an answer within 10 s");
    assert_eq!(
        (from, reflected),
        (relay, client.local_addr().expect("addr"))
    );
    let counters = rallyd.relay_counters().expect("the relay runs");
    assert_eq!(
        (counters.bindings, counters.bindings_unanswerable),
        (1, 2),
        "{counters:?}"
    );
    stop(rallyd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_announces_every_relay_address_as_a_reflector() {
    let (rallyd, _data) = boot("127.0.0.1:0,127.0.0.2:0,127.0.0.1:0").await;
    let channel = rally_client::connect(&format!("http://{}", rallyd.grpc_addr()))
        .await
        .expect("connect to rallyd");
    let session = IdentityClient::new(channel.clone())
        .device_login(DeviceLoginRequest {
            device_id: format!("e2e-relay-{}", uuid::Uuid::new_v4().simple()),
            display_name: "reflected".into(),
        })
        .await
        .expect("device login")
        .into_inner()
        .session
        .expect("session");
    let hello = AttachRequest {
        request_id: 1,
        body: Some(Req::Hello(Hello {
            certificate_fingerprint: vec![1; 32],
            client_version: "rally-e2e/0".into(),
            ..Hello::default()
        })),
    };
    let mut broker = BrokerClient::with_interceptor(
        channel,
        rally_client::Bearer::new(&session.access_token).expect("token is ASCII"),
    );
    // The request stream stays open (the attachment with it) until the end of the test.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(hello).expect("queue the Hello");
    let mut responses = tokio::time::timeout(
        WAIT,
        broker.attach(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)),
    )
    .await
    .expect("the attach call answers within 10 s")
    .expect("attach")
    .into_inner();
    let welcome = match tokio::time::timeout(WAIT, responses.message()).await {
        Ok(Ok(Some(message))) => message.body,
        other => panic!("expected Welcome within {WAIT:?}, got {other:?}"),
    };
    let Some(Body::Welcome(welcome)) = welcome else {
        panic!("expected Welcome, got {welcome:?}");
    };
    let announced: Vec<SocketAddress> = rallyd
        .relay_addrs()
        .iter()
        .map(|addr| SocketAddress {
            ip: addr.ip().to_string(),
            port: u32::from(addr.port()),
        })
        .collect();
    assert_eq!(announced.len(), 3);
    assert_eq!(welcome.reflector_addresses, announced, "all, in order");
    drop(tx);
    stop(rallyd).await;
}

/// Starts a `rallyd` (every service, SQLite) whose relay listens on `relay_listen`; the data
/// directory lives as long as the second value.
async fn boot(relay_listen: &str) -> (Running, tempfile::TempDir) {
    let data = tempfile::tempdir().expect("temporary data directory");
    let data_dir = data.path().display().to_string();
    let config = <rallyd::Config as clap::Parser>::try_parse_from([
        "rallyd",
        "--listen",
        "127.0.0.1:0",
        "--relay-listen",
        relay_listen,
        "--data-dir",
        &data_dir,
    ])
    .expect("test config parses");
    let running = rallyd::start(config).await.expect("rallyd starts");
    (running, data)
}

async fn stop(rallyd: Running) {
    tokio::time::timeout(Duration::from_secs(30), rallyd.stop())
        .await
        .expect("rallyd did not stop within 30 s")
        .expect("rallyd stopped with an error");
}

/// Sends a binding request to `relay` asking for `respond_from`; returns where the answer came
/// from and the address it reflects, or `None` when nothing came within `wait`.
async fn ask_within(
    client: &UdpSocket,
    relay: SocketAddr,
    respond_from: RespondFrom,
    wait: Duration,
) -> Option<(SocketAddr, SocketAddr)> {
    let transaction: [u8; 12] = *uuid::Uuid::new_v4()
        .as_bytes()
        .first_chunk()
        .expect("16 bytes");
    let mut request = Vec::new();
    wire::encode(
        &Message::BindingRequest {
            transaction,
            respond_from,
        },
        &mut request,
    );
    client.send_to(&request, relay).await.expect("send");
    let mut buf = [0u8; 128];
    let (len, from) = match tokio::time::timeout(wait, client.recv_from(&mut buf)).await {
        Ok(received) => received.expect("receive"),
        Err(_) => return None,
    };
    match wire::decode(&buf[..len]) {
        Ok(Message::BindingResponse {
            transaction: answered,
            address,
        }) if answered == transaction => Some((from, address)),
        other => panic!("expected the binding response to {transaction:?}, got {other:?}"),
    }
}

/// [`ask_within`] with a wait long enough for an answer.
async fn ask(
    client: &UdpSocket,
    relay: SocketAddr,
    respond_from: RespondFrom,
) -> Option<(SocketAddr, SocketAddr)> {
    ask_within(client, relay, respond_from, WAIT).await
}

/// [`ask_within`] for a request that should go unanswered: a bounded wait for nothing.
async fn ask_expecting_silence(
    client: &UdpSocket,
    relay: SocketAddr,
    respond_from: RespondFrom,
) -> Option<(SocketAddr, SocketAddr)> {
    ask_within(client, relay, respond_from, SILENCE).await
}

//! The SDK's `Net` end to end: clients signed in to a real `rallyd`, connecting through its
//! broker and exchanging packets directly over QUIC on loopback.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use rally_client::net::{
    ConnectionState, Mapping, NatClass, Net, NetConfig, NetEvent, Packet, Path, PeerStats,
    RelayPolicy, SendPolicy,
};
use rally_client::{Error, Rally, Session};
use rally_e2e::{Backend, TestServer};
use uuid::Uuid;

/// How long a test waits for one expected event or packet.
const WAIT: Duration = Duration::from_secs(20);

struct Client {
    session: Session,
    net: Net,
    user: Uuid,
}

fn loopback_config() -> NetConfig {
    let mut config = NetConfig::default();
    config.transport.bind = "127.0.0.1:0".parse().expect("address");
    config
}

async fn client_with(server: &TestServer, name: &str, config: NetConfig) -> Client {
    let rally = Rally::connect(&format!("http://{}", server.addr()))
        .await
        .expect("connect");
    let session = rally
        .device_login(&format!("sdk-net-{name}-{}", Uuid::new_v4().simple()), name)
        .await
        .expect("device login");
    let net = Net::start(&session, config).await.expect("net starts");
    Client {
        user: session.user_id(),
        session,
        net,
    }
}

async fn client(server: &TestServer, name: &str) -> Client {
    client_with(server, name, loopback_config()).await
}

async fn event(net: &Net) -> NetEvent {
    tokio::time::timeout(WAIT, net.next_event())
        .await
        .expect("an event in time")
        .expect("net is running")
}

/// Reads events until `user` reaches `state`; fails on any other final state for that user.
async fn until_state(net: &Net, user: Uuid, state: ConnectionState) {
    loop {
        if let NetEvent::ConnectionStateChanged {
            user: who,
            state: now,
        } = event(net).await
            && who == user
        {
            if now == state {
                return;
            }
            assert_eq!(
                now,
                ConnectionState::Connecting,
                "{user} went {now:?}, not {state:?}"
            );
        }
    }
}

async fn packet(net: &Net) -> Packet {
    tokio::time::timeout(WAIT, net.recv())
        .await
        .expect("a packet in time")
        .expect("net is running")
}

/// A connects to B, B accepts; both see Connected.
async fn connect_pair(a: &Client, b: &Client) {
    a.net.connect(b.user).await.expect("connect");
    loop {
        match event(&b.net).await {
            NetEvent::PeerConnectRequest { user } if user == a.user => break,
            _ => continue,
        }
    }
    b.net.accept(a.user).await.expect("accept");
    until_state(&a.net, b.user, ConnectionState::Connected).await;
    until_state(&b.net, a.user, ConnectionState::Connected).await;
    assert!(a.net.is_connected(b.user));
    assert!(b.net.is_connected(a.user));
}

async fn create_room(owner: &Client, members: &[&Client]) -> String {
    use rally_proto::rooms::v1::CreateRoomRequest;
    let room = owner
        .session
        .rooms()
        .create_room(CreateRoomRequest {
            capacity: 16,
            ..Default::default()
        })
        .await
        .expect("create room")
        .room
        .expect("room");
    for member in members {
        member
            .session
            .rooms()
            .join_room(&room.room_id)
            .await
            .expect("join");
    }
    room.room_id
}

async fn connect_accept_and_exchange_both_policies(server: &TestServer) {
    let a = client(server, "ada").await;
    let b = client(server, "bob").await;
    connect_pair(&a, &b).await;
    a.net
        .send_packet(b.user, &b"hello reliably"[..], SendPolicy::Reliable)
        .expect("send");
    let got = packet(&b.net).await;
    assert_eq!(
        got.sender, a.user,
        "the sender comes from the pinned certificate"
    );
    assert_eq!(&got.data[..], b"hello reliably");
    assert_eq!(got.policy, SendPolicy::Reliable);
    b.net
        .send_packet(a.user, &b"hi unreliably"[..], SendPolicy::Unreliable)
        .expect("send");
    let got = packet(&a.net).await;
    assert_eq!((got.sender, &got.data[..]), (b.user, &b"hi unreliably"[..]));
    let stats = a.net.stats(b.user).expect("stats");
    assert_eq!(stats.state, ConnectionState::Connected);
    assert_eq!(stats.path, Some(rally_client::net::Path::Direct));
    assert!(stats.rtt.is_some());
    assert_eq!(stats.reliable_sent, 1);
    assert_eq!(stats.unreliable_received, 1);
}

rally_e2e::on_both_backends!(connect_accept_and_exchange_both_policies);

async fn sqlite() -> TestServer {
    TestServer::start(Backend::Sqlite).await.expect("server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_closes_the_requesters_side() {
    let server = sqlite().await;
    let a = client(&server, "ada").await;
    let b = client(&server, "bob").await;
    a.net.connect(b.user).await.expect("connect");
    assert_eq!(
        event(&a.net).await,
        NetEvent::ConnectionStateChanged {
            user: b.user,
            state: ConnectionState::Connecting
        }
    );
    assert_eq!(
        event(&b.net).await,
        NetEvent::PeerConnectRequest { user: a.user }
    );
    b.net.close(a.user).await.expect("refuse");
    until_state(&a.net, b.user, ConnectionState::Closed).await;
    assert!(!a.net.is_connected(b.user));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_an_offline_user_is_a_clear_error() {
    let server = sqlite().await;
    let a = client(&server, "ada").await;
    let rally = Rally::connect(&format!("http://{}", server.addr()))
        .await
        .expect("connect");
    let offline = rally
        .device_login("sdk-net-offline-0123456789", "off")
        .await
        .expect("login");
    match a.net.connect(offline.user_id()).await {
        Err(Error::Broker { code, .. }) => {
            assert_eq!(code, rally_proto::broker::v1::ErrorCode::UserOffline);
        }
        other => panic!("expected a broker error, got {other:?}"),
    }
    assert!(matches!(
        a.net.connect(a.user).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_send_connects_implicitly_and_reliable_packets_wait_for_it() {
    let server = sqlite().await;
    let a = client(&server, "ada").await;
    let b = client(&server, "bob").await;
    a.net
        .send_packet(
            b.user,
            &b"queued before the connection"[..],
            SendPolicy::Reliable,
        )
        .expect("buffered");
    a.net
        .send_packet(b.user, &b"lost: not connected"[..], SendPolicy::Unreliable)
        .expect("dropped and counted");
    assert_eq!(
        event(&b.net).await,
        NetEvent::PeerConnectRequest { user: a.user }
    );
    b.net.accept(a.user).await.expect("accept");
    let got = packet(&b.net).await;
    assert_eq!(&got.data[..], b"queued before the connection");
    let stats = a.net.stats(b.user).expect("stats");
    assert_eq!(stats.unreliable_sent, 1);
    assert_eq!(stats.unreliable_dropped_not_connected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_for_current_room_auto_accepts_room_members_only() {
    let server = sqlite().await;
    let a = client(&server, "ada").await;
    let b = client(&server, "bob").await;
    let c = client(&server, "cy").await;
    assert!(
        !b.net.accept_for_current_room().await.expect("query"),
        "in no room yet"
    );
    create_room(&a, &[&b]).await;
    assert!(b.net.accept_for_current_room().await.expect("query"));
    // A room member is accepted without asking the game.
    a.net.connect(b.user).await.expect("connect");
    until_state(&a.net, b.user, ConnectionState::Connected).await;
    until_state(&b.net, a.user, ConnectionState::Connected).await;
    // Someone outside the room still has to be accepted by the game.
    c.net.connect(b.user).await.expect("connect");
    loop {
        match event(&b.net).await {
            NetEvent::PeerConnectRequest { user } => {
                assert_eq!(user, c.user);
                break;
            }
            NetEvent::ConnectionStateChanged { user, .. } => {
                assert_ne!(user, c.user, "{user} was accepted without asking");
            }
            NetEvent::PingResult { .. } | NetEvent::ConnectionFailed { .. } => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn room_fan_out_reaches_every_other_member_exactly_once() {
    let server = sqlite().await;
    let a = client(&server, "ada").await;
    let others = [
        client(&server, "bob").await,
        client(&server, "cy").await,
        client(&server, "dee").await,
    ];
    let refs: Vec<&Client> = others.iter().collect();
    create_room(&a, &refs).await;
    for other in &others {
        assert!(other.net.accept_for_current_room().await.expect("query"));
    }
    for round in [&b"one"[..], &b"two"[..]] {
        assert!(
            a.net
                .send_packet_to_current_room(round, SendPolicy::Reliable)
                .await
                .expect("fan out")
        );
    }
    for other in &others {
        let first = packet(&other.net).await;
        let second = packet(&other.net).await;
        assert_eq!((first.sender, &first.data[..]), (a.user, &b"one"[..]));
        assert_eq!((second.sender, &second.data[..]), (a.user, &b"two"[..]));
    }
    assert!(
        a.net.read_packet().is_none(),
        "the sender gets nothing of its own"
    );
}

/// A deterministic pseudo-random payload for packet `index` of `len` bytes.
fn payload(index: u32, len: usize) -> Bytes {
    let mut state = u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(len);
    bytes.extend_from_slice(&index.to_be_bytes()[..len.min(4)]);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.push(state as u8);
    }
    Bytes::from(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_reliable_packets_arrive_in_order_and_intact() {
    let server = sqlite().await;
    let a = client(&server, "ada").await;
    let b = client(&server, "bob").await;
    connect_pair(&a, &b).await;
    let max = rally_client::net::framing::MAX_RELIABLE_PAYLOAD;
    let size = move |i: u32| -> usize {
        let mixed = (u64::from(i).wrapping_mul(2_654_435_761) % 1_000_003) as usize;
        if i.is_multiple_of(100) {
            max - (mixed % 64)
        } else {
            4 + mixed % 2048
        }
    };
    let sender = {
        let net = a.net.clone();
        let to = b.user;
        tokio::spawn(async move {
            for i in 0..10_000u32 {
                loop {
                    match net.send_packet(to, payload(i, size(i)), SendPolicy::Reliable) {
                        Ok(()) => break,
                        // Bounded buffer: wait for it to drain (the reader is running).
                        Err(Error::SendBufferFull) => tokio::task::yield_now().await,
                        Err(error) => panic!("send {i}: {error}"),
                    }
                }
            }
        })
    };
    for i in 0..10_000u32 {
        let got = packet(&b.net).await;
        assert_eq!(got.data, payload(i, size(i)), "packet {i}");
    }
    sender.await.expect("sender");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_size_limits_hold_exactly() {
    let server = sqlite().await;
    let a = client(&server, "ada").await;
    let b = client(&server, "bob").await;
    connect_pair(&a, &b).await;
    let max = rally_client::net::framing::MAX_RELIABLE_PAYLOAD;
    assert_eq!(max + 2, 65535, "the limit includes Rally's 2-byte framing");
    match a
        .net
        .send_packet(b.user, vec![0u8; max + 1], SendPolicy::Reliable)
    {
        Err(Error::PacketTooLarge { size, max: limit }) => {
            assert_eq!((size, limit), (max + 1, max))
        }
        other => panic!("expected PacketTooLarge, got {other:?}"),
    }
    match a
        .net
        .send_packet(b.user, vec![0u8; 1201], SendPolicy::Unreliable)
    {
        Err(Error::PacketTooLarge { size, max }) => assert_eq!((size, max), (1201, 1200)),
        other => panic!("expected PacketTooLarge, got {other:?}"),
    }
    a.net
        .send_packet(b.user, payload(1, max), SendPolicy::Reliable)
        .expect("at the limit");
    assert_eq!(packet(&b.net).await.data, payload(1, max));
    assert!(matches!(
        a.net
            .send_packet(b.user, vec![0u8; 4], SendPolicy::ReliableLane(8)),
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_size_unreliable_packet_sent_the_moment_the_connection_is_up_arrives() {
    let server = sqlite().await;
    let a = client(&server, "ada").await;
    let b = client(&server, "bob").await;
    a.net.connect(b.user).await.expect("connect");
    assert_eq!(
        event(&b.net).await,
        NetEvent::PeerConnectRequest { user: a.user }
    );
    b.net.accept(a.user).await.expect("accept");
    until_state(&a.net, b.user, ConnectionState::Connected).await;
    a.net
        .send_packet(b.user, payload(7, 1200), SendPolicy::Unreliable)
        .expect("send");
    let got = packet(&b.net).await;
    assert_eq!(got.data, payload(7, 1200));
    assert_eq!(got.policy, SendPolicy::Unreliable);
}

/// Sends unreliable markers from A to B until B's books balance with A's: every unreliable
/// packet A handed over is received, counted lost, or counted as dropped locally. Losses after
/// the last packet that arrived show as gaps only once a later one arrives, so each marker that
/// arrives closes every gap before it. `settle` is how long to wait after each marker (longer
/// than any lag A adds). Returns (A's stats of B, B's stats of A) once they balance.
async fn balance_unreliable_books(
    a: &Client,
    b: &Client,
    settle: Duration,
) -> (PeerStats, PeerStats) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while b.net.read_packet().is_some() {}
        let sent = a.net.stats(b.user).expect("stats");
        let seen = b.net.stats(a.user).expect("stats");
        let local = sent.unreliable_dropped_not_connected + sent.unreliable_dropped_queue_full;
        if sent.unreliable_sent == seen.unreliable_received + seen.unreliable_lost + local {
            return (sent, seen);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "books never balanced: {sent:?} vs {seen:?}"
        );
        a.net
            .send_packet(b.user, &b"marker"[..], SendPolicy::Unreliable)
            .expect("marker");
        tokio::time::sleep(settle).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_unreliable_packet_is_delivered_or_counted() {
    let server = sqlite().await;
    let a = client(&server, "ada").await;
    let b = client(&server, "bob").await;
    connect_pair(&a, &b).await;
    for i in 0..20_000u32 {
        a.net
            .send_packet(b.user, payload(i, 1200), SendPolicy::Unreliable)
            .expect("send");
        if i.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    let (sent, seen) = balance_unreliable_books(&a, &b, Duration::from_millis(20)).await;
    assert!(seen.unreliable_received > 0);
    println!(
        "sent {} received {} lost {} dropped locally {}",
        sent.unreliable_sent,
        seen.unreliable_received,
        seen.unreliable_lost,
        sent.unreliable_dropped_not_connected + sent.unreliable_dropped_queue_full
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sender_that_waits_for_room_has_nothing_refused_or_dropped_locally() {
    let server = sqlite().await;
    let mut config = loopback_config();
    // A small reliable buffer: 300 packets of 60 000 bytes fill it many times over.
    config.send_buffer_bytes = 128 << 10;
    let a = client_with(&server, "ada", config).await;
    let b = client(&server, "bob").await;
    connect_pair(&a, &b).await;

    // Unreliable: 10 000 full-size packets as fast as `send` returns; the queue never refuses.
    for i in 0..10_000u32 {
        tokio::time::timeout(
            WAIT,
            a.net.send(b.user, payload(i, 1200), SendPolicy::Unreliable),
        )
        .await
        .expect("room in the datagram queue")
        .expect("send");
        while b.net.read_packet().is_some() {}
    }
    let (sent, seen) = balance_unreliable_books(&a, &b, Duration::from_millis(20)).await;
    assert_eq!(sent.unreliable_dropped_queue_full, 0, "{sent:?}");
    assert_eq!(sent.unreliable_dropped_not_connected, 0, "{sent:?}");
    assert!(sent.unreliable_sent >= 10_000, "{sent:?}");
    println!(
        "waiting sender: sent {} received {} lost {}",
        sent.unreliable_sent, seen.unreliable_received, seen.unreliable_lost
    );

    // Reliable: every `send` is taken in the end, and all arrive in order and intact.
    let sender = {
        let net = a.net.clone();
        let to = b.user;
        tokio::spawn(async move {
            for i in 0..300u32 {
                tokio::time::timeout(WAIT, net.send(to, payload(i, 60_000), SendPolicy::Reliable))
                    .await
                    .expect("room in the send buffer")
                    .expect("send");
            }
        })
    };
    for i in 0..300u32 {
        assert_eq!(packet(&b.net).await.data, payload(i, 60_000), "packet {i}");
    }
    sender.await.expect("sender");
    // A packet that can never fit the buffer is refused at once rather than waited for.
    let mut small = loopback_config();
    small.send_buffer_bytes = 1000;
    let c = client_with(&server, "cy", small).await;
    connect_pair(&c, &b).await;
    assert!(matches!(
        c.net
            .send(b.user, payload(1, 2000), SendPolicy::Reliable)
            .await,
        Err(Error::SendBufferFull)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_measures_the_round_trip() {
    let server = sqlite().await;
    let a = client(&server, "ada").await;
    let b = client(&server, "bob").await;
    assert!(matches!(a.net.ping(b.user), Err(Error::NotConnected)));
    connect_pair(&a, &b).await;
    let id = a.net.ping(b.user).expect("ping");
    loop {
        if let NetEvent::PingResult { user, ping_id, rtt } = event(&a.net).await {
            assert_eq!((user, ping_id), (b.user, id));
            assert!(rtt.expect("answered") < WAIT);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_the_connection_on_both_sides() {
    let server = sqlite().await;
    let a = client(&server, "ada").await;
    let b = client(&server, "bob").await;
    connect_pair(&a, &b).await;
    a.net.close(b.user).await.expect("close");
    until_state(&a.net, b.user, ConnectionState::Closed).await;
    until_state(&b.net, a.user, ConnectionState::Closed).await;
    assert!(!a.net.is_connected(b.user));
    assert!(!b.net.is_connected(a.user));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let server = sqlite().await;
    let mut config = loopback_config();
    config.idle_timeout = Some(Duration::from_millis(300));
    let a = client_with(&server, "ada", config).await;
    let b = client(&server, "bob").await;
    connect_pair(&a, &b).await;
    until_state(&a.net, b.user, ConnectionState::Closed).await;
    until_state(&b.net, a.user, ConnectionState::Closed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_keeps_a_connection_open_past_the_idle_timeout() {
    let server = sqlite().await;
    let idle = Duration::from_secs(1);
    let mut config = loopback_config();
    config.idle_timeout = Some(idle);
    let a = client_with(&server, "ada", config.clone()).await;
    let b = client_with(&server, "bob", config).await;
    connect_pair(&a, &b).await;
    // Unreliable packets one way for three idle timeouts: the sender's and the receiver's
    // traffic both count, so neither side closes.
    let started = std::time::Instant::now();
    let mut pace = tokio::time::interval(idle / 10);
    for i in 0..30u32 {
        pace.tick().await;
        a.net
            .send_packet(b.user, payload(i, 100), SendPolicy::Unreliable)
            .expect("send");
    }
    assert!(started.elapsed() >= idle * 2);
    assert!(
        a.net.is_connected(b.user),
        "the sender closed a busy connection"
    );
    assert!(
        b.net.is_connected(a.user),
        "the receiver closed a busy connection"
    );
    // Quiet again: both sides close.
    until_state(&a.net, b.user, ConnectionState::Closed).await;
    until_state(&b.net, a.user, ConnectionState::Closed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_keep_talking_when_the_control_plane_goes_away() {
    let server = sqlite().await;
    let a = client(&server, "ada").await;
    let b = client(&server, "bob").await;
    connect_pair(&a, &b).await;
    server.stop().await;
    for i in 0..100u32 {
        a.net
            .send_packet(b.user, payload(i, 500), SendPolicy::Reliable)
            .expect("send");
    }
    for i in 0..100u32 {
        assert_eq!(packet(&b.net).await.data, payload(i, 500));
    }
    assert!(a.net.is_connected(b.user));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_loop_can_pump_events_and_packets_once_a_frame() {
    let server = sqlite().await;
    let a = client(&server, "ada").await;
    let b = client(&server, "bob").await;
    a.net.connect(b.user).await.expect("connect");
    let mut received: HashMap<Uuid, Vec<Bytes>> = HashMap::new();
    let mut sent = false;
    let deadline = std::time::Instant::now() + WAIT;
    // Two "games" pumping at 200 frames per second, with no async waiting on Net at all.
    while received.get(&a.user).is_none_or(|p| p.is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the game loop got nowhere"
        );
        while let Some(event) = b.net.poll_event() {
            if let NetEvent::PeerConnectRequest { user } = event {
                b.net.accept(user).await.expect("accept");
            }
        }
        while a.net.poll_event().is_some() {}
        if a.net.is_connected(b.user) && !sent {
            a.net
                .send_packet(b.user, &b"frame data"[..], SendPolicy::Unreliable)
                .expect("send");
            sent = true;
        }
        while let Some(packet) = b.net.read_packet() {
            received.entry(packet.sender).or_default().push(packet.data);
        }
        if sent && a.net.is_connected(b.user) && received.is_empty() {
            // An unreliable packet may be lost: send again next frame.
            sent = false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(&received[&a.user][0][..], b"frame data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_network_drops_and_delays_what_it_is_told_to_and_counts_it() {
    let server = sqlite().await;
    let mut config = loopback_config();
    config.fake = rally_client::net::FakeNetwork {
        loss: 0.5,
        duplicate: 0.0,
        lag: Duration::from_millis(100),
    };
    let a = client_with(&server, "ada", config).await;
    let b = client(&server, "bob").await;
    connect_pair(&a, &b).await;

    let sent_at = std::time::Instant::now();
    a.net
        .send_packet(b.user, &b"late"[..], SendPolicy::Reliable)
        .expect("send");
    assert_eq!(&packet(&b.net).await.data[..], b"late");
    assert!(
        sent_at.elapsed() >= Duration::from_millis(100),
        "the lag was applied"
    );

    for i in 0..400u32 {
        a.net
            .send_packet(b.user, payload(i, 100), SendPolicy::Unreliable)
            .expect("send");
        if i.is_multiple_of(16) {
            tokio::task::yield_now().await;
        }
    }
    // Each marker waits out the 100 ms lag before the next check.
    let (sent, seen) = balance_unreliable_books(&a, &b, Duration::from_millis(150)).await;
    // Simulated losses happen "in the network": the receiver counts them as lost.
    assert!(sent.unreliable_dropped_fake > 0, "{sent:?}");
    assert!(
        seen.unreliable_lost >= sent.unreliable_dropped_fake,
        "{seen:?}"
    );
    assert!(seen.unreliable_received > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_goes_on_across_a_control_plane_restart_and_the_sdk_reattaches() {
    let server = sqlite().await;
    let a = client(&server, "ada").await;
    let b = client(&server, "bob").await;
    connect_pair(&a, &b).await;
    let sender = {
        let net = a.net.clone();
        let to = b.user;
        tokio::spawn(async move {
            for i in 0..2_000u32 {
                net.send_packet(to, payload(i, 300), SendPolicy::Reliable)
                    .expect("send");
                if i.is_multiple_of(50) {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let server = server.restart(&[]).await;
    for i in 0..2_000u32 {
        assert_eq!(packet(&b.net).await.data, payload(i, 300), "packet {i}");
    }
    sender.await.expect("sender");
    assert!(a.net.is_connected(b.user));
    // Ada's SDK attached again by itself: a newcomer's request reaches her.
    let c = client(&server, "cy").await;
    let request = async {
        loop {
            match c.net.connect(a.user).await {
                Ok(()) => return,
                // Ada may not be attached again yet.
                Err(Error::Broker {
                    code: rally_proto::broker::v1::ErrorCode::UserOffline,
                    ..
                }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("connect: {error}"),
            }
        }
    };
    tokio::time::timeout(WAIT, request)
        .await
        .expect("Ada re-attached");
    loop {
        if let NetEvent::PeerConnectRequest { user } = event(&a.net).await {
            assert_eq!(user, c.user);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_network_can_duplicate_unreliable_packets() {
    let server = sqlite().await;
    let mut config = loopback_config();
    config.fake.duplicate = 1.0;
    let a = client_with(&server, "ada", config).await;
    let b = client(&server, "bob").await;
    connect_pair(&a, &b).await;
    for i in 0..50u32 {
        a.net
            .send_packet(b.user, payload(i, 100), SendPolicy::Unreliable)
            .expect("send");
    }
    // More packets arrive than were sent: every one went twice.
    let mut received = 0;
    while received <= 50 {
        let got = packet(&b.net).await;
        assert_eq!(got.sender, a.user);
        received += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_always_relays_is_reached_through_the_relay_and_nothing_is_lost() {
    let server = sqlite().await;
    let mut hiding = loopback_config();
    hiding.relay_policy = RelayPolicy::Always;
    let a = client_with(&server, "hiding", hiding).await;
    let b = client(&server, "open").await;
    connect_pair(&a, &b).await;
    for (net, peer) in [(&a.net, b.user), (&b.net, a.user)] {
        let stats = net.stats(peer).expect("stats");
        assert_eq!(stats.path, Some(Path::Relayed), "{stats:?}");
        assert!(stats.path_since.is_some());
    }
    // The open side sees the hiding side only at its own local relay forwarder.
    let seen = b.net.stats(a.user).and_then(|s| s.remote_addr);
    assert_ne!(seen, Some(a.net.local_addr()));
    let before = server.relay_counters().expect("relay runs").forwarded_bytes;
    for i in 0..1000u32 {
        a.net
            .send_packet(b.user, payload(i, 1000), SendPolicy::Reliable)
            .expect("send");
    }
    for i in 0..1000u32 {
        assert_eq!(packet(&b.net).await.data, payload(i, 1000), "packet {i}");
    }
    // Every byte went through the relay (QUIC packs several packets per datagram).
    let carried = server.relay_counters().expect("relay runs").forwarded_bytes - before;
    assert!(
        carried >= 1_000_000,
        "the relay carried {carried} bytes for 1000 packets of 1000 bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loopback_clients_report_no_nat_and_connect_directly() {
    let server = sqlite().await;
    let a = client(&server, "ada").await;
    let b = client(&server, "bob").await;
    let report = a.net.nat_report();
    assert_eq!(report.mapping, Mapping::NoNat, "{report:?}");
    assert_eq!(report.nat_type, NatClass::Open);
    assert_eq!(report.public_address, Some(a.net.local_addr()));
    connect_pair(&a, &b).await;
    assert_eq!(a.net.stats(b.user).and_then(|s| s.path), Some(Path::Direct));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relayed_connection_outlives_its_first_grant() {
    // Grants of 6 s: the pair renews its allocation at 70% of that, so traffic keeps flowing
    // through the relay for longer than any one grant.
    let server = TestServer::start_with(Backend::Sqlite, &["--relay-grant-ttl-secs", "6"])
        .await
        .expect("sqlite server");
    let mut hiding = loopback_config();
    hiding.relay_policy = RelayPolicy::Always;
    let a = client_with(&server, "hiding", hiding).await;
    let b = client(&server, "open").await;
    connect_pair(&a, &b).await;
    let started = std::time::Instant::now();
    let mut i = 0u32;
    while started.elapsed() < Duration::from_secs(14) {
        a.net
            .send_packet(b.user, payload(i, 100), SendPolicy::Reliable)
            .expect("send");
        assert_eq!(packet(&b.net).await.data, payload(i, 100), "packet {i}");
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.net.is_connected(b.user));
    assert_eq!(
        a.net.stats(b.user).and_then(|s| s.path),
        Some(Path::Relayed)
    );
    let counters = server.relay_counters().expect("relay runs");
    assert_eq!(counters.dropped_over_limit, 0, "{counters:?}");
}

//! The SDK's control plane against a real `rallyd`, on SQLite and Postgres: signing in, tokens
//! that refresh themselves, every rooms and matchmaking call, room and ticket watches, and the
//! broker link (attach, the connect handshake, rejects and refusals as typed errors, relay
//! grants, re-attaching across a server restart, supersede and shutdown).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use rally_client::proto::broker::v1::{
    Candidate, CandidateKind, ErrorCode, NatType, RelayPolicy, SocketAddress,
};
use rally_client::proto::identity::v1::identity_client::IdentityClient;
use rally_client::proto::identity::v1::{GetAccountRequest, LogoutRequest};
use rally_client::proto::rooms::v1::room_event::Kind;
use rally_client::proto::rooms::v1::watch_room_response::Payload;
use rally_client::proto::rooms::v1::{
    CreateRoomRequest, EnqueueRequest, LeaveReason, ListRoomsRequest, RoomEvent, RoomVisibility,
    TicketStatus, UpdateRoomDataRequest, WatchRoomResponse,
};
use rally_client::{Announcement, BrokerEvent, BrokerLink, Error, Rally, Session};
use rally_e2e::{Backend, TestServer, on_both_backends};
use tokio::sync::mpsc::Receiver;
use tonic::Code;
use uuid::Uuid;

/// How long a test waits for one expected thing.
const WAIT: Duration = Duration::from_secs(30);
/// How often a test re-checks a condition it waits for (never a synchronisation by itself).
const POLL: Duration = Duration::from_millis(50);

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

async fn rally(server: &TestServer) -> Rally {
    Rally::connect(&url(server.addr())).await.expect("connect")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..12])
}

async fn device_session(rally: &Rally, name: &str) -> Session {
    rally
        .device_login(&unique("sdk-device-id"), name)
        .await
        .expect("device login")
}

/// Waits until `condition` holds, checking every [`POLL`]; fails the test after [`WAIT`].
async fn wait_until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

// ---- signing in ----

async fn sign_in_three_ways(server: &TestServer) {
    let rally = rally(server).await;
    let username = unique("ada");
    let registered = rally
        .register(&username, "correct horse battery", "Ada")
        .await
        .expect("register");
    assert_eq!(registered.display_name(), "Ada");
    assert!(!registered.access_token().is_empty());
    let logged_in = rally
        .login(&username.to_uppercase(), "correct horse battery")
        .await
        .expect("login");
    assert_eq!(logged_in.user_id(), registered.user_id());
    assert_ne!(logged_in.session_id(), registered.session_id());

    // Refusals are typed.
    let wrong = rally.login(&username, "wrong password!").await;
    assert!(
        matches!(
            wrong,
            Err(Error::Rpc {
                code: Code::Unauthenticated,
                ..
            })
        ),
        "{wrong:?}"
    );
    let taken = rally.register(&username, "another password", "").await;
    assert!(
        matches!(
            taken,
            Err(Error::Rpc {
                code: Code::AlreadyExists,
                ..
            })
        ),
        "{taken:?}"
    );

    // One device id, one account.
    let device = unique("sdk-device-id");
    let first = rally
        .device_login(&device, "Grace")
        .await
        .expect("device login");
    let again = rally
        .device_login(&device, "ignored")
        .await
        .expect("device login");
    assert_eq!(first.user_id(), again.user_id());
    assert_eq!(again.display_name(), "Grace");

    // The session's interceptor works with the generated clients.
    let mut identity = IdentityClient::with_interceptor(first.channel(), first.authorized());
    let account = identity
        .get_account(GetAccountRequest {})
        .await
        .expect("get account")
        .into_inner();
    assert_eq!(account.session_id, first.session_id());

    // Logging out ends the session locally and on the server.
    first.logout().await.expect("logout");
    assert!(first.is_ended());
    assert_eq!(first.access_token(), "");
    assert_eq!(first.rooms().current_room().await, Err(Error::SessionEnded));
    first.logout().await.expect("logging out twice is fine");
    // The other session of the same account is unaffected.
    again
        .rooms()
        .current_room()
        .await
        .expect("other session works");
}

#[tokio::test]
async fn bad_urls_and_absent_servers_are_typed_errors() {
    assert!(matches!(
        Rally::connect("not a url").await,
        Err(Error::InvalidUrl { .. })
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let free = listener.local_addr().expect("addr");
    drop(listener);
    let unreachable = Rally::connect(&url(free)).await;
    assert!(
        matches!(unreachable, Err(Error::Unreachable(_))),
        "{unreachable:?}"
    );
}

/// The unverified `exp` of the current access token.
fn expiry(session: &Session) -> SystemTime {
    session.access_token_expires_at().expect("session is live")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_refresh_by_themselves_before_they_expire() {
    let server = TestServer::start_with(Backend::Sqlite, &["--access-token-ttl-secs", "2"])
        .await
        .expect("server");
    let rally = rally(&server).await;
    let session = device_session(&rally, "Ada").await;
    let first = session.access_token();
    let first_expiry = expiry(&session);
    assert!(first_expiry <= SystemTime::now() + Duration::from_secs(3));

    wait_until("the access token is refreshed", async || {
        session.access_token() != first
    })
    .await;
    assert!(expiry(&session) >= first_expiry);

    // Wait for the first token to expire for real: the server refuses it (after its `exp` and
    // the server's leeway).
    let channel = server.channel().await;
    wait_until("the first access token is refused", async || {
        let bearer = rally_client::Bearer::new(&first).expect("ascii");
        let mut identity = IdentityClient::with_interceptor(channel.clone(), bearer);
        match identity.get_account(GetAccountRequest {}).await {
            Ok(_) => false,
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                true
            }
        }
    })
    .await;
    assert!(SystemTime::now() >= first_expiry);

    // The session carries on with the tokens it refreshed meanwhile.
    assert_eq!(session.rooms().current_room().await, Ok(None));
    let mut identity = IdentityClient::with_interceptor(session.channel(), session.authorized());
    identity
        .get_account(GetAccountRequest {})
        .await
        .expect("a refreshed token is accepted");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_refresh_token_is_revoked_ends() {
    let server = TestServer::start_with(Backend::Sqlite, &["--access-token-ttl-secs", "2"])
        .await
        .expect("server");
    let rally = rally(&server).await;
    let username = unique("eve");
    let doomed = rally
        .register(&username, "correct horse battery", "")
        .await
        .expect("register");
    let other = rally
        .login(&username, "correct horse battery")
        .await
        .expect("login");
    // Revoke every session of the user from the other one.
    IdentityClient::with_interceptor(other.channel(), other.authorized())
        .logout(LogoutRequest { all_sessions: true })
        .await
        .expect("logout everywhere");
    wait_until("the revoked session ends", async || doomed.is_ended()).await;
    assert_eq!(
        doomed.rooms().current_room().await,
        Err(Error::SessionEnded)
    );
    assert_eq!(doomed.access_token(), "");
    server.stop().await;
}

// ---- rooms and matchmaking ----

async fn next_item<T>(stream: &mut (impl Stream<Item = rally_client::Result<T>> + Unpin)) -> T {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an item in time")
        .expect("the stream goes on")
        .expect("an item, not an error")
}

fn event(message: WatchRoomResponse) -> RoomEvent {
    match message.payload {
        Some(Payload::Event(event)) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn every_rooms_call(server: &TestServer) {
    let rally = rally(server).await;
    let owner = device_session(&rally, "Owner").await;
    let guest = device_session(&rally, "Guest").await;
    let (rooms, guest_rooms) = (owner.rooms(), guest.rooms());

    let created = rooms
        .create_room(CreateRoomRequest {
            capacity: 3,
            visibility: RoomVisibility::Public as i32,
            data: HashMap::from([("mode".to_owned(), "ffa".to_owned())]),
            ..Default::default()
        })
        .await
        .expect("create");
    let room = created.room.expect("room");
    assert_eq!(created.left_room_id, "");
    let id = room.room_id.clone();
    let mut watch = rooms.watch(&id, None).await.expect("watch");
    match next_item(&mut watch).await.payload {
        Some(Payload::Snapshot(snapshot)) => assert_eq!(snapshot.sequence, 0),
        other => panic!("expected a snapshot, got {other:?}"),
    }

    let joined = guest_rooms.join_room(&id).await.expect("join");
    assert_eq!(joined.room.expect("room").members.len(), 2);
    let first = event(next_item(&mut watch).await);
    assert_eq!(first.sequence, 1);
    assert!(matches!(first.kind, Some(Kind::MemberJoined(_))));

    assert_eq!(
        guest_rooms.get_room(&id).await.expect("get").members.len(),
        2
    );
    let listed = guest_rooms
        .list_rooms(ListRoomsRequest {
            data_equals: HashMap::from([("mode".to_owned(), "ffa".to_owned())]),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(
        listed.rooms.iter().map(|r| &r.room_id).collect::<Vec<_>>(),
        [&id]
    );

    let updated = rooms
        .update_room_data(UpdateRoomDataRequest {
            room_id: id.clone(),
            set: HashMap::from([("map".to_owned(), "dust".to_owned())]),
            ..Default::default()
        })
        .await
        .expect("update");
    assert_eq!(updated.data.get("map").map(String::as_str), Some("dust"));
    let changed = event(next_item(&mut watch).await);
    assert_eq!(changed.sequence, 2);
    assert!(matches!(changed.kind, Some(Kind::DataChanged(_))));

    let current = guest_rooms.current_room().await.expect("current");
    assert_eq!(current.map(|r| r.room_id), Some(id.clone()));
    let after_kick = rooms.kick_member(&id, guest.user_id()).await.expect("kick");
    assert_eq!(after_kick.members.len(), 1);
    let kicked = event(next_item(&mut watch).await);
    assert_eq!(kicked.sequence, 3);
    let Some(Kind::MemberLeft(left)) = kicked.kind else {
        panic!("expected MemberLeft, got {kicked:?}");
    };
    assert_eq!(left.reason, LeaveReason::Kicked as i32);
    assert_eq!(guest_rooms.current_room().await, Ok(None));

    // Refusals are typed.
    let not_member = guest_rooms.leave_room(&id).await;
    assert!(
        matches!(
            not_member,
            Err(Error::Rpc {
                code: Code::FailedPrecondition,
                ..
            })
        ),
        "{not_member:?}"
    );
    let missing = guest_rooms.get_room(&Uuid::new_v4().to_string()).await;
    assert!(
        matches!(
            missing,
            Err(Error::Rpc {
                code: Code::NotFound,
                ..
            })
        ),
        "{missing:?}"
    );

    assert!(rooms.leave_room(&id).await.expect("leave").room_closed);
    assert_eq!(event(next_item(&mut watch).await).sequence, 4);
    let closed = event(next_item(&mut watch).await);
    assert_eq!(closed.sequence, 5);
    assert!(matches!(closed.kind, Some(Kind::RoomClosed(_))));
    let end = tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("the watch ends");
    assert!(end.is_none(), "the watch ends after RoomClosed: {end:?}");
}

async fn every_matchmaking_call(server: &TestServer) {
    let rally = rally(server).await;
    let ada = device_session(&rally, "Ada").await;
    let bob = device_session(&rally, "Bob").await;
    let pool = || EnqueueRequest {
        pool: "default".into(),
        ..Default::default()
    };

    let enqueue = async |session: &Session| {
        session
            .matchmaking()
            .enqueue(pool())
            .await
            .expect("enqueue")
    };
    let ticket = enqueue(&ada).await;
    assert_eq!(ticket.status(), TicketStatus::Queued);
    let mut watch = ada
        .matchmaking()
        .watch_ticket(&ticket.ticket_id)
        .await
        .expect("watch");
    assert_eq!(next_item(&mut watch).await.status(), TicketStatus::Queued);
    let cancelled = ada
        .matchmaking()
        .cancel(&ticket.ticket_id)
        .await
        .expect("cancel");
    assert_eq!(cancelled.status(), TicketStatus::Cancelled);
    assert_eq!(
        next_item(&mut watch).await.status(),
        TicketStatus::Cancelled
    );
    assert!(
        tokio::time::timeout(WAIT, watch.next())
            .await
            .expect("ends")
            .is_none()
    );
    let missing = ada.matchmaking().cancel(&Uuid::new_v4().to_string()).await;
    assert!(
        matches!(
            missing,
            Err(Error::Rpc {
                code: Code::NotFound,
                ..
            })
        ),
        "{missing:?}"
    );

    let ada_ticket = enqueue(&ada).await;
    let bob_ticket = enqueue(&bob).await;
    let mut watch = bob
        .matchmaking()
        .watch_ticket(&bob_ticket.ticket_id)
        .await
        .expect("watch");
    let matched = loop {
        let ticket = next_item(&mut watch).await;
        if ticket.status() != TicketStatus::Queued {
            break ticket;
        }
    };
    assert_eq!(matched.status(), TicketStatus::Matched);
    let room_id = matched.match_result.expect("match").room_id;
    assert_eq!(
        ada.rooms()
            .current_room()
            .await
            .expect("current")
            .map(|r| r.room_id),
        Some(room_id)
    );
    assert_ne!(ada_ticket.ticket_id, bob_ticket.ticket_id);
}

// ---- the broker link ----

fn candidate(port: u32) -> Candidate {
    Candidate {
        kind: CandidateKind::Host as i32,
        address: Some(SocketAddress {
            ip: "127.0.0.1".into(),
            port,
        }),
        priority: 100,
    }
}

fn announcement(fingerprint: u8, port: u32) -> Announcement {
    Announcement {
        fingerprint: [fingerprint; 32],
        candidates: vec![candidate(port)],
        relay_policy: RelayPolicy::Fallback,
        nat_type: NatType::Moderate,
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn next(events: &mut Receiver<BrokerEvent>) -> BrokerEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("the link is open")
}

/// Skips events until `pick` takes one.
async fn until<T>(
    events: &mut Receiver<BrokerEvent>,
    mut pick: impl FnMut(BrokerEvent) -> Option<T>,
) -> T {
    loop {
        if let Some(picked) = pick(next(events).await) {
            return picked;
        }
    }
}

async fn attach(
    session: &Session,
    fingerprint: u8,
    port: u32,
) -> (BrokerLink, Receiver<BrokerEvent>) {
    let (link, mut events) = BrokerLink::attach(session, announcement(fingerprint, port))
        .await
        .expect("attach");
    assert!(link.is_attached());
    match next(&mut events).await {
        BrokerEvent::Attached { attachment_id, .. } => {
            assert!(Uuid::try_parse(&attachment_id).is_ok())
        }
        other => panic!("expected Attached first, got {other:?}"),
    }
    (link, events)
}

async fn the_connect_handshake(server: &TestServer) {
    let rally = rally(server).await;
    let (alice, bob) = (
        device_session(&rally, "Alice").await,
        device_session(&rally, "Bob").await,
    );
    let (a, mut a_events) = BrokerLink::attach(&alice, announcement(0xA1, 4000))
        .await
        .expect("attach");
    let relay = server.relay_addr().expect("relay");
    match next(&mut a_events).await {
        BrokerEvent::Attached {
            attachment_id,
            reflectors,
            relay_available,
        } => {
            assert!(Uuid::try_parse(&attachment_id).is_ok());
            assert_eq!(reflectors, vec![relay]);
            assert!(relay_available);
        }
        other => panic!("expected Attached, got {other:?}"),
    }
    let (b, mut b_events) = attach(&bob, 0xB0, 5000).await;

    a.connect(bob.user_id()).await.expect("connect");
    assert!(a.rtt().is_some(), "the first Pong came before the Ack");
    assert_eq!(
        next(&mut b_events).await,
        BrokerEvent::PeerConnectRequest {
            user: alice.user_id()
        }
    );
    b.accept(alice.user_id()).await.expect("accept");
    assert_eq!(
        next(&mut a_events).await,
        BrokerEvent::ConnectAccepted {
            user: bob.user_id()
        }
    );
    assert_eq!(
        next(&mut a_events).await,
        BrokerEvent::PeerInfo {
            user: bob.user_id(),
            fingerprint: [0xB0; 32],
            candidates: vec![addr(5000)],
            relayed: None,
            nat_type: NatType::Moderate,
        }
    );
    assert_eq!(
        next(&mut b_events).await,
        BrokerEvent::PeerInfo {
            user: alice.user_id(),
            fingerprint: [0xA1; 32],
            candidates: vec![addr(4000)],
            relayed: None,
            nat_type: NatType::Moderate,
        }
    );
    let punch = |event| match event {
        BrokerEvent::PunchStart {
            user,
            candidates,
            start_at,
            dialer,
            ..
        } => (user, candidates, start_at, dialer),
        other => panic!("expected PunchStart, got {other:?}"),
    };
    let (a_peer, a_candidates, a_start, a_dials) = punch(next(&mut a_events).await);
    let (b_peer, b_candidates, b_start, b_dials) = punch(next(&mut b_events).await);
    assert_eq!((a_peer, b_peer), (bob.user_id(), alice.user_id()));
    assert_eq!(
        (a_candidates, b_candidates),
        (vec![addr(5000)], vec![addr(4000)])
    );
    assert_ne!(a_dials, b_dials, "exactly one side dials");
    assert_eq!(
        a_dials,
        alice.user_id().to_string() < bob.user_id().to_string()
    );
    let apart = a_start.max(b_start) - a_start.min(b_start);
    assert!(
        apart < Duration::from_secs(1),
        "a common start time, {apart:?} apart"
    );
    assert!(a_start < std::time::Instant::now() + Duration::from_secs(5));

    // New candidates reach the peer, and both punch again.
    a.update_candidates(vec![candidate(4100)], NatType::Strict)
        .await
        .expect("update");
    let BrokerEvent::PeerInfo {
        candidates,
        nat_type,
        ..
    } = next(&mut b_events).await
    else {
        panic!("expected PeerInfo");
    };
    assert_eq!((candidates, nat_type), (vec![addr(4100)], NatType::Strict));
    let (_, _, _, a_dials) = punch(next(&mut a_events).await);
    assert!(a_dials, "the stricter NAT dials");

    // A relay grant: the asker gets it as the answer, the peer as an event.
    let mine = a.request_relay_grant(bob.user_id()).await.expect("grant");
    assert_eq!(mine.user_id, bob.user_id().to_string());
    let theirs = until(&mut b_events, |event| match event {
        BrokerEvent::RelayGrant(grant) => Some(grant),
        _ => None,
    })
    .await;
    assert_eq!(theirs.allocation_id, mine.allocation_id);
    assert_ne!(theirs.side, mine.side);

    let presence = a.room_presence().await.expect("presence");
    assert_eq!(presence.room_id, "");

    a.close(bob.user_id()).await.expect("close");
    let closed = until(&mut b_events, |event| match event {
        BrokerEvent::PeerClosed { user, detached } => Some((user, detached)),
        _ => None,
    })
    .await;
    assert_eq!(closed, (alice.user_id(), false));
}

async fn rejects_and_refusals(server: &TestServer) {
    let rally = rally(server).await;
    let alice = device_session(&rally, "Alice").await;
    let bob = device_session(&rally, "Bob").await;
    let offline = device_session(&rally, "Carol").await;
    let (a, mut a_events) = attach(&alice, 1, 4000).await;
    let (b, mut b_events) = attach(&bob, 2, 5000).await;

    a.connect(bob.user_id()).await.expect("connect");
    assert_eq!(
        next(&mut b_events).await,
        BrokerEvent::PeerConnectRequest {
            user: alice.user_id()
        }
    );
    b.reject(alice.user_id(), "busy").await.expect("reject");
    assert_eq!(
        next(&mut a_events).await,
        BrokerEvent::ConnectRejected {
            user: bob.user_id(),
            reason: "busy".into()
        }
    );

    let code = |result: rally_client::Result<()>| match result {
        Err(Error::Broker { code, .. }) => code,
        other => panic!("expected a broker error, got {other:?}"),
    };
    assert_eq!(
        code(a.connect(offline.user_id()).await),
        ErrorCode::UserOffline
    );
    assert_eq!(
        code(a.connect(Uuid::new_v4()).await),
        ErrorCode::UserNotFound
    );
    assert_eq!(
        code(a.connect(alice.user_id()).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(b.accept(offline.user_id()).await),
        ErrorCode::NoPendingRequest
    );
    let not_agreed = a.request_relay_grant(bob.user_id()).await;
    assert!(
        matches!(
            not_agreed,
            Err(Error::Broker {
                code: ErrorCode::NotAgreed,
                ..
            })
        ),
        "{not_agreed:?}"
    );

    // Checked before anything is sent.
    assert!(matches!(
        b.reject(alice.user_id(), &"x".repeat(257)).await,
        Err(Error::InvalidArgument(_))
    ));
    let relayed = Candidate {
        kind: CandidateKind::Relayed as i32,
        ..candidate(1)
    };
    assert!(matches!(
        a.update_candidates(vec![relayed.clone()], NatType::Open)
            .await,
        Err(Error::InvalidArgument(_))
    ));
    let bad = Announcement {
        candidates: vec![relayed],
        ..announcement(3, 1)
    };
    assert!(matches!(
        BrokerLink::attach(&offline, bad).await,
        Err(Error::InvalidArgument(_))
    ));
    // The link is still fine.
    a.room_presence().await.expect("presence");
}

async fn a_newer_link_supersedes_the_older_and_shutdown_ends_a_link(server: &TestServer) {
    let rally = rally(server).await;
    let alice = device_session(&rally, "Alice").await;
    let bob = device_session(&rally, "Bob").await;
    let (old, mut old_events) = attach(&alice, 1, 4000).await;
    let (new, _new_events) = attach(&alice, 2, 4001).await;
    assert_eq!(next(&mut old_events).await, BrokerEvent::Superseded);
    let end = tokio::time::timeout(WAIT, old_events.recv())
        .await
        .expect("closes");
    assert!(end.is_none(), "nothing after Superseded: {end:?}");
    assert!(!old.is_attached());
    assert_eq!(old.connect(bob.user_id()).await, Err(Error::Superseded));
    new.room_presence().await.expect("the newer link works");

    new.shutdown();
    assert!(!new.is_attached());
    assert_eq!(new.room_presence().await, Err(Error::Closed));
    // Its user is offline now.
    let (b, _b_events) = attach(&bob, 3, 5000).await;
    let mut offline = false;
    wait_until("the shut-down link's user is offline", async || {
        offline = matches!(
            b.connect(alice.user_id()).await,
            Err(Error::Broker {
                code: ErrorCode::UserOffline,
                ..
            })
        );
        offline
    })
    .await;
}

on_both_backends!(
    sign_in_three_ways,
    every_rooms_call,
    every_matchmaking_call,
    the_connect_handshake,
    rejects_and_refusals,
    a_newer_link_supersedes_the_older_and_shutdown_ends_a_link,
);

// ---- re-attaching across a restart ----

async fn the_link_and_watches_resume_after_a_server_restart(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    // A restarted server listens on the same address, so the client keeps its one URL.
    let rally = Rally::connect(&url(server.addr())).await.expect("connect");
    let alice = device_session(&rally, "Alice").await;
    let bob = device_session(&rally, "Bob").await;
    let (a, mut a_events) = attach(&alice, 1, 4000).await;
    let (b, mut b_events) = attach(&bob, 2, 5000).await;
    let room = alice
        .rooms()
        .create_room(CreateRoomRequest {
            capacity: 2,
            ..Default::default()
        })
        .await
        .expect("create")
        .room
        .expect("room");
    let mut watch = alice
        .rooms()
        .watch(&room.room_id, Some(0))
        .await
        .expect("watch");

    let server = server.restart(&[]).await;

    for (link, events) in [(&a, &mut a_events), (&b, &mut b_events)] {
        let BrokerEvent::Detached { reason } = next(events).await else {
            panic!("expected Detached");
        };
        assert!(!reason.is_empty());
        assert!(matches!(next(events).await, BrokerEvent::Attached { .. }));
        assert!(link.is_attached());
    }
    a.connect(bob.user_id()).await.expect("requests work again");
    assert_eq!(
        next(&mut b_events).await,
        BrokerEvent::PeerConnectRequest {
            user: alice.user_id()
        }
    );

    // The watch resumed after the last sequence it delivered: nothing lost, nothing repeated.
    bob.rooms().join_room(&room.room_id).await.expect("join");
    let joined = event(next_item(&mut watch).await);
    assert_eq!(joined.sequence, 1);
    assert!(matches!(joined.kind, Some(Kind::MemberJoined(_))));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_link_and_watches_resume_after_a_server_restart() {
    the_link_and_watches_resume_after_a_server_restart(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_link_and_watches_resume_after_a_server_restart() {
    the_link_and_watches_resume_after_a_server_restart(Backend::Postgres).await;
}

// ---- keepalive and backpressure ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_a_quiet_link_attached_and_measure_its_round_trip() {
    // The server ends an attachment it hears nothing from for three intervals (600 ms).
    let server = TestServer::start_with(Backend::Sqlite, &["--broker-keepalive-ms", "200"])
        .await
        .expect("server");
    let rally = rally(&server).await;
    let alice = device_session(&rally, "Alice").await;
    let (link, mut events) = attach(&alice, 1, 4000).await;
    // Ten intervals in which the game sends nothing: the link's own pings keep it attached.
    let quiet = tokio::time::timeout(Duration::from_secs(2), events.recv()).await;
    assert!(
        quiet.is_err(),
        "no event, in particular no Detached: {quiet:?}"
    );
    assert!(link.is_attached());
    assert!(link.rtt().is_some_and(|rtt| rtt < Duration::from_secs(1)));
    link.room_presence().await.expect("still attached");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_that_stops_reading_events_loses_none() {
    let server = TestServer::start_with(
        Backend::Sqlite,
        &[
            "--broker-signals-per-second",
            "100000",
            "--broker-signal-burst",
            "100000",
        ],
    )
    .await
    .expect("server");
    let rally = rally(&server).await;
    let alice = device_session(&rally, "Alice").await;
    let bob = device_session(&rally, "Bob").await;
    let (a, mut a_events) = attach(&alice, 1, 4000).await;
    let (b, mut b_events) = attach(&bob, 2, 5000).await;
    a.connect(bob.user_id()).await.expect("connect");
    assert!(matches!(
        next(&mut b_events).await,
        BrokerEvent::PeerConnectRequest { .. }
    ));
    b.accept(alice.user_id()).await.expect("accept");
    assert!(matches!(
        next(&mut b_events).await,
        BrokerEvent::PeerInfo { .. }
    ));
    assert!(matches!(
        next(&mut b_events).await,
        BrokerEvent::PunchStart { .. }
    ));
    // Alice's game reads; Bob's reads nothing for a while.
    let drain = tokio::spawn(async move { while a_events.recv().await.is_some() {} });

    // Every update sends Bob a PeerInfo and a PunchStart: far more events than Bob's channel
    // holds. Once it is full, Bob's link stops reading the stream and the rest wait upstream.
    let updates = rally_client::broker::EVENT_CAPACITY / 2 + 100;
    for i in 0..updates {
        let port = 10_000 + u32::try_from(i).expect("small");
        a.update_candidates(vec![candidate(port)], NatType::Moderate)
            .await
            .expect("update");
    }
    wait_until("Bob's channel is full", async || {
        b_events.len() == rally_client::broker::EVENT_CAPACITY
    })
    .await;

    // Bob's game reads again: every event, in order, nothing lost or repeated.
    for i in 0..updates {
        let port = 10_000 + u16::try_from(i).expect("small");
        let BrokerEvent::PeerInfo { candidates, .. } = next(&mut b_events).await else {
            panic!("expected PeerInfo {i}");
        };
        assert_eq!(candidates, vec![addr(port)], "PeerInfo {i}");
        let BrokerEvent::PunchStart { candidates, .. } = next(&mut b_events).await else {
            panic!("expected PunchStart {i}");
        };
        assert_eq!(candidates, vec![addr(port)], "PunchStart {i}");
    }
    assert!(b.is_attached());
    b.room_presence().await.expect("the link works");
    drain.abort();
    server.stop().await;
}

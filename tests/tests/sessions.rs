//! Streams live no longer than their session: Logout (of one session or all) and a revoked
//! refresh-token family end the session's Attach, WatchRoom and WatchTicket streams with
//! UNAUTHENTICATED, on every replica, and its access token is refused from then on; an
//! attachment outlives its access token only by re-authenticating in band, which the SDK does
//! after every refresh.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rally_e2e::{Backend, TestServer};
use rally_proto::broker::v1::attach_request::Body as Req;
use rally_proto::broker::v1::attach_response::Body;
use rally_proto::broker::v1::broker_client::BrokerClient;
use rally_proto::broker::v1::*;
use rally_proto::identity::v1::identity_client::IdentityClient;
use rally_proto::identity::v1::{AuthSession, GetAccountRequest, LogoutRequest, RefreshRequest};
use rally_proto::rooms::v1::matchmaking_client::MatchmakingClient;
use rally_proto::rooms::v1::rooms_client::RoomsClient;
use rally_proto::rooms::v1::{
    CreateRoomRequest, EnqueueRequest, UpdateRoomDataRequest, WatchRoomRequest, WatchRoomResponse,
    WatchTicketRequest, WatchTicketResponse,
};
use tokio::sync::mpsc;
use tonic::Code;
use tonic::codec::Streaming;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

type Authed = InterceptedService<Channel, rally_client::Bearer>;

fn bearer(token: &str) -> rally_client::Bearer {
    rally_client::Bearer::new(token).expect("an ASCII token")
}

/// Signs in with `device` (the same device id gives the same user, a new session each time).
async fn sign_in(server: &TestServer, device: &str) -> AuthSession {
    server.device_session(device, "").await
}

async fn rooms(server: &TestServer, session: &AuthSession) -> RoomsClient<Authed> {
    RoomsClient::with_interceptor(server.channel().await, bearer(&session.access_token))
}

/// A new room of `session`'s user (made on `creator`).
async fn new_room(creator: &TestServer, session: &AuthSession) -> String {
    rooms(creator, session)
        .await
        .create_room(CreateRoomRequest {
            capacity: 4,
            ..Default::default()
        })
        .await
        .expect("create a room")
        .into_inner()
        .room
        .expect("a room")
        .room_id
}

/// A watch of `room` from `server` with `session`'s token, past its snapshot.
async fn watch(
    server: &TestServer,
    session: &AuthSession,
    room: &str,
) -> Streaming<WatchRoomResponse> {
    let mut watch = rooms(server, session)
        .await
        .watch_room(WatchRoomRequest {
            room_id: room.to_owned(),
            after_sequence: None,
        })
        .await
        .expect("watch the room")
        .into_inner();
    first(&mut watch).await;
    watch
}

async fn first<T: std::fmt::Debug>(stream: &mut Streaming<T>) -> T {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(item))) => item,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// How a stream ends (skipping what was still queued), and when.
async fn ending<T>(stream: &mut Streaming<T>) -> (Option<tonic::Status>, Instant) {
    loop {
        match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(status))) => return (Some(status), Instant::now()),
            Ok(None) => return (None, Instant::now()),
            Err(_) => panic!("the stream did not end within {WAIT:?}"),
        }
    }
}

fn assert_unauthenticated(end: Option<tonic::Status>, what: &str) {
    let status = end.unwrap_or_else(|| panic!("{what} ended with OK"));
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
}

/// An attachment opened with `token`: the request sender, the responses, the Welcome.
async fn attach(
    server: &TestServer,
    token: &str,
    fingerprint: u8,
) -> (
    mpsc::UnboundedSender<AttachRequest>,
    Streaming<AttachResponse>,
    Welcome,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(AttachRequest {
        request_id: 1,
        body: Some(Req::Hello(rally_e2e::fixtures::hello(fingerprint))),
    })
    .expect("queue the Hello");
    let mut stream = BrokerClient::with_interceptor(server.channel().await, bearer(token))
        .attach(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .expect("attach")
        .into_inner();
    let welcome = match first(&mut stream).await.body {
        Some(Body::Welcome(welcome)) => welcome,
        other => panic!("expected Welcome, got {other:?}"),
    };
    (tx, stream, welcome)
}

/// Logout of one session ends that session's streams on `watcher` (a replica or the same
/// server), refuses its token there, and leaves the user's other session alone; logout of all
/// then ends the other one's.
async fn logout_ends_the_sessions_streams(identity: &TestServer, watcher: &TestServer) {
    let device = format!("sessions-{}", uuid::Uuid::new_v4().simple());
    let one = sign_in(identity, &device).await;
    let two = sign_in(identity, &device).await;
    assert_ne!(one.session_id, two.session_id);
    // A user is in at most one room: both sessions watch the same one.
    let room = new_room(identity, &one).await;
    let mut watch_one = watch(watcher, &one, &room).await;
    let (_tx, mut attach_one, _) = attach(watcher, &one.access_token, 0xA1).await;
    let mut watch_two = watch(watcher, &two, &room).await;

    let logout = Instant::now();
    let revoked =
        IdentityClient::with_interceptor(identity.channel().await, bearer(&one.access_token))
            .logout(LogoutRequest {
                all_sessions: false,
            })
            .await
            .expect("logout")
            .into_inner();
    assert_eq!(revoked.revoked_sessions, 1);
    let (end, at) = ending(&mut watch_one).await;
    assert_unauthenticated(end, "the logged-out session's room watch");
    println!("room watch ended {:?} after Logout", at - logout);
    let (end, at) = ending(&mut attach_one).await;
    assert_unauthenticated(end, "the logged-out session's attachment");
    println!("attachment ended {:?} after Logout", at - logout);

    // Its token is refused everywhere from now on, though it has not expired.
    for server in [identity, watcher] {
        let refused =
            IdentityClient::with_interceptor(server.channel().await, bearer(&one.access_token))
                .get_account(GetAccountRequest {})
                .await
                .expect_err("a logged-out token");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        let refused = rooms(server, &one)
            .await
            .watch_room(WatchRoomRequest {
                room_id: room.clone(),
                after_sequence: None,
            })
            .await
            .expect_err("no new stream for a logged-out session");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }

    // The other session's watch goes on: it sees the next change of its room.
    rooms(identity, &two)
        .await
        .update_room_data(UpdateRoomDataRequest {
            room_id: room.clone(),
            set: [("after".to_owned(), "logout".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect("update the room");
    first(&mut watch_two).await;

    let revoked =
        IdentityClient::with_interceptor(identity.channel().await, bearer(&two.access_token))
            .logout(LogoutRequest { all_sessions: true })
            .await
            .expect("logout everywhere")
            .into_inner();
    assert_eq!(
        revoked.revoked_sessions, 1,
        "only the second was still live"
    );
    let (end, _) = ending(&mut watch_two).await;
    assert_unauthenticated(end, "the room watch after logout everywhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_sessions_streams_on_sqlite() {
    let server = TestServer::start(Backend::Sqlite).await.expect("SQLite");
    logout_ends_the_sessions_streams(&server, &server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_on_one_replica_ends_the_sessions_streams_on_another() {
    let Some(identity) =
        TestServer::start_with(Backend::Postgres, &["--services", "identity,rooms"]).await
    else {
        return;
    };
    let watcher = identity.replica(&["--services", "rooms,broker"]).await;
    logout_ends_the_sessions_streams(&identity, &watcher).await;
    watcher.stop().await;
    identity.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_refresh_token_ends_its_sessions_streams() {
    let server = TestServer::start(Backend::Sqlite).await.expect("SQLite");
    let session = sign_in(&server, &format!("reuse-{}", uuid::Uuid::new_v4().simple())).await;
    let ticket =
        MatchmakingClient::with_interceptor(server.channel().await, bearer(&session.access_token))
            .enqueue(EnqueueRequest {
                pool: "default".into(),
                ..Default::default()
            })
            .await
            .expect("enqueue")
            .into_inner()
            .ticket
            .expect("a ticket");
    let mut watch_ticket: Streaming<WatchTicketResponse> =
        MatchmakingClient::with_interceptor(server.channel().await, bearer(&session.access_token))
            .watch_ticket(WatchTicketRequest {
                ticket_id: ticket.ticket_id,
            })
            .await
            .expect("watch the ticket")
            .into_inner();
    first(&mut watch_ticket).await;
    let (_tx, mut attachment, _) = attach(&server, &session.access_token, 0xB2).await;

    let mut identity = IdentityClient::new(server.channel().await);
    identity
        .refresh(RefreshRequest {
            refresh_token: session.refresh_token.clone(),
        })
        .await
        .expect("the first refresh rotates");
    let reused = identity
        .refresh(RefreshRequest {
            refresh_token: session.refresh_token.clone(),
        })
        .await
        .expect_err("a rotated refresh token presented again");
    assert_eq!(reused.code(), Code::Unauthenticated);
    let (end, _) = ending(&mut watch_ticket).await;
    assert_unauthenticated(end, "the ticket watch of the revoked family");
    let (end, _) = ending(&mut attachment).await;
    assert_unauthenticated(end, "the attachment of the revoked family");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attachment_ends_when_its_token_expires_unless_it_reauthenticates() {
    // 3 s tokens re-authenticated every second: at least a second of slack on a loaded machine.
    let server = TestServer::start_with(
        Backend::Sqlite,
        &[
            "--access-token-ttl-secs",
            "3",
            "--broker-reauth-grace-ms",
            "300",
        ],
    )
    .await
    .expect("SQLite");
    let device = format!("reauth-{}", uuid::Uuid::new_v4().simple());
    let session = sign_in(&server, &device).await;

    // Never re-authenticated: ends at the token's expiry plus the grace.
    let (_tx, mut silent, welcome) = attach(&server, &session.access_token, 0xC3).await;
    let by = welcome
        .reauthenticate_by
        .expect("a deadline in the Welcome");
    let expires = session.access_token_expires_at.expect("an expiry");
    assert_eq!(
        (by.seconds * 1000 + i64::from(by.nanos / 1_000_000))
            - (expires.seconds * 1000 + i64::from(expires.nanos / 1_000_000)),
        300,
        "the deadline is the token's expiry plus the grace"
    );
    let (end, _) = ending(&mut silent).await;
    let status = end.expect("an ending status");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("Reauthenticate"), "{status:?}");

    // Re-authenticated with each refreshed token: alive after two lifetimes.
    let mut current = sign_in(&server, &device).await;
    let (tx, mut stream, _) = attach(&server, &current.access_token, 0xC3).await;
    let stranger = sign_in(
        &server,
        &format!("stranger-{}", uuid::Uuid::new_v4().simple()),
    )
    .await;
    let mut identity = IdentityClient::new(server.channel().await);
    let started = Instant::now();
    let mut id = 10;
    let mut reauthenticated = 0;
    while started.elapsed() < Duration::from_secs(6) {
        current = identity
            .refresh(RefreshRequest {
                refresh_token: current.refresh_token.clone(),
            })
            .await
            .expect("refresh")
            .into_inner()
            .session
            .expect("a session");
        id += 1;
        tx.send(AttachRequest {
            request_id: id,
            body: Some(Req::Reauthenticate(Reauthenticate {
                access_token: current.access_token.clone(),
            })),
        })
        .expect("the stream is open");
        let answer = first(&mut stream).await;
        assert_eq!(answer.request_id, id);
        assert!(
            matches!(answer.body, Some(Body::Reauthenticated(_))),
            "{answer:?}"
        );
        reauthenticated += 1;
        // A token of another user is refused, and the attachment goes on.
        id += 1;
        tx.send(AttachRequest {
            request_id: id,
            body: Some(Req::Reauthenticate(Reauthenticate {
                access_token: stranger.access_token.clone(),
            })),
        })
        .expect("the stream is open");
        let refused = first(&mut stream).await;
        match refused.body {
            Some(Body::Error(error)) => {
                assert_eq!(error.code, ErrorCode::Unauthenticated as i32, "{error:?}")
            }
            other => panic!("expected an Error, got {other:?}"),
        }
        // Half a lifetime, as a client refreshing early does: the deadline moves each time.
        let pause = tokio::time::sleep(Duration::from_millis(1000));
        tokio::pin!(pause);
        tokio::select! {
            () = &mut pause => {}
            message = stream.next() => panic!("the attachment ended or spoke: {message:?}"),
        }
    }
    assert!(reauthenticated >= 4, "{reauthenticated}");
    id += 1;
    tx.send(AttachRequest {
        request_id: id,
        body: Some(Req::Ping(Ping { nonce: 7 })),
    })
    .expect("the stream is open");
    assert!(matches!(first(&mut stream).await.body, Some(Body::Pong(_))));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_keeps_its_attachment_and_watch_across_token_lifetimes() {
    use rally_client::{BrokerEvent, BrokerLink};
    // 3 s tokens and 2 s of grace: without re-authentication the attachment would end within
    // 5 s, well inside the 10 s watched below.
    let server = TestServer::start_with(
        Backend::Sqlite,
        &[
            "--access-token-ttl-secs",
            "3",
            "--broker-reauth-grace-ms",
            "2000",
        ],
    )
    .await
    .expect("SQLite");
    let session = rally_client::Rally::connect(&format!("http://{}", server.addr()))
        .await
        .expect("connect")
        .device_login(
            &format!("sdk-reauth-{}", uuid::Uuid::new_v4().simple()),
            "Ada",
        )
        .await
        .expect("sign in");
    let room = session
        .rooms()
        .create_room(CreateRoomRequest {
            capacity: 4,
            ..Default::default()
        })
        .await
        .expect("create a room")
        .room
        .expect("a room");
    let mut watch = session
        .rooms()
        .watch(&room.room_id, None)
        .await
        .expect("watch");
    let (link, mut events) = BrokerLink::attach(&session, rally_e2e::fixtures::announcement(0xD4))
        .await
        .expect("attach");
    assert!(matches!(
        tokio::time::timeout(WAIT, events.recv()).await,
        Ok(Some(BrokerEvent::Attached { .. }))
    ));
    // Three token lifetimes, and past the watch's first expiry (3 s and 5 s of leeway): nothing
    // may detach.
    let quiet = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
    assert!(quiet.is_err(), "the link reported {quiet:?}");
    assert!(link.is_attached());
    link.room_presence().await.expect("the attachment answers");
    session
        .rooms()
        .update_room_data(UpdateRoomDataRequest {
            room_id: room.room_id.clone(),
            set: [("late".to_owned(), "change".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect("update the room");
    // The watch resumed across its token's expiry and sees the change.
    loop {
        let item = tokio::time::timeout(WAIT, watch.next())
            .await
            .expect("the change in time")
            .expect("the watch goes on")
            .expect("no error");
        if format!("{item:?}").contains("late") {
            break;
        }
    }
    link.shutdown();
    server.stop().await;
}

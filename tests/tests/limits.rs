//! The limits `rallyd`'s gRPC server puts on every connection: what HTTP/2 lets a client open at
//! once, and how large a request the public (unauthenticated) services decode.

use std::time::Duration;

use rally_e2e::{Backend, TestServer};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_announces_at_most_256_streams_per_connection() {
    let server = TestServer::start(Backend::Sqlite).await.expect("SQLite");
    let tcp = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    // A first call's answer comes after the server's SETTINGS: by then they apply.
    let request = http::Request::post(format!(
        "http://{}/grpc.health.v1.Health/Check",
        server.addr()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .expect("a request");
    let (answer, _) = client.send_request(request, true).expect("send");
    tokio::time::timeout(WAIT, answer)
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(client.current_max_send_streams(), 256);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_services_decode_only_small_requests() {
    let server = TestServer::start(Backend::Sqlite).await.expect("SQLite");
    let mut health = HealthClient::new(server.channel().await);
    let refused = health
        .check(HealthCheckRequest {
            service: "x".repeat(100 * 1024),
        })
        .await
        .expect_err("a 100 KiB health request");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    let answered = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("a small one is answered");
    drop(answered);

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let list = |host: String| ServerReflectionRequest {
        host,
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    // A large request is never decoded: refused, or (reflection ends its stream on a request
    // it cannot read) left unanswered.
    let large = reflection
        .server_reflection_info(tokio_stream::iter([list("x".repeat(100 * 1024))]))
        .await;
    match large {
        Err(status) => assert_eq!(status.code(), Code::OutOfRange, "{status:?}"),
        Ok(answer) => {
            let mut stream = answer.into_inner();
            match tokio::time::timeout(WAIT, stream.message()).await {
                Ok(Err(status)) => assert_eq!(status.code(), Code::OutOfRange, "{status:?}"),
                Ok(Ok(None)) => {}
                other => panic!("a 100 KiB reflection request was answered: {other:?}"),
            }
        }
    }
    let mut small = reflection
        .server_reflection_info(tokio_stream::iter([list(String::new())]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = tokio::time::timeout(WAIT, small.message())
        .await
        .expect("in time")
        .expect("no error");
    assert!(answer.is_some(), "a small request is answered");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_address_cap_are_closed() {
    let server = TestServer::start_with(Backend::Sqlite, &["--max-connections-per-address", "2"])
        .await
        .expect("SQLite");
    let health = |channel| async move {
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
    };
    let url = format!("http://{}", server.addr());
    let first = rally_client::connect(&url).await.expect("first");
    let second = rally_client::connect(&url).await.expect("second");
    health(first.clone())
        .await
        .expect("the first connection serves");
    health(second.clone())
        .await
        .expect("the second connection serves");
    let third = match rally_client::connect(&url).await {
        Err(error) => Some(error),
        Ok(channel) => health(channel).await.err().map(rally_client::Error::from),
    };
    assert!(
        matches!(third, Some(rally_client::Error::Unreachable(_))),
        "a third connection from the same address: {third:?}"
    );
    // The first two go on.
    health(first).await.expect("the first still serves");
    health(second).await.expect("the second still serves");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_has_a_budget_of_writes_and_one_of_streams() {
    use rally_proto::rooms::v1::{
        CreateRoomRequest, GetRoomRequest, UpdateRoomDataRequest, WatchRoomRequest,
    };
    let server = TestServer::start_with(
        Backend::Sqlite,
        &[
            "--writes-per-user-per-minute",
            "60",
            "--write-burst",
            "4",
            "--streams-per-user-per-minute",
            "60",
            "--stream-burst",
            "2",
        ],
    )
    .await
    .expect("SQLite");
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mut rooms = server.rooms(&alice).await;
    let room = server.create_room(&alice, 4).await;
    let update = |n: usize| UpdateRoomDataRequest {
        room_id: room.room_id.clone(),
        set: [("round".to_owned(), n.to_string())].into(),
        ..Default::default()
    };
    for n in 0..4 {
        rooms
            .update_room_data(update(n))
            .await
            .expect("within the burst");
    }
    let refused = rooms
        .update_room_data(update(4))
        .await
        .expect_err("the fifth write at once");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let retry_after: u64 = refused
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a retry-after-ms trailer");
    assert!((1..=1000).contains(&retry_after), "{retry_after} ms");
    // Reads are not writes, and Bob has his own budget.
    rooms
        .get_room(GetRoomRequest {
            room_id: room.room_id.clone(),
        })
        .await
        .expect("a read");
    server
        .rooms(&bob)
        .await
        .create_room(CreateRoomRequest {
            capacity: 2,
            ..Default::default()
        })
        .await
        .expect("Bob's write");

    let watch = || WatchRoomRequest {
        room_id: room.room_id.clone(),
        after_sequence: None,
    };
    let first = rooms.watch_room(watch()).await.expect("a first stream");
    let second = rooms.watch_room(watch()).await.expect("a second stream");
    let refused = rooms
        .watch_room(watch())
        .await
        .expect_err("a third stream at once");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("stream"), "{refused:?}");
    drop((first, second));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_is_limited_per_address_before_the_database_and_per_session() {
    use rally_proto::identity::v1::RefreshRequest;
    use rally_proto::identity::v1::identity_client::IdentityClient;
    let server = TestServer::start_with(
        Backend::Sqlite,
        &[
            "--refresh-per-address-per-minute",
            "8",
            "--refresh-per-session-per-minute",
            "2",
        ],
    )
    .await
    .expect("SQLite");
    let mut identity = IdentityClient::new(server.channel().await);
    let random = || {
        use base64::Engine;
        let bytes: [u8; 32] = std::array::from_fn(|_| fastrand::u8(..));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    let mut refresh = async |token: String| {
        identity
            .refresh(RefreshRequest {
                refresh_token: token,
            })
            .await
            .map(|answer| answer.into_inner().session.expect("session").refresh_token)
    };
    for _ in 0..3 {
        let refused = refresh(random()).await.expect_err("a random token");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    let mut token = server
        .device_session("refresher-device-0001", "R")
        .await
        .refresh_token;
    for _ in 0..2 {
        token = refresh(token).await.expect("within the session's budget");
    }
    let refused = refresh(token.clone())
        .await
        .expect_err("a third refresh of one session at once");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("refreshes of this session"),
        "{refused:?}"
    );
    for _ in 0..2 {
        let refused = refresh(random()).await.expect_err("a random token");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    let refused = refresh(random())
        .await
        .expect_err("past the address's budget");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("refreshes from this address"),
        "{refused:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_past_the_session_cap_ends_the_oldest_session() {
    use rally_proto::identity::v1::identity_client::IdentityClient;
    use rally_proto::identity::v1::{GetAccountRequest, RefreshRequest};
    let server = TestServer::start_with(Backend::Sqlite, &["--max-sessions-per-user", "2"])
        .await
        .expect("SQLite");
    let device = "session-cap-device-0001";
    let first = server.device_session(device, "Capped").await;
    let second = server.device_session(device, "Capped").await;
    let account = |session: &rally_proto::identity::v1::AuthSession| {
        let token = session.access_token.clone();
        let channel = async { server.channel().await };
        async move {
            IdentityClient::with_interceptor(
                channel.await,
                rally_client::Bearer::new(&token).expect("ASCII token"),
            )
            .get_account(GetAccountRequest {})
            .await
        }
    };
    account(&first).await.expect("two sessions fit");
    let third = server.device_session(device, "Capped").await;
    let refused = account(&first)
        .await
        .expect_err("the oldest session ended with the third sign-in");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let refused = IdentityClient::new(server.channel().await)
        .refresh(RefreshRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .expect_err("its refresh token is gone");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    account(&second).await.expect("the second stays");
    account(&third).await.expect("the third works");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_request_arrived_outlives_the_request_deadline() {
    use rally_proto::rooms::v1::watch_room_response::Payload;
    use rally_proto::rooms::v1::{UpdateRoomDataRequest, WatchRoomRequest};
    let server = TestServer::start_with(Backend::Sqlite, &["--request-timeout-ms", "300"])
        .await
        .expect("SQLite");
    let alice = server.user("alice").await;
    let mut rooms = server.rooms(&alice).await;
    let room = server.create_room(&alice, 2).await;
    let mut watch = rooms
        .watch_room(WatchRoomRequest {
            room_id: room.room_id.clone(),
            after_sequence: Some(room.sequence),
        })
        .await
        .expect("a watch")
        .into_inner();
    // A request that never arrives, opened after the watch: once it is answered, the deadline
    // has passed for the watch too.
    let tcp = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::post(format!(
        "http://{}/rally.identity.v1.Identity/Refresh",
        server.addr()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .expect("a request");
    let (answer, _body) = client.send_request(request, false).expect("send");
    let answer = tokio::time::timeout(WAIT, answer)
        .await
        .expect("answered in time")
        .expect("an answer");
    assert_eq!(
        answer.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"4"[..]),
        "DEADLINE_EXCEEDED"
    );
    // The watch goes on.
    rooms
        .update_room_data(UpdateRoomDataRequest {
            room_id: room.room_id.clone(),
            set: [("k".to_owned(), "v".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect("an update");
    let message = tokio::time::timeout(WAIT, watch.message())
        .await
        .expect("in time")
        .expect("the watch is still open")
        .expect("a message");
    assert!(
        matches!(message.payload, Some(Payload::Event(_))),
        "{message:?}"
    );
    server.stop().await;
}

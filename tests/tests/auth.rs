//! Authentication in front of every service, health checking, reflection and sign-in rate limits.

use std::time::Duration;

use rally_auth::{SigningKey, TokenIssuer};
use rally_client::Bearer;
use rally_e2e::{Backend, TestServer};
use rally_proto::broker::v1::AttachRequest;
use rally_proto::broker::v1::broker_client::BrokerClient;
use rally_proto::identity::v1::identity_client::IdentityClient;
use rally_proto::identity::v1::*;
use rally_proto::rooms::v1::matchmaking_client::MatchmakingClient;
use rally_proto::rooms::v1::rooms_client::RoomsClient;
use rally_proto::rooms::v1::{
    CreateRoomRequest, EnqueueRequest, ListRoomsRequest, WatchRoomRequest,
};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn sqlite() -> TestServer {
    TestServer::start(Backend::Sqlite)
        .await
        .expect("sqlite server")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

async fn device_session(server: &TestServer, device: &str) -> AuthSession {
    server.device_session(device, "").await
}

/// Adds the access token when there is one.
#[derive(Clone)]
struct MaybeBearer(Option<Bearer>);

impl tonic::service::Interceptor for MaybeBearer {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &mut self.0 {
            Some(bearer) => bearer.call(request),
            None => Ok(request),
        }
    }
}

fn code_of<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Calls one RPC of every service with `token` (none when `None`) and returns each status code.
async fn every_protected_call(
    server: &TestServer,
    token: Option<&str>,
) -> Vec<(&'static str, Code)> {
    let channel = server.channel().await;
    let auth = MaybeBearer(token.map(|t| Bearer::new(t).expect("ascii")));
    let mut rooms = RoomsClient::with_interceptor(channel.clone(), auth.clone());
    let mut matchmaking = MatchmakingClient::with_interceptor(channel.clone(), auth.clone());
    let mut broker = BrokerClient::with_interceptor(channel.clone(), auth.clone());
    let mut identity = IdentityClient::with_interceptor(channel, auth);
    let attach = tokio_stream::iter(vec![AttachRequest::default()]);
    vec![
        (
            "Rooms/CreateRoom",
            code_of(rooms.create_room(CreateRoomRequest::default()).await),
        ),
        (
            "Rooms/ListRooms",
            code_of(rooms.list_rooms(ListRoomsRequest::default()).await),
        ),
        (
            "Rooms/WatchRoom",
            code_of(rooms.watch_room(WatchRoomRequest::default()).await),
        ),
        (
            "Matchmaking/Enqueue",
            code_of(matchmaking.enqueue(EnqueueRequest::default()).await),
        ),
        ("Broker/Attach", code_of(broker.attach(attach).await)),
        (
            "Identity/GetAccount",
            code_of(identity.get_account(GetAccountRequest {}).await),
        ),
        (
            "Identity/GetUser",
            code_of(identity.get_user(GetUserRequest::default()).await),
        ),
        // Last: it ends the session, and every later call of the token is refused.
        (
            "Identity/Logout",
            code_of(identity.logout(LogoutRequest::default()).await),
        ),
    ]
}

#[tokio::test]
async fn every_service_but_sign_in_refuses_calls_without_a_token() {
    let server = sqlite().await;
    for (call, code) in every_protected_call(&server, None).await {
        assert_eq!(code, Code::Unauthenticated, "{call} without a token");
    }
    server.stop().await;
}

#[tokio::test]
async fn with_a_token_calls_reach_the_services() {
    let server = sqlite().await;
    let session = device_session(&server, "device-with-token-0001").await;
    for (call, code) in every_protected_call(&server, Some(&session.access_token)).await {
        // Past authentication each call meets its service: default (empty) requests are refused
        // for what they are (an Attach stream whose first message has no body included).
        let expected = match call {
            "Rooms/CreateRoom" | "Rooms/WatchRoom" | "Identity/GetUser" | "Broker/Attach" => {
                Code::InvalidArgument
            }
            "Matchmaking/Enqueue" => Code::NotFound,
            _ => Code::Ok,
        };
        assert_eq!(code, expected, "{call} with a valid token");
    }
    server.stop().await;
}

async fn get_account_with_header(server: &TestServer, value: &str) -> tonic::Status {
    let mut client = IdentityClient::new(server.channel().await);
    let mut request = tonic::Request::new(GetAccountRequest {});
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(value).expect("ascii"),
    );
    client
        .get_account(request)
        .await
        .expect_err("must be refused")
}

#[tokio::test]
async fn malformed_forged_expired_and_foreign_tokens_are_unauthenticated() {
    let server = sqlite().await;
    let session = device_session(&server, "device-token-checks-01").await;
    let ours = SigningKey::from_pem(&std::fs::read_to_string(server.key_file()).expect("key file"))
        .expect("server key");
    let user: uuid::Uuid = session
        .user
        .as_ref()
        .expect("user")
        .user_id
        .parse()
        .expect("uuid");
    let sid: uuid::Uuid = session.session_id.parse().expect("uuid");

    let expired = TokenIssuer::new(&ours, Duration::from_secs(60))
        .issue(user, sid, now() - 3600)
        .expect("issue");
    let foreign_key = SigningKey::generate().expect("key");
    let foreign = TokenIssuer::new(&foreign_key, Duration::from_secs(600))
        .issue(user, sid, now())
        .expect("issue");
    let mut parts: Vec<&str> = session.access_token.split('.').collect();
    let other_session = device_session(&server, "device-token-checks-02").await;
    let other_payload = other_session
        .access_token
        .split('.')
        .nth(1)
        .expect("payload")
        .to_owned();
    parts[1] = &other_payload;
    let spliced = parts.join(".");

    let cases = [
        ("no scheme", session.access_token.clone(), "Bearer"),
        ("basic", format!("Basic {}", session.access_token), "Bearer"),
        ("garbage", "Bearer not.a.token".to_owned(), "malformed"),
        ("empty", "Bearer ".to_owned(), ""),
        ("expired", format!("Bearer {}", expired.token), "expired"),
        (
            "foreign key",
            format!("Bearer {}", foreign.token),
            "unknown key",
        ),
        ("spliced payload", format!("Bearer {spliced}"), "signature"),
        (
            "oversized",
            format!("Bearer {}", "a".repeat(5000)),
            "malformed",
        ),
    ];
    for (name, header, mentions) in cases {
        let status = get_account_with_header(&server, &header).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
        assert!(
            status.message().contains(mentions),
            "{name}: {:?}",
            status.message()
        );
    }
    // The genuine token still works on the same server.
    let mut client = IdentityClient::with_interceptor(
        server.channel().await,
        Bearer::new(&session.access_token).expect("ascii"),
    );
    client
        .get_account(GetAccountRequest {})
        .await
        .expect("genuine token");
    server.stop().await;
}

#[tokio::test]
async fn health_reports_every_service_serving_and_unknown_ones_not_found() {
    let server = sqlite().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in [
        "",
        "rally.identity.v1.Identity",
        "rally.rooms.v1.Rooms",
        "rally.rooms.v1.Matchmaking",
        "rally.broker.v1.Broker",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let missing = health
        .check(HealthCheckRequest {
            service: "rally.nope.v1.Nope".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(missing.code(), Code::NotFound);
    server.stop().await;
}

async fn reflected_services(server: &TestServer) -> Vec<String> {
    let mut client = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("stream")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response: {response:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn reflection_lists_all_four_rally_services() {
    let server = sqlite().await;
    let names = reflected_services(&server).await;
    for service in rally_proto::SERVICE_NAMES {
        assert!(
            names.iter().any(|n| n == service),
            "{service} missing from {names:?}"
        );
    }
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_subset_of_services_serves_only_those_and_trusts_the_shared_key() {
    let server = sqlite().await;
    let session = device_session(&server, "device-subset-00000001").await;
    // Same data directory (and so the same key file), rooms only.
    let server = server.restart(&["--services", "rooms"]).await;

    let names = reflected_services(&server).await;
    assert!(names.iter().any(|n| n == "rally.rooms.v1.Rooms"));
    assert!(
        !names.iter().any(|n| n == "rally.identity.v1.Identity"),
        "{names:?}"
    );
    let mut health = HealthClient::new(server.channel().await);
    let status = health
        .check(HealthCheckRequest {
            service: "rally.identity.v1.Identity".into(),
        })
        .await
        .expect_err("identity is not served here");
    assert_eq!(status.code(), Code::NotFound);

    // A token from the identity replica is accepted here.
    let mut rooms = RoomsClient::with_interceptor(
        server.channel().await,
        Bearer::new(&session.access_token).expect("ascii"),
    );
    rooms
        .list_rooms(ListRoomsRequest::default())
        .await
        .expect("token accepted");
    server.stop().await;
}

#[tokio::test]
async fn a_verify_only_replica_without_the_key_refuses_to_start() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().display().to_string();
    let config = <rallyd::Config as clap::Parser>::try_parse_from([
        "rallyd",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &dir,
        "--services",
        "broker",
    ])
    .expect("parse");
    let error = rallyd::start(config).await.err().expect("must not start");
    assert!(error.to_string().contains("--token-verify-keys"), "{error}");
}

#[tokio::test]
async fn a_verify_only_replica_needs_only_the_public_key() {
    let server = sqlite().await;
    let session = device_session(&server, "device-public-key-0001").await;
    let key = std::fs::read_to_string(server.key_file()).expect("the signing key");
    let key = rally_auth::SigningKey::from_pem(&key).expect("a key");

    // Another data directory with no private key in it: only the public half, readable by all.
    let data = tempfile::tempdir().expect("tempdir");
    let public = data.path().join("token-verify-key.pem");
    std::fs::write(&public, key.public_pem()).expect("write the public key");
    let dir = data.path().join("data").display().to_string();
    let public_flag = public.display().to_string();
    let config = <rallyd::Config as clap::Parser>::try_parse_from([
        "rallyd",
        "--listen",
        "127.0.0.1:0",
        "--relay-listen",
        "127.0.0.1:0",
        "--data-dir",
        &dir,
        "--services",
        "rooms",
        "--token-verify-keys",
        &public_flag,
    ])
    .expect("parse");
    let rooms_only = rallyd::start(config)
        .await
        .expect("starts with the public key");
    let channel = rally_client::connect(&format!("http://{}", rooms_only.grpc_addr()))
        .await
        .expect("connect");
    RoomsClient::with_interceptor(channel, Bearer::new(&session.access_token).expect("ascii"))
        .list_rooms(ListRoomsRequest::default())
        .await
        .expect("a token of the identity replica is accepted");
    assert!(
        !data.path().join("data/token-signing-key.pem").exists(),
        "a replica without identity never makes a signing key"
    );
    rooms_only.stop().await.expect("stops");
    server.stop().await;
}

#[tokio::test]
async fn sign_in_attempts_are_limited_per_username() {
    let server =
        TestServer::start_with(Backend::Sqlite, &["--signin-per-username-per-minute", "3"])
            .await
            .expect("server");
    let mut client = IdentityClient::new(server.channel().await);
    client
        .register(RegisterRequest {
            username: "ivan".into(),
            password: "ivans password".into(),
            display_name: String::new(),
        })
        .await
        .expect("register counts as the first attempt");
    for _ in 0..2 {
        let status = client
            .login(LoginRequest {
                username: "IVAN".into(),
                password: "wrong password".into(),
            })
            .await
            .expect_err("wrong password");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    // Even the right password is refused now, for any case of the name.
    let status = client
        .login(LoginRequest {
            username: "ivan".into(),
            password: "ivans password".into(),
        })
        .await
        .expect_err("throttled");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.metadata().get("retry-after-ms").is_some());
    // Another username is not affected.
    client
        .register(RegisterRequest {
            username: "judy".into(),
            password: "judys password".into(),
            display_name: String::new(),
        })
        .await
        .expect("other username");
    server.stop().await;
}

#[tokio::test]
async fn sign_in_attempts_are_limited_per_address() {
    let server = TestServer::start_with(Backend::Sqlite, &["--signin-per-address-per-minute", "4"])
        .await
        .expect("server");
    let mut client = IdentityClient::new(server.channel().await);
    for i in 0..4 {
        client
            .device_login(DeviceLoginRequest {
                device_id: format!("address-limit-device-{i:04}"),
                display_name: String::new(),
            })
            .await
            .expect("within quota");
    }
    let status = client
        .login(LoginRequest {
            username: "someone".into(),
            password: "some password".into(),
        })
        .await
        .expect_err("throttled");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("address"), "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn oversized_requests_are_refused_before_they_reach_a_handler() {
    let server = sqlite().await;
    let mut client = IdentityClient::new(server.channel().await);
    let status = client
        .refresh(RefreshRequest {
            refresh_token: "A".repeat(100_000),
        })
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    server.stop().await;
}

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

//! Messages that do not decode, as a C++ or hand-rolled client can send them (a string field that
//! is not UTF-8): unary calls on every service answer INVALID_ARGUMENT, never INTERNAL; on the
//! Attach stream the message is answered with an Error and the stream goes on.

use std::time::Duration;

use futures::StreamExt;
use http::uri::PathAndQuery;
use rally_e2e::{Backend, TestServer};
use rally_proto::broker::v1::attach_response::Body;
use rally_proto::broker::v1::{AttachResponse, ErrorCode, Hello, Ping};
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;

const WAIT: Duration = Duration::from_secs(20);
/// Not UTF-8: a lone continuation byte and an overlong encoding.
const NOT_UTF8: &[u8] = b"abc\x80\xc0\xafdef";

/// A message whose field 1 and field 2 are raw bytes where the contract has strings.
#[derive(Clone, PartialEq, prost::Message)]
struct TwoStrings {
    #[prost(bytes = "vec", tag = "1")]
    first: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    second: Vec<u8>,
}

/// An AttachRequest as the wire sees it, with Connect's user id as raw bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawAttachRequest {
    #[prost(uint64, tag = "1")]
    request_id: u64,
    #[prost(message, optional, tag = "2")]
    hello: Option<Hello>,
    #[prost(message, optional, tag = "4")]
    connect: Option<TwoStrings>,
    #[prost(message, optional, tag = "9")]
    ping: Option<Ping>,
}

async fn unary(
    server: &TestServer,
    token: Option<&str>,
    path: &'static str,
    message: TwoStrings,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value: AsciiMetadataValue = format!("Bearer {token}").parse().expect("ASCII");
        request.metadata_mut().insert("authorization", value);
    }
    let codec = tonic_prost::ProstCodec::<TwoStrings, TwoStrings>::default();
    grpc.unary(request, PathAndQuery::from_static(path), codec)
        .await
        .expect_err("a malformed message is refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strings_that_are_not_utf8_are_invalid_arguments_on_every_service() {
    let server = TestServer::start(Backend::Sqlite).await.expect("SQLite");
    let user = server.user("utf8").await;
    let bad = TwoStrings {
        first: NOT_UTF8.to_vec(),
        second: NOT_UTF8.to_vec(),
    };
    for (path, token) in [
        ("/rally.identity.v1.Identity/Login", None),
        (
            "/rally.identity.v1.Identity/GetUser",
            Some(user.access_token.as_str()),
        ),
        (
            "/rally.rooms.v1.Rooms/GetRoom",
            Some(user.access_token.as_str()),
        ),
        (
            "/rally.rooms.v1.Matchmaking/Cancel",
            Some(user.access_token.as_str()),
        ),
    ] {
        let status = unary(&server, token, path, bad.clone()).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(status.message().contains("malformed"), "{path}: {status:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_signal_is_answered_with_an_error_and_the_attachment_goes_on() {
    let server = TestServer::start(Backend::Sqlite).await.expect("SQLite");
    let user = server.user("utf8-attach").await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<RawAttachRequest>();
    let hello = rally_e2e::fixtures::hello(0x7E);
    tx.send(RawAttachRequest {
        request_id: 1,
        hello: Some(hello),
        ..Default::default()
    })
    .expect("queue the Hello");
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
    let value: AsciiMetadataValue = format!("Bearer {}", user.access_token)
        .parse()
        .expect("ASCII");
    request.metadata_mut().insert("authorization", value);
    let codec = tonic_prost::ProstCodec::<RawAttachRequest, AttachResponse>::default();
    let mut stream = grpc
        .streaming(
            request,
            PathAndQuery::from_static("/rally.broker.v1.Broker/Attach"),
            codec,
        )
        .await
        .expect("attach")
        .into_inner();
    let mut next = async || match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(message))) => message,
        other => panic!("expected a message, got {other:?}"),
    };
    assert!(matches!(next().await.body, Some(Body::Welcome(_))));

    tx.send(RawAttachRequest {
        request_id: 2,
        connect: Some(TwoStrings {
            first: NOT_UTF8.to_vec(),
            second: Vec::new(),
        }),
        ..Default::default()
    })
    .expect("queue the malformed Connect");
    let answer = next().await;
    assert_eq!(
        answer.request_id, 2,
        "the Error answers the malformed message"
    );
    match answer.body {
        Some(Body::Error(error)) => {
            assert_eq!(error.code, ErrorCode::InvalidArgument as i32, "{error:?}");
            assert!(error.message.contains("malformed"), "{error:?}");
        }
        other => panic!("expected an Error, got {other:?}"),
    }
    tx.send(RawAttachRequest {
        request_id: 3,
        ping: Some(Ping { nonce: 3 }),
        ..Default::default()
    })
    .expect("queue a Ping");
    let pong = next().await;
    assert_eq!(pong.request_id, 3);
    assert!(
        matches!(pong.body, Some(Body::Pong(_))),
        "the stream went on: {pong:?}"
    );
    drop(tx);
    server.stop().await;
}

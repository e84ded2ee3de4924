//! The hostile-client suite: one test per attack on a real `rallyd` on loopback, each bounded in
//! count and time. Each asserts the server's answer, that `rallyd` stays healthy, and that a
//! legitimate user running alongside keeps working: the p99 of its simple call during the attack
//! stays within 5x its p99 just before, measured in the same test.
//!
//! The attacks run one at a time (they share two cores with the server and the legitimate user),
//! and each adds a row to a Markdown table in Cargo's test scratch directory
//! (`hostile-clients.md`), which `.ci/run` prints.

use std::future::Future;
use std::io::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rally_e2e::attach::{Attached, handshake, present};
use rally_e2e::{Backend, TestServer, TestUser};
use rally_proto::broker::v1::attach_request::Body as Req;
use rally_proto::broker::v1::attach_response::Body;
use rally_proto::broker::v1::{
    Candidate, CandidateKind, Close, Connect, ErrorCode, Hello, NatType, RelayGrant, RelayPolicy,
    RequestRelayGrant, SocketAddress,
};
use rally_proto::rooms::v1::{CreateRoomRequest, GetCurrentRoomRequest, GetRoomRequest};
use rally_relay::wire::{self, Message, RefusedReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long any one step may take before the test fails as hung.
const WAIT: Duration = Duration::from_secs(30);
/// The legitimate user's latency budget during an attack, as a multiple of its p99 before.
const BUDGET: u32 = 5;
/// The smallest p99 the budget is taken of: below it, scheduling noise on a shared two-core
/// machine (a debug build, the attacker in the same process) dominates what is measured.
const NOISE_FLOOR: Duration = Duration::from_millis(5);
/// Calls the legitimate user makes to measure its p99, before and (at least) during.
const SAMPLES: usize = 200;

/// One attack at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What an attack did and what it met, for the table.
struct Outcome {
    sent: usize,
    answer: String,
}

/// The legitimate user's simple call.
#[derive(Clone, Copy)]
enum Probe {
    /// GetRoom on its own room (a read).
    GetRoom,
    /// CreateRoom (a write, taking the SQLite write lock).
    CreateRoom,
}

struct Legit {
    server_addr: std::net::SocketAddr,
    user: TestUser,
    room_id: String,
    probe: Probe,
}

impl Legit {
    async fn new(server: &TestServer, probe: Probe) -> Self {
        let user = server.user("legit").await;
        let room = server.create_room(&user, 4).await;
        Self {
            server_addr: server.addr(),
            user,
            room_id: room.room_id,
            probe,
        }
    }

    /// Calls until `stop` is cancelled and at least `SAMPLES` calls were made; every call must
    /// succeed. Returns the p99.
    async fn measure(&self, stop: CancellationToken) -> Duration {
        let channel = rally_client::connect(&format!("http://{}", self.server_addr))
            .await
            .expect("the legitimate user connects");
        let mut rooms = rally_proto::rooms::v1::rooms_client::RoomsClient::with_interceptor(
            channel,
            rally_client::Bearer::new(&self.user.access_token).expect("ASCII token"),
        );
        let mut samples = Vec::with_capacity(SAMPLES);
        while samples.len() < SAMPLES || !stop.is_cancelled() {
            let started = Instant::now();
            let answer = match self.probe {
                Probe::GetRoom => rooms
                    .get_room(GetRoomRequest {
                        room_id: self.room_id.clone(),
                    })
                    .await
                    .map(drop),
                Probe::CreateRoom => rooms
                    .create_room(CreateRoomRequest {
                        capacity: 2,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            };
            samples.push(started.elapsed());
            if let Err(status) = answer {
                panic!("the legitimate user's call failed: {status:?}");
            }
        }
        samples.sort();
        let index = (samples.len() * 99).div_ceil(100).saturating_sub(1);
        samples[index.min(samples.len() - 1)]
    }
}

/// Runs `attack` against `server` with a legitimate user alongside; checks the answer through
/// `attack`'s own assertions, the server's health, the legitimate user's latency; adds the row.
async fn run<F, Fut>(name: &str, server: &TestServer, probe: Probe, attack: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Outcome>,
{
    let legit = std::sync::Arc::new(Legit::new(server, probe).await);
    let before = {
        let done = CancellationToken::new();
        done.cancel();
        legit.measure(done).await
    };
    let stop = CancellationToken::new();
    let during = tokio::spawn({
        let legit = legit.clone();
        let stop = stop.clone();
        async move { legit.measure(stop).await }
    });
    let outcome = tokio::time::timeout(WAIT * 4, attack())
        .await
        .unwrap_or_else(|_| panic!("{name}: the attack did not finish in time"));
    stop.cancel();
    let during = tokio::time::timeout(WAIT, during)
        .await
        .expect("the legitimate user finishes")
        .expect("the legitimate user's task");
    healthy(server).await;
    let row = format!(
        "| {name} | {} | {} | {:.2} ms | {:.2} ms |",
        outcome.sent,
        outcome.answer,
        before.as_secs_f64() * 1e3,
        during.as_secs_f64() * 1e3,
    );
    eprintln!("{row}");
    record(&row);
    assert!(
        during <= before.max(NOISE_FLOOR) * BUDGET,
        "{name}: the legitimate user's p99 went from {before:?} to {during:?}"
    );
}

fn record(row: &str) {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-clients.md");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open the table");
    writeln!(file, "{row}").expect("write the table");
}

async fn healthy(server: &TestServer) {
    let status = HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("rallyd answers health checks after the attack")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
}

/// The HPACK block of a gRPC POST to `path` (static-table and literal fields, no Huffman).
fn hpack_request(path: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    let literal_indexed_name = |block: &mut Vec<u8>, index: u8, value: &str| {
        block.push(index); // literal without indexing, name from the static table
        block.push(u8::try_from(value.len()).expect("short"));
        block.extend_from_slice(value.as_bytes());
    };
    literal_indexed_name(&mut block, 0x04, path); // :path
    literal_indexed_name(&mut block, 0x01, "localhost"); // :authority
    for (name, value) in [("content-type", "application/grpc"), ("te", "trailers")] {
        block.push(0x00);
        block.push(u8::try_from(name.len()).expect("short"));
        block.extend_from_slice(name.as_bytes());
        block.push(u8::try_from(value.len()).expect("short"));
        block.extend_from_slice(value.as_bytes());
    }
    block
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frame");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_on_one_connection() {
    const STREAMS: u32 = 10_000;
    let _one_at_a_time = SERIAL.lock().await;
    let server = TestServer::start_with(Backend::Sqlite, &["--request-timeout-ms", "1000"])
        .await
        .expect("SQLite");
    let addr = server.addr();
    run(
        "10 000 streams on one HTTP/2 connection",
        &server,
        Probe::GetRoom,
        || async move {
            let block = hpack_request("/grpc.health.v1.Health/Check");
            let (sent, refused, goaway) = raw_http2(addr, STREAMS, move |n, out| {
                // HEADERS, END_HEADERS, no END_STREAM: each stream stays open.
                out.extend(frame(0x1, 0x4, 2 * n + 1, &block));
            })
            .await;
            assert!(
                goaway.is_some(),
                "the connection ends with GOAWAY ({refused} refused)"
            );
            Outcome {
                sent: usize::try_from(sent).expect("small"),
                answer: format!(
                    "{refused} streams refused (REFUSED_STREAM), then GOAWAY (code {})",
                    goaway.unwrap_or_default()
                ),
            }
        },
    )
    .await;
    server.stop().await;
}

/// What a raw HTTP/2 client met: streams it wrote, streams the server refused
/// (`RST_STREAM` with `REFUSED_STREAM`), and the `GOAWAY` error code, if the server sent one.
type Met = (u32, usize, Option<u32>);

/// Opens one HTTP/2 connection to `addr` and writes `streams` streams' frames (each from
/// `write(n, out)`), then reads the server's frames until it closes the connection.
async fn raw_http2(
    addr: std::net::SocketAddr,
    streams: u32,
    write: impl Fn(u32, &mut Vec<u8>) + Send + 'static,
) -> Met {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = tcp.into_split();
    let writing = tokio::spawn(async move {
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let mut sent = 0;
        for n in 0..streams {
            write(n, &mut out);
            if out.len() > 64 * 1024 || n + 1 == streams {
                if writer.write_all(&out).await.is_err() {
                    break; // the server closed the connection
                }
                out.clear();
            }
            sent += 1;
        }
        sent
    });
    let (mut refused, mut goaway) = (0usize, None);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::time::timeout(WAIT, reader.read(&mut chunk))
            .await
            .expect("the server answers or closes in time");
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let payload = &buf[9..9 + len];
            match buf[3] {
                0x3 if payload.get(..4) == Some(&7u32.to_be_bytes()[..]) => refused += 1,
                0x7 => {
                    goaway = payload
                        .get(4..8)
                        .and_then(|code| code.try_into().ok())
                        .map(u32::from_be_bytes);
                }
                _ => {}
            }
            buf.drain(..9 + len);
        }
    }
    let sent = writing.await.expect("the writer");
    (sent, refused, goaway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_streams_on_one_connection() {
    const STREAMS: u32 = 10_000;
    let _one_at_a_time = SERIAL.lock().await;
    let server = TestServer::start(Backend::Sqlite).await.expect("SQLite");
    let addr = server.addr();
    run(
        "rapid reset: 10 000 streams opened and cancelled at once",
        &server,
        Probe::GetRoom,
        || async move {
            let block = hpack_request("/grpc.health.v1.Health/Check");
            let (sent, _, goaway) = raw_http2(addr, STREAMS, move |n, out| {
                out.extend(frame(0x1, 0x4, 2 * n + 1, &block));
                // RST_STREAM with CANCEL before the server could answer.
                out.extend(frame(0x3, 0, 2 * n + 1, &8u32.to_be_bytes()));
            })
            .await;
            // ENHANCE_YOUR_CALM (11): hyper's pending-reset limit.
            assert_eq!(goaway, Some(11), "the connection ends with GOAWAY");
            Outcome {
                sent: usize::try_from(sent).expect("small"),
                answer: "GOAWAY (ENHANCE_YOUR_CALM) after the pending-reset limit".into(),
            }
        },
    )
    .await;
    server.stop().await;
}

/// One stream a client opened and holds: the server's answer to come, and the request body.
type Held = (h2::client::ResponseFuture, h2::SendStream<Bytes>);

/// Opens `per_connection` gRPC streams to `path` on each of `connections` HTTP/2 connections,
/// sending their headers and `first` (when not empty) and never ending them.
async fn open_streams(
    addr: std::net::SocketAddr,
    connections: usize,
    per_connection: usize,
    path: &str,
    first: &[u8],
) -> Vec<Held> {
    let mut streams = Vec::with_capacity(connections * per_connection);
    for _ in 0..connections {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2");
        tokio::spawn(connection);
        let mut client = client;
        for _ in 0..per_connection {
            client = client.ready().await.expect("a stream slot");
            let request = http::Request::post(format!("http://{addr}{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("a request");
            let (answer, mut body) = client.send_request(request, false).expect("send");
            if !first.is_empty() {
                body.send_data(Bytes::copy_from_slice(first), false)
                    .expect("the first bytes");
            }
            streams.push((answer, body));
        }
    }
    streams
}

/// Checks that all `sent` streams ended `DEADLINE_EXCEEDED` (`codes`: how many ended with each
/// `grpc-status`).
fn all_deadline_exceeded(
    codes: &std::collections::BTreeMap<String, usize>,
    sent: usize,
) -> Outcome {
    let deadline_exceeded = (Code::DeadlineExceeded as i32).to_string();
    assert_eq!(
        codes.get(&deadline_exceeded),
        Some(&sent),
        "every stream ends DEADLINE_EXCEEDED: {codes:?}"
    );
    Outcome {
        sent,
        answer: format!("{sent} x DEADLINE_EXCEEDED after 500 ms"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_send_headers_and_never_a_body() {
    const PER_CONNECTION: usize = 250;
    const CONNECTIONS: usize = 2;
    let _one_at_a_time = SERIAL.lock().await;
    let server = TestServer::start_with(Backend::Sqlite, &["--request-timeout-ms", "500"])
        .await
        .expect("SQLite");
    let addr = server.addr();
    run(
        "headers and never a body",
        &server,
        Probe::GetRoom,
        || async move {
            let (answers, held): (Vec<_>, Vec<_>) = open_streams(
                addr,
                CONNECTIONS,
                PER_CONNECTION,
                "/rally.identity.v1.Identity/Refresh",
                &[],
            )
            .await
            .into_iter()
            .unzip();
            let sent = answers.len();
            let mut codes = std::collections::BTreeMap::<String, usize>::new();
            for answer in answers {
                let answer = tokio::time::timeout(WAIT, answer)
                    .await
                    .expect("every stream is answered in time")
                    .expect("an answer");
                let code = answer
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                *codes.entry(code).or_default() += 1;
            }
            drop(held);
            all_deadline_exceeded(&codes, sent)
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_streams_trickling_a_large_message() {
    const PER_CONNECTION: usize = 250;
    const CONNECTIONS: usize = 2;
    let _one_at_a_time = SERIAL.lock().await;
    let server = TestServer::start_with(Backend::Sqlite, &["--request-timeout-ms", "500"])
        .await
        .expect("SQLite");
    let addr = server.addr();
    run(
        "reflection streams trickling a 4000-byte message",
        &server,
        Probe::GetRoom,
        || async move {
            // A message header announcing 4000 bytes, then its first byte.
            let mut head = vec![0u8];
            head.extend_from_slice(&4000u32.to_be_bytes());
            head.push(b'x');
            let streams = open_streams(
                addr,
                CONNECTIONS,
                PER_CONNECTION,
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                &head,
            )
            .await;
            let sent = streams.len();
            let mut ended = std::collections::BTreeMap::<String, usize>::new();
            let (answers, mut bodies): (Vec<_>, Vec<_>) = streams.into_iter().unzip();
            // One more byte on every stream every 100 ms, until each stream has ended.
            let ticking = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                for _ in 0..100 {
                    tick.tick().await;
                    let mut open = 0;
                    for body in &mut bodies {
                        if body.send_data(Bytes::from_static(b"x"), false).is_ok() {
                            open += 1;
                        }
                    }
                    if open == 0 {
                        break;
                    }
                }
            });
            for answer in answers {
                let answer = tokio::time::timeout(WAIT, answer)
                    .await
                    .expect("every stream is answered")
                    .expect("an answer");
                let mut body = answer.into_body();
                while let Some(data) = tokio::time::timeout(WAIT, body.data())
                    .await
                    .expect("the stream ends in time")
                {
                    if data.is_err() {
                        break;
                    }
                }
                let trailers = tokio::time::timeout(WAIT, body.trailers())
                    .await
                    .expect("trailers in time");
                let code = trailers
                    .ok()
                    .flatten()
                    .and_then(|t| {
                        t.get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| "reset".into());
                *ended.entry(code).or_default() += 1;
            }
            ticking.abort();
            all_deadline_exceeded(&ended, sent)
        },
    )
    .await;
    server.stop().await;
}

/// A Hello announcing a fingerprint of its own (`[n; 32]` spread over two bytes).
fn hello(n: u16) -> Hello {
    let mut fingerprint = vec![0xA5; 32];
    fingerprint[..2].copy_from_slice(&n.to_be_bytes());
    Hello {
        certificate_fingerprint: fingerprint,
        candidates: vec![Candidate {
            kind: CandidateKind::Host as i32,
            address: Some(SocketAddress {
                ip: "127.0.0.1".into(),
                port: 4000,
            }),
            priority: 100,
        }],
        relay_policy: RelayPolicy::Fallback as i32,
        nat_type: NatType::Moderate as i32,
        client_version: "rally-hostile/0".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_sybils_requesting_one_victim() {
    const SYBILS: usize = 300;
    let _one_at_a_time = SERIAL.lock().await;
    let server = TestServer::start_with(
        Backend::Sqlite,
        &["--signin-per-address-per-minute", "100000"],
    )
    .await
    .expect("SQLite");
    let victim = server.user("victim").await;
    let friend = server.user("friend").await;
    let room = server.create_room(&victim, 4).await;
    let mut sybils = Vec::with_capacity(SYBILS);
    for n in 0..SYBILS {
        sybils.push(server.user(&format!("sybil{n}")).await);
    }
    let attached_victim = Attached::new(&server, &victim, hello(60_000)).await;
    let mut attached_friend = Attached::new(&server, &friend, hello(60_001)).await;
    let server_ref = &server;
    run(
        "300 sybils requesting one victim, which re-attaches",
        &server,
        Probe::GetRoom,
        || async move {
            let mut refused = 0;
            let mut acked = 0;
            let mut held = Vec::new();
            for (n, sybil) in sybils.iter().enumerate() {
                let mut attached = Attached::new(
                    server_ref,
                    sybil,
                    hello(u16::try_from(n).expect("few")),
                )
                .await;
                match attached
                    .request(Req::Connect(Connect {
                        user_id: victim.user_id.clone(),
                    }))
                    .await
                {
                    Body::Ack(_) => acked += 1,
                    Body::Error(error) => {
                        assert_eq!(error.code, ErrorCode::RateLimited as i32, "{error:?}");
                        refused += 1;
                    }
                    other => panic!("a sybil's Connect: {other:?}"),
                }
                held.push(attached);
            }
            assert_eq!(acked, 32, "the victim's incoming cap");
            // The victim re-attaches: it gets its pending requests at its pace, stays attached
            // and in its room, and still asks a friend itself.
            drop(attached_victim);
            let mut again = Attached::new(server_ref, &victim, hello(60_000)).await;
            let mut requests = 0;
            while requests < 32 {
                match again.unsolicited().await {
                    Body::PeerConnectRequest(_) => requests += 1,
                    Body::RoomPresence(_) => {}
                    other => panic!("the victim after re-attaching: {other:?}"),
                }
            }
            again.nothing_pending().await;
            match again
                .request(Req::Connect(Connect {
                    user_id: friend.user_id.clone(),
                }))
                .await
            {
                Body::Ack(_) => {}
                other => panic!("the victim asking its friend: {other:?}"),
            }
            match attached_friend.unsolicited().await {
                Body::PeerConnectRequest(request) => assert_eq!(request.user_id, victim.user_id),
                other => panic!("the friend: {other:?}"),
            }
            let current = server_ref
                .rooms(&victim)
                .await
                .get_current_room(GetCurrentRoomRequest {})
                .await
                .expect("the victim's current room")
                .into_inner()
                .room
                .expect("still in a room");
            assert_eq!(current.room_id, room.room_id);
            drop(held);
            Outcome {
                sent: SYBILS,
                answer: format!(
                    "{acked} acknowledged, {refused} RATE_LIMITED; the victim re-attached and kept its room"
                ),
            }
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_flood_with_random_tokens_on_sqlite() {
    const CALLS: usize = 3000;
    const CONCURRENCY: usize = 32;
    let _one_at_a_time = SERIAL.lock().await;
    let server = TestServer::start_with(
        Backend::Sqlite,
        &[
            "--creates-per-user-per-minute",
            "100000",
            "--create-burst",
            "10000",
        ],
    )
    .await
    .expect("SQLite");
    let addr = server.addr();
    run(
        "Refresh flood with random tokens (SQLite), while another user creates rooms",
        &server,
        Probe::CreateRoom,
        || async move {
            use base64::Engine;
            use rally_proto::identity::v1::RefreshRequest;
            use rally_proto::identity::v1::identity_client::IdentityClient;
            let channel = rally_client::connect(&format!("http://{addr}"))
                .await
                .expect("connect");
            let mut tasks = Vec::new();
            for worker in 0..CONCURRENCY {
                let mut identity = IdentityClient::new(channel.clone());
                tasks.push(tokio::spawn(async move {
                    let mut codes = std::collections::BTreeMap::<i32, usize>::new();
                    for _ in (worker..CALLS).step_by(CONCURRENCY) {
                        let bytes: [u8; 32] = std::array::from_fn(|_| fastrand::u8(..));
                        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
                        let code = match identity
                            .refresh(RefreshRequest {
                                refresh_token: token,
                            })
                            .await
                        {
                            Ok(_) => Code::Ok,
                            Err(status) => status.code(),
                        };
                        *codes.entry(code as i32).or_default() += 1;
                    }
                    codes
                }));
            }
            let mut codes = std::collections::BTreeMap::<i32, usize>::new();
            for task in tasks {
                for (code, count) in task.await.expect("a flooding task") {
                    *codes.entry(code).or_default() += count;
                }
            }
            let exhausted = codes
                .get(&(Code::ResourceExhausted as i32))
                .copied()
                .unwrap_or(0);
            let unauthenticated = codes
                .get(&(Code::Unauthenticated as i32))
                .copied()
                .unwrap_or(0);
            assert_eq!(exhausted + unauthenticated, CALLS, "{codes:?}");
            assert!(
                (1..=61).contains(&unauthenticated),
                "at most a minute's budget reaches the database: {codes:?}"
            );
            Outcome {
                sent: CALLS,
                answer: format!(
                    "{unauthenticated} UNAUTHENTICATED (unknown token), {exhausted} RESOURCE_EXHAUSTED"
                ),
            }
        },
    )
    .await;
    server.stop().await;
}

/// One relayed pair: `a` asks for a grant for its pair with `b`; both present theirs.
async fn relay_pair(
    relay: std::net::SocketAddr,
    a: &mut Attached,
    b: &mut Attached,
    b_user: &TestUser,
) -> (RelayGrant, RelayGrant, Vec<Vec<u8>>) {
    let Body::RelayGrant(mine) = a
        .request(Req::RequestRelayGrant(RequestRelayGrant {
            user_id: b_user.user_id.clone(),
        }))
        .await
    else {
        panic!("expected a RelayGrant");
    };
    let Body::RelayGrant(theirs) = b.unsolicited().await else {
        panic!("expected the peer's RelayGrant");
    };
    let mut answers = Vec::new();
    for grant in [&mine, &theirs] {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        answers.push(present(&socket, relay, grant).await);
    }
    (mine, theirs, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_allocation_churn_by_two_accounts() {
    const CYCLES: usize = 100;
    let _one_at_a_time = SERIAL.lock().await;
    // Room for half the churn's allocations: without releases, the churn fills the relay. The
    // broker's signal rate is lifted so that the churn runs as fast as the server allows.
    let server = TestServer::start_with(
        Backend::Sqlite,
        &[
            "--relay-max-allocations",
            "50",
            "--broker-signals-per-second",
            "100000",
            "--broker-signal-burst",
            "100000",
        ],
    )
    .await
    .expect("SQLite");
    let relay = server.relay_addr().expect("a relay");
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let (carol, dave) = (server.user("carol").await, server.user("dave").await);
    let server_ref = &server;
    run(
        "relay allocation churn by two accounts (Close, Connect, Accept, grant, allocate)",
        &server,
        Probe::GetRoom,
        || async move {
            let mut a = Attached::new(server_ref, &alice, hello(1)).await;
            let mut b = Attached::new(server_ref, &bob, hello(2)).await;
            let mut replayed = 0;
            for _ in 0..CYCLES {
                handshake(&mut a, &alice, &mut b, &bob).await;
                let (mine, _, answers) = relay_pair(relay, &mut a, &mut b, &bob).await;
                for answer in answers {
                    assert!(
                        matches!(wire::decode(&answer), Ok(Message::Allocated { .. })),
                        "{:?}",
                        wire::decode(&answer)
                    );
                }
                assert!(matches!(
                    a.request(Req::Close(Close {
                        user_id: bob.user_id.clone(),
                    }))
                    .await,
                    Body::Ack(_)
                ));
                assert!(matches!(b.unsolicited().await, Body::PeerClosed(_)));
                // The closed pair's grant, presented again, brings nothing back once the relay
                // has the release (sent before the Ack; the relay may not have read it yet).
                let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                if let Ok(Message::Refused {
                    reason: RefusedReason::Released,
                    ..
                }) = wire::decode(&present(&socket, relay, &mine).await)
                {
                    replayed += 1;
                }
            }
            let deadline = tokio::time::Instant::now() + WAIT;
            while server_ref.relay_counters().expect("relay").released < CYCLES as u64 {
                assert!(tokio::time::Instant::now() < deadline, "releases missing");
                tokio::task::yield_now().await;
            }
            // A third pair still gets an allocation.
            let mut c = Attached::new(server_ref, &carol, hello(3)).await;
            let mut d = Attached::new(server_ref, &dave, hello(4)).await;
            handshake(&mut c, &carol, &mut d, &dave).await;
            let (_, _, answers) = relay_pair(relay, &mut c, &mut d, &dave).await;
            for answer in answers {
                assert!(
                    matches!(wire::decode(&answer), Ok(Message::Allocated { .. })),
                    "the third pair: {:?}",
                    wire::decode(&answer)
                );
            }
            let counters = server_ref.relay_counters().expect("relay");
            Outcome {
                sent: CYCLES,
                answer: format!(
                    "{} released, {replayed} replayed grants refused (RELEASED), {} allocations \
                     created, the third pair allocated",
                    counters.released, counters.allocations
                ),
            }
        },
    )
    .await;
    server.stop().await;
}

/// The bytes SQLite holds for the server: the database file and its write-ahead log.
fn database_bytes(server: &TestServer) -> u64 {
    ["rally.db", "rally.db-wal"]
        .iter()
        .filter_map(|name| std::fs::metadata(server.data_dir().join(name)).ok())
        .map(|meta| meta.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_data_churn_keeps_the_database_bounded() {
    const UPDATES: usize = 300;
    const VALUE_BYTES: usize = 4000;
    /// docs/limits.md: a room holds at most 1 MiB of events and about 266 KB of data; SQLite's
    /// free pages are reused, and its write-ahead log is cut back to 8 MiB after a checkpoint.
    const BOUND: u64 = (1 << 20) + 300_000 + (8 << 20) + (2 << 20);
    let _one_at_a_time = SERIAL.lock().await;
    let server = TestServer::start_with(
        Backend::Sqlite,
        &[
            "--writes-per-user-per-minute",
            "100000",
            "--write-burst",
            "10000",
        ],
    )
    .await
    .expect("SQLite");
    let attacker = server.user("churner").await;
    let mut rooms = server.rooms(&attacker).await;
    let room = server.create_room(&attacker, 2).await;
    let before = database_bytes(&server);
    let server_ref = &server;
    run(
        "room data churn: 300 updates of 64 values of 4000 bytes",
        &server,
        Probe::GetRoom,
        || async move {
            use rally_proto::rooms::v1::UpdateRoomDataRequest;
            for n in 0..UPDATES {
                let fill = char::from(b'a' + u8::try_from(n % 26).expect("small"));
                rooms
                    .update_room_data(UpdateRoomDataRequest {
                        room_id: room.room_id.clone(),
                        set: (0..64)
                            .map(|key| (format!("key{key}"), fill.to_string().repeat(VALUE_BYTES)))
                            .collect(),
                        ..Default::default()
                    })
                    .await
                    .expect("an update");
            }
            let grown = database_bytes(server_ref).saturating_sub(before);
            assert!(
                grown <= BOUND,
                "the database grew by {grown} bytes, over {BOUND}"
            );
            let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
            Outcome {
                sent: UPDATES,
                answer: format!(
                    "every update accepted; the database grew {:.1} MiB (bound {:.1} MiB)",
                    mib(grown),
                    mib(BOUND)
                ),
            }
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peer_aiming_candidates_at_loopback_gets_nothing_sent_there() {
    use rally_client::net::{ConnectionState, Net, NetConfig, NetEvent, RelayPolicy};
    let _one_at_a_time = SERIAL.lock().await;
    let server = TestServer::start(Backend::Sqlite).await.expect("SQLite");
    // The service on the victim's host the hostile peer aims at.
    let trap = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind the trap");
    let trap_port = u32::from(trap.local_addr().expect("trap address").port());
    let attacker = server.user("mallory").await;
    let server_ref = &server;
    run(
        "a peer announcing loopback, link-local, multicast and unspecified candidates",
        &server,
        Probe::GetRoom,
        || async move {
            let candidate = |ip: &str, kind: CandidateKind| Candidate {
                kind: kind as i32,
                address: Some(SocketAddress {
                    ip: ip.into(),
                    port: trap_port,
                }),
                priority: 100,
            };
            let aimed = vec![
                candidate("127.0.0.1", CandidateKind::Host),
                candidate("127.0.0.1", CandidateKind::ServerReflexive),
                candidate("::ffff:127.0.0.1", CandidateKind::Host),
                candidate("169.254.7.7", CandidateKind::Host),
                candidate("224.0.0.1", CandidateKind::Host),
                candidate("0.0.0.0", CandidateKind::Host),
            ];
            let sent = aimed.len();
            let mut mallory = Attached::new(
                server_ref,
                &attacker,
                Hello {
                    candidates: aimed,
                    ..hello(6)
                },
            )
            .await;
            // The victim: a real client on a real interface (not bound to loopback).
            let rally = rally_client::Rally::connect(&format!("http://{}", server_ref.addr()))
                .await
                .expect("connect");
            let session = rally
                .device_login("hostile-victim-device-0001", "victim")
                .await
                .expect("sign in");
            let mut config = NetConfig::default();
            config.transport.bind = "0.0.0.0:0".parse().expect("address");
            config.relay_policy = RelayPolicy::Never;
            config.connect_timeout = Duration::from_secs(3);
            config.traversal.direct_timeout = Duration::from_secs(2);
            let victim = Net::start(&session, config).await.expect("net");
            let mallory_id = uuid::Uuid::parse_str(&attacker.user_id).expect("a user id");
            victim.connect(mallory_id).await.expect("ask mallory");
            match mallory.unsolicited().await {
                Body::PeerConnectRequest(_) => {}
                other => panic!("mallory: {other:?}"),
            }
            assert!(matches!(
                mallory
                    .request(Req::Accept(rally_proto::broker::v1::Accept {
                        user_id: session.user_id().to_string(),
                    }))
                    .await,
                Body::Ack(_)
            ));
            // The attempt runs its whole course and gives up: nothing answers.
            let ended = loop {
                let event = tokio::time::timeout(WAIT, victim.next_event())
                    .await
                    .expect("the attempt ends in time")
                    .expect("net runs");
                if let NetEvent::ConnectionStateChanged { user, state } = event
                    && user == mallory_id
                    && state != ConnectionState::Connecting
                {
                    break state;
                }
            };
            assert_ne!(ended, ConnectionState::Connected);
            let mut buf = [0u8; 2048];
            let caught = trap.try_recv_from(&mut buf);
            assert!(
                caught.is_err(),
                "the victim sent to its own loopback: {caught:?}"
            );
            victim.shutdown();
            Outcome {
                sent,
                answer: format!(
                    "candidates ignored; the attempt ended {ended:?}; 0 packets reached the \
                     loopback trap"
                ),
            }
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reauthenticate_flood_on_one_attachment() {
    const MESSAGES: usize = 2000;
    let _one_at_a_time = SERIAL.lock().await;
    let server = TestServer::start(Backend::Sqlite).await.expect("SQLite");
    let attacker = server.user("reauth-flooder").await;
    let server_ref = &server;
    run(
        "Reauthenticate flood on one attachment (a valid token, 2000 times)",
        &server,
        Probe::GetRoom,
        || async move {
            // Pipelined, 100 at a time (a client that never reads is dropped when its queue of
            // 256 answers fills: the broker's bound on what one client makes it hold).
            const WINDOW: usize = 100;
            let mut attached = Attached::new(server_ref, &attacker, hello(7)).await;
            let (mut accepted, mut limited) = (0, 0);
            for _ in 0..MESSAGES / WINDOW {
                let ids: Vec<u64> = (0..WINDOW)
                    .map(|_| {
                        attached.send(Req::Reauthenticate(
                            rally_proto::broker::v1::Reauthenticate {
                                access_token: attacker.access_token.clone(),
                            },
                        ))
                    })
                    .collect();
                for id in ids {
                    let answer = attached.next().await;
                    assert_eq!(answer.request_id, id, "answers in order");
                    match answer.body {
                        Some(Body::Reauthenticated(_)) => accepted += 1,
                        Some(Body::Error(error)) => {
                            assert_eq!(error.code, ErrorCode::RateLimited as i32, "{error:?}");
                            limited += 1;
                        }
                        other => panic!("a Reauthenticate answered {other:?}"),
                    }
                }
            }
            assert!(limited > 0, "the flood meets the signal rate");
            // The attachment goes on.
            attached.nothing_pending().await;
            Outcome {
                sent: MESSAGES,
                answer: format!(
                    "{accepted} Reauthenticated, {limited} RATE_LIMITED; the attachment goes on"
                ),
            }
        },
    )
    .await;
    server.stop().await;
}

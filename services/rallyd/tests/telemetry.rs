//! OpenTelemetry as an operator runs it: the `rallyd` binary pointed at an OTLP collector (an
//! in-test receiver) by the standard `OTEL_*` variables, and a game process whose SDK calls run
//! in its own traced spans, exporting to the same receiver.

mod otlp_receiver;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use otlp_receiver::{Point, ReceivedSpan, Receiver};
use rally_client::proto::broker::v1::{
    Candidate, CandidateKind, NatType, RelayGrant, RelayPolicy, SocketAddress,
};
use rally_client::proto::rooms::v1::{CreateRoomRequest, EnqueueRequest};
use rally_client::{Announcement, BrokerEvent, BrokerLink, Rally, Session};
use rally_relay::wire::{self, Message};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::Receiver as Events;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, filter::LevelFilter};

/// The service name rallyd exports under in these tests.
const SERVICE: &str = "rallyd-under-test";
/// The game process's service name.
const GAME: &str = "telemetry-test-game";
/// How long anything expected may take to arrive.
const WAIT: Duration = Duration::from_secs(30);

/// A `rallyd` child process and its log lines.
struct Rallyd {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// The lines read so far.
    log: Vec<String>,
    addr: SocketAddr,
}

impl Rallyd {
    /// Starts the binary in `dir` on free ports with `env` added and every other `OTEL_*`
    /// variable of this process removed.
    fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rallyd"));
        command
            .current_dir(dir)
            .env("RALLY_LISTEN", "127.0.0.1:0")
            .env("RALLY_RELAY_LISTEN", "127.0.0.1:0")
            .env("RALLY_LOG", "info")
            .env_remove("RALLY_DATABASE_URL")
            .env_remove("RALLY_DATA_DIR")
            .env_remove("RALLY_SERVICES")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("OTEL_")) {
            command.env_remove(name);
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("spawn rallyd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("rallyd| {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut this = Self {
            child,
            lines,
            log: Vec::new(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let line = this.wait_for("gRPC listening on ");
        this.addr = line
            .split("gRPC listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .expect("a socket address after the marker");
        this
    }

    /// Waits for a log line containing `marker`.
    fn wait_for(&mut self, marker: &str) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(marker) {
                        return line;
                    }
                }
                Err(_) => panic!("rallyd did not log {marker:?} within {WAIT:?}"),
            }
        }
    }

    /// Whether a line read so far contains `text`.
    fn logged(&self, text: &str) -> bool {
        self.log.iter().any(|line| line.contains(text))
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends SIGTERM and waits for a clean exit with no warning or error logged on the way.
    /// Blocks: call it from a blocking thread.
    fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill failed");
        let mut logged = Vec::new();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => logged.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("rallyd did not exit in time"),
            }
        }
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "rallyd exited with {exit}");
        let bad: Vec<_> = logged
            .iter()
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            .collect();
        assert!(bad.is_empty(), "the shutdown logged {bad:#?}");
    }
}

impl Drop for Rallyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The game's tracing: a subscriber whose OpenTelemetry layer exports to `endpoint`.
fn game_tracing(endpoint: &str) -> SdkTracerProvider {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .expect("the game's span exporter");
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder_empty()
                .with_service_name(GAME)
                .build(),
        )
        .build();
    tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("game"))
                .with_filter(LevelFilter::INFO),
        )
        .try_init()
        .expect("the only test here that installs a subscriber");
    provider
}

/// The trace and span id of `span` (a span of the game's OpenTelemetry layer).
fn ids(span: &tracing::Span) -> (TraceId, SpanId) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    assert!(
        span_context.is_valid(),
        "the game's span has an OpenTelemetry context"
    );
    (span_context.trace_id(), span_context.span_id())
}

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

async fn attach(
    session: &Session,
    fingerprint: u8,
    port: u32,
) -> (BrokerLink, Events<BrokerEvent>) {
    let announcement = Announcement {
        fingerprint: [fingerprint; 32],
        candidates: vec![candidate(port)],
        relay_policy: RelayPolicy::Fallback,
        nat_type: NatType::Moderate,
    };
    BrokerLink::attach(session, announcement)
        .await
        .expect("attach")
}

/// Skips events until `pick` takes one.
async fn until<T>(
    events: &mut Events<BrokerEvent>,
    mut pick: impl FnMut(BrokerEvent) -> Option<T>,
) -> T {
    loop {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("an event in time")
            .expect("the link is open");
        if let Some(picked) = pick(event) {
            return picked;
        }
    }
}

/// Presents `grant` to the relay from `socket`; returns the relay's answer.
async fn present(socket: &UdpSocket, relay: SocketAddr, grant: &RelayGrant) -> Vec<u8> {
    let token: &[u8; rally_relay::grant::GRANT_BYTES] =
        grant.token.as_slice().try_into().expect("grant size");
    let mut datagram = Vec::new();
    wire::encode(
        &Message::Allocate {
            side: u8::try_from(grant.side).expect("side"),
            grant: token,
        },
        &mut datagram,
    );
    socket.send_to(&datagram, relay).await.expect("send");
    receive(socket).await
}

async fn receive(socket: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let (len, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("a datagram in time")
        .expect("receive");
    buf[..len].to_vec()
}

fn relay_address(grant: &RelayGrant) -> SocketAddr {
    let address = grant.relay_address.as_ref().expect("a relay address");
    SocketAddr::new(
        address.ip.parse().expect("an IP"),
        u16::try_from(address.port).expect("a port"),
    )
}

/// Waits until rallyd's metric `name` has a point that `accept` takes; returns it.
async fn metric(receiver: &mut Receiver, name: &str, accept: impl Fn(&Point) -> bool) -> Point {
    receiver
        .wait_for(&format!("metric {name}"), WAIT, |received| {
            received
                .points(SERVICE, name)?
                .into_iter()
                .find(|point| accept(point))
        })
        .await
}

fn has(point: &Point, key: &str, value: &str) -> bool {
    point.attributes.get(key).map(String::as_str) == Some(value)
}

/// One span: `service`'s span with span id `id`.
async fn span(receiver: &mut Receiver, service: &str, id: SpanId) -> ReceivedSpan {
    receiver
        .wait_for(&format!("{service}'s span {id}"), WAIT, |received| {
            received
                .spans()
                .into_iter()
                .find(|span| span.service == service && span.span.span_id == id.to_bytes())
        })
        .await
}

// Multi-threaded: the game's exporter and rallyd's clients run on the runtime while a test
// thread blocks on rallyd's exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_join_across_grpc_and_the_operators_metrics_reach_an_otlp_collector() {
    let mut receiver = Receiver::start().await;
    let game = game_tracing(&receiver.endpoint());
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = receiver.endpoint();
    let rallyd = Rallyd::start(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", SERVICE),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=test",
            ),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
            // Spans leave only when rallyd stops: what arrives proves the flush at shutdown.
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ],
    );
    assert!(rallyd.logged("OpenTelemetry export over OTLP/gRPC"));
    let url = rallyd.url();

    // Sign in, and a room: the game's spans around SDK calls.
    let session = tracing::info_span!("game.session");
    let (alice, bob) = async {
        let rally = Rally::connect(&url).await.expect("connect");
        let alice = rally
            .device_login("telemetry-alice-0123456789", "Alice")
            .await
            .expect("alice signs in");
        let bob = rally
            .device_login("telemetry-bob-0123456789", "Bob")
            .await
            .expect("bob signs in");
        (alice, bob)
    }
    .instrument(session.clone())
    .await;
    let create_span = tracing::info_span!(parent: &session, "game.create_room");
    let (trace_id, create_span_id) = ids(&create_span);
    let room = alice
        .rooms()
        .create_room(CreateRoomRequest {
            capacity: 4,
            ..CreateRoomRequest::default()
        })
        .instrument(create_span.clone())
        .await
        .expect("create a room")
        .room
        .expect("the room");
    drop(create_span);
    bob.rooms()
        .join_room(&room.room_id)
        .instrument(session.clone())
        .await
        .expect("bob joins");
    let refused = alice.rooms().join_room("not-a-room-id").await;
    assert!(refused.is_err(), "a malformed room id is refused");

    // The broker: both attached, a connect agreed, a relay grant, a refused connect.
    let (a_link, a_events) = attach(&alice, 0xA1, 4000).await;
    let (b_link, mut b_events) = attach(&bob, 0xB0, 5000).await;
    a_link.connect(bob.user_id()).await.expect("connect");
    until(&mut b_events, |event| {
        matches!(event, BrokerEvent::PeerConnectRequest { .. }).then_some(())
    })
    .await;
    b_link.accept(alice.user_id()).await.expect("accept");
    assert!(
        a_link.connect(uuid::Uuid::new_v4()).await.is_err(),
        "no such user"
    );
    let a_grant = a_link
        .request_relay_grant(bob.user_id())
        .await
        .expect("a relay grant");
    let b_grant = until(&mut b_events, |event| match event {
        BrokerEvent::RelayGrant(grant) => Some(grant),
        _ => None,
    })
    .await;

    // The relay: both sides allocate, one datagram goes through, one junk datagram is dropped.
    let relay = relay_address(&a_grant);
    let a_socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let b_socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for (socket, grant) in [(&a_socket, &a_grant), (&b_socket, &b_grant)] {
        let answer = present(socket, relay, grant).await;
        assert!(
            matches!(wire::decode(&answer), Ok(Message::Allocated { .. })),
            "allocated: {answer:?}"
        );
    }
    let allocation: [u8; 16] = a_grant
        .allocation_id
        .as_slice()
        .try_into()
        .expect("allocation id");
    let payload = b"relayed by rallyd";
    let mut datagram = Vec::new();
    wire::encode(
        &Message::Data {
            allocation,
            payload,
        },
        &mut datagram,
    );
    a_socket.send_to(&datagram, relay).await.expect("send");
    let forwarded = receive(&b_socket).await;
    assert!(forwarded.ends_with(payload), "forwarded: {forwarded:?}");
    a_socket.send_to(b"junk", relay).await.expect("send");

    // Metrics, each as soon as an export shows it.
    let attached = metric(&mut receiver, "rally.broker.attached", |p| p.value >= 2.0).await;
    let connects = metric(&mut receiver, "rally.broker.signals", |p| {
        has(p, "kind", "connect") && p.value >= 2.0
    })
    .await;
    metric(&mut receiver, "rally.broker.signals", |p| {
        has(p, "kind", "accept") && p.value >= 1.0
    })
    .await;
    let refused_signal = metric(&mut receiver, "rally.broker.signals.refused", |p| {
        has(p, "kind", "connect") && has(p, "reason", "user_not_found") && p.value >= 1.0
    })
    .await;
    let open_rooms = metric(&mut receiver, "rally.rooms.open", |p| p.value >= 1.0).await;
    let members = metric(&mut receiver, "rally.rooms.members", |p| p.value >= 2.0).await;
    let allocations = metric(&mut receiver, "rally.relay.allocations", |p| p.value >= 1.0).await;
    metric(&mut receiver, "rally.relay.allocations.created", |p| {
        p.value >= 1.0
    })
    .await;
    metric(&mut receiver, "rally.relay.forwarded", |p| p.value >= 1.0).await;
    let bytes = metric(&mut receiver, "rally.relay.forwarded.bytes", |p| {
        p.value >= payload.len() as f64
    })
    .await;
    metric(&mut receiver, "rally.relay.dropped", |p| {
        has(p, "reason", "malformed") && p.value >= 1.0
    })
    .await;
    metric(&mut receiver, "rally.relay.grants.refused", |_| true).await;
    metric(&mut receiver, "rally.relay.bindings", |p| {
        has(p, "outcome", "answered")
    })
    .await;
    let create_rpc = metric(&mut receiver, "rpc.server.duration", |p| {
        has(p, "rpc.system", "grpc")
            && has(p, "rpc.service", "rally.rooms.v1.Rooms")
            && has(p, "rpc.method", "CreateRoom")
            && has(p, "rpc.grpc.status_code", "0")
            && p.value >= 1.0
    })
    .await;
    metric(&mut receiver, "rpc.server.duration", |p| {
        has(p, "rpc.method", "JoinRoom") && has(p, "rpc.grpc.status_code", "3")
    })
    .await;

    // Matchmaking: one ticket waits; a second one makes a match.
    alice
        .matchmaking()
        .enqueue(EnqueueRequest {
            pool: "default".into(),
            ..EnqueueRequest::default()
        })
        .await
        .expect("alice enqueues");
    let queued = metric(&mut receiver, "rally.matchmaking.queue.depth", |p| {
        has(p, "pool", "default") && p.value >= 1.0
    })
    .await;
    bob.matchmaking()
        .enqueue(EnqueueRequest {
            pool: "default".into(),
            ..EnqueueRequest::default()
        })
        .await
        .expect("bob enqueues");
    let matches = metric(&mut receiver, "rally.matchmaking.matches", |p| {
        has(p, "pool", "default") && p.value >= 1.0
    })
    .await;
    let waits = metric(&mut receiver, "rally.matchmaking.wait.duration", |p| {
        has(p, "pool", "default") && p.value >= 2.0
    })
    .await;
    metric(&mut receiver, "rally.matchmaking.queue.depth", |p| {
        has(p, "pool", "default") && p.value == 0.0
    })
    .await;
    let environment = receiver
        .with(|received| received.resource_attribute(SERVICE, "deployment.environment.name"));
    assert_eq!(
        environment.as_deref(),
        Some("test"),
        "OTEL_RESOURCE_ATTRIBUTES"
    );

    // rallyd stops: its spans leave now.
    a_link.shutdown();
    b_link.shutdown();
    drop((a_events, b_events, alice, bob));
    tokio::task::spawn_blocking(move || rallyd.terminate())
        .await
        .expect("rallyd stopped cleanly");
    let server = receiver
        .wait_for("rallyd's CreateRoom span", WAIT, |received| {
            received.spans().into_iter().find(|span| {
                span.service == SERVICE && span.span.name == "rally.rooms.v1.Rooms/CreateRoom"
            })
        })
        .await;
    // The game's spans leave when its provider flushes.
    drop(session);
    let flushed = tokio::task::spawn_blocking(move || {
        let flushed = game.force_flush();
        (game, flushed)
    })
    .await
    .expect("flush");
    flushed.1.expect("the game's spans exported");
    let client = span(&mut receiver, GAME, create_span_id).await;

    assert_eq!(client.span.name, "game.create_room");
    assert_eq!(client.span.trace_id, trace_id.to_bytes());
    assert_eq!(
        server.span.trace_id, client.span.trace_id,
        "rallyd's span is in the game's trace"
    );
    assert_eq!(
        server.span.parent_span_id, client.span.span_id,
        "rallyd's span is a child of the game's span around the call"
    );
    assert_eq!(server.span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(server.attribute("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        server.attribute("rpc.service").as_deref(),
        Some("rally.rooms.v1.Rooms")
    );
    assert_eq!(
        server.attribute("rpc.method").as_deref(),
        Some("CreateRoom")
    );
    assert_eq!(
        server.attribute("rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    let join = receiver.with(|received| {
        received.spans().into_iter().find(|span| {
            span.service == SERVICE
                && span.span.name == "rally.rooms.v1.Rooms/JoinRoom"
                && span.span.trace_id == trace_id.to_bytes()
        })
    });
    assert!(
        join.is_some(),
        "bob's join, in the game's session span, is in the trace too"
    );

    let (spans, names) = receiver.with(|received| {
        let spans: Vec<String> = received
            .spans()
            .iter()
            .map(|span| {
                format!(
                    "{}: {} trace {} parent {}",
                    span.service,
                    span.span.name,
                    hex(&span.span.trace_id),
                    hex(&span.span.parent_span_id)
                )
            })
            .collect();
        (spans, received.metric_names(SERVICE))
    });
    println!(
        "trace {trace_id}: game span {create_span_id} -> rallyd span {}",
        hex(&server.span.span_id)
    );
    println!("spans received:\n  {}", spans.join("\n  "));
    println!("rallyd's metrics received (name: unit): {names:#?}");
    println!(
        "values: attached {} connects {} refused {:?} rooms {} members {} allocations {} bytes {} \
         CreateRoom calls {} (sum {:?} ms) queued {} matches {} waits {} (sum {:?} s)",
        attached.value,
        connects.value,
        refused_signal.attributes,
        open_rooms.value,
        members.value,
        allocations.value,
        bytes.value,
        create_rpc.value,
        create_rpc.sum,
        queued.value,
        matches.value,
        waits.value,
        waits.sum
    );
    for name in [
        "rpc.server.duration",
        "rally.broker.attached",
        "rally.broker.signals",
        "rally.broker.signals.refused",
        "rally.rooms.open",
        "rally.rooms.members",
        "rally.matchmaking.queue.depth",
        "rally.matchmaking.wait.duration",
        "rally.matchmaking.matches",
        "rally.relay.allocations",
        "rally.relay.allocations.created",
        "rally.relay.forwarded",
        "rally.relay.forwarded.bytes",
        "rally.relay.dropped",
        "rally.relay.grants.refused",
        "rally.relay.bindings",
    ] {
        assert!(names.contains_key(name), "{name} was exported: {names:#?}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_rallyd_builds_no_exporter_and_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rallyd = Rallyd::start(dir.path(), &[("OTEL_SERVICE_NAME", SERVICE)]);
    assert!(
        rallyd.logged("OpenTelemetry export off"),
        "no exporter without an endpoint: {:#?}",
        rallyd.log
    );
    let rally = Rally::connect(&rallyd.url()).await.expect("connect");
    rally
        .device_login("telemetry-off-0123456789", "Off")
        .await
        .expect("rallyd serves without telemetry");
    drop(rally);
    tokio::task::spawn_blocking(move || rallyd.terminate())
        .await
        .expect("rallyd stopped cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_sdk_disabled_nothing_reaches_the_collector() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = receiver.endpoint();
    let rallyd = Rallyd::start(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
        ],
    );
    let rally = Rally::connect(&rallyd.url()).await.expect("connect");
    rally
        .device_login("telemetry-disabled-0123456789", "Disabled")
        .await
        .expect("sign in");
    drop(rally);
    // A shutdown flushes whatever exporters exist: after it, anything exported has arrived.
    tokio::task::spawn_blocking(move || rallyd.terminate())
        .await
        .expect("rallyd stopped cleanly");
    let (traces, metrics) =
        receiver.with(|received| (received.traces.len(), received.metrics.len()));
    assert_eq!((traces, metrics), (0, 0), "nothing was exported");
}

//! Broker signalling: signals per second carried by the broker from attached clients to other
//! attached clients, (a) with sender and receiver on one rallyd, (b) with the sender on one
//! replica and the receiver on another replica of the same Postgres database, so that every
//! signal crosses through LISTEN/NOTIFY.
//!
//! Each sender keeps [`IN_FLIGHT`] signals outstanding to its own receiver, alternating
//! Connect (the receiver gets PeerConnectRequest) and Close (the request is withdrawn; the
//! receiver gets PeerClosed): every signal reaches the receiver as exactly one message, and each
//! pair's state stays one row. The figure is what reached the receivers per second of the window.
//! Clients speak raw gRPC (one connection each), so no SDK work is counted; the per-user signal
//! rate limit is raised far above what the run reaches.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rally_e2e::{Backend, TestServer};
use rally_proto::broker::v1::attach_request::Body as Request;
use rally_proto::broker::v1::attach_response::Body;
use rally_proto::broker::v1::broker_client::BrokerClient;
use rally_proto::broker::v1::{
    AttachRequest, AttachResponse, Candidate, CandidateKind, Close, Connect, Hello, RelayPolicy,
    SocketAddress,
};
use rally_proto::identity::v1::DeviceLoginRequest;
use rally_proto::identity::v1::identity_client::IdentityClient;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::Budget;
use crate::report::{Report, Row};
use crate::store_ops::postgres_ready;

/// Both attached to one rallyd.
const ONE_REPLICA: &str = "broker signalling, one replica, Postgres";
/// Sender on replica 1, receiver on replica 2.
const TWO_REPLICAS: &str = "broker signalling, two replicas, Postgres (cross-replica)";

/// Sender/receiver pairs.
const PAIRS: usize = 64;
/// Signals each sender keeps outstanding (sent, not yet answered).
const IN_FLIGHT: usize = 4;
/// How long any one call, answer or message may take before the run counts as failed.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long deliveries may trail the last answer.
const DRAIN: Duration = Duration::from_millis(300);
/// Logins and attaches run this many at a time.
const SETUP_CONCURRENCY: usize = 32;

/// The rallyd flags of this scenario: the per-user signal limits (20/s, burst 60 by default) and
/// the sign-in limit per address raised far above what the run reaches, and a keepalive long
/// enough that the clients need not ping.
const FLAGS: [&str; 8] = [
    "--broker-signals-per-second",
    "1000000",
    "--broker-signal-burst",
    "1000000",
    "--broker-keepalive-ms",
    "600000",
    "--signin-per-address-per-minute",
    "1000000",
];

/// Runs both variants (only where Postgres answers).
pub(crate) async fn run(budget: Budget, report: &mut Report) -> anyhow::Result<()> {
    if !postgres_ready("broker signalling").await? {
        return Ok(());
    }
    let server = TestServer::start_with(Backend::Postgres, &FLAGS)
        .await
        .context("Postgres answered, then rallyd could not get a database")?;
    let one = {
        let url = format!("http://{}", server.addr());
        pairs_run(&url, &url, budget).await.context("one replica")?
    };
    report.push(one.row(ONE_REPLICA, "sender and receiver on the same rallyd"));
    let replica = server.replica(&FLAGS).await;
    let two = pairs_run(
        &format!("http://{}", server.addr()),
        &format!("http://{}", replica.addr()),
        budget,
    )
    .await
    .context("two replicas")?;
    report.push(two.row(
        TWO_REPLICAS,
        "senders on replica 1, receivers on replica 2; each signal adds one pg_notify, a \
         transaction of its own (an XID, a durable commit under Postgres' cluster-wide NOTIFY \
         lock) that the sending session awaits before its next message, and is decoded by \
         both replicas' listeners",
    ));
    drop(replica);
    drop(server);
    Ok(())
}

/// What one variant measured.
struct Figures {
    rate: f64,
    delivered: u64,
    answered: u64,
    sent: u64,
    /// CPU used in the window, in cores: this process (rallyd and the clients), and every
    /// process named `postgres` on the machine.
    cpu: (f64, f64),
}

impl Figures {
    fn row(&self, scenario: &str, placement: &str) -> Row {
        let loss = 1.0 - (self.delivered as f64 / self.answered.max(1) as f64).min(1.0);
        let per_signal = |cores: f64| cores * 1e6 / self.rate.max(1.0);
        Row::rate(scenario, "Rally broker", self.rate, "signals/s")
            .loss(loss)
            .settings(format!(
                "{PAIRS} sender/receiver pairs, {placement}; each sender keeps {IN_FLIGHT} \
                 signals in flight (Connect/Close alternately, one message each at the \
                 receiver); {} sent, {} answered, {} delivered in all; raised for the bench: \
                 --broker-signals-per-second 1000000 --broker-signal-burst 1000000 (default \
                 20/s, burst 60 per user); database pool 16 connections (default); CPU per \
                 delivered signal in the window: {:.0} us in rallyd and the clients (one \
                 process, {:.2} cores busy), {:.0} us in postgres processes (machine-wide, \
                 {:.2} cores busy)",
                self.sent,
                self.answered,
                self.delivered,
                per_signal(self.cpu.0),
                self.cpu.0,
                per_signal(self.cpu.1),
                self.cpu.1,
            ))
    }
}

/// A signed-in user.
pub(crate) struct Login {
    pub(crate) user_id: String,
    pub(crate) token: String,
}

/// Signs in a new device user named `name` over `channel`.
pub(crate) async fn device_login(channel: Channel, name: &str) -> anyhow::Result<Login> {
    let request = DeviceLoginRequest {
        device_id: format!("bench-{name}-{}", uuid::Uuid::new_v4().simple()),
        display_name: name.to_owned(),
    };
    let answer = tokio::time::timeout(
        CALL_TIMEOUT,
        IdentityClient::new(channel).device_login(request),
    )
    .await
    .context("device login: no answer in time")?
    .context("device login")?
    .into_inner();
    let session = answer.session.context("device login: no session")?;
    let user = session.user.context("device login: no user")?;
    Ok(Login {
        user_id: user.user_id,
        token: session.access_token,
    })
}

/// An open Attach stream, past its Welcome.
pub(crate) struct Attachment {
    /// Keeps the client's half open; signals go here.
    pub(crate) requests: mpsc::Sender<AttachRequest>,
    /// The server's messages after the Welcome.
    pub(crate) responses: Streaming<AttachResponse>,
}

/// Opens `token`'s attachment over `channel`: Hello (request id 1), then waits for the Welcome.
/// `port` is the port of the one host candidate announced.
pub(crate) async fn attach(channel: Channel, token: &str, port: u16) -> anyhow::Result<Attachment> {
    let bearer = rally_client::Bearer::new(token).context("the access token")?;
    let mut client = BrokerClient::with_interceptor(channel, bearer);
    let (requests, outgoing) = mpsc::channel(2 * IN_FLIGHT + 2);
    let hello = AttachRequest {
        request_id: 1,
        body: Some(Request::Hello(Hello {
            // A fingerprint names one online user: every client announces its own.
            certificate_fingerprint: uuid::Uuid::new_v4().as_bytes().repeat(2),
            candidates: vec![Candidate {
                kind: CandidateKind::Host as i32,
                address: Some(SocketAddress {
                    ip: "127.0.0.1".into(),
                    port: u32::from(port.max(1)),
                }),
                priority: 1,
            }],
            relay_policy: RelayPolicy::Fallback as i32,
            nat_type: 0,
            client_version: "rally-bench/0.1".into(),
        })),
    };
    requests
        .try_send(hello)
        .context("queueing the Hello of a new stream")?;
    let mut responses =
        tokio::time::timeout(CALL_TIMEOUT, client.attach(ReceiverStream::new(outgoing)))
            .await
            .context("Attach: no answer in time")?
            .context("Attach")?
            .into_inner();
    let first = tokio::time::timeout(CALL_TIMEOUT, responses.message())
        .await
        .context("Attach: no Welcome in time")?
        .context("Attach: waiting for the Welcome")?
        .context("Attach: the stream ended before its Welcome")?;
    match first.body {
        Some(Body::Welcome(_)) => Ok(Attachment {
            requests,
            responses,
        }),
        other => bail!("Attach: expected a Welcome, got {other:?}"),
    }
}

/// A new connection to `url`, as the SDK opens them.
pub(crate) async fn channel(url: &str) -> anyhow::Result<Channel> {
    tokio::time::timeout(CALL_TIMEOUT, rally_client::connect(url))
        .await
        .context("connecting: no answer in time")?
        .with_context(|| format!("connecting to {url}"))
}

/// `count` users signed in on `url`, then each attached on its own connection to `url`.
async fn attached_users(
    login_url: &str,
    attach_url: &str,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<(Login, Attachment)>> {
    let identity = channel(login_url).await?;
    let mut users = Vec::with_capacity(count);
    let indices: Vec<usize> = (0..count).collect();
    for chunk in indices.chunks(SETUP_CONCURRENCY) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let (identity, attach_url, name) = (
                    identity.clone(),
                    attach_url.to_owned(),
                    format!("{prefix}{i}"),
                );
                tokio::spawn(async move {
                    let login = device_login(identity, &name).await?;
                    let port = 20_000 + u16::try_from(i % 40_000).unwrap_or(0);
                    let attachment =
                        attach(channel(&attach_url).await?, &login.token, port).await?;
                    anyhow::Ok((login, attachment))
                })
            })
            .collect();
        for task in tasks {
            users.push(task.await.context("a setup task panicked")??);
        }
    }
    Ok(users)
}

/// Counters shared by the clients of a run.
#[derive(Default)]
struct Counters {
    /// PeerConnectRequest and PeerClosed messages at the receivers.
    delivered: AtomicU64,
    /// Acks of signals at the senders.
    answered: AtomicU64,
    /// Errors answered to signals.
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    stop: AtomicBool,
}

/// Signs in and attaches the pairs (senders on `sender_url`, receivers on `receiver_url`), runs
/// the senders for a warm-up and the window, and counts what reached the receivers.
async fn pairs_run(
    sender_url: &str,
    receiver_url: &str,
    budget: Budget,
) -> anyhow::Result<Figures> {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let senders =
        attached_users(sender_url, sender_url, &format!("s{}-", &tag[..6]), PAIRS).await?;
    let receivers =
        attached_users(sender_url, receiver_url, &format!("r{}-", &tag[..6]), PAIRS).await?;
    let counters = Arc::new(Counters::default());
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    let mut writers: Vec<JoinHandle<anyhow::Result<u64>>> = Vec::new();
    for ((receiver_login, receiver_attachment), (_, sender_attachment)) in
        receivers.into_iter().zip(senders)
    {
        readers.push(tokio::spawn(count_deliveries(
            receiver_attachment,
            counters.clone(),
        )));
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        let Attachment {
            requests,
            responses,
        } = sender_attachment;
        readers.push(tokio::spawn(count_answers(
            responses,
            permits.clone(),
            counters.clone(),
        )));
        writers.push(tokio::spawn(send_signals(
            requests,
            receiver_login.user_id,
            permits,
            counters.clone(),
        )));
    }
    let warm_up = (budget.window / 4).min(Duration::from_secs(1));
    tokio::time::sleep(warm_up).await;
    let (before, start) = (counters.delivered.load(Ordering::Relaxed), Instant::now());
    let cpu_before = (cpu_ticks(Some("self")), cpu_ticks(None));
    tokio::time::sleep(budget.window).await;
    let (after, elapsed) = (counters.delivered.load(Ordering::Relaxed), start.elapsed());
    let cpu_after = (cpu_ticks(Some("self")), cpu_ticks(None));
    let cores = |ticks: u64| ticks as f64 / TICKS_PER_SECOND / elapsed.as_secs_f64();
    let cpu = (
        cores(cpu_after.0.saturating_sub(cpu_before.0)),
        cores(cpu_after.1.saturating_sub(cpu_before.1)),
    );
    counters.stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    let mut failure = None;
    for writer in writers {
        match tokio::time::timeout(CALL_TIMEOUT * 2, writer).await {
            Ok(Ok(Ok(count))) => sent += count,
            Ok(Ok(Err(error))) => failure = failure.or(Some(error)),
            Ok(Err(panic)) => {
                failure = failure.or(Some(anyhow::anyhow!("a sender panicked: {panic}")))
            }
            Err(_) => failure = failure.or(Some(anyhow::anyhow!("a sender did not stop in time"))),
        }
    }
    tokio::time::sleep(DRAIN).await;
    for reader in &readers {
        reader.abort();
    }
    if let Some(error) = failure {
        return Err(error);
    }
    let errors = counters.errors.load(Ordering::Relaxed);
    if errors > 0 {
        let first = counters
            .first_error
            .lock()
            .map(|e| e.clone().unwrap_or_default())
            .unwrap_or_default();
        bail!("{errors} signals were refused; the first: {first}");
    }
    Ok(Figures {
        rate: after.saturating_sub(before) as f64 / elapsed.as_secs_f64(),
        delivered: counters.delivered.load(Ordering::Relaxed),
        answered: counters.answered.load(Ordering::Relaxed),
        sent,
        cpu,
    })
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time (user and system, in clock ticks) of `/proc/<pid>` (`Some("self")`), or of every
/// process named `postgres` (`None`). 0 where `/proc` cannot be read.
fn cpu_ticks(pid: Option<&str>) -> u64 {
    let ticks = |pid: &str| -> Option<(String, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, tail) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_owned();
        let fields: Vec<&str> = tail.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((comm, utime + stime))
    };
    if let Some(pid) = pid {
        return ticks(pid).map_or(0, |(_, t)| t);
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|pid| ticks(&pid))
        .filter(|(comm, _)| comm == "postgres")
        .map(|(_, t)| t)
        .sum()
}

/// A receiver: counts the signals that reach it until its stream ends (or the task is aborted).
async fn count_deliveries(attachment: Attachment, counters: Arc<Counters>) {
    let Attachment {
        requests,
        mut responses,
    } = attachment;
    while let Ok(Some(message)) = responses.message().await {
        if matches!(
            message.body,
            Some(Body::PeerConnectRequest(_) | Body::PeerClosed(_))
        ) {
            counters.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(requests);
}

/// A sender's answers: each one frees a slot for the next signal.
async fn count_answers(
    mut responses: Streaming<AttachResponse>,
    permits: Arc<Semaphore>,
    counters: Arc<Counters>,
) {
    while let Ok(Some(message)) = responses.message().await {
        match message.body {
            Some(Body::Ack(_)) if message.request_id != 0 => {
                counters.answered.fetch_add(1, Ordering::Relaxed);
                permits.add_permits(1);
            }
            Some(Body::Error(error)) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = counters.first_error.lock() {
                    first.get_or_insert_with(|| format!("{error:?}"));
                }
                if message.request_id != 0 {
                    permits.add_permits(1);
                }
            }
            _ => {}
        }
    }
}

/// A sender: Connect and Close to `peer` alternately, [`IN_FLIGHT`] at a time, until stopped;
/// then waits for the last answers. Returns how many it sent.
async fn send_signals(
    requests: mpsc::Sender<AttachRequest>,
    peer: String,
    permits: Arc<Semaphore>,
    counters: Arc<Counters>,
) -> anyhow::Result<u64> {
    let mut request_id = 1u64;
    let mut sent = 0u64;
    // Bounded: the loop ends when stopped, and every turn waits for a slot that only an answer
    // frees (or fails after CALL_TIMEOUT).
    while !counters.stop.load(Ordering::Relaxed) {
        tokio::time::timeout(CALL_TIMEOUT, permits.acquire())
            .await
            .context("a signal was not answered in time")?
            .context("the slots closed")?
            .forget();
        request_id += 1;
        let body = if request_id.is_multiple_of(2) {
            Request::Connect(Connect {
                user_id: peer.clone(),
            })
        } else {
            Request::Close(Close {
                user_id: peer.clone(),
            })
        };
        tokio::time::timeout(
            CALL_TIMEOUT,
            requests.send(AttachRequest {
                request_id,
                body: Some(body),
            }),
        )
        .await
        .context("the stream did not take a signal in time")?
        .context("the stream closed")?;
        sent += 1;
    }
    let all = u32::try_from(IN_FLIGHT).unwrap_or(u32::MAX);
    tokio::time::timeout(CALL_TIMEOUT, permits.acquire_many(all))
        .await
        .context("the last signals were not answered in time")?
        .context("the slots closed")?
        .forget();
    drop(requests);
    Ok(sent)
}

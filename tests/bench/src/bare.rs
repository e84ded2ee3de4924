//! Bare s2n-quic baselines on loopback: a server and a client endpoint in this process, plain
//! TLS 1.3 with a self-signed certificate the client trusts, s2n-quic's own datagram provider
//! and streams, nothing of Rally. What Rally's transport could reach if it added nothing.

use std::fmt::Display;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::{BufMut, Bytes, BytesMut};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use s2n_quic::client::Connect;
use s2n_quic::connection::Handle;
use s2n_quic::provider::datagram::default::{Endpoint as Datagrams, Receiver, Sender};
use s2n_quic::provider::io::tokio::{Builder as IoBuilder, Provider as Io};
use s2n_quic::{Client, Connection, Server};
use tokio::sync::mpsc;
use tokio::time::{timeout, timeout_at};

use crate::hist::Hist;
use crate::pace::{Pacer, SETTLE};
use crate::report::Row;
use crate::scenarios::{self, PING_SIZE, UNRELIABLE_SIZE};

/// The name in the certificate and in every `Connect`.
const SERVER_NAME: &str = "localhost";
/// The application protocol both sides offer.
const ALPN: &[u8] = b"rally-bench";
/// How long a handshake (and any other setup step) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long stragglers may take to arrive after a flood's window.
const DRAIN: Duration = Duration::from_millis(300);
/// How long a datagram ping may take to come back before it counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a stream ping may take to come back before the measurement fails.
const STREAM_PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after a load stops its last datagrams may take to arrive.
const LOAD_DRAIN: Duration = Duration::from_millis(50);
/// Pings (and handshakes) before the measured ones.
const WARM_UP: u32 = 20;
/// Most datagrams queued under one lock of the connection by the flood's sender.
const BATCH: u64 = 64;
/// The first byte of every flood or load datagram; warm-up datagrams start with another.
const LOAD_MARK: u8 = 7;
const WARM_UP_MARK: u8 = 0xee;

fn display(error: impl Display) -> anyhow::Error {
    anyhow!("{error}")
}

/// How the endpoints of a bare baseline are set up.
#[derive(Debug, Clone)]
pub(crate) struct QuicSettings {
    /// How the variant is called in a row's subject.
    pub(crate) name: &'static str,
    /// `None`: s2n-quic's MTUs (base = initial = 1228, probing up to 1500); `Some(m)`: max and
    /// initial MTU `m`, base left at its default.
    pub(crate) mtu: Option<u16>,
    /// Socket send and receive buffers in bytes; `None`: the kernel's default.
    pub(crate) buffers: Option<usize>,
    /// Generic segmentation offload (s2n-quic's default: on).
    pub(crate) gso: bool,
    /// Capacity of each datagram queue (send and receive) of a connection.
    pub(crate) datagram_queue: usize,
}

impl Default for QuicSettings {
    /// s2n-quic's defaults, except datagram queues of 1024 (s2n-quic's default is 200).
    fn default() -> Self {
        Self {
            name: "default",
            mtu: None,
            buffers: None,
            gso: true,
            datagram_queue: 1024,
        }
    }
}

impl QuicSettings {
    /// MTU 1500 from the start and 8 MiB socket buffers, GSO on.
    pub(crate) fn tuned() -> Self {
        Self {
            name: "tuned (MTU 1500, 8 MiB, GSO on)",
            mtu: Some(1500),
            buffers: Some(8 << 20),
            ..Self::default()
        }
    }

    /// The same as [`tuned`](Self::tuned) with GSO off.
    pub(crate) fn tuned_without_gso() -> Self {
        Self {
            name: "tuned (MTU 1500, 8 MiB, GSO off)",
            gso: false,
            ..Self::tuned()
        }
    }

    /// Every variant measured.
    pub(crate) fn variants() -> [Self; 3] {
        [Self::default(), Self::tuned(), Self::tuned_without_gso()]
    }

    /// The settings column.
    pub(crate) fn settings(&self) -> String {
        let mtu = match self.mtu {
            None => "MTU 1228 probing to 1500".to_owned(),
            Some(m) => format!("MTU {m} (initial = max)"),
        };
        let buffers = match self.buffers {
            None => "kernel socket buffers".to_owned(),
            Some(b) => format!("{} MiB socket buffers", b >> 20),
        };
        format!(
            "{mtu}, {buffers}, GSO {}, datagram queues {}",
            if self.gso { "on" } else { "off" },
            self.datagram_queue
        )
    }

    fn io(&self) -> anyhow::Result<Io> {
        let mut io = IoBuilder::default().with_receive_address(([127, 0, 0, 1], 0).into())?;
        if let Some(mtu) = self.mtu {
            // The maximum first: the initial MTU may not exceed it.
            io = io.with_max_mtu(mtu)?.with_initial_mtu(mtu)?;
        }
        if let Some(bytes) = self.buffers {
            io = io
                .with_recv_buffer_size(bytes)?
                .with_send_buffer_size(bytes)?;
        }
        if !self.gso {
            io = io.with_gso_disabled()?;
        }
        io.build().context("building the s2n-quic io provider")
    }

    fn datagrams(&self) -> anyhow::Result<Datagrams> {
        Datagrams::builder()
            .with_send_capacity(self.datagram_queue)
            .and_then(|b| b.with_recv_capacity(self.datagram_queue))
            .map_err(display)?
            .build()
            .map_err(display)
    }
}

/// aws-lc-rs with the TLS 1.3 cipher suites s2n-quic's rustls provider uses.
fn crypto() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
            aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..aws_lc_rs::default_provider()
    })
}

/// Plain TLS: a fresh self-signed certificate for [`SERVER_NAME`] that the client trusts as its
/// only root; no client certificate; no session resumption, so every handshake is a full one.
fn tls() -> anyhow::Result<(
    s2n_quic::provider::tls::rustls::Server,
    s2n_quic::provider::tls::rustls::Client,
)> {
    let generated = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
        .context("generating a certificate")?;
    let certificate: CertificateDer<'static> = generated.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    let mut server = rustls::ServerConfig::builder_with_provider(crypto())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![certificate.clone()], key)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    server.max_fragment_size = None;
    server.ignore_client_order = true;
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate)?;
    let mut client = rustls::ClientConfig::builder_with_provider(crypto())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    client.max_fragment_size = None;
    client.resumption = rustls::client::Resumption::disabled();
    Ok((server.into(), client.into()))
}

/// A server endpoint and a client endpoint.
struct Endpoints {
    server: Server,
    client: Client,
}

impl Endpoints {
    fn start(settings: &QuicSettings) -> anyhow::Result<Self> {
        let (server_tls, client_tls) = tls()?;
        let server = Server::builder()
            .with_io(settings.io()?)
            .map_err(display)?
            .with_tls(server_tls)
            .map_err(display)?
            .with_datagram(settings.datagrams()?)
            .map_err(display)?
            .start()
            .map_err(display)
            .context("starting the server endpoint")?;
        let client = Client::builder()
            .with_io(settings.io()?)
            .map_err(display)?
            .with_tls(client_tls)
            .map_err(display)?
            .with_datagram(settings.datagrams()?)
            .map_err(display)?
            .start()
            .map_err(display)
            .context("starting the client endpoint")?;
        Ok(Self { server, client })
    }

    fn connect_to_server(&self) -> anyhow::Result<s2n_quic::client::ConnectionAttempt> {
        let addr = self.server.local_addr()?;
        Ok(self
            .client
            .connect(Connect::new(addr).with_server_name(SERVER_NAME)))
    }
}

/// One connection between a server and a client endpoint.
pub(crate) struct Pair {
    /// Kept so the endpoints live as long as the pair.
    _endpoints: Endpoints,
    pub(crate) client: Connection,
    pub(crate) server: Connection,
}

impl Pair {
    /// Starts both endpoints and connects them, within [`SETUP_TIMEOUT`].
    pub(crate) async fn connect(settings: &QuicSettings) -> anyhow::Result<Self> {
        let mut endpoints = Endpoints::start(settings)?;
        let attempt = endpoints.connect_to_server()?;
        let (client, server) = timeout(SETUP_TIMEOUT, async {
            tokio::join!(attempt, endpoints.server.accept())
        })
        .await
        .context("the handshake timed out")?;
        let client = client.context("the client's handshake")?;
        let server = server.context("the server endpoint closed before accepting")?;
        Ok(Self {
            _endpoints: endpoints,
            client,
            server,
        })
    }

    /// Closes both connections when dropped (also on an early return).
    fn closer(&self) -> Closer {
        Closer(vec![self.client.handle(), self.server.handle()])
    }
}

/// Closes connections when dropped.
struct Closer(Vec<Handle>);

impl Drop for Closer {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.close(s2n_quic::application::Error::UNKNOWN);
        }
    }
}

/// Waits until a [`UNRELIABLE_SIZE`]-byte datagram gets from `client` to `server`: at s2n-quic's
/// default MTU it does not fit until path MTU probing has raised it, and the sender drops it
/// silently. Returns how long that took.
async fn large_datagrams_ready(client: &Handle, server: &Handle) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let deadline = start + SETUP_TIMEOUT;
    let probe = Bytes::from(vec![WARM_UP_MARK; UNRELIABLE_SIZE]);
    while Instant::now() < deadline {
        // A full queue (probes still waiting) is fine: there are probes to wait for already.
        let queued = client
            .datagram_mut(|s: &mut Sender| s.send_datagram(probe.clone()))
            .map_err(display)?;
        drop(queued);
        let mut arrived = false;
        let wait = recv_batch(server, |d| arrived |= d.len() == UNRELIABLE_SIZE);
        if let Ok(received) = timeout(Duration::from_millis(20), wait).await {
            received?;
            if arrived {
                return Ok(start.elapsed());
            }
        }
    }
    bail!("no {UNRELIABLE_SIZE}-byte datagram got through within {SETUP_TIMEOUT:?}")
}

/// Datagrams the connection's sender dropped (did not fit the packet being built).
fn dropped_datagrams(handle: &Handle) -> anyhow::Result<u64> {
    handle
        .datagram_mut(|s: &mut Sender| s.dropped_datagrams())
        .map_err(display)
}

/// Queues up to `max` copies of `payload` (at least one) under one lock, waiting while the send
/// queue is full; returns how many were queued.
async fn send_batch(handle: &Handle, payload: &Bytes, max: u64) -> anyhow::Result<u64> {
    poll_fn(|cx| {
        let polled = handle.datagram_mut(|s: &mut Sender| {
            let mut queued = 0;
            while queued < max {
                let mut datagram = payload.clone();
                match s.poll_send_datagram(&mut datagram, cx) {
                    Poll::Ready(Ok(())) => queued += 1,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(display(e))),
                    Poll::Pending => break,
                }
            }
            if queued == 0 {
                Poll::Pending
            } else {
                Poll::Ready(Ok(queued))
            }
        });
        polled.unwrap_or_else(|e| Poll::Ready(Err(display(e))))
    })
    .await
}

/// Queues one datagram, waiting while the send queue is full.
async fn send_one(handle: &Handle, payload: Bytes) -> anyhow::Result<()> {
    send_batch(handle, &payload, 1).await.map(drop)
}

/// Hands every datagram waiting in the receive queue (at least one, at most 256) to `each`,
/// waiting while there is none; returns how many there were.
async fn recv_batch(handle: &Handle, mut each: impl FnMut(Bytes)) -> anyhow::Result<u64> {
    poll_fn(|cx| {
        let polled = handle.datagram_mut(|r: &mut Receiver| {
            let mut received = 0;
            while received < 256 {
                match r.poll_recv_datagram(cx) {
                    Poll::Ready(Ok(datagram)) => {
                        each(datagram);
                        received += 1;
                    }
                    Poll::Ready(Err(e)) if received == 0 => return Poll::Ready(Err(display(e))),
                    Poll::Ready(Err(_)) | Poll::Pending => break,
                }
            }
            if received == 0 {
                Poll::Pending
            } else {
                Poll::Ready(Ok(received))
            }
        });
        polled.unwrap_or_else(|e| Poll::Ready(Err(display(e))))
    })
    .await
}

/// Counts the load datagrams (`UNRELIABLE_SIZE` bytes, [`LOAD_MARK`]) arriving on `handle` and
/// answers each [`PING_SIZE`]-byte one with itself, until the connection closes.
fn spawn_datagram_sink(
    handle: Handle,
    echo: bool,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let task = {
        let received = received.clone();
        tokio::spawn(async move {
            let mut pings = Vec::new();
            loop {
                let batch = recv_batch(&handle, |d| {
                    if d.len() == UNRELIABLE_SIZE && d[0] == LOAD_MARK {
                        received.fetch_add(1, Ordering::Relaxed);
                    } else if echo && d.len() == PING_SIZE {
                        pings.push(d);
                    }
                })
                .await;
                if batch.is_err() {
                    return;
                }
                for ping in pings.drain(..) {
                    if send_one(&handle, ping).await.is_err() {
                        return;
                    }
                }
            }
        })
    };
    (task, received)
}

/// A background load of [`UNRELIABLE_SIZE`]-byte datagrams at `rate` per second on `handle`,
/// until `stop` is set; the task returns how many it queued and for how long. It also queues
/// the datagrams arriving on `pings`, as soon as it can: s2n-quic's sender keeps one waker, so
/// only one task may wait for room in its queue.
fn spawn_load(
    handle: Handle,
    rate: f64,
    stop: Arc<AtomicBool>,
    mut pings: Option<mpsc::Receiver<Bytes>>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<(u64, Duration)>>> {
    let mut pacer = Pacer::new(rate, Instant::now())?;
    Ok(tokio::spawn(async move {
        let payload = Bytes::from(vec![LOAD_MARK; UNRELIABLE_SIZE]);
        let start = Instant::now();
        let mut queued = 0;
        while !stop.load(Ordering::Relaxed) {
            let mut due = tokio::select! {
                biased;
                Some(ping) = next_ping(&mut pings) => {
                    send_one(&handle, ping).await?;
                    continue;
                }
                due = pacer.wait() => due,
            };
            while due > 0 {
                if let Some(ping) = pings.as_mut().and_then(|p| p.try_recv().ok()) {
                    send_one(&handle, ping).await?;
                }
                let n = send_batch(&handle, &payload, due).await?;
                due -= n;
                queued += n;
            }
        }
        Ok((queued, start.elapsed()))
    }))
}

/// The next ping to queue; never resolves without a channel.
async fn next_ping(pings: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match pings {
        Some(pings) => pings.recv().await,
        None => std::future::pending().await,
    }
}

/// Stops a load task and describes what it did.
async fn stop_load(
    task: Option<tokio::task::JoinHandle<anyhow::Result<(u64, Duration)>>>,
    stop: &AtomicBool,
    target: f64,
    arrived: &AtomicU64,
) -> anyhow::Result<Option<String>> {
    stop.store(true, Ordering::Relaxed);
    let Some(task) = task else {
        return Ok(None);
    };
    let abort = task.abort_handle();
    let (queued, elapsed) = match timeout(Duration::from_secs(2), task).await {
        Ok(joined) => joined.context("the load task")??,
        Err(_) => {
            abort.abort();
            bail!("the load did not stop within 2 s");
        }
    };
    tokio::time::sleep(LOAD_DRAIN).await;
    let rate = queued as f64 / elapsed.as_secs_f64().max(1e-9);
    let (settle, arrived) = (SETTLE.as_millis(), arrived.load(Ordering::Relaxed));
    Ok(Some(format!(
        "load {rate:.0}/s queued (target {target:.0}/s) from {settle} ms before the first ping, \
         {arrived} of {queued} arrived"
    )))
}

/// `size`-byte datagrams from client to server for `window`, queued as fast as the sender's
/// queue takes them (waiting for room, never spinning on a full queue); the figure is what the
/// server received per second of the window.
pub(crate) async fn datagram_flood(
    settings: &QuicSettings,
    size: usize,
    window: Duration,
) -> anyhow::Result<Row> {
    anyhow::ensure!(
        size == UNRELIABLE_SIZE,
        "the flood sends {UNRELIABLE_SIZE}-byte datagrams"
    );
    let pair = Pair::connect(settings).await?;
    let _closer = pair.closer();
    let client = pair.client.handle();
    let ready = large_datagrams_ready(&client, &pair.server.handle()).await?;
    let dropped_before = dropped_datagrams(&client)?;
    let (counter, received) = spawn_datagram_sink(pair.server.handle(), false);
    let payload = Bytes::from(vec![LOAD_MARK; size]);
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + window);
    let mut accepted = 0u64;
    while let Ok(queued) = timeout_at(deadline, send_batch(&client, &payload, BATCH)).await {
        accepted += queued.context("queueing a datagram")?;
    }
    let drain_end = Instant::now() + DRAIN;
    while received.load(Ordering::Relaxed) < accepted && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = received.load(Ordering::Relaxed);
    let dropped = dropped_datagrams(&client)?.saturating_sub(dropped_before);
    counter.abort();
    Ok(Row::rate(
        scenarios::UNRELIABLE,
        format!("bare s2n-quic datagrams, {}", settings.name),
        got as f64 / window.as_secs_f64(),
        "packets/s",
    )
    .baseline()
    .loss((1.0 - got as f64 / accepted.max(1) as f64).clamp(0.0, 1.0))
    .settings(format!(
        "{}; poll_send_datagram, up to {BATCH} per lock; {accepted} accepted, {dropped} dropped \
         by the sender (too large for the packet); 1200 B got through {:.0} ms after connecting",
        settings.settings(),
        ready.as_secs_f64() * 1e3
    )))
}

/// Counts the complete frames (a 2-byte big-endian length, then the payload) in a byte stream
/// delivered in chunks of any size.
#[derive(Debug, Default)]
struct FrameCounter {
    header: [u8; 2],
    header_bytes: usize,
    /// The current frame's payload length, and how much of it is still to come.
    length: usize,
    left: usize,
    in_payload: bool,
    messages: u64,
    payload_bytes: u64,
}

impl FrameCounter {
    fn push(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.in_payload {
                let n = self.left.min(chunk.len());
                self.left -= n;
                chunk = &chunk[n..];
                if self.left == 0 {
                    self.complete();
                }
            } else {
                self.header[self.header_bytes] = chunk[0];
                self.header_bytes += 1;
                chunk = &chunk[1..];
                if self.header_bytes == 2 {
                    self.header_bytes = 0;
                    self.length = usize::from(u16::from_be_bytes(self.header));
                    self.left = self.length;
                    self.in_payload = true;
                    if self.left == 0 {
                        self.complete();
                    }
                }
            }
        }
    }

    fn complete(&mut self) {
        self.in_payload = false;
        self.messages += 1;
        self.payload_bytes += self.length as u64;
    }
}

/// One frame as Rally frames a reliable packet: a 2-byte big-endian payload length, then the
/// payload.
fn frame(payload_len: usize) -> anyhow::Result<Bytes> {
    let length = u16::try_from(payload_len).context("a frame's payload is at most 65535 bytes")?;
    let mut frame = BytesMut::with_capacity(2 + payload_len);
    frame.put_u16(length);
    frame.put_bytes(5, payload_len);
    Ok(frame.freeze())
}

/// Messages of `message_size` bytes framed like Rally's reliable packets, on one bidirectional
/// stream from client to server for `window`; the figure is the payload the server parsed out
/// of complete frames within the window, in MB/s (10^6 bytes).
pub(crate) async fn stream_bulk(
    settings: &QuicSettings,
    message_size: usize,
    window: Duration,
) -> anyhow::Result<Row> {
    let message = frame(message_size)?;
    let pair = Pair::connect(settings).await?;
    let _closer = pair.closer();
    let Pair {
        _endpoints,
        mut client,
        mut server,
    } = pair;
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + window);
    // The receiver keeps the stream and its connection until the sender is done: dropping them
    // at the deadline would reset the stream under a send still in progress.
    let (sender_done, release) = tokio::sync::oneshot::channel::<()>();
    let receiver = tokio::spawn(async move {
        let mut counter = FrameCounter::default();
        let mut stream = None;
        if let Ok(accepted) = timeout_at(deadline, server.accept_bidirectional_stream()).await {
            let accepted = accepted
                .context("accepting the stream")?
                .context("the connection closed before the stream arrived")?;
            let rx = stream.insert(accepted);
            while let Ok(chunk) = timeout_at(deadline, rx.receive()).await {
                match chunk.context("receiving on the stream")? {
                    Some(chunk) => counter.push(&chunk),
                    None => break,
                }
            }
        }
        let released = timeout(SETUP_TIMEOUT, release).await;
        drop((released, stream, server));
        Ok::<_, anyhow::Error>(counter)
    });
    let abort = receiver.abort_handle();
    let sent = async {
        let mut stream = timeout(SETUP_TIMEOUT, client.open_bidirectional_stream())
            .await
            .context("opening the stream timed out")?
            .context("opening the stream")?;
        let mut sent = 0u64;
        while let Ok(done) = timeout_at(deadline, stream.send(message.clone())).await {
            done.context("sending on the stream")?;
            sent += 1;
        }
        Ok::<_, anyhow::Error>(sent)
    }
    .await;
    sender_done.send(()).ok();
    let received = timeout(SETUP_TIMEOUT, receiver).await;
    abort.abort();
    let sent = sent?;
    let counter = received
        .context("the receiver did not stop after the window")?
        .context("the receiver task")??;
    Ok(Row::rate(
        scenarios::reliable(message_size),
        format!("bare s2n-quic stream, {}", settings.name),
        counter.payload_bytes as f64 / window.as_secs_f64() / 1e6,
        "MB/s",
    )
    .baseline()
    .settings(format!(
        "{}; one bidirectional stream, frames of a 2-byte length and the payload; {} messages \
         parsed in the window, {sent} handed to send()",
        settings.settings(),
        counter.messages
    )))
}

/// Round trips of [`PING_SIZE`]-byte datagrams echoed by the server, `samples` of them or as many
/// as fit in `limit`, with `load_pps` background [`UNRELIABLE_SIZE`]-byte datagrams from client
/// to server on the same connection (none when 0). A ping waits for room in the send queue like
/// any datagram; one that does not come back within a second counts as lost.
pub(crate) async fn datagram_ping_pong(
    settings: &QuicSettings,
    samples: u32,
    load_pps: f64,
    limit: Duration,
) -> anyhow::Result<Hist> {
    let pair = Pair::connect(settings).await?;
    let _closer = pair.closer();
    let (client, server) = (pair.client.handle(), pair.server.handle());
    if load_pps > 0.0 {
        large_datagrams_ready(&client, &server).await?;
    }
    let dropped_before = dropped_datagrams(&client)?;
    let (sink, arrived) = spawn_datagram_sink(server, true);
    let stop = Arc::new(AtomicBool::new(false));
    // Under load, the load task queues the pings too (one waiter on the sender's queue).
    let (ping_tx, ping_rx) = mpsc::channel(4);
    let load = if load_pps > 0.0 {
        Some(spawn_load(
            client.clone(),
            load_pps,
            stop.clone(),
            Some(ping_rx),
        )?)
    } else {
        None
    };
    let via_load = load.is_some();
    let mut hist = Hist::new(true)?;
    if via_load {
        tokio::time::sleep(SETTLE).await;
    }
    let measured = async {
        let start = Instant::now();
        let mut ping = [0u8; PING_SIZE];
        for id in 0..samples.saturating_add(WARM_UP) {
            if start.elapsed() >= limit {
                break;
            }
            ping[..4].copy_from_slice(&id.to_be_bytes());
            let sent = Instant::now();
            let answer = timeout(PING_TIMEOUT, async {
                let datagram = Bytes::copy_from_slice(&ping);
                if via_load {
                    ping_tx
                        .send(datagram)
                        .await
                        .map_err(|_| anyhow!("the load task ended"))?;
                } else {
                    send_one(&client, datagram).await?;
                }
                loop {
                    let mut back = false;
                    recv_batch(&client, |d| {
                        back |= d.len() == PING_SIZE && d[..4] == id.to_be_bytes();
                    })
                    .await?;
                    if back {
                        return Ok::<_, anyhow::Error>(sent.elapsed());
                    }
                }
            })
            .await;
            match answer {
                Ok(rtt) => {
                    let rtt = rtt.context("a datagram ping")?;
                    if id >= WARM_UP {
                        hist.record(rtt);
                    }
                }
                Err(_) if id >= WARM_UP => hist.record_lost(),
                Err(_) => {}
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let load = stop_load(load, &stop, load_pps, &arrived).await;
    sink.abort();
    measured?;
    if let Some(note) = load? {
        hist.note(note);
    }
    let dropped = dropped_datagrams(&client)?.saturating_sub(dropped_before);
    hist.note(format!("{dropped} dropped by the client's sender"));
    Ok(hist)
}

/// Round trips of [`PING_SIZE`]-byte messages on one bidirectional stream, echoed by the server,
/// `samples` of them or as many as fit in `limit`, with `load_pps` background
/// [`UNRELIABLE_SIZE`]-byte datagrams from client to server on the same connection (none when
/// 0).
pub(crate) async fn stream_ping_pong(
    settings: &QuicSettings,
    samples: u32,
    load_pps: f64,
    limit: Duration,
) -> anyhow::Result<Hist> {
    let pair = Pair::connect(settings).await?;
    let _closer = pair.closer();
    let Pair {
        _endpoints,
        mut client,
        mut server,
    } = pair;
    let client_handle = client.handle();
    if load_pps > 0.0 {
        large_datagrams_ready(&client_handle, &server.handle()).await?;
    }
    let dropped_before = dropped_datagrams(&client_handle)?;
    let (sink, arrived) = spawn_datagram_sink(server.handle(), false);
    let echo = tokio::spawn(async move {
        let stream = server
            .accept_bidirectional_stream()
            .await?
            .context("the connection closed before the stream arrived")?;
        let (mut rx, mut tx) = stream.split();
        let mut pending = BytesMut::new();
        while let Some(chunk) = rx.receive().await? {
            pending.extend_from_slice(&chunk);
            while pending.len() >= PING_SIZE {
                tx.send(pending.split_to(PING_SIZE).freeze()).await?;
            }
        }
        Ok::<_, anyhow::Error>(())
    });
    let stop = Arc::new(AtomicBool::new(false));
    let load = if load_pps > 0.0 {
        Some(spawn_load(
            client_handle.clone(),
            load_pps,
            stop.clone(),
            None,
        )?)
    } else {
        None
    };
    let mut hist = Hist::new(false)?;
    if load.is_some() {
        tokio::time::sleep(SETTLE).await;
    }
    let measured = async {
        let stream = timeout(SETUP_TIMEOUT, client.open_bidirectional_stream())
            .await
            .context("opening the stream timed out")?
            .context("opening the stream")?;
        let (mut rx, mut tx) = stream.split();
        let mut pending = BytesMut::new();
        let start = Instant::now();
        let mut ping = [0u8; PING_SIZE];
        for id in 0..samples.saturating_add(WARM_UP) {
            if start.elapsed() >= limit {
                break;
            }
            ping[..4].copy_from_slice(&id.to_be_bytes());
            let sent = Instant::now();
            let rtt = timeout(STREAM_PING_TIMEOUT, async {
                tx.send(Bytes::copy_from_slice(&ping)).await?;
                while pending.len() < PING_SIZE {
                    let chunk = rx
                        .receive()
                        .await?
                        .context("the server closed the stream")?;
                    pending.extend_from_slice(&chunk);
                }
                let pong = pending.split_to(PING_SIZE);
                anyhow::ensure!(pong[..4] == id.to_be_bytes(), "an answer out of order");
                Ok(sent.elapsed())
            })
            .await
            .context("a stream ping did not come back")??;
            if id >= WARM_UP {
                hist.record(rtt);
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let load = stop_load(load, &stop, load_pps, &arrived).await;
    sink.abort();
    echo.abort();
    measured?;
    if let Some(note) = load? {
        hist.note(note);
    }
    let dropped = dropped_datagrams(&client_handle)?.saturating_sub(dropped_before);
    hist.note(format!(
        "{dropped} load datagrams dropped by the client's sender"
    ));
    Ok(hist)
}

/// Sends one byte on a new unidirectional stream of an accepted connection, then waits (at
/// most [`SETUP_TIMEOUT`]) until the client closes it.
async fn greet(mut connection: Connection) {
    let greeted = timeout(SETUP_TIMEOUT, async {
        let mut stream = connection.open_send_stream().await?;
        stream.send(Bytes::from_static(b"!")).await?;
        // Ends with an error once the client closes the connection.
        let _closed = connection.accept_receive_stream().await;
        Ok::<_, anyhow::Error>(())
    })
    .await;
    drop(greeted);
}

/// Handshake times of `count` sequential full handshakes (no session resumption) of one client
/// endpoint with one server, or as many as fit in `limit`: from `connect()` until the first
/// byte that the server sends on a stream once it has accepted the connection arrives (what a
/// dialer that waits for its peer's word sees). The time until `connect()` resolves is noted.
pub(crate) async fn handshakes(
    settings: &QuicSettings,
    count: u32,
    limit: Duration,
) -> anyhow::Result<Hist> {
    const WARM_UP_HANDSHAKES: u32 = 2;
    let Endpoints { mut server, client } = Endpoints::start(settings)?;
    let addr = server.local_addr()?;
    let acceptor = tokio::spawn(async move {
        while let Some(connection) = server.accept().await {
            tokio::spawn(greet(connection));
        }
    });
    let mut first_byte = Hist::new(false)?;
    let mut connected = Hist::new(false)?;
    let measured = async {
        let start = Instant::now();
        for i in 0..count.saturating_add(WARM_UP_HANDSHAKES) {
            if start.elapsed() >= limit {
                break;
            }
            let began = Instant::now();
            let (connect, byte) = timeout(SETUP_TIMEOUT, async {
                let mut connection = client
                    .connect(Connect::new(addr).with_server_name(SERVER_NAME))
                    .await?;
                let connect = began.elapsed();
                let mut stream = connection
                    .accept_receive_stream()
                    .await?
                    .context("the connection closed before the server's stream")?;
                stream
                    .receive()
                    .await?
                    .context("the server's stream ended empty")?;
                let byte = began.elapsed();
                connection.close(s2n_quic::application::Error::UNKNOWN);
                Ok::<_, anyhow::Error>((connect, byte))
            })
            .await
            .context("a handshake timed out")??;
            if i >= WARM_UP_HANDSHAKES {
                connected.record(connect);
                first_byte.record(byte);
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    acceptor.abort();
    measured?;
    first_byte.note(format!(
        "connect() alone: p50 {:.3} ms, p99 {:.3} ms",
        connected.p50() / 1e3,
        connected.p99() / 1e3
    ));
    Ok(first_byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_count_whatever_the_chunks() -> anyhow::Result<()> {
        let mut stream = Vec::new();
        for size in [0, 1, 1024, 65533] {
            stream.extend_from_slice(&frame(size)?);
        }
        assert_eq!(&stream[..2], &[0, 0]);
        assert_eq!(&stream[5..7], &[4, 0]);
        for chunk_size in [1, 2, 3, 1000, 70_000] {
            let mut counter = FrameCounter::default();
            for chunk in stream.chunks(chunk_size) {
                counter.push(chunk);
            }
            assert_eq!(counter.messages, 4, "chunks of {chunk_size}");
            assert_eq!(counter.payload_bytes, 1 + 1024 + 65533);
            assert!(!counter.in_payload && counter.header_bytes == 0);
        }
        // Half a frame is not a message.
        let mut counter = FrameCounter::default();
        counter.push(&frame(1024)?[..500]);
        assert_eq!(counter.messages, 0);
        Ok(())
    }

    #[test]
    fn a_frame_is_at_most_65535_bytes() {
        assert!(frame(65535).is_ok());
        assert!(frame(65536).is_err());
    }
}

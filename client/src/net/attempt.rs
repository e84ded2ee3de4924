//! The task that carries out one connection attempt: it runs the [`Traversal`] state machine
//! against the clock and does its steps (punches, dials, birthday sockets and probes, the relay).
//! One per peer at a time; a new PunchStart cancels the previous one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use rally_proto::broker::v1::RelayGrant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::driver::Inner;
use super::relay_path;
use super::stats::Path;
use super::traversal::{PROBE_PAYLOAD, PUNCH_PAYLOAD, Plan, Stage, Step, Traversal};

/// What happened, fed back to the attempt.
#[derive(Debug)]
pub(crate) enum Input {
    DialFailed(SocketAddr),
    Grant(RelayGrant),
    RelayOpen,
    RelayFailed(String),
    Connected { relayed: bool },
}

/// The driver's handle on a running attempt; dropping it cancels the attempt.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) inputs: mpsc::UnboundedSender<Input>,
    cancel: CancellationToken,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Starts an attempt with `user` from `start` (the broker's common start time).
pub(crate) fn spawn(
    inner: Arc<Inner>,
    user: Uuid,
    plan: Plan,
    fingerprint: [u8; 32],
    start: Instant,
    grant: Option<RelayGrant>,
) -> Handle {
    let (inputs, rx) = mpsc::unbounded_channel();
    let cancel = inner.shutdown.child_token();
    let attempt = Attempt {
        inner,
        user,
        fingerprint,
        grant,
        inputs: inputs.clone(),
        cancel: cancel.clone(),
    };
    tokio::spawn(attempt.run(plan, start, rx));
    Handle { inputs, cancel }
}

struct Attempt {
    inner: Arc<Inner>,
    user: Uuid,
    fingerprint: [u8; 32],
    grant: Option<RelayGrant>,
    inputs: mpsc::UnboundedSender<Input>,
    cancel: CancellationToken,
}

impl Attempt {
    async fn run(mut self, plan: Plan, start: Instant, mut rx: mpsc::UnboundedReceiver<Input>) {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        let mut traversal = Traversal::new(
            self.inner.config.traversal.clone(),
            plan,
            start,
            u64::from_le_bytes(seed),
        );
        tokio::select! {
            () = self.cancel.cancelled() => return,
            () = tokio::time::sleep_until(start.into()) => {}
        }
        loop {
            let steps = traversal.poll(Instant::now());
            for step in steps {
                self.execute(step);
            }
            if traversal.stage() == Stage::Done {
                return;
            }
            let wakeup = traversal.next_wakeup();
            let input = tokio::select! {
                () = self.cancel.cancelled() => return,
                input = rx.recv() => input,
                () = sleep_until(wakeup) => continue,
            };
            let Some(input) = input else {
                return;
            };
            let steps = match input {
                Input::DialFailed(candidate) => {
                    traversal.on_dial_failed(candidate);
                    Vec::new()
                }
                Input::Grant(grant) => {
                    self.grant = Some(grant);
                    traversal.on_grant()
                }
                Input::RelayOpen => traversal.on_relay_open(),
                Input::RelayFailed(reason) => traversal.on_relay_failed(reason),
                Input::Connected { relayed } => {
                    traversal.on_connected(relayed, Instant::now());
                    Vec::new()
                }
            };
            for step in steps {
                self.execute(step);
            }
        }
    }

    fn execute(&self, step: Step) {
        let inner = &self.inner;
        let user = self.user;
        match step {
            Step::Punch(to) => {
                if let Err(error) = inner.transport.send_raw(to, PUNCH_PAYLOAD) {
                    tracing::trace!(%error, %to, "punch not sent");
                }
            }
            Step::Probe(to) => {
                if let Err(error) = inner.transport.send_raw(to, PROBE_PAYLOAD) {
                    tracing::trace!(%error, %to, "probe not sent");
                }
            }
            Step::Dial(to) => self.dial(to, Path::Direct, move |error| {
                tracing::debug!(%error, %user, %to, "dial failed");
                Input::DialFailed(to)
            }),
            Step::OpenBirthdaySockets { count, toward } => {
                tokio::spawn(birthday(
                    inner.clone(),
                    user,
                    self.fingerprint,
                    count,
                    toward,
                    self.cancel.clone(),
                ));
            }
            Step::RequestRelay => {
                let (inner, inputs) = (inner.clone(), self.inputs.clone());
                tokio::spawn(async move {
                    let _ = inputs.send(match inner.broker.request_relay_grant(user).await {
                        Ok(grant) => Input::Grant(grant),
                        Err(error) => Input::RelayFailed(error.to_string()),
                    });
                });
            }
            Step::OpenRelay => {
                let Some(grant) = self.grant.clone() else {
                    let _ = self
                        .inputs
                        .send(Input::RelayFailed("no relay grant arrived".into()));
                    return;
                };
                let (inner, inputs) = (inner.clone(), self.inputs.clone());
                tokio::spawn(async move {
                    let quic = relay_path::reachable(inner.transport.local_addr());
                    match relay_path::open(&grant, quic, &inner.shutdown).await {
                        Ok(path) => {
                            inner.set_relay_path(user, path, &grant);
                            let _ = inputs.send(Input::RelayOpen);
                        }
                        Err(error) => {
                            let _ = inputs.send(Input::RelayFailed(error.to_string()));
                        }
                    }
                });
            }
            Step::DialRelay => {
                let Some(local) = inner.relay_path_local(user) else {
                    let _ = self
                        .inputs
                        .send(Input::RelayFailed("the relayed path closed".into()));
                    return;
                };
                self.dial(local, Path::Relayed, |error| {
                    Input::RelayFailed(format!("the handshake through the relay failed: {error}"))
                });
            }
            Step::GiveUp(failure) => inner.attempt_failed(user, failure),
        }
    }
}

impl Attempt {
    /// Dials `to` in the background: the connection attaches on `path`, or `failed` says what
    /// to feed back.
    fn dial(
        &self,
        to: SocketAddr,
        path: Path,
        failed: impl FnOnce(rally_quic::TransportError) -> Input + Send + 'static,
    ) {
        let (inner, inputs, cancel) =
            (self.inner.clone(), self.inputs.clone(), self.cancel.clone());
        let (user, fingerprint) = (self.user, self.fingerprint);
        tokio::spawn(async move {
            let dialed = tokio::select! {
                () = cancel.cancelled() => return,
                dialed = inner.transport.dial(to, fingerprint) => dialed,
            };
            match dialed {
                Ok(conn) => inner.dialed(user, conn, path),
                Err(error) => {
                    let _ = inputs.send(failed(error));
                }
            }
        });
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Birthday probing, symmetric side: `count` fresh sockets each send a packet to every address
/// in `toward` (each opens a NAT mapping); the first socket that hears from one of the peer's
/// public IPs dials it. Ends when cancelled or after a connection.
async fn birthday(
    inner: Arc<Inner>,
    user: Uuid,
    fingerprint: [u8; 32],
    count: u16,
    toward: Vec<SocketAddr>,
    cancel: CancellationToken,
) {
    let Some(family) = toward.first().copied() else {
        return;
    };
    let any = super::relay_path::any_port_like(family);
    let mut sockets = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        match tokio::net::UdpSocket::bind(any).await {
            Ok(socket) => {
                for to in &toward {
                    let _ = socket.send_to(PUNCH_PAYLOAD, to).await;
                }
                sockets.push(Arc::new(socket));
            }
            Err(error) => {
                tracing::debug!(%error, "birthday socket not opened; probing with fewer");
                break;
            }
        }
    }
    tracing::debug!(%user, sockets = sockets.len(), "birthday sockets open");
    let mut waiting: FuturesUnordered<_> = sockets
        .iter()
        .enumerate()
        .map(|(i, socket)| {
            let socket = socket.clone();
            async move {
                let mut buf = [0u8; 64];
                (i, socket.recv_from(&mut buf).await.map(|(_, from)| from))
            }
        })
        .collect();
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => return,
            next = waiting.next() => next,
        };
        let Some((i, Ok(from))) = next else {
            if waiting.is_empty() {
                return;
            }
            continue;
        };
        if !toward.iter().any(|t| t.ip() == from.ip()) {
            continue;
        }
        drop(waiting);
        let socket = sockets.swap_remove(i);
        drop(sockets);
        let Ok(socket) = Arc::try_unwrap(socket) else {
            return;
        };
        let Ok(socket) = socket.into_std() else {
            return;
        };
        tracing::debug!(%user, %from, "a birthday probe got through; dialing from its socket");
        match inner.transport.dial_from(socket, from, fingerprint).await {
            Ok(conn) => inner.dialed(user, conn, Path::Direct),
            Err(error) => tracing::debug!(%error, %user, "dial from the birthday socket failed"),
        }
        return;
    }
}

//! The relay's UDP loop: receive a datagram, let [`Relay`] decide, send what it says.
//!
//! One receive loop per socket, all over the one shared [`Relay`] (one allocation table). An
//! answer goes out of the socket [`Outgoing::from`] names: the one the datagram arrived on, or,
//! for a binding request that asked for it, another of the relay's sockets.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::allocations::{Counters, Outgoing, Relay};

/// Largest datagram read (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;

/// Most sockets one relay serves.
pub const MAX_SOCKETS: usize = 16;

/// A running relay.
pub struct RelayServer {
    local_addr: SocketAddr,
    local_addrs: Vec<SocketAddr>,
    relay: Arc<Mutex<Relay>>,
    tasks: JoinSet<()>,
}

impl RelayServer {
    /// Serves `relay` on every socket of `sockets` until `shutdown` is cancelled, and tells it
    /// their addresses ([`Relay::set_listen_addresses`]) so that binding requests may be answered
    /// from another of them.
    ///
    /// Fails with [`std::io::ErrorKind::InvalidInput`] for no socket or more than
    /// [`MAX_SOCKETS`], and with the socket's error when its address cannot be read.
    pub fn spawn(
        sockets: Vec<UdpSocket>,
        mut relay: Relay,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let mut bound = Vec::with_capacity(sockets.len());
        for socket in sockets {
            bound.push((socket.local_addr()?, Arc::new(socket)));
        }
        let local_addrs: Vec<SocketAddr> = bound.iter().map(|(addr, _)| *addr).collect();
        let local_addr = match local_addrs.first() {
            Some(first) if local_addrs.len() <= MAX_SOCKETS => *first,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "a relay serves 1 to {MAX_SOCKETS} sockets, not {}",
                        local_addrs.len()
                    ),
                ));
            }
        };
        relay.set_listen_addresses(local_addrs.clone());
        let relay = Arc::new(Mutex::new(relay));
        let sockets = Arc::new(bound);
        let mut tasks = JoinSet::new();
        for index in 0..sockets.len() {
            tasks.spawn(receive(
                index,
                sockets.clone(),
                relay.clone(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(expire(relay.clone(), shutdown));
        Ok(Self {
            local_addr,
            local_addrs,
            relay,
            tasks,
        })
    }

    /// The address of the first socket (the one that carries allocations when the broker
    /// announces this relay).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The addresses of all its sockets, in the order they were given.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// What it has done so far.
    pub fn counters(&self) -> Counters {
        self.relay
            .lock()
            .map(|relay| relay.counters())
            .unwrap_or_default()
    }

    /// How many allocations it holds.
    pub fn allocation_count(&self) -> usize {
        self.relay
            .lock()
            .map(|relay| relay.allocation_count())
            .unwrap_or_default()
    }

    /// A handle that reads its counters from elsewhere (metrics) without keeping it alive.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            relay: Arc::downgrade(&self.relay),
        }
    }

    /// Waits for every loop to end (after shutdown).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Reads a running relay's counters; see [`RelayServer::stats`].
#[derive(Clone)]
pub struct RelayStats {
    relay: Weak<Mutex<Relay>>,
}

impl std::fmt::Debug for RelayStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayStats")
            .field("running", &(self.relay.strong_count() > 0))
            .finish()
    }
}

impl RelayStats {
    /// What the relay has done so far and how many allocations it holds; `None` once it is gone.
    pub fn read(&self) -> Option<(Counters, usize)> {
        let relay = self.relay.upgrade()?;
        let relay = relay.lock().ok()?;
        Some((relay.counters(), relay.allocation_count()))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Ends expired and idle allocations once a second.
async fn expire(relay: Arc<Mutex<Relay>>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => match relay.lock() {
                Ok(mut relay) => relay.expire(now_ms()),
                Err(_) => break,
            },
        }
    }
}

/// The receive loop of socket `index` of `sockets`.
async fn receive(
    index: usize,
    sockets: Arc<Vec<(SocketAddr, Arc<UdpSocket>)>>,
    relay: Arc<Mutex<Relay>>,
    shutdown: CancellationToken,
) {
    let Some((local, socket)) = sockets.get(index).cloned() else {
        return;
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, from) = match received {
            Ok(received) => received,
            Err(error) => {
                // ICMP errors of earlier sends surface here; they concern one peer only.
                tracing::debug!(%error, %local, "relay receive error");
                continue;
            }
        };
        let outgoing = match relay.lock() {
            Ok(mut relay) => relay.handle(local, from, &buf[..len], now_ms()),
            Err(_) => break,
        };
        if let Some(out) = outgoing {
            send(&local, &socket, &sockets, &out).await;
        }
    }
}

/// Sends `out` from the socket it names.
async fn send(
    local: &SocketAddr,
    arrived_on: &UdpSocket,
    sockets: &[(SocketAddr, Arc<UdpSocket>)],
    out: &Outgoing,
) {
    let socket = match out.from == *local {
        true => arrived_on,
        false => match sockets.iter().find(|(addr, _)| *addr == out.from) {
            Some((_, socket)) => socket,
            None => {
                // The relay only names addresses it was given; this would be a bug, not input.
                tracing::warn!(from = %out.from, "relay answer from an address it has no socket for");
                return;
            }
        },
    };
    if let Err(error) = socket.send_to(&out.datagram, out.to).await {
        tracing::debug!(%error, from = %out.from, to = %out.to, "relay send error");
    }
}

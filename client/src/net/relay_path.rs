//! A relayed path: a small local forwarder between this client's QUIC endpoint and the relay.
//!
//! The relay forwards `Data` datagrams between the two sides of an allocation; QUIC knows
//! nothing of that framing. So each side runs a forwarder on its own UDP socket: it presents the
//! grant to the relay (`Allocate`, repeated until `Allocated`), then wraps every datagram from
//! the local QUIC endpoint in `Data` for the relay and unwraps every `Data` from the relay to the
//! local endpoint. The dialer dials the forwarder's local address; the acceptor's endpoint sees
//! the peer at it. The QUIC handshake and every byte inside stay end-to-end encrypted between the
//! peers with their pinned certificates: the relay and this forwarder only see ciphertext.
//!
//! Not for: deciding when to relay (see `traversal.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rally_proto::broker::v1::RelayGrant;
use rally_relay::grant::GRANT_BYTES;
use rally_relay::wire::{self, Message};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often the grant is presented until the relay answers.
const ALLOCATE_INTERVAL: Duration = Duration::from_millis(250);
/// How many times before giving up.
const ALLOCATE_TRIES: u32 = 12;
/// The largest datagram read.
const MAX_DATAGRAM: usize = 65_535;

/// What a relayed path carried (visible in traces).
#[derive(Debug, Default)]
struct PathCounters {
    /// Datagrams from the local endpoint forwarded to the relay.
    to_relay: AtomicU64,
    /// Datagrams from the relay handed to the local endpoint.
    from_relay: AtomicU64,
    /// Datagrams dropped: from unknown addresses, malformed, or for another allocation.
    dropped: AtomicU64,
}

/// An open relayed path; dropping it stops the forwarder.
#[derive(Debug)]
pub(crate) struct RelayPath {
    /// Where the local QUIC endpoint reaches the forwarder (and sees the peer).
    pub(crate) local: SocketAddr,
    allocation: [u8; 16],
    renewals: mpsc::UnboundedSender<[u8; GRANT_BYTES]>,
    stop: CancellationToken,
}

impl RelayPath {
    /// Presents a renewed grant for the same allocation (a later expiry); false when it is not
    /// for this path's allocation or malformed.
    pub(crate) fn renew(&self, grant: &RelayGrant) -> bool {
        let Ok(token) = <[u8; GRANT_BYTES]>::try_from(grant.token.as_slice()) else {
            return false;
        };
        grant.allocation_id.as_slice() == self.allocation && self.renewals.send(token).is_ok()
    }
}

/// When to ask for a renewed grant: at 70% of the grant's remaining lifetime (by this machine's
/// clock), at least 5 s and at most 10 minutes from now.
pub(crate) fn renew_after(grant: &RelayGrant) -> Duration {
    let remaining_ms = grant
        .expires_at
        .as_ref()
        .map(|t| {
            let expires = i128::from(t.seconds) * 1000 + i128::from(t.nanos / 1_000_000);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i128);
            expires - now
        })
        .unwrap_or(0);
    let after = remaining_ms.max(0) * 7 / 10;
    Duration::from_millis(u64::try_from(after).unwrap_or(u64::MAX))
        .clamp(Duration::from_secs(5), Duration::from_secs(600))
}

impl Drop for RelayPath {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Why a relayed path could not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("the relay grant is malformed: {0}")]
    Grant(&'static str),
    #[error("cannot open a socket for the relay: {0}")]
    Socket(String),
    #[error("the relay refused the allocation ({0})")]
    Refused(String),
    #[error("the relay at {0} did not answer")]
    NoAnswer(SocketAddr),
}

/// Any port on every interface, of the same address family as `to` (a fresh socket's bind
/// address for talking to it).
pub(crate) fn any_port_like(to: SocketAddr) -> SocketAddr {
    match to {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// The address the local QUIC endpoint bound to `bound` is reached at.
pub(crate) fn reachable(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

/// Presents `grant` to its relay and starts forwarding between the relay and `quic` (the local
/// endpoint's reachable address). Returns once the relay allocated.
pub(crate) async fn open(
    grant: &RelayGrant,
    quic: SocketAddr,
    shutdown: &CancellationToken,
) -> Result<RelayPath, OpenError> {
    let relay = grant
        .relay_address
        .as_ref()
        .and_then(crate::broker::wire::socket_addr)
        .ok_or(OpenError::Grant("relay address"))?;
    let token: &[u8; GRANT_BYTES] = grant
        .token
        .as_slice()
        .try_into()
        .map_err(|_| OpenError::Grant("token length"))?;
    let allocation: [u8; 16] = grant
        .allocation_id
        .as_slice()
        .try_into()
        .map_err(|_| OpenError::Grant("allocation id"))?;
    let side = u8::try_from(grant.side)
        .ok()
        .filter(|s| *s <= 1)
        .ok_or(OpenError::Grant("side"))?;
    let socket = UdpSocket::bind(any_port_like(relay))
        .await
        .map_err(|e| OpenError::Socket(e.to_string()))?;
    let port = socket
        .local_addr()
        .map_err(|e| OpenError::Socket(e.to_string()))?
        .port();
    let mut request = Vec::new();
    wire::encode(&Message::Allocate { side, grant: token }, &mut request);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut allocated = false;
    'tries: for _ in 0..ALLOCATE_TRIES {
        socket
            .send_to(&request, relay)
            .await
            .map_err(|e| OpenError::Socket(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + ALLOCATE_INTERVAL;
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return Err(OpenError::Socket("shut down".into())),
                received = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)) => received,
            };
            let Ok(received) = received else {
                continue 'tries;
            };
            let (len, from) = received.map_err(|e| OpenError::Socket(e.to_string()))?;
            if from != relay {
                continue;
            }
            match wire::decode(&buf[..len]) {
                Ok(Message::Allocated { allocation: a, .. }) if a == allocation => {
                    allocated = true;
                    break 'tries;
                }
                Ok(Message::Refused {
                    allocation: a,
                    reason,
                }) if a == allocation => return Err(OpenError::Refused(format!("{reason:?}"))),
                _ => {}
            }
        }
    }
    if !allocated {
        return Err(OpenError::NoAnswer(relay));
    }
    let stop = shutdown.child_token();
    let counters = Arc::new(PathCounters::default());
    let (renewals, renewals_rx) = mpsc::unbounded_channel();
    tokio::spawn(forward(
        Forwarder {
            socket,
            relay,
            quic,
            allocation,
            side,
            counters,
        },
        renewals_rx,
        stop.clone(),
        buf,
    ));
    tracing::debug!(%relay, port, "relayed path open");
    Ok(RelayPath {
        local: SocketAddr::new(quic.ip(), port),
        allocation,
        renewals,
        stop,
    })
}

struct Forwarder {
    socket: UdpSocket,
    relay: SocketAddr,
    quic: SocketAddr,
    allocation: [u8; 16],
    side: u8,
    counters: Arc<PathCounters>,
}

async fn forward(
    path: Forwarder,
    mut renewals: mpsc::UnboundedReceiver<[u8; GRANT_BYTES]>,
    stop: CancellationToken,
    mut buf: Vec<u8>,
) {
    let Forwarder {
        socket,
        relay,
        quic,
        allocation,
        side,
        counters,
    } = path;
    let mut out = Vec::with_capacity(MAX_DATAGRAM);
    // A renewed grant being presented: the request, tries left, and when to repeat it.
    let mut renewal: Option<(Vec<u8>, u32, tokio::time::Instant)> = None;
    loop {
        let repeat_at = renewal.as_ref().map(|(_, _, at)| *at);
        let received = tokio::select! {
            () = stop.cancelled() => return,
            token = renewals.recv() => {
                if let Some(token) = token {
                    let mut request = Vec::new();
                    wire::encode(&Message::Allocate { side, grant: &token }, &mut request);
                    renewal = Some((request, ALLOCATE_TRIES, tokio::time::Instant::now()));
                }
                continue;
            }
            () = sleep_until(repeat_at) => {
                if let Some((request, tries, at)) = &mut renewal {
                    let _ = socket.send_to(request, relay).await;
                    *tries -= 1;
                    *at += ALLOCATE_INTERVAL;
                    if *tries == 0 {
                        tracing::debug!(%relay, "the relay did not confirm a renewed grant");
                        renewal = None;
                    }
                }
                continue;
            }
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, from) = match received {
            Ok(received) => received,
            // ICMP errors surface on the next receive: not fatal for a forwarder.
            Err(error) => {
                tracing::trace!(%error, "relayed path receive error");
                continue;
            }
        };
        let datagram = &buf[..len];
        let sent = if from == relay {
            match wire::decode(datagram) {
                Ok(Message::Data {
                    allocation: a,
                    payload,
                }) if a == allocation => {
                    counters.from_relay.fetch_add(1, Ordering::Relaxed);
                    socket.send_to(payload, quic).await
                }
                Ok(Message::Allocated { allocation: a, .. }) if a == allocation => {
                    // The relay took the renewed grant (or repeats an earlier answer).
                    renewal = None;
                    continue;
                }
                _ => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        } else if from == quic {
            if len + wire::DATA_OVERHEAD > MAX_DATAGRAM {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            out.clear();
            wire::encode(
                &Message::Data {
                    allocation,
                    payload: datagram,
                },
                &mut out,
            );
            counters.to_relay.fetch_add(1, Ordering::Relaxed);
            socket.send_to(&out, relay).await
        } else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if let Err(error) = sent {
            tracing::trace!(%error, "relayed path send error");
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Drop for PathCounters {
    fn drop(&mut self) {
        tracing::debug!(
            to_relay = self.to_relay.load(Ordering::Relaxed),
            from_relay = self.from_relay.load(Ordering::Relaxed),
            dropped = self.dropped.load(Ordering::Relaxed),
            "relayed path closed"
        );
    }
}

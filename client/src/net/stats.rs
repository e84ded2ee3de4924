//! Per-peer counters: what the game sent and received, and every packet Rally or the network
//! dropped, by reason.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::net::peer::ConnectionState;

/// How packets reach a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Straight between the two peers' sockets.
    Direct,
    /// Through the relay.
    Relayed,
}

/// A connection's figures, from [`Net::stats`](crate::net::Net::stats).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    /// The connection's state.
    pub state: ConnectionState,
    /// The path, while connected.
    pub path: Option<Path>,
    /// Smoothed round-trip time of the QUIC connection, while connected.
    pub rtt: Option<Duration>,
    /// When the connection came up on its current path.
    pub path_since: Option<std::time::Instant>,
    /// How often the path changed (a relayed connection moving to a direct path).
    pub path_changes: u32,
    /// The peer's address as this side's QUIC endpoint sees it (for a relayed path: the local
    /// relay forwarder's), while connected.
    pub remote_addr: Option<std::net::SocketAddr>,
    /// Reliable packets the game handed over / that arrived.
    pub reliable_sent: u64,
    /// Reliable packets received.
    pub reliable_received: u64,
    /// Bytes of game data sent reliably.
    pub reliable_bytes_sent: u64,
    /// Bytes of game data received reliably.
    pub reliable_bytes_received: u64,
    /// Unreliable packets the game handed over.
    pub unreliable_sent: u64,
    /// Unreliable packets received.
    pub unreliable_received: u64,
    /// Bytes of game data sent unreliably (handed to QUIC).
    pub unreliable_bytes_sent: u64,
    /// Bytes of game data received unreliably.
    pub unreliable_bytes_received: u64,
    /// Unreliable packets dropped because the connection was not up.
    pub unreliable_dropped_not_connected: u64,
    /// Unreliable packets dropped because QUIC's send queue was full.
    pub unreliable_dropped_queue_full: u64,
    /// Unreliable packets dropped by the simulated loss of [`FakeNetwork`](crate::net::FakeNetwork).
    pub unreliable_dropped_fake: u64,
    /// Unreliable packets that arrived but found the game's inbox full.
    pub unreliable_dropped_inbox_full: u64,
    /// Unreliable packets the peer sent that never arrived (gaps in its sequence numbers): lost
    /// by the network, or dropped by the peer's QUIC sender after it queued them.
    pub unreliable_lost: u64,
    /// Datagrams the peer sent that did not decode.
    pub malformed_received: u64,
}

/// Counters shared by a peer's tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) reliable_sent: AtomicU64,
    pub(crate) reliable_received: AtomicU64,
    pub(crate) reliable_bytes_sent: AtomicU64,
    pub(crate) reliable_bytes_received: AtomicU64,
    pub(crate) unreliable_sent: AtomicU64,
    pub(crate) unreliable_received: AtomicU64,
    pub(crate) unreliable_bytes_sent: AtomicU64,
    pub(crate) unreliable_bytes_received: AtomicU64,
    pub(crate) dropped_not_connected: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_fake: AtomicU64,
    pub(crate) dropped_inbox_full: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) malformed: AtomicU64,
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Counters {
    /// Packets sent and received so far, reliable and unreliable: a peer had traffic between
    /// two readings when this changed (cheaper than reading the clock for every packet).
    pub(crate) fn traffic(&self) -> u64 {
        [
            &self.reliable_sent,
            &self.reliable_received,
            &self.unreliable_sent,
            &self.unreliable_received,
        ]
        .into_iter()
        .map(get)
        .fold(0, u64::wrapping_add)
    }

    pub(crate) fn snapshot(
        &self,
        state: ConnectionState,
        path: Option<Path>,
        rtt: Option<Duration>,
    ) -> PeerStats {
        PeerStats {
            state,
            path,
            rtt,
            path_since: None,
            path_changes: 0,
            remote_addr: None,
            reliable_sent: get(&self.reliable_sent),
            reliable_received: get(&self.reliable_received),
            reliable_bytes_sent: get(&self.reliable_bytes_sent),
            reliable_bytes_received: get(&self.reliable_bytes_received),
            unreliable_sent: get(&self.unreliable_sent),
            unreliable_received: get(&self.unreliable_received),
            unreliable_bytes_sent: get(&self.unreliable_bytes_sent),
            unreliable_bytes_received: get(&self.unreliable_bytes_received),
            unreliable_dropped_not_connected: get(&self.dropped_not_connected),
            unreliable_dropped_queue_full: get(&self.dropped_queue_full),
            unreliable_dropped_fake: get(&self.dropped_fake),
            unreliable_dropped_inbox_full: get(&self.dropped_inbox_full),
            unreliable_lost: get(&self.lost),
            malformed_received: get(&self.malformed),
        }
    }
}

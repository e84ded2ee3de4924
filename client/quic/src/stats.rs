//! A connection's numbers: path measurements and every datagram counted.
//!
//! Accounting for datagrams (each `send_datagram` that returned `Ok` ends in exactly one of):
//! `datagrams_sent` + `datagrams_dropped_too_large` + `datagrams_dropped_closed` + still queued.
//! On the wire: the sender's `datagrams_sent` = the receiver's `datagrams_received` + the
//! sender's `datagrams_lost` (+ in flight). At the receiver: `datagrams_received` = delivered by
//! `recv_datagram` + `datagrams_dropped_recv_overflow` + still queued.

use std::time::Duration;

/// A snapshot of one connection's measurements and counters (see the module docs for how the
/// datagram counters add up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Smallest round-trip time seen.
    pub min_rtt: Duration,
    /// The path's current MTU (IP packet size), 0 until known.
    pub mtu: u16,
    /// Datagrams written into packets.
    pub datagrams_sent: u64,
    /// Datagrams that arrived from the peer.
    pub datagrams_received: u64,
    /// `send_datagram` calls refused with `QueueFull`.
    pub datagrams_dropped_queue_full: u64,
    /// Queued datagrams dropped because the path did not carry them for longer than a second
    /// (its MTU fell below their size).
    pub datagrams_dropped_too_large: u64,
    /// Received datagrams dropped because the receive queue was full (the oldest go first).
    pub datagrams_dropped_recv_overflow: u64,
    /// Queued datagrams never sent because the connection closed.
    pub datagrams_dropped_closed: u64,
    /// Sent datagrams in packets declared lost (QUIC does not retransmit datagrams).
    pub datagrams_lost: u64,
    /// Bytes of QUIC packets sent (headers and all frames).
    pub bytes_sent: u64,
    /// Bytes of QUIC packets received.
    pub bytes_received: u64,
    /// Packets declared lost (MTU probes excluded).
    pub packets_lost: u64,
}

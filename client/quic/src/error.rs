//! What can go wrong, as values: one enum for the transport and connections, one for datagrams.

use std::net::SocketAddr;
use std::time::Duration;

/// Why a transport could not be bound, or a connection made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The configuration is invalid.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// `bind` was called outside a tokio runtime.
    #[error("the transport needs a tokio runtime")]
    NoRuntime,
    /// A socket operation failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The certificate or the TLS configuration could not be made.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The QUIC endpoint could not be started.
    #[error("QUIC endpoint setup failed: {0}")]
    Endpoint(String),
    /// The remote presented a certificate other than the pinned one.
    #[error("{remote} presented a certificate other than the pinned one")]
    UnexpectedPeer {
        /// Who was dialed.
        remote: SocketAddr,
    },
    /// The remote refused our certificate (it has not allowed our fingerprint).
    #[error("{remote} refused our certificate: {reason}")]
    PeerRefused {
        /// Who was dialed.
        remote: SocketAddr,
        /// What the remote said.
        reason: String,
    },
    /// The handshake failed for another reason.
    #[error("handshake with {remote} failed: {reason}")]
    Handshake {
        /// Who was dialed.
        remote: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The handshake and acceptance did not complete within the handshake timeout.
    #[error("no accepted connection with {remote} within {after:?}")]
    Timeout {
        /// Who was dialed.
        remote: SocketAddr,
        /// The handshake timeout.
        after: Duration,
    },
    /// The transport or the connection is closed.
    #[error("closed")]
    Closed,
    /// The connection failed.
    #[error("connection error: {0}")]
    Connection(#[from] s2n_quic::connection::Error),
    /// A stream failed.
    #[error("stream error: {0}")]
    Stream(#[from] s2n_quic::stream::Error),
}

/// Why `send_datagram` did not queue a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// The send queue is full; the datagram was not queued (counted in
    /// `datagrams_dropped_queue_full`).
    #[error("the datagram send queue is full")]
    QueueFull,
    /// The datagram is larger than the connection ever carries.
    #[error("datagram of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The datagram's size.
        size: usize,
        /// `Connection::max_datagram_payload()`.
        max: usize,
    },
    /// The connection is closed.
    #[error("the connection is closed")]
    Closed,
}

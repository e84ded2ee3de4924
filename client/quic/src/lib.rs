//! Rally's peer-to-peer QUIC transport, on s2n-quic.
//!
//! What it is for: one UDP port per game client that both accepts and dials (so the address
//! learnt during NAT traversal is the one connections use), pinned mutual TLS with self-signed
//! certificates (each side knows the other's SHA-256 fingerprint from the broker; no CA, no man
//! in the middle, relays included), reliable streams, and unreliable datagrams that are never
//! lost silently: every datagram is sent or counted in [`ConnectionStats`].
//!
//! What it is not for: deciding who dials whom, punching, relaying, framing game packets or
//! retrying; those belong to the SDK's `Net` layer above it. It talks only to other Rally
//! transports (ALPN `rally/1`).
//!
//! ```no_run
//! # async fn example() -> Result<(), rally_quic::TransportError> {
//! use rally_quic::{Transport, TransportConfig};
//! let alice = Transport::bind(TransportConfig::default())?;
//! let bob = Transport::bind(TransportConfig::default())?;
//! bob.allow(alice.fingerprint());
//! let to_bob = alice.dial(bob.local_addr(), bob.fingerprint()).await?;
//! let from_alice = bob.accept().await.ok_or(rally_quic::TransportError::Closed)?;
//! assert_eq!(from_alice.peer(), alice.fingerprint());
//! to_bob.send_datagram(bytes::Bytes::from_static(b"ping")).ok();
//! # Ok(()) }
//! ```

mod config;
mod confirm;
mod connection;
mod datagram;
mod endpoint;
mod error;
mod events;
mod identity;
mod ledger;
mod recv_queue;
mod send_queue;
mod socket;
mod stats;
mod tls;

pub use config::{MIN_MTU, TransportConfig};
pub use connection::Connection;
pub use endpoint::Transport;
pub use error::{DatagramError, TransportError};
pub use identity::{Fingerprint, fingerprint};
pub use s2n_quic::stream::{ReceiveStream as RecvStream, SendStream};
pub use send_queue::MAX_DATAGRAM_HEADER;
pub use stats::ConnectionStats;

#[cfg(test)]
mod tests {
    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_can_be_shared_across_tasks() {
        send_sync::<super::Transport>();
        send_sync::<super::Connection>();
        send_sync::<super::SendStream>();
        send_sync::<super::RecvStream>();
    }
}

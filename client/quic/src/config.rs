//! The transport's settings: one typed struct with defaults for the internet, checked at bind.
//!
//! Not for: per-connection choices (who dials, which pin): those are arguments of `dial`/`allow`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::error::TransportError;

/// The smallest MTU QUIC allows (a 1200-byte UDP payload plus IPv4 and UDP headers).
pub const MIN_MTU: u16 = 1228;

/// How a [`Transport`](crate::Transport) binds and what it allows each connection.
///
/// ```
/// let config = rally_quic::TransportConfig {
///     bind: "127.0.0.1:0".parse().unwrap(),
///     ..Default::default()
/// };
/// assert_eq!(config.max_mtu, 1500);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// The local address of the one UDP port every connection uses (default `0.0.0.0:0`).
    pub bind: SocketAddr,
    /// The largest IP packet sent, headers included (default 1500). Connections start at this
    /// MTU; when the path loses such packets they fall back to 1228 and probe upwards again.
    pub max_mtu: u16,
    /// The kernel send and receive buffer of each socket, in bytes (default 8 MiB; the kernel
    /// caps it at `net.core.rmem_max`/`wmem_max`).
    pub socket_buffer_bytes: usize,
    /// Datagrams queued for sending per connection before `send_datagram` says `QueueFull`
    /// (default 1024).
    pub datagram_send_queue: usize,
    /// Datagrams received and not yet read per connection before the oldest are dropped
    /// (default 4096).
    pub datagram_recv_queue: usize,
    /// A connection with no traffic for this long closes (default 30 s).
    pub idle_timeout: Duration,
    /// A connection with no traffic for this long sends a ping, which holds NAT mappings open
    /// (default 5 s).
    pub keep_alive: Duration,
    /// The longest a handshake (and the acceptance that follows it) may take (default 5 s).
    /// It also bounds how long an abandoned dial keeps its socket.
    pub handshake_timeout: Duration,
    /// Generic segmentation offload: hand the kernel several packets in one send (default on).
    /// On loopback it roughly doubles reliable bulk throughput and costs datagram-heavy
    /// traffic about a third of its packet rate (`docs/performance.md`); a game that mostly
    /// sends unreliable packets may turn it off.
    pub gso: bool,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            max_mtu: 1500,
            socket_buffer_bytes: 8 << 20,
            datagram_send_queue: 1024,
            datagram_recv_queue: 4096,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            gso: true,
        }
    }
}

impl TransportConfig {
    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<(), TransportError> {
        let invalid = |reason: String| Err(TransportError::Config(reason));
        if self.max_mtu < MIN_MTU {
            return invalid(format!("max_mtu {} is below {MIN_MTU}", self.max_mtu));
        }
        if self.datagram_send_queue == 0 || self.datagram_recv_queue == 0 {
            return invalid("datagram queues must hold at least one datagram".into());
        }
        if self.socket_buffer_bytes == 0 {
            return invalid("socket_buffer_bytes must not be zero".into());
        }
        if self.handshake_timeout.is_zero() || self.idle_timeout.is_zero() {
            return invalid("handshake_timeout and idle_timeout must not be zero".into());
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return invalid("keep_alive must be above zero and below idle_timeout".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configuration_is_valid() {
        assert!(TransportConfig::default().validate().is_ok());
    }

    #[test]
    fn an_mtu_below_the_quic_minimum_is_refused() {
        let config = TransportConfig {
            max_mtu: 1200,
            ..Default::default()
        };
        assert!(matches!(config.validate(), Err(TransportError::Config(_))));
    }

    #[test]
    fn a_keep_alive_longer_than_the_idle_timeout_is_refused() {
        let config = TransportConfig {
            keep_alive: Duration::from_secs(60),
            ..Default::default()
        };
        assert!(config.validate().is_err());
    }
}

//! The UDP sockets behind the one port: the acceptor's, and one per dialed remote.
//!
//! All of them are bound to the same local address with SO_REUSEADDR and SO_REUSEPORT. The
//! acceptor's socket is unconnected; each dialer socket is `connect()`ed to its remote, so the
//! kernel hands it exactly that remote's packets (a 4-tuple match beats the unconnected socket)
//! and everyone else still reaches the acceptor. Never leave an extra socket on the port
//! unconnected: it would take a share of the acceptor's packets.
//!
//! Not for: buffer sizes, MTU or GSO (the s2n-quic IO builder sets those, see `endpoint.rs`).

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// A non-blocking UDP socket bound to `local` with address and port reuse, connected to
/// `remote` when given.
pub(crate) fn reuseport(local: SocketAddr, remote: Option<SocketAddr>) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&local.into())?;
    if let Some(remote) = remote {
        socket.connect(&remote.into())?;
    }
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dialer_socket_shares_the_acceptor_port() -> io::Result<()> {
        let acceptor = reuseport("127.0.0.1:0".parse().map_err(io::Error::other)?, None)?;
        let port = acceptor.local_addr()?;
        let remote: SocketAddr = "127.0.0.1:9".parse().map_err(io::Error::other)?;
        let dialer = reuseport(port, Some(remote))?;
        assert_eq!(dialer.local_addr()?, port);
        assert_eq!(dialer.peer_addr()?, remote);
        Ok(())
    }
}

//! The transport: one UDP port, one certificate, an acceptor for allowed peers and a dialer.
//!
//! s2n-quic endpoints are either servers or clients, so the port is shared: the acceptor is a
//! `Server` on an unconnected SO_REUSEPORT socket, and each dial runs a `Client` on its own
//! SO_REUSEPORT socket bound to the same port and `connect()`ed to the remote (see
//! `socket.rs`). A dialed connection's client endpoint lives exactly as long as the connection.
//! Exactly one side of a pair may dial (if both dial at once, both handshakes time out): the
//! caller decides who.
//!
//! Not for: NAT traversal policy (who dials whom, when, on which candidate): that is the SDK's.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use s2n_quic::client::Connect;
use s2n_quic::provider::event::Location;
use s2n_quic::provider::io::tokio::{Builder as IoBuilder, Provider as Io};
use s2n_quic::provider::limits::Limits;
use s2n_quic::{Client, Server};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::TransportConfig;
use crate::confirm::{self, NotAccepted};
use crate::connection::{Connection, WeakConnection};
use crate::datagram::DatagramEndpoint;
use crate::error::TransportError;
use crate::events::EventRecorder;
use crate::identity::{Fingerprint, Hex, Identity, SERVER_NAME};
use crate::socket;
use crate::tls::{self, AllowList, PinnedVerifier};

/// Accepted connections waiting for `accept()`; beyond this, new ones are closed.
const ACCEPT_BACKLOG: usize = 64;

/// The application error code of connections closed by the transport.
const CLOSED_BY_TRANSPORT: u32 = 0;

/// A peer's QUIC endpoint: accepts connections from allowed peers and dials pinned ones, all on
/// one UDP port.
///
/// Cheap to clone; dropping the last clone closes it like [`close`](Self::close).
///
/// ```no_run
/// # async fn example(remote: std::net::SocketAddr, peer: rally_quic::Fingerprint) -> Result<(), rally_quic::TransportError> {
/// let transport = rally_quic::Transport::bind(rally_quic::TransportConfig::default())?;
/// // The fingerprint travels to the peer through the broker; the peer's comes back.
/// let _mine = transport.fingerprint();
/// let connection = transport.dial(remote, peer).await?;
/// connection.send_datagram(bytes::Bytes::from_static(b"hello")).ok();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
}

struct Shared {
    config: TransportConfig,
    /// A second handle on the acceptor's socket, only ever written to: raw datagrams (punches,
    /// probes) leave from the transport's port without a socket that would take a share of the
    /// acceptor's packets.
    raw: std::net::UdpSocket,
    identity: Identity,
    allowed: Arc<AllowList>,
    local_addr: SocketAddr,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Connection>>,
    registry: Arc<Registry>,
    closing: CancellationToken,
}

impl Transport {
    /// Binds the port (`config.bind`), makes a fresh certificate and starts accepting. Must be
    /// called inside a tokio runtime.
    pub fn bind(config: TransportConfig) -> Result<Self, TransportError> {
        config.validate()?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        let identity = Identity::generate()?;
        let allowed = Arc::new(AllowList::default());
        let socket = socket::reuseport(config.bind, None)?;
        let local_addr = socket.local_addr()?;
        let raw = socket.try_clone()?;
        let server = Server::builder()
            .with_io(io(&config, socket)?)
            .map_err(endpoint_error)?
            .with_tls(tls::server(&identity, allowed.clone())?)
            .map_err(endpoint_error)?
            .with_limits(limits(&config)?)
            .map_err(endpoint_error)?
            .with_datagram(datagrams(&config))
            .map_err(endpoint_error)?
            .with_event(EventRecorder)
            .map_err(endpoint_error)?
            .start()
            .map_err(endpoint_error)?;
        let (ready, incoming) = mpsc::channel(ACCEPT_BACKLOG);
        let registry = Arc::new(Registry::default());
        let closing = CancellationToken::new();
        runtime.spawn(accept_loop(
            server,
            Admission {
                ready,
                registry: registry.clone(),
                closing: closing.clone(),
                timeout: config.handshake_timeout,
            },
        ));
        tracing::debug!(%local_addr, fingerprint = ?Hex(&identity.fingerprint()), "transport bound");
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                raw,
                identity,
                allowed,
                local_addr,
                incoming: tokio::sync::Mutex::new(incoming),
                registry,
                closing,
            }),
        })
    }

    /// The SHA-256 fingerprint of this transport's certificate, for peers to pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.shared.identity.fingerprint()
    }

    /// The local address of the one UDP port everything uses.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Lets handshakes from the peer with this certificate fingerprint in.
    pub fn allow(&self, peer: Fingerprint) {
        self.shared.allowed.allow(peer);
    }

    /// Stops letting new handshakes from this peer in (its open connections stay).
    pub fn disallow(&self, peer: Fingerprint) {
        self.shared.allowed.disallow(&peer);
    }

    /// Connects to `remote`, which must present the certificate `peer`, from our port. Returns
    /// once the remote has confirmed it accepted our certificate, within the handshake timeout.
    ///
    /// Exactly one side of a pair may dial: when both dial each other at once, each side's
    /// first packet lands on the other's dialing socket and both handshakes time out. Keep at
    /// most one dialed connection per remote (close the old one before dialing again).
    pub async fn dial(
        &self,
        remote: SocketAddr,
        peer: Fingerprint,
    ) -> Result<Connection, TransportError> {
        self.check_dial(remote)?;
        let socket = socket::reuseport(self.shared.local_addr, Some(remote))?;
        self.dial_on(socket, remote, peer).await
    }

    /// Connects to `remote` like [`dial`](Self::dial), but from `socket` instead of the
    /// transport's port: a socket that already holds a NAT mapping towards `remote` (birthday
    /// probing finds one among many). The socket is `connect()`ed to `remote` and belongs to the
    /// connection from then on.
    pub async fn dial_from(
        &self,
        socket: std::net::UdpSocket,
        remote: SocketAddr,
        peer: Fingerprint,
    ) -> Result<Connection, TransportError> {
        self.check_dial(remote)?;
        socket.set_nonblocking(true)?;
        socket.connect(remote)?;
        self.dial_on(socket, remote, peer).await
    }

    /// Sends one raw UDP datagram to `to` from the transport's port, outside QUIC: punch
    /// packets that open this side's NAT towards a peer, and birthday probes. A QUIC endpoint
    /// that receives one drops it. Never blocks: a full socket buffer is an error.
    pub fn send_raw(&self, to: SocketAddr, payload: &[u8]) -> std::io::Result<()> {
        if self.shared.closing.is_cancelled() {
            return Err(std::io::Error::other("the transport is closed"));
        }
        self.shared.raw.send_to(payload, to).map(|_| ())
    }

    /// A UDP socket on the transport's port, `connect()`ed to `remote`, for a short non-QUIC
    /// exchange with it (asking a reflector which public address this port maps to). While it
    /// exists, every datagram from `remote` to this port reaches it instead of QUIC: never use
    /// it towards a peer.
    pub fn side_socket(&self, remote: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
        let socket = socket::reuseport(self.shared.local_addr, Some(remote))?;
        tokio::net::UdpSocket::from_std(socket)
    }

    fn check_dial(&self, remote: SocketAddr) -> Result<(), TransportError> {
        let shared = &self.shared;
        if shared.closing.is_cancelled() {
            return Err(TransportError::Closed);
        }
        if remote.is_ipv4() != shared.local_addr.is_ipv4() {
            return Err(TransportError::Config(format!(
                "cannot dial {remote} from {}: address families differ",
                shared.local_addr
            )));
        }
        Ok(())
    }

    async fn dial_on(
        &self,
        socket: std::net::UdpSocket,
        remote: SocketAddr,
        peer: Fingerprint,
    ) -> Result<Connection, TransportError> {
        let shared = &self.shared;
        let (tls, verifier) = tls::client(&shared.identity, peer)?;
        let client = Client::builder()
            .with_io(io(&shared.config, socket)?)
            .map_err(endpoint_error)?
            .with_tls(tls)
            .map_err(endpoint_error)?
            .with_limits(limits(&shared.config)?)
            .map_err(endpoint_error)?
            .with_datagram(datagrams(&shared.config))
            .map_err(endpoint_error)?
            .with_event(EventRecorder)
            .map_err(endpoint_error)?
            .start()
            .map_err(endpoint_error)?;
        let after = shared.config.handshake_timeout;
        let attempt = async {
            let connect = Connect::new(remote).with_server_name(SERVER_NAME);
            let mut connection = client
                .connect(connect)
                .await
                .map_err(|e| dial_error(e, &verifier, remote))?;
            confirm::await_acceptance(&mut connection)
                .await
                .map_err(|refusal| match refusal {
                    NotAccepted::Connection(e) => dial_error(e, &verifier, remote),
                    NotAccepted::Malformed => TransportError::Handshake {
                        remote,
                        reason: "no acceptance confirmation".into(),
                    },
                })?;
            Connection::establish(connection, true)
        };
        let connection = tokio::select! {
            result = tokio::time::timeout(after, attempt) => {
                result.map_err(|_| TransportError::Timeout { remote, after })??
            }
            () = shared.closing.cancelled() => return Err(TransportError::Closed),
        };
        if connection.peer() != peer {
            connection.close(CLOSED_BY_TRANSPORT);
            return Err(TransportError::UnexpectedPeer { remote });
        }
        shared.registry.add(&connection);
        // The client endpoint (and its connected socket) lives exactly as long as the
        // connection: a leftover socket would swallow this remote's packets.
        let channel = connection.channel();
        tokio::spawn(async move {
            channel.closed().await;
            drop(client);
        });
        Ok(connection)
    }

    /// The next connection from an allowed peer, after its handshake and our acceptance
    /// confirmation; `None` once the transport is closed.
    pub async fn accept(&self) -> Option<Connection> {
        let mut incoming = self.shared.incoming.lock().await;
        tokio::select! {
            biased;
            () = self.shared.closing.cancelled() => None,
            connection = incoming.recv() => connection,
        }
    }

    /// Stops accepting and closes every connection, dialed or accepted.
    pub fn close(&self) {
        self.shared.close();
    }
}

impl Shared {
    fn close(&self) {
        self.closing.cancel();
        self.registry.close_all();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.close();
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("local_addr", &self.shared.local_addr)
            .field("fingerprint", &Hex(&self.shared.identity.fingerprint()))
            .field("closed", &self.shared.closing.is_cancelled())
            .finish()
    }
}

/// The connections the transport closes when it closes. Holds them weakly.
#[derive(Debug, Default)]
struct Registry(Mutex<Vec<WeakConnection>>);

impl Registry {
    fn add(&self, connection: &Connection) {
        let mut connections = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        connections.retain(|c| !c.is_done());
        connections.push(connection.downgrade());
    }

    fn close_all(&self) {
        let connections =
            std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        for connection in connections {
            connection.close(CLOSED_BY_TRANSPORT);
        }
    }
}

/// What the accept loop needs to admit a connection.
#[derive(Clone)]
struct Admission {
    ready: mpsc::Sender<Connection>,
    registry: Arc<Registry>,
    closing: CancellationToken,
    timeout: Duration,
}

async fn accept_loop(mut server: Server, admission: Admission) {
    loop {
        let connection = tokio::select! {
            () = admission.closing.cancelled() => break,
            next = server.accept() => match next {
                Some(connection) => connection,
                None => break,
            },
        };
        tokio::spawn(admit(connection, admission.clone()));
    }
}

/// Confirms acceptance to the dialer, then hands the connection to `accept()`.
async fn admit(connection: s2n_quic::Connection, admission: Admission) {
    let remote = connection.remote_addr().ok();
    let setup = async {
        let connection = Connection::establish(connection, false)?;
        admission.registry.add(&connection);
        let mut handle = connection.handle();
        confirm::send_acceptance(&mut handle).await?;
        Ok::<_, TransportError>(connection)
    };
    let connection = tokio::select! {
        result = tokio::time::timeout(admission.timeout, setup) => match result {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                tracing::debug!(?remote, %error, "could not admit a connection");
                return;
            }
            Err(_) => {
                tracing::debug!(?remote, "admission timed out");
                return;
            }
        },
        () = admission.closing.cancelled() => return,
    };
    if let Err(refused) = admission.ready.try_send(connection) {
        tracing::debug!(?remote, "accept backlog full or transport closed: closing");
        refused.into_inner().close(CLOSED_BY_TRANSPORT);
    }
}

/// Maps a failed dial's connection error to what happened.
fn dial_error(
    error: s2n_quic::connection::Error,
    verifier: &PinnedVerifier,
    remote: SocketAddr,
) -> TransportError {
    if verifier.saw_mismatch() {
        return TransportError::UnexpectedPeer { remote };
    }
    match error {
        s2n_quic::connection::Error::Transport {
            code,
            initiator: Location::Remote,
            ..
        } if (0x100..=0x1ff).contains(&code.as_u64()) => TransportError::PeerRefused {
            remote,
            reason: error.to_string(),
        },
        s2n_quic::connection::Error::MaxHandshakeDurationExceeded {
            max_handshake_duration,
            ..
        } => TransportError::Timeout {
            remote,
            after: max_handshake_duration,
        },
        _ => TransportError::Handshake {
            remote,
            reason: error.to_string(),
        },
    }
}

fn endpoint_error(error: impl fmt::Display) -> TransportError {
    TransportError::Endpoint(error.to_string())
}

/// The IO provider over one of our sockets: buffers, MTU and GSO from the configuration.
/// Measured on loopback, 2 cores, release: GSO on carries stream bulk at ~400 MB/s (off: ~160)
/// and 1216-byte datagrams at ~130k/s (off: ~200k/s).
fn io(config: &TransportConfig, socket: std::net::UdpSocket) -> Result<Io, TransportError> {
    // The maximum goes first: the initial MTU may not exceed it.
    let builder = IoBuilder::default()
        .with_rx_socket(socket)?
        .with_recv_buffer_size(config.socket_buffer_bytes)?
        .with_send_buffer_size(config.socket_buffer_bytes)?
        .with_max_mtu(config.max_mtu)?
        .with_initial_mtu(config.max_mtu)?;
    let builder = if config.gso {
        builder
    } else {
        builder.with_gso_disabled()?
    };
    Ok(builder.build()?)
}

fn limits(config: &TransportConfig) -> Result<Limits, TransportError> {
    Limits::new()
        .with_max_idle_timeout(config.idle_timeout)
        .and_then(|l| l.with_max_keep_alive_period(config.keep_alive))
        .and_then(|l| l.with_max_handshake_duration(config.handshake_timeout))
        // One for the acceptance confirmation; the peer has no use for more.
        .and_then(|l| l.with_max_open_remote_unidirectional_streams(1))
        .map_err(|e| TransportError::Config(format!("connection limits: {e}")))
}

fn datagrams(config: &TransportConfig) -> DatagramEndpoint {
    DatagramEndpoint::new(
        config.datagram_send_queue,
        config.datagram_recv_queue,
        config.max_mtu,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_outside_a_tokio_runtime_is_an_error() {
        let bound = Transport::bind(TransportConfig::default());
        assert!(matches!(bound, Err(TransportError::NoRuntime)), "{bound:?}");
    }

    #[test]
    fn an_invalid_configuration_is_refused_before_binding() {
        let bound = Transport::bind(TransportConfig {
            max_mtu: 1000,
            ..Default::default()
        });
        assert!(matches!(bound, Err(TransportError::Config(_))), "{bound:?}");
    }
}

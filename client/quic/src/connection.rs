//! One peer-to-peer connection: reliable bidirectional streams, unreliable datagrams, stats.
//!
//! A `Connection` is a cheap handle (clone it freely); the connection closes when `close` is
//! called, when the peer closes it or goes idle, or when the last handle is dropped.
//!
//! Not for: making connections (see `endpoint.rs`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use s2n_quic::connection::{BidirectionalStreamAcceptor, Handle, ReceiveStreamAcceptor};
use s2n_quic::stream::{ReceiveStream, SendStream};

use crate::datagram::{DatagramChannel, DatagramSender};
use crate::error::{DatagramError, TransportError};
use crate::events::{ConnectionEvents, PathCounters};
use crate::identity::{Fingerprint, Hex};
use crate::stats::ConnectionStats;

/// An authenticated connection with one peer.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    handle: Handle,
    streams: tokio::sync::Mutex<BidirectionalStreamAcceptor>,
    /// The peer's one unidirectional stream: the dialer's nomination, on the acceptor's side.
    unidirectional: tokio::sync::Mutex<ReceiveStreamAcceptor>,
    datagrams: Arc<DatagramChannel>,
    last_path: Arc<Mutex<PathCounters>>,
    peer: Fingerprint,
    remote: SocketAddr,
    dialer: bool,
}

impl Connection {
    /// Wraps a connection whose handshake (and acceptance confirmation) is done.
    pub(crate) fn establish(
        connection: s2n_quic::Connection,
        dialer: bool,
    ) -> Result<Self, TransportError> {
        let lost =
            |what: &str| TransportError::Endpoint(format!("connection state unavailable: {what}"));
        let (peer, last_path) = connection
            .query_event_context(|events: &ConnectionEvents| (events.peer(), events.last()))
            .map_err(|_| lost("events"))?;
        let peer = peer.ok_or_else(|| lost("no peer certificate"))?;
        let datagrams = connection
            .datagram_mut(|sender: &mut DatagramSender| sender.channel())
            .map_err(|_| lost("datagrams"))?;
        let remote = connection.remote_addr()?;
        let (mut handle, acceptor) = connection.split();
        handle.keep_alive(true)?;
        let (streams, unidirectional) = acceptor.split();
        Ok(Self {
            inner: Arc::new(Inner {
                handle,
                streams: tokio::sync::Mutex::new(streams),
                unidirectional: tokio::sync::Mutex::new(unidirectional),
                datagrams,
                last_path,
                peer,
                remote,
                dialer,
            }),
        })
    }

    /// The fingerprint of the certificate the peer presented (and that was pinned).
    pub fn peer(&self) -> Fingerprint {
        self.inner.peer
    }

    /// The peer's address (it may change if the dialer's NAT rebinds).
    pub fn remote_addr(&self) -> SocketAddr {
        self.inner.handle.remote_addr().unwrap_or(self.inner.remote)
    }

    /// Whether we dialed this connection (rather than accepted it).
    pub fn is_dialer(&self) -> bool {
        self.inner.dialer
    }

    /// Queues an unreliable datagram, without waiting. `Ok` means it will be sent or counted as
    /// dropped in [`stats`](Self::stats); `QueueFull` is counted too.
    pub fn send_datagram(&self, payload: Bytes) -> Result<(), DatagramError> {
        self.inner.datagrams.send(payload.into())
    }

    /// Queues `header` followed by `payload` as one datagram, like
    /// [`send_datagram`](Self::send_datagram), without copying the payload: both are written
    /// into the packet side by side. For a protocol's own framing in front of an application's
    /// bytes. A header longer than [`MAX_DATAGRAM_HEADER`](crate::MAX_DATAGRAM_HEADER) bytes is
    /// refused with `TooLarge`; the size limit applies to header and payload together.
    pub fn send_datagram_with_header(
        &self,
        header: &[u8],
        payload: Bytes,
    ) -> Result<(), DatagramError> {
        let datagram =
            crate::send_queue::Outgoing::new(header, payload).ok_or(DatagramError::TooLarge {
                size: header.len(),
                max: crate::MAX_DATAGRAM_HEADER,
            })?;
        self.inner.datagrams.send(datagram)
    }

    /// Waits until the datagram send queue has room, so that a sender can apply back-pressure
    /// instead of having datagrams refused with `QueueFull`. Resolves at once when there is
    /// room, and when the connection is closed (the next send then says `Closed`). A waiting
    /// sender is woken once the queue has drained to half its capacity.
    pub async fn datagram_room(&self) {
        self.inner.datagrams.room().await;
    }

    /// The next datagram from the peer; `None` once the connection is closed.
    pub async fn recv_datagram(&self) -> Option<Bytes> {
        self.inner.datagrams.recv().await
    }

    /// The largest payload [`send_datagram`](Self::send_datagram) accepts (1408 bytes with a
    /// 1500-byte MTU on both sides).
    pub fn max_datagram_payload(&self) -> usize {
        self.inner.datagrams.max_payload()
    }

    /// Opens a reliable, ordered bidirectional stream.
    pub async fn open_stream(&self) -> Result<(SendStream, ReceiveStream), TransportError> {
        let mut handle = self.inner.handle.clone();
        let (recv, send) = handle.open_bidirectional_stream().await?.split();
        Ok((send, recv))
    }

    /// The dialer's side of nomination: tells the acceptor that this is the connection the
    /// dialer keeps. A dialer that tries several addresses of one peer at once may complete
    /// more than one handshake; it nominates the one it keeps, and the acceptor uses only a
    /// nominated connection (see [`nominated`](Self::nominated)), so both keep the same one.
    pub async fn nominate(&self) -> Result<(), TransportError> {
        crate::confirm::nominate(&mut self.inner.handle.clone()).await
    }

    /// The acceptor's side of nomination: waits until the dialer nominates this connection.
    /// Errors when the connection ends first or the peer sends something else.
    pub async fn nominated(&self) -> Result<(), TransportError> {
        let mut streams = self.inner.unidirectional.lock().await;
        crate::confirm::await_nomination(&mut streams).await
    }

    /// The next bidirectional stream the peer opened; `None` once the connection is closed.
    pub async fn accept_stream(&self) -> Option<(SendStream, ReceiveStream)> {
        let mut streams = self.inner.streams.lock().await;
        match streams.accept_bidirectional_stream().await {
            Ok(Some(stream)) => {
                let (recv, send) = stream.split();
                Some((send, recv))
            }
            _ => None,
        }
    }

    /// Measurements and counters now.
    pub fn stats(&self) -> ConnectionStats {
        let path = self
            .inner
            .handle
            .query_event_context(|events: &ConnectionEvents| events.counters())
            .unwrap_or_else(|_| {
                *self
                    .inner
                    .last_path
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
            });
        let (send, recv) = self.inner.datagrams.counters();
        ConnectionStats {
            rtt: path.rtt,
            min_rtt: path.min_rtt,
            mtu: ip_mtu(path.mtu, self.inner.remote),
            datagrams_sent: send.sent,
            datagrams_received: recv.received,
            datagrams_dropped_queue_full: send.refused_queue_full,
            datagrams_dropped_too_large: send.dropped_too_large,
            datagrams_dropped_recv_overflow: recv.dropped_overflow,
            datagrams_dropped_closed: send.dropped_closed,
            datagrams_lost: path.datagrams_lost,
            bytes_sent: path.bytes_sent,
            bytes_received: path.bytes_received,
            packets_lost: path.packets_lost,
        }
    }

    /// Closes the connection with an application error code (0: no error).
    pub fn close(&self, code: u32) {
        self.inner.handle.close(code.into());
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.datagrams.is_closed()
    }

    /// Resolves once the connection is closed (by either side, idle timeout or error).
    pub async fn closed(&self) {
        self.inner.datagrams.closed().await;
    }

    /// A weak reference, for the transport's list of connections to close.
    pub(crate) fn downgrade(&self) -> WeakConnection {
        WeakConnection(Arc::downgrade(&self.inner))
    }

    /// The datagram channel, whose closing says the connection is gone.
    pub(crate) fn channel(&self) -> Arc<DatagramChannel> {
        self.inner.datagrams.clone()
    }

    /// Another handle on the underlying s2n-quic connection.
    pub(crate) fn handle(&self) -> Handle {
        self.inner.handle.clone()
    }
}

/// s2n-quic reports the path MTU as the UDP payload size; we report the IP packet size, like
/// `TransportConfig::max_mtu`.
fn ip_mtu(udp_payload: u16, remote: SocketAddr) -> u16 {
    if udp_payload == 0 {
        return 0;
    }
    let headers = if remote.is_ipv4() { 20 + 8 } else { 40 + 8 };
    udp_payload.saturating_add(headers)
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &Hex(&self.inner.peer))
            .field("remote", &self.inner.remote)
            .field("dialer", &self.inner.dialer)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// A connection the transport can close without keeping it alive.
#[derive(Debug, Clone)]
pub(crate) struct WeakConnection(std::sync::Weak<Inner>);

impl WeakConnection {
    /// Closes the connection if it is still around; says whether it was.
    pub(crate) fn close(&self, code: u32) -> bool {
        match self.0.upgrade() {
            Some(inner) => {
                inner.handle.close(code.into());
                true
            }
            None => false,
        }
    }

    /// Whether the connection is gone or closed.
    pub(crate) fn is_done(&self) -> bool {
        self.0
            .upgrade()
            .is_none_or(|inner| inner.datagrams.is_closed())
    }
}

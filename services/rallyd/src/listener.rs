//! The gRPC listener's accepted connections: TCP with `TCP_NODELAY`, then TLS when configured.
//!
//! tonic's own `tcp_nodelay` applies only to the listener tonic binds itself; `rallyd` serves an
//! incoming stream of its own (to know its port before serving, and to terminate TLS with a
//! certificate it can swap), so every accepted socket gets `TCP_NODELAY` here. Without it, an
//! answer of a few hundred bytes waits for the client's delayed ACK (about 40 ms, Nagle).
//!
//! A new connection's opening (its TLS handshake, or a plaintext client's first bytes) runs in its
//! own task, bounded in number and time, so a slow or silent client holds up nobody else and is
//! closed when its time is up. Connections are capped in all and per client address (IPv6 per
//! /64): one past a cap is closed at once. Not here: HTTP/2 or any gRPC.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a new client may take to open its connection: complete its TLS handshake or, in
/// plaintext, send its first bytes.
pub(crate) const OPENING_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections opening at once; further connections wait to be accepted.
const MAX_OPENING: usize = 256;
/// Pause after an accept error (out of file descriptors) before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Caps on open connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionLimits {
    /// Connections open at once, in all.
    pub(crate) total: usize,
    /// Connections open at once from one address (one IPv6 /64).
    pub(crate) per_address: usize,
}

/// The connections open now, in all and by address; a [`Slot`] holds one.
#[derive(Debug)]
struct Open {
    limits: ConnectionLimits,
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open connection's place in [`Open`]; dropping it frees the place.
pub(crate) struct Slot {
    open: Arc<Open>,
    key: IpAddr,
}

impl Open {
    /// A place for a connection from `address`, or `None` past a cap.
    fn take(self: &Arc<Self>, address: IpAddr) -> Option<Slot> {
        let key = rally_auth::limit_key(address);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let from_here = counts.1.get(&key).copied().unwrap_or(0);
        if counts.0 >= self.limits.total || from_here >= self.limits.per_address {
            return None;
        }
        counts.0 += 1;
        counts.1.insert(key, from_here + 1);
        Some(Slot {
            open: self.clone(),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .open
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.0 = counts.0.saturating_sub(1);
        if let Some(count) = counts.1.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.1.remove(&self.key);
            }
        }
    }
}

/// An accepted connection, plain or TLS, with its place among the open ones.
pub(crate) struct ServerIo {
    stream: Stream,
    _slot: Slot,
}

/// The byte stream of an accepted connection: plain TCP (loopback, or `--allow-plaintext`), or
/// TLS 1.3 over it.
type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

impl Connected for ServerIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        let tcp = match &self.stream {
            Either::Left(tcp) => tcp,
            Either::Right(tls) => tls.get_ref().0,
        };
        TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: tcp.peer_addr().ok(),
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Accepts connections on `listener` until `stop` or until the returned stream is dropped;
/// closes those past `limits`, sets `TCP_NODELAY` on the others and, with `tls`, completes
/// their handshake before handing them on.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    opening_timeout: Duration,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<ServerIo>> {
    let (accepted, incoming) = mpsc::channel(64);
    let open = Arc::new(Open {
        limits,
        counts: Mutex::new((0, HashMap::new())),
    });
    tokio::spawn(accept_loop(
        listener,
        tls,
        open,
        opening_timeout,
        accepted,
        stop,
    ));
    ReceiverStream::new(incoming)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    open: Arc<Open>,
    opening_timeout: Duration,
    accepted: mpsc::Sender<io::Result<ServerIo>>,
    stop: CancellationToken,
) {
    let opening = Arc::new(Semaphore::new(MAX_OPENING));
    loop {
        // Take an opening slot before accepting, so a flood of silent clients waits in the
        // kernel's backlog instead of in memory.
        let permit = tokio::select! {
            () = stop.cancelled() => return,
            permit = opening.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (tcp, remote) = tokio::select! {
            () = stop.cancelled() => return,
            () = accepted.closed() => return,
            result = listener.accept() => match result {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accepting a gRPC connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Some(slot) = open.take(remote.ip()) else {
            // Dropping the socket closes it: the client sees the connection refused at once.
            tracing::debug!(%remote, "connection past the limits closed");
            continue;
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, %remote, "cannot set TCP_NODELAY");
        }
        match &tls {
            None => {
                let accepted = accepted.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    // A client that opens a connection and says nothing is closed. (`peek`
                    // waits for a byte; readiness alone can be a false positive.)
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(opening_timeout, tcp.peek(&mut first)).await {
                        Ok(Ok(0)) => tracing::debug!(%remote, "closed before a byte"),
                        Ok(Ok(_)) => {
                            let io = ServerIo {
                                stream: Either::Left(tcp),
                                _slot: slot,
                            };
                            let _ = accepted.send(Ok(io)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%error, %remote, "connection failed"),
                        Err(_) => tracing::debug!(%remote, "a silent connection closed"),
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let accepted = accepted.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(opening_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let io = ServerIo {
                                stream: Either::Right(Box::new(stream)),
                                _slot: slot,
                            };
                            let _ = accepted.send(Ok(io)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%error, %remote, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn every_accepted_socket_has_tcp_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let stop = CancellationToken::new();
        let mut accepted = incoming(listener, None, ROOMY, OPENING_TIMEOUT, stop.clone());
        let mut client = TcpStream::connect(address).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PRI")
            .await
            .expect("the client speaks first");
        let io = tokio::time::timeout(Duration::from_secs(10), accepted.next())
            .await
            .expect("accepted in time")
            .expect("the stream goes on")
            .expect("no accept error");
        assert_eq!(
            io.connect_info().remote_addr,
            Some(client.local_addr().expect("client address"))
        );
        let Either::Left(tcp) = &io.stream else {
            panic!("plaintext without a TLS acceptor");
        };
        assert!(tcp.nodelay().expect("read TCP_NODELAY"), "Nagle is on");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_client_that_says_nothing_is_closed_and_frees_its_place() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let stop = CancellationToken::new();
        let limits = ConnectionLimits {
            total: 100,
            per_address: 1,
        };
        let mut accepted = incoming(
            listener,
            None,
            limits,
            Duration::from_millis(200),
            stop.clone(),
        );
        let mut silent = TcpStream::connect(address).await.expect("connect");
        // The server closes it: the client reads the end of the stream.
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut silent, &mut byte),
        )
        .await
        .expect("closed in time");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        // Its place is free again: a client that speaks is accepted from the same address.
        let mut speaker = TcpStream::connect(address).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut speaker, b"PRI")
            .await
            .expect("write");
        let io = tokio::time::timeout(Duration::from_secs(10), accepted.next())
            .await
            .expect("accepted in time");
        assert!(matches!(io, Some(Ok(_))), "the speaking client is served");
        stop.cancel();
    }

    const ROOMY: ConnectionLimits = ConnectionLimits {
        total: 100,
        per_address: 100,
    };

    #[test]
    fn places_are_capped_in_all_and_per_address_and_freed_on_drop() {
        let open = Arc::new(Open {
            limits: ConnectionLimits {
                total: 3,
                per_address: 2,
            },
            counts: Mutex::new((0, HashMap::new())),
        });
        let one: IpAddr = "2001:db8::1".parse().expect("v6");
        let same_64: IpAddr = "2001:db8::ffff".parse().expect("v6");
        let other: IpAddr = [192, 0, 2, 1].into();
        let a = open.take(one).expect("first");
        let b = open.take(same_64).expect("second of the /64");
        assert!(open.take(one).is_none(), "the /64 is at its cap");
        let c = open.take(other).expect("another address");
        assert!(
            open.take([192, 0, 2, 2].into()).is_none(),
            "the total is at its cap"
        );
        drop(a);
        let d = open.take(one).expect("a freed place is taken again");
        drop((b, c, d));
        assert_eq!(*open.counts.lock().expect("lock"), (0, HashMap::new()));
    }
}

//! The gRPC listener's accepted connections: TCP with `TCP_NODELAY`, then TLS when configured.
//!
//! tonic's own `tcp_nodelay` applies only to the listener tonic binds itself; `rallyd` serves an
//! incoming stream of its own (to know its port before serving, and to terminate TLS with a
//! certificate it can swap), so every accepted socket gets `TCP_NODELAY` here. Without it, an
//! answer of a few hundred bytes waits for the client's delayed ACK (about 40 ms, Nagle).
//!
//! TLS handshakes run in their own tasks, bounded in number and time, so a slow or silent client
//! holds up nobody else. Not here: HTTP/2 or any gRPC.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most TLS handshakes in progress at once; further connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;
/// Pause after an accept error (out of file descriptors) before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// An accepted connection, plain or TLS.
pub(crate) enum ServerIo {
    /// Plaintext (loopback, or `--allow-plaintext`).
    Plain(TcpStream),
    /// TLS 1.3.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for ServerIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        let tcp = match self {
            ServerIo::Plain(tcp) => tcp,
            ServerIo::Tls(tls) => tls.get_ref().0,
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
        match self.get_mut() {
            ServerIo::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            ServerIo::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            ServerIo::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            ServerIo::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(tcp) => tcp.is_write_vectored(),
            ServerIo::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            ServerIo::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            ServerIo::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts connections on `listener` until `stop` or until the returned stream is dropped;
/// sets `TCP_NODELAY` on each and, with `tls`, completes its handshake before handing it on.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<ServerIo>> {
    let (accepted, incoming) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, accepted, stop));
    ReceiverStream::new(incoming)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    accepted: mpsc::Sender<io::Result<ServerIo>>,
    stop: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        // With TLS, take a handshake slot before accepting, so a flood of silent clients waits
        // in the kernel's backlog instead of in memory.
        let permit = match &tls {
            Some(_) => tokio::select! {
                () = stop.cancelled() => return,
                permit = handshakes.clone().acquire_owned() => match permit {
                    Ok(permit) => Some(permit),
                    Err(_) => return,
                },
            },
            None => None,
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
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, %remote, "cannot set TCP_NODELAY");
        }
        match &tls {
            None => {
                if accepted.send(Ok(ServerIo::Plain(tcp))).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let accepted = accepted.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = accepted.send(Ok(ServerIo::Tls(Box::new(stream)))).await;
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
        let mut accepted = incoming(listener, None, stop.clone());
        let client = TcpStream::connect(address).await.expect("connect");
        let io = tokio::time::timeout(Duration::from_secs(10), accepted.next())
            .await
            .expect("accepted in time")
            .expect("the stream goes on")
            .expect("no accept error");
        let ServerIo::Plain(tcp) = io else {
            panic!("plaintext without a TLS acceptor");
        };
        assert!(tcp.nodelay().expect("read TCP_NODELAY"), "Nagle is on");
        assert_eq!(
            ServerIo::Plain(tcp).connect_info().remote_addr,
            Some(client.local_addr().expect("client address"))
        );
        stop.cancel();
    }
}

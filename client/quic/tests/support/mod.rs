//! Helpers shared by the integration tests: transports on 127.0.0.1, connecting pairs, and
//! waits that fail with a message instead of hanging.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use rally_quic::{Connection, Transport, TransportConfig};

/// Every wait in these tests ends within this, or the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A transport on 127.0.0.1 with default settings.
pub fn transport() -> Result<Transport> {
    transport_with(TransportConfig::default())
}

/// A transport on 127.0.0.1 with the given settings.
pub fn transport_with(config: TransportConfig) -> Result<Transport> {
    let config = TransportConfig {
        bind: "127.0.0.1:0".parse()?,
        ..config
    };
    Ok(Transport::bind(config)?)
}

/// Waits for `future` at most `WAIT`, failing with `what`.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(WAIT, future)
        .await
        .map_err(|_| anyhow!("timed out after {WAIT:?} waiting for {what}"))
}

/// `dialer` dials `acceptor` (which allows it); returns (dialed, accepted).
pub async fn connect(dialer: &Transport, acceptor: &Transport) -> Result<(Connection, Connection)> {
    acceptor.allow(dialer.fingerprint());
    let (dialed, accepted) = within("dial and accept", async {
        tokio::join!(
            dialer.dial(acceptor.local_addr(), acceptor.fingerprint()),
            acceptor.accept()
        )
    })
    .await?;
    let dialed = dialed.context("dial")?;
    let accepted = accepted.context("the acceptor closed")?;
    Ok((dialed, accepted))
}

/// Echoes every stream and datagram on every connection `transport` accepts.
pub fn serve_echo(transport: Transport) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(connection) = transport.accept().await {
            tokio::spawn(echo(connection));
        }
    })
}

/// Echoes every stream and datagram on `connection` until it closes.
pub async fn echo(connection: Connection) {
    let streams = {
        let connection = connection.clone();
        async move {
            while let Some((mut send, mut recv)) = connection.accept_stream().await {
                tokio::spawn(async move {
                    while let Ok(Some(chunk)) = recv.receive().await {
                        if send.send(chunk).await.is_err() {
                            return;
                        }
                    }
                    let _ = send.finish();
                });
            }
        }
    };
    let datagrams = async {
        while let Some(datagram) = connection.recv_datagram().await {
            let _ = connection.send_datagram(datagram);
        }
    };
    tokio::join!(streams, datagrams);
}

/// Sends `payload` on a new stream of `connection` and returns what comes back.
pub async fn stream_round_trip(connection: &Connection, payload: &[u8]) -> Result<Vec<u8>> {
    let (mut send, mut recv) = connection.open_stream().await?;
    send.send(bytes::Bytes::copy_from_slice(payload)).await?;
    send.finish()?;
    let mut echoed = Vec::with_capacity(payload.len());
    while let Some(chunk) = recv.receive().await? {
        echoed.extend_from_slice(&chunk);
    }
    Ok(echoed)
}

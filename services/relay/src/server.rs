//! The relay's UDP loop: receive a datagram, let [`Relay`] decide, send what it says.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::allocations::{Counters, Relay};

/// Largest datagram read (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;

/// A running relay.
pub struct RelayServer {
    local_addr: SocketAddr,
    relay: Arc<Mutex<Relay>>,
    task: JoinHandle<()>,
}

impl RelayServer {
    /// Serves `relay` on `socket` until `shutdown` is cancelled.
    pub fn spawn(
        socket: UdpSocket,
        relay: Relay,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let local_addr = socket.local_addr()?;
        let relay = Arc::new(Mutex::new(relay));
        let task = tokio::spawn(run(socket, relay.clone(), shutdown));
        Ok(Self {
            local_addr,
            relay,
            task,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What it has done so far.
    pub fn counters(&self) -> Counters {
        self.relay
            .lock()
            .map(|relay| relay.counters())
            .unwrap_or_default()
    }

    /// How many allocations it holds.
    pub fn allocation_count(&self) -> usize {
        self.relay
            .lock()
            .map(|relay| relay.allocation_count())
            .unwrap_or_default()
    }

    /// Waits for the loop to end (after shutdown).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

async fn run(socket: UdpSocket, relay: Arc<Mutex<Relay>>, shutdown: CancellationToken) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                if let Ok(mut relay) = relay.lock() {
                    relay.expire(now_ms());
                }
            }
            received = socket.recv_from(&mut buf) => {
                let (len, from) = match received {
                    Ok(received) => received,
                    Err(error) => {
                        // ICMP errors of earlier sends surface here; they concern one peer only.
                        tracing::debug!(%error, "relay receive error");
                        continue;
                    }
                };
                let outgoing = match relay.lock() {
                    Ok(mut relay) => relay.handle(from, &buf[..len], now_ms()),
                    Err(_) => break,
                };
                if let Some(out) = outgoing
                    && let Err(error) = socket.send_to(&out.datagram, out.to).await
                {
                    tracing::debug!(%error, to = %out.to, "relay send error");
                }
            }
        }
    }
}

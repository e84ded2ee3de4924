//! Unreliable 1200-byte packets between one pair on loopback: Rally's `Net` against raw UDP
//! (plain `send_to`/`recv_from` with 4 MiB buffers), measured in the same run.
//!
//! Each subject sends as fast as it is allowed for one window; the figure is what arrived per
//! second of that window, the loss what was sent and never arrived.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use rally_client::net::{Net, NetConfig, SendPolicy};
use rally_e2e::{Backend, TestServer};
use socket2::{Domain, Protocol, Socket, Type};

use crate::Budget;
use crate::report::{Report, Row};

const SCENARIO: &str = "unreliable 1200 B, one pair";
const SIZE: usize = 1200;
/// How long stragglers may take to arrive after the window.
const DRAIN: Duration = Duration::from_millis(300);

/// Runs the scenario: the baseline first, then Rally.
pub(crate) async fn run(budget: Budget, report: &mut Report) -> anyhow::Result<()> {
    let window = budget.window;
    let udp = tokio::task::spawn_blocking(move || raw_udp(window))
        .await
        .context("raw UDP task")??;
    report.push(udp);
    report.push(rally(window).await?);
    Ok(())
}

fn udp_socket(buffer: usize) -> anyhow::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_recv_buffer_size(buffer)?;
    socket.set_send_buffer_size(buffer)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    Ok(socket.into())
}

/// Raw UDP: one thread sends for the window, another counts what arrives.
fn raw_udp(window: Duration) -> anyhow::Result<Row> {
    let receiver = udp_socket(4 << 20)?;
    let sender = udp_socket(4 << 20)?;
    let to = receiver.local_addr()?;
    receiver.set_read_timeout(Some(Duration::from_millis(50)))?;
    let done = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let counter = {
        let (done, received) = (done.clone(), received.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !done.load(Ordering::Relaxed) {
                if let Ok((len, _)) = receiver.recv_from(&mut buf)
                    && len == SIZE
                {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let payload = [7u8; SIZE];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < window {
        if sender.send_to(&payload, to).is_ok() {
            sent += 1;
        }
    }
    std::thread::sleep(DRAIN);
    done.store(true, Ordering::Relaxed);
    counter
        .join()
        .map_err(|_| anyhow::anyhow!("the UDP receiver panicked"))?;
    let got = received.load(Ordering::Relaxed);
    Ok(Row {
        scenario: SCENARIO,
        subject: "raw UDP".to_owned(),
        value: got as f64 / window.as_secs_f64(),
        unit: "packets/s",
        loss: (sent > 0).then(|| 1.0 - got as f64 / sent as f64),
        settings: "blocking send_to, 4 MiB buffers".to_owned(),
        baseline: true,
    })
}

/// Rally: two `Net`s of an in-process rallyd on loopback.
async fn rally(window: Duration) -> anyhow::Result<Row> {
    let Some(server) = TestServer::start(Backend::Sqlite).await else {
        bail!("rallyd did not start");
    };
    let url = format!("http://{}", server.addr());
    let a = net(&url, "bench-a").await?;
    let b = net(&url, "bench-b").await?;
    a.connect(b.user_id()).await?;
    b.connect(a.user_id()).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(a.is_connected(b.user_id()) && b.is_connected(a.user_id())) {
        if Instant::now() > deadline {
            bail!("the pair did not connect within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let received = Arc::new(AtomicU64::new(0));
    let counter = {
        let (b, received) = (b.clone(), received.clone());
        tokio::spawn(async move {
            while let Some(packet) = b.recv().await {
                if packet.data.len() == SIZE {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let payload = Bytes::from(vec![7u8; SIZE]);
    let to = b.user_id();
    let start = Instant::now();
    let mut handed = 0u64;
    while start.elapsed() < window {
        a.send_packet(to, payload.clone(), SendPolicy::Unreliable)?;
        handed += 1;
        if handed.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::sleep(DRAIN).await;
    let got = received.load(Ordering::Relaxed);
    let stats = a.stats(to).context("sender stats")?;
    let dropped_locally = stats.unreliable_dropped_queue_full;
    let into_quic = handed.saturating_sub(dropped_locally);
    counter.abort();
    a.shutdown();
    b.shutdown();
    Ok(Row {
        scenario: SCENARIO,
        subject: "Rally Net".to_owned(),
        value: got as f64 / window.as_secs_f64(),
        unit: "packets/s",
        loss: (into_quic > 0).then(|| 1.0 - (got as f64 / into_quic as f64).min(1.0)),
        settings: format!(
            "send_packet as fast as accepted; {handed} handed over, {dropped_locally} refused by \
             a full queue (counted)"
        ),
        baseline: false,
    })
}

async fn net(url: &str, name: &str) -> anyhow::Result<Net> {
    let session = rally_client::Rally::connect(url)
        .await?
        .device_login(&format!("{name}-{}", uuid::Uuid::new_v4().simple()), name)
        .await?;
    let mut config = NetConfig::default();
    config.transport.bind = "127.0.0.1:0".parse()?;
    Ok(Net::start(&session, config).await?)
}

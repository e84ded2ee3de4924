//! Raw UDP baselines on 127.0.0.1: a flood of packets one way, and ping-pong round trips with an
//! optional background load in the ping direction. No protocol at all: what the kernel's
//! loopback gives.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

use crate::hist::Hist;
use crate::pace::{Pacer, SETTLE};
use crate::report::Row;
use crate::scenarios::{self, PING_SIZE, UNRELIABLE_SIZE};

/// How long stragglers may take to arrive after a flood's window.
const DRAIN: Duration = Duration::from_millis(300);

/// Socket buffers of the raw UDP baselines.
const BUFFER: usize = 4 << 20;

/// How long a ping may take to come back before it counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Pings sent before the measured ones, to warm both sides up.
const WARM_UP: u32 = 20;

fn udp_socket(buffer: usize) -> anyhow::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_recv_buffer_size(buffer)?;
    socket.set_send_buffer_size(buffer)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    Ok(socket.into())
}

/// A flood of `size`-byte packets for `window`: one thread sends with blocking `send_to` as fast
/// as it can, another counts what arrives. Blocking: run it on a blocking thread.
pub(crate) fn flood(size: usize, window: Duration) -> anyhow::Result<Row> {
    let receiver = udp_socket(BUFFER)?;
    let sender = udp_socket(BUFFER)?;
    let to = receiver.local_addr()?;
    receiver.set_read_timeout(Some(Duration::from_millis(50)))?;
    let done = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let counter = {
        let (done, received) = (done.clone(), received.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; size.max(2048) + 1];
            while !done.load(Ordering::Relaxed) {
                if let Ok((len, _)) = receiver.recv_from(&mut buf)
                    && len == size
                {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let payload = vec![7u8; size];
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
    let scenario = if size == UNRELIABLE_SIZE {
        scenarios::UNRELIABLE.to_owned()
    } else {
        format!("unreliable {size} B, one pair")
    };
    Ok(Row::rate(
        scenario,
        "raw UDP",
        got as f64 / window.as_secs_f64(),
        "packets/s",
    )
    .baseline()
    .loss(1.0 - got as f64 / sent.max(1) as f64)
    .settings("blocking send_to, 4 MiB buffers"))
}

/// Round trips of [`PING_SIZE`]-byte pings between two tokio UDP sockets, `samples` of them or
/// as many as fit in `limit`. With `load_pps > 0`, the pinging socket also sends
/// [`UNRELIABLE_SIZE`]-byte packets at that rate to the echoing one, which counts and drops
/// them. A ping that does not come back within a second counts as lost.
pub(crate) async fn ping_pong(
    samples: u32,
    load_pps: f64,
    limit: Duration,
) -> anyhow::Result<Hist> {
    let echo = tokio::net::UdpSocket::from_std(nonblocking(udp_socket(BUFFER)?)?)?;
    let pinger = Arc::new(tokio::net::UdpSocket::from_std(nonblocking(udp_socket(
        BUFFER,
    )?)?)?);
    let echo_addr = echo.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let load_received = Arc::new(AtomicU64::new(0));
    let echo_task = {
        let load_received = load_received.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            // Ends at the first socket error (pings then count as lost) or when aborted.
            while let Ok((len, from)) = echo.recv_from(&mut buf).await {
                if len == PING_SIZE {
                    if echo.send_to(&buf[..len], from).await.is_err() {
                        break;
                    }
                } else if len == UNRELIABLE_SIZE {
                    load_received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let load_task = if load_pps > 0.0 {
        let (pinger, stop) = (pinger.clone(), stop.clone());
        let mut pacer = Pacer::new(load_pps, Instant::now())?;
        Some(tokio::spawn(async move {
            let payload = vec![9u8; UNRELIABLE_SIZE];
            let start = Instant::now();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..pacer.wait().await {
                    if pinger.send_to(&payload, echo_addr).await.is_ok() {
                        sent += 1;
                    }
                }
            }
            (sent, start.elapsed())
        }))
    } else {
        None
    };
    if load_task.is_some() {
        tokio::time::sleep(SETTLE).await;
    }
    let measured = measure(&pinger, echo_addr, samples, limit).await;
    stop.store(true, Ordering::Relaxed);
    let load = match load_task {
        Some(task) => {
            let abort = task.abort_handle();
            let joined = tokio::time::timeout(Duration::from_secs(2), task).await;
            abort.abort();
            Some(
                joined
                    .context("the UDP load did not stop within 2 s")?
                    .context("the UDP load task")?,
            )
        }
        None => None,
    };
    if load.is_some() {
        // The last packets of the load may still be on their way.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    echo_task.abort();
    let mut hist = measured?;
    if let Some((sent, elapsed)) = load {
        let rate = sent as f64 / elapsed.as_secs_f64().max(1e-9);
        let (settle, arrived) = (SETTLE.as_millis(), load_received.load(Ordering::Relaxed));
        hist.note(format!(
            "load {rate:.0}/s sent (target {load_pps:.0}/s) from {settle} ms before the first \
             ping, {arrived} of {sent} arrived"
        ));
    }
    Ok(hist)
}

fn nonblocking(socket: UdpSocket) -> anyhow::Result<UdpSocket> {
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// The pinging side: one ping at a time, each with its number in its first 4 bytes; answers
/// to older pings are skipped.
async fn measure(
    socket: &tokio::net::UdpSocket,
    to: SocketAddr,
    samples: u32,
    limit: Duration,
) -> anyhow::Result<Hist> {
    let mut hist = Hist::new(true)?;
    let mut ping = [0u8; PING_SIZE];
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    for id in 0..samples.saturating_add(WARM_UP) {
        if start.elapsed() >= limit {
            break;
        }
        ping[..4].copy_from_slice(&id.to_be_bytes());
        let sent = Instant::now();
        let answer = tokio::time::timeout(PING_TIMEOUT, async {
            socket.send_to(&ping, to).await?;
            loop {
                let (len, _) = socket.recv_from(&mut buf).await?;
                if len == PING_SIZE && buf[..4] == id.to_be_bytes() {
                    return Ok::<_, std::io::Error>(sent.elapsed());
                }
            }
        })
        .await;
        if id < WARM_UP {
            continue;
        }
        match answer {
            Ok(rtt) => hist.record(rtt.context("a UDP ping")?),
            Err(_) => hist.record_lost(),
        }
    }
    Ok(hist)
}

//! Unreliable 1200-byte packets between one pair on loopback, Rally's side, with the raw UDP
//! baseline (`udp.rs`); the bare s2n-quic baselines are in `baselines.rs`.
//!
//! Each subject sends as fast as it is allowed for one window; the figure is what arrived per
//! second of that window, the loss what was handed over and never arrived. Rally is measured
//! twice: with `Net::send`, which waits for room in the datagram queue (what a bulk sender
//! uses), and with `send_packet`, which refuses a packet when the queue is full (what a game
//! loop uses; the refusals are counted, and the tight loop shows what flooding costs).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use rally_client::net::SendPolicy;

use crate::Budget;
use crate::rally::Rig;
use crate::report::{Report, Row};
use crate::scenarios::{UNRELIABLE as SCENARIO, UNRELIABLE_SIZE as SIZE};

/// How long stragglers may take to arrive after the window.
const DRAIN: Duration = Duration::from_millis(300);
/// Packets sent between two readings of the clock (and, for `send_packet`, between yields).
const BATCH: u64 = 64;

/// Runs the scenario: the raw UDP baseline first, then Rally both ways.
pub(crate) async fn run(budget: Budget, report: &mut Report) -> anyhow::Result<()> {
    let window = budget.window;
    let udp = tokio::task::spawn_blocking(move || crate::udp::flood(SIZE, window))
        .await
        .context("raw UDP task")??;
    report.push(udp);
    let rig = Rig::start().await?;
    report.push(rally(&rig, window, true, true).await?);
    report.push(rally(&rig, window, true, false).await?);
    report.push(rally(&rig, window, false, true).await?);
    Ok(())
}

/// Rally: two `Net`s of an in-process rallyd on loopback; `wait`: `send` rather than
/// `send_packet`; `gso`: the transport's GSO setting.
async fn rally(rig: &Rig, window: Duration, wait: bool, gso: bool) -> anyhow::Result<Row> {
    let (a, b) = rig.pair_with(|config| config.transport.gso = gso).await?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = {
        let (net, received) = (b.net.clone(), received.clone());
        tokio::spawn(async move {
            while let Some(packet) = net.recv().await {
                if packet.data.len() == SIZE {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let payload = Bytes::from(vec![7u8; SIZE]);
    let to = b.user();
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + window);
    let mut handed = 0u64;
    // The clock is read once per batch, as in the bare baseline: the harness's own cost is
    // not Rally's.
    loop {
        let batch = async {
            for _ in 0..BATCH {
                if wait {
                    a.net
                        .send(to, payload.clone(), SendPolicy::Unreliable)
                        .await
                        .context("send")?;
                } else {
                    a.net
                        .send_packet(to, payload.clone(), SendPolicy::Unreliable)
                        .context("send_packet")?;
                }
                handed += 1;
            }
            anyhow::Ok(())
        };
        match tokio::time::timeout_at(deadline, batch).await {
            Ok(sent) => sent?,
            Err(_) if wait && handed == 0 => bail!("no room in the datagram queue all window"),
            Err(_) => break,
        }
        if !wait {
            tokio::task::yield_now().await;
        }
        if Instant::now() >= start + window {
            break;
        }
    }
    tokio::time::sleep(DRAIN).await;
    let got = received.load(Ordering::Relaxed);
    let stats = a.net.stats(to).context("sender stats")?;
    let refused = stats.unreliable_dropped_queue_full;
    let into_quic = handed.saturating_sub(refused);
    counter.abort();
    a.net.shutdown();
    b.net.shutdown();
    let (subject, how) = match (wait, gso) {
        (true, true) => (
            "Rally Net, send (waits for room)",
            format!("{handed} sent, {refused} refused"),
        ),
        (true, false) => (
            "Rally Net, send (waits for room), GSO off",
            format!("{handed} sent, {refused} refused; TransportConfig::gso = false"),
        ),
        (false, _) => (
            "Rally Net, send_packet (refuses when full)",
            format!("{handed} handed over, {refused} refused by a full queue (counted)"),
        ),
    };
    Ok(Row::rate(
        SCENARIO,
        subject,
        got as f64 / window.as_secs_f64(),
        "packets/s",
    )
    .loss(1.0 - (got as f64 / into_quic.max(1) as f64).min(1.0))
    .settings(format!("as fast as the call returns; {how}")))
}

//! Round trips between one pair on loopback, Rally's side: a 64-byte ping that the other side's
//! game loop echoes with `send_packet`, unreliable and reliable, idle and with background
//! unreliable 1200-byte packets at a share of the maximum load going the same way. The
//! baselines (raw UDP, bare s2n-quic datagrams and stream) are measured in `baselines.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use rally_client::net::{Net, SendPolicy};

use crate::Budget;
use crate::hist::Hist;
use crate::pace::Pacer;
use crate::rally::Rig;
use crate::report::Report;
use crate::scenarios::{PING_SIZE, RTT_LOADS, UNRELIABLE_SIZE, rtt};

/// An unreliable ping not echoed within this long is counted lost.
const PING_PATIENCE: Duration = Duration::from_millis(200);
/// A reliable one must come back within this long, or the scenario fails.
const RELIABLE_PATIENCE: Duration = Duration::from_secs(5);

/// `max_rate`: the maximum load in 1200-byte packets per second (the best bare s2n-quic rate).
pub(crate) async fn run(budget: Budget, report: &mut Report, max_rate: f64) -> anyhow::Result<()> {
    let samples = if budget.quick { 200 } else { 5_000 };
    let rig = Rig::start().await?;
    for load in RTT_LOADS {
        let rate = max_rate * f64::from(load) / 100.0;
        for (policy, subject) in [
            (SendPolicy::Unreliable, "Rally Net, unreliable ping-pong"),
            (SendPolicy::Reliable, "Rally Net, reliable ping-pong"),
        ] {
            let (a, b) = rig.pair().await?;
            let echo = tokio::spawn(echo(b.net.clone()));
            let stop = Arc::new(AtomicBool::new(false));
            let background = Arc::new(AtomicU64::new(0));
            let loader = (rate > 0.0).then(|| {
                tokio::spawn(load_loop(
                    a.net.clone(),
                    b.user(),
                    rate,
                    stop.clone(),
                    background.clone(),
                ))
            });
            let result = ping_pong(&a.net, b.user(), policy, samples).await;
            stop.store(true, Ordering::Relaxed);
            if let Some(loader) = loader {
                loader.await.context("load task")??;
            }
            echo.abort();
            a.net.shutdown();
            b.net.shutdown();
            let times = result?;
            let settings = format!(
                "{PING_SIZE} B pings echoed by the peer's recv loop; load {rate:.0} packets/s of \
                 {UNRELIABLE_SIZE} B ({} sent)",
                background.load(Ordering::Relaxed)
            );
            times.push_rows(report, &rtt(load), subject, &settings, false);
        }
    }
    Ok(())
}

/// B's game loop: every ping comes straight back with the policy it came with.
async fn echo(net: Net) {
    while let Some(packet) = net.recv().await {
        if packet.data.len() == PING_SIZE {
            let _ = net.send_packet(packet.sender, packet.data, packet.policy);
        }
    }
}

/// Unreliable background packets from `net` to `to` at `rate` per second until `stop`.
async fn load_loop(
    net: Net,
    to: uuid::Uuid,
    rate: f64,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let payload = Bytes::from(vec![0x11; UNRELIABLE_SIZE]);
    let mut pacer = Pacer::new(rate, Instant::now())?;
    while !stop.load(Ordering::Relaxed) {
        let due = pacer.wait().await;
        for _ in 0..due {
            net.send(to, payload.clone(), SendPolicy::Unreliable)
                .await
                .context("background send")?;
            sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// `samples` pings one at a time; returns the round trips (and the unreliable ones lost).
async fn ping_pong(
    net: &Net,
    to: uuid::Uuid,
    policy: SendPolicy,
    samples: usize,
) -> anyhow::Result<Hist> {
    tokio::time::sleep(crate::pace::SETTLE).await;
    let mut times = Hist::new(policy == SendPolicy::Unreliable)?;
    for i in 0..samples as u64 {
        let mut ping = vec![0u8; PING_SIZE];
        ping[..8].copy_from_slice(&i.to_be_bytes());
        let sent = Instant::now();
        net.send_packet(to, ping, policy).context("ping")?;
        let patience = match policy {
            SendPolicy::Unreliable => PING_PATIENCE,
            _ => RELIABLE_PATIENCE,
        };
        let deadline = tokio::time::Instant::now() + patience;
        let back = loop {
            match tokio::time::timeout_at(deadline, net.recv()).await {
                Ok(Some(packet)) if packet.data.get(..8) == Some(&i.to_be_bytes()[..]) => {
                    break true;
                }
                // An older ping's late echo.
                Ok(Some(_)) => {}
                Ok(None) => bail!("Net stopped"),
                Err(_) => break false,
            }
        };
        if back {
            times.record(sent.elapsed());
        } else if policy == SendPolicy::Unreliable {
            times.record_lost();
        } else {
            bail!("reliable ping {i} did not come back within {RELIABLE_PATIENCE:?}");
        }
    }
    Ok(times)
}

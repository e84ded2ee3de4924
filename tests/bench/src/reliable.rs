//! Reliable packets between one pair on loopback, Rally's side: one sender calls `Net::send`
//! (waiting for room in the send buffer) as fast as it returns for one window; the figure is
//! the payload that arrived per second of that window. The baselines (a bare s2n-quic stream
//! with the same framing) are measured in `baselines.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use rally_client::net::SendPolicy;

use crate::Budget;
use crate::rally::Rig;
use crate::report::{Report, Row};
use crate::scenarios::{RELIABLE_SIZES, reliable};

/// How long one send may wait for room before the scenario fails.
const SEND_PATIENCE: Duration = Duration::from_secs(10);

pub(crate) async fn run(budget: Budget, report: &mut Report) -> anyhow::Result<()> {
    let rig = Rig::start().await?;
    for size in RELIABLE_SIZES {
        let (a, b) = rig.pair().await?;
        let received = Arc::new(AtomicU64::new(0));
        let counting = Arc::new(AtomicBool::new(true));
        let counter = {
            let (net, received, counting) = (b.net.clone(), received.clone(), counting.clone());
            tokio::spawn(async move {
                while let Some(packet) = net.recv().await {
                    if counting.load(Ordering::Relaxed) {
                        received.fetch_add(packet.data.len() as u64, Ordering::Relaxed);
                    }
                }
            })
        };
        let payload = Bytes::from(vec![0x5a; size]);
        let to = b.user();
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < budget.window {
            tokio::time::timeout(
                SEND_PATIENCE,
                a.net.send(to, payload.clone(), SendPolicy::Reliable),
            )
            .await
            .context("no room in the send buffer for 10 s")?
            .context("send")?;
            sent += 1;
        }
        let window = started.elapsed();
        counting.store(false, Ordering::Relaxed);
        let got = received.load(Ordering::Relaxed);
        counter.abort();
        a.net.shutdown();
        b.net.shutdown();
        report.push(
            Row::rate(
                reliable(size),
                "Rally Net",
                got as f64 / 1e6 / window.as_secs_f64(),
                "MB/s",
            )
            .settings(format!(
                "Net::send (waits for room), lane 0; {sent} packets taken, {} arrived in the window",
                got / size as u64
            )),
        );
    }
    Ok(())
}

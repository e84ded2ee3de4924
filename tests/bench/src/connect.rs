//! Brokered connect on loopback: from `Net::connect` on one side until both sides are
//! connected (the request through the broker, the other side's accept, the common start time,
//! the QUIC handshake with pinned certificates, and the nomination of the connection). The
//! baseline (a bare s2n-quic handshake) is measured in `baselines.rs`.

use crate::Budget;
use crate::hist::Hist;
use crate::rally::{Rig, connect};
use crate::report::{Report, Row};
use crate::scenarios::CONNECT;

/// Connects every pair of a pool of clients once, one pair at a time.
pub(crate) async fn run(budget: Budget, report: &mut Report) -> anyhow::Result<()> {
    let pool = if budget.quick { 5 } else { 16 };
    let rig = Rig::start().await?;
    let mut clients = Vec::with_capacity(pool);
    for i in 0..pool {
        clients.push(rig.client(&format!("c{i}")).await?);
    }
    let mut times = Hist::new(false)?;
    for i in 0..pool {
        for j in i + 1..pool {
            times.record(connect(&clients[i].net, &clients[j].net).await?);
        }
    }
    let settings = times.describe(&format!(
        "pairs of a pool of {pool} clients, one pair at a time; from the connect call until \
         both sides are connected (the request and the accept through the broker, the punch \
         lead, the handshake with pinned certificates, the nomination)"
    ));
    for (metric, value) in [("p50", times.p50()), ("p99", times.p99())] {
        report.push(
            Row::cost(CONNECT, "Rally brokered connect", metric, value / 1e3, "ms")
                .settings(&settings),
        );
    }
    for client in &clients {
        client.net.shutdown();
    }
    Ok(())
}

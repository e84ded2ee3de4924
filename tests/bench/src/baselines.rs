//! The baselines of every scenario, measured in the same run as Rally: raw UDP and bare
//! s2n-quic (see `udp.rs` and `bare.rs`). Every row pushed here is a baseline.

use std::time::Duration;

use anyhow::Context;

use crate::Budget;
use crate::bare::{self, QuicSettings};
use crate::hist::Hist;
use crate::report::{Report, Row};
use crate::scenarios::{self, RELIABLE_SIZES, RTT_LOADS, UNRELIABLE_SIZE};
use crate::udp;

/// Pings per round-trip measurement.
fn samples(budget: Budget) -> u32 {
    if budget.quick { 200 } else { 5000 }
}

/// The longest one round-trip measurement may take.
fn ping_limit(budget: Budget) -> Duration {
    if budget.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(30)
    }
}

/// The unreliable scenario's bare s2n-quic datagram floods, one per settings variant. Returns the
/// best rate measured (packets/s): the maximum load of the round-trip scenarios.
pub(crate) async fn unreliable(budget: Budget, report: &mut Report) -> anyhow::Result<f64> {
    let mut best = 0.0f64;
    for settings in QuicSettings::variants() {
        let row = bare::datagram_flood(&settings, UNRELIABLE_SIZE, budget.window)
            .await
            .with_context(|| format!("bare s2n-quic datagram flood, {}", settings.name))?;
        best = best.max(row.value);
        report.push(row);
    }
    anyhow::ensure!(best > 0.0, "no bare s2n-quic datagram got through");
    Ok(best)
}

/// The reliable scenarios' bare s2n-quic streams: s2n-quic's defaults and the faster of the
/// tuned variants, for each size.
pub(crate) async fn reliable(budget: Budget, report: &mut Report) -> anyhow::Result<()> {
    for size in RELIABLE_SIZES {
        let default = QuicSettings::default();
        let row = bare::stream_bulk(&default, size, budget.window)
            .await
            .with_context(|| format!("bare s2n-quic stream of {size} B, {}", default.name))?;
        report.push(row);
        let mut best: Option<Row> = None;
        for settings in [QuicSettings::tuned(), QuicSettings::tuned_without_gso()] {
            let row = bare::stream_bulk(&settings, size, budget.window)
                .await
                .with_context(|| format!("bare s2n-quic stream of {size} B, {}", settings.name))?;
            if best.as_ref().is_none_or(|b| row.value > b.value) {
                best = Some(row);
            }
        }
        if let Some(mut row) = best {
            row.settings.push_str("; the faster tuned variant");
            report.push(row);
        }
    }
    Ok(())
}

/// The round-trip scenarios: raw UDP, bare s2n-quic datagrams and a bare s2n-quic stream, idle
/// and under a background load of datagrams at a share of `max_rate` (packets/s).
pub(crate) async fn latency(
    budget: Budget,
    report: &mut Report,
    max_rate: f64,
) -> anyhow::Result<()> {
    let (samples, limit) = (samples(budget), ping_limit(budget));
    // Datagram floods were fastest without GSO (it gains for streams, not for single datagrams):
    // the load must be reachable by the subject carrying it.
    let settings = QuicSettings::tuned_without_gso();
    for load in RTT_LOADS {
        let scenario = scenarios::rtt(load);
        let load_pps = max_rate * f64::from(load) / 100.0;
        let load_text = if load == 0 {
            "idle".to_owned()
        } else {
            format!("{load}% of {max_rate:.0}/s: {load_pps:.0} datagrams/s of 1200 B")
        };
        let raw = udp::ping_pong(samples, load_pps, limit)
            .await
            .with_context(|| format!("raw UDP ping-pong, {scenario}"))?;
        push(
            report,
            &raw,
            &scenario,
            "raw UDP",
            &format!("tokio sockets, 4 MiB buffers; {load_text}"),
        );
        let datagrams = bare::datagram_ping_pong(&settings, samples, load_pps, limit)
            .await
            .with_context(|| format!("bare s2n-quic datagram ping-pong, {scenario}"))?;
        push(
            report,
            &datagrams,
            &scenario,
            "bare s2n-quic datagram ping",
            &format!("{}; {load_text}", settings.settings()),
        );
        let stream = bare::stream_ping_pong(&settings, samples, load_pps, limit)
            .await
            .with_context(|| format!("bare s2n-quic stream ping-pong, {scenario}"))?;
        push(
            report,
            &stream,
            &scenario,
            "bare s2n-quic stream ping",
            &format!("{}; {load_text}", settings.settings()),
        );
    }
    Ok(())
}

fn push(report: &mut Report, hist: &Hist, scenario: &str, subject: &str, settings: &str) {
    hist.push_rows(report, scenario, subject, settings, true);
}

/// The connect scenario: sequential bare s2n-quic handshakes on loopback, p50 and p99 in ms.
pub(crate) async fn connect(budget: Budget, report: &mut Report) -> anyhow::Result<()> {
    let (count, limit) = if budget.quick {
        (20, Duration::from_secs(5))
    } else {
        (200, Duration::from_secs(60))
    };
    let settings = QuicSettings::default();
    let hist = bare::handshakes(&settings, count, limit)
        .await
        .context("bare s2n-quic handshakes")?;
    let text = hist.describe(&format!(
        "{}; sequential full handshakes (TLS 1.3, no resumption, no client certificate), timed \
         until a first byte the server sends on accepting arrives",
        settings.settings()
    ));
    for (metric, value) in [("p50", hist.p50()), ("p99", hist.p99())] {
        report.push(
            Row::cost(
                scenarios::CONNECT,
                "bare s2n-quic handshake",
                metric,
                value / 1e3,
                "ms",
            )
            .baseline()
            .settings(&text),
        );
    }
    Ok(())
}

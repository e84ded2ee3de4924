//! The demo's live view and summary: what each bot is doing, redrawn in place on a terminal, or
//! plain progress lines when output is piped.

use std::fmt::Write as _;
use std::time::Duration;

/// Where a bot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    SigningIn,
    Matchmaking,
    Connecting,
    Playing,
    Done,
    Failed,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Self::SigningIn => "signing in",
            Self::Matchmaking => "matchmaking",
            Self::Connecting => "connecting",
            Self::Playing => "playing",
            Self::Done => "done",
            Self::Failed => "FAILED",
        }
    }
}

/// One bot's figures.
#[derive(Debug, Clone)]
pub(crate) struct BotView {
    pub(crate) name: String,
    pub(crate) phase: Phase,
    pub(crate) room: String,
    pub(crate) peers: usize,
    /// Peers connected when play started.
    pub(crate) connected: usize,
    /// Peers a packet arrived from.
    pub(crate) heard_from: usize,
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) unreliable_sent: u64,
    pub(crate) unreliable_lost: u64,
    pub(crate) rtts: Vec<Duration>,
    pub(crate) error: Option<String>,
}

impl BotView {
    pub(crate) fn new(name: String) -> Self {
        Self {
            name,
            phase: Phase::SigningIn,
            room: String::new(),
            peers: 0,
            connected: 0,
            heard_from: 0,
            sent: 0,
            received: 0,
            unreliable_sent: 0,
            unreliable_lost: 0,
            rtts: Vec::new(),
            error: None,
        }
    }
}

/// The `q`-quantile of sorted samples.
pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(index).copied()
}

fn millis(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.2}", d.as_secs_f64() * 1000.0),
    )
}

/// The table of bots (live view and final summary).
pub(crate) fn table(bots: &[BotView]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| bot | room | phase | peers connected | heard from | packets sent | packets received | unreliable loss | RTT p50 ms | RTT p99 ms |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for bot in bots {
        let mut rtts = bot.rtts.clone();
        rtts.sort();
        let loss = if bot.unreliable_sent == 0 {
            "-".to_owned()
        } else {
            format!(
                "{:.2}%",
                bot.unreliable_lost as f64 * 100.0 / bot.unreliable_sent as f64
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}/{} | {}/{} | {} | {} | {} | {} | {} |",
            bot.name,
            if bot.room.is_empty() {
                "-"
            } else {
                &bot.room[..8.min(bot.room.len())]
            },
            bot.phase.label(),
            bot.connected,
            bot.peers,
            bot.heard_from,
            bot.peers,
            bot.sent,
            bot.received,
            loss,
            millis(quantile(&rtts, 0.5)),
            millis(quantile(&rtts, 0.99)),
        );
    }
    out
}

/// Totals over every bot: connections, packets, loss, RTT quantiles.
pub(crate) fn totals(bots: &[BotView]) -> String {
    let connected: usize = bots.iter().map(|b| b.connected).sum();
    let wanted: usize = bots.iter().map(|b| b.peers).sum();
    let sent: u64 = bots.iter().map(|b| b.sent).sum();
    let received: u64 = bots.iter().map(|b| b.received).sum();
    let unreliable: u64 = bots.iter().map(|b| b.unreliable_sent).sum();
    let lost: u64 = bots.iter().map(|b| b.unreliable_lost).sum();
    let mut rtts: Vec<Duration> = bots.iter().flat_map(|b| b.rtts.iter().copied()).collect();
    rtts.sort();
    format!(
        "connections {connected}/{wanted} · packets sent {sent} · received {received} · unreliable lost {lost} of {unreliable} · pings {} · RTT p50 {} ms · p99 {} ms",
        rtts.len(),
        millis(quantile(&rtts, 0.5)),
        millis(quantile(&rtts, 0.99)),
    )
}

/// One plain progress line (for pipes and CI).
pub(crate) fn progress_line(elapsed: Duration, bots: &[BotView]) -> String {
    let playing = bots
        .iter()
        .filter(|b| matches!(b.phase, Phase::Playing | Phase::Done))
        .count();
    format!(
        "[{:>5.1}s] bots playing {playing}/{} · {}",
        elapsed.as_secs_f64(),
        bots.len(),
        totals(bots)
    )
}

/// The whole screen of the live view.
pub(crate) fn screen(elapsed: Duration, total: Duration, bots: &[BotView]) -> String {
    format!(
        "\x1b[H\x1b[2JRally demo — {} bots peer to peer over QUIC · {:.1}s / {:.0}s\n\n{}\n{}\n",
        bots.len(),
        elapsed.as_secs_f64(),
        total.as_secs_f64(),
        table(bots),
        totals(bots)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&samples, 0.5), Some(Duration::from_millis(51)));
        assert_eq!(quantile(&samples, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn the_table_has_a_row_per_bot() {
        let bots = vec![BotView::new("bot-1".into()), BotView::new("bot-2".into())];
        assert_eq!(table(&bots).lines().count(), 4);
    }
}

//! `rally demo`: an embedded `rallyd` and bot players that do what a game does: sign in,
//! matchmake into rooms, connect to every room peer directly over QUIC, and exchange state
//! (unreliable, 60 times a second), events (reliable) and pings.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use rally_client::Rally;
use rally_client::net::{Net, NetConfig, NetEvent, SendPolicy};
use rally_proto::rooms::v1::{EnqueueRequest, TicketStatus};
use uuid::Uuid;

use crate::view::{self, BotView, Phase};

/// How long setting up (sign-in, matchmaking, connecting) may take before a bot fails.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// One game tick.
const TICK: Duration = Duration::from_millis(16);

/// `rally demo` options.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Bot players (2 to 64).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(2..=64))]
    players: u16,
    /// How long the bots play once connected, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Use this server (`http://host:port`, pool `default`) instead of starting one.
    #[arg(long)]
    server: Option<String>,
}

type Views = Arc<Mutex<Vec<BotView>>>;

fn update(views: &Views, index: usize, f: impl FnOnce(&mut BotView)) {
    let mut views = views
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(view) = views.get_mut(index) {
        f(view);
    }
}

fn snapshot(views: &Views) -> Vec<BotView> {
    views
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Players per room: 4 when they split evenly, else 2 when even, else all in one room.
fn room_size(players: usize) -> usize {
    match players {
        p if p % 4 == 0 => 4,
        p if p % 2 == 0 => 2,
        p => p,
    }
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let players = usize::from(args.players);
    let play_for = Duration::from_secs(args.duration);
    let data = tempfile::tempdir().context("creating a temporary directory")?;
    let (url, pool, server) = match &args.server {
        Some(url) => (url.clone(), "default".to_owned(), None),
        None => {
            let pools = data.path().join("pools.json");
            std::fs::write(
                &pools,
                format!(
                    r#"[{{"name":"demo","match_size":{},"max_wait_secs":60}}]"#,
                    room_size(players)
                ),
            )
            .context("writing the demo's matchmaking pool")?;
            let data_dir = data.path().display().to_string();
            let pools = pools.display().to_string();
            let config = <rallyd::Config as clap::Parser>::try_parse_from([
                "rallyd",
                "--listen",
                "127.0.0.1:0",
                "--relay-listen",
                "127.0.0.1:0",
                "--data-dir",
                &data_dir,
                "--matchmaking-pools",
                &pools,
                "--matchmaking-tick-ms",
                "100",
            ])
            .context("configuring the embedded server")?;
            let running = rallyd::start(config)
                .await
                .context("starting the embedded server")?;
            let url = format!("http://{}", running.grpc_addr());
            (url, "demo".to_owned(), Some(running))
        }
    };
    let views: Views = Arc::new(Mutex::new(
        (1..=players)
            .map(|i| BotView::new(format!("bot-{i}")))
            .collect(),
    ));
    let started = Instant::now();
    let bots: Vec<_> = (0..players)
        .map(|index| {
            let (url, pool, views) = (url.clone(), pool.clone(), views.clone());
            tokio::spawn(async move {
                if let Err(error) = bot(index, &url, &pool, play_for, &views).await {
                    update(&views, index, |v| {
                        v.phase = Phase::Failed;
                        v.error = Some(format!("{error:#}"));
                    });
                }
            })
        })
        .collect();
    let all_done = futures::future::join_all(bots);
    tokio::pin!(all_done);
    let terminal = std::io::stdout().is_terminal();
    let mut redraw = tokio::time::interval(if terminal {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(1)
    });
    let total = SETUP_TIMEOUT + play_for;
    loop {
        tokio::select! {
            _ = &mut all_done => break,
            _ = redraw.tick() => {
                let bots = snapshot(&views);
                if terminal {
                    print!("{}", view::screen(started.elapsed(), play_for, &bots));
                } else {
                    println!("{}", view::progress_line(started.elapsed(), &bots));
                }
            }
            () = tokio::time::sleep_until((started + total + Duration::from_secs(10)).into()) => {
                eprintln!("rally demo: the bots did not finish in time");
                break;
            }
        }
    }
    let bots = snapshot(&views);
    if terminal {
        print!("\x1b[H\x1b[2J");
    }
    println!(
        "Rally demo: {players} bots, rooms of {}, {:.1}s\n",
        room_size(players),
        started.elapsed().as_secs_f64()
    );
    println!("{}", view::table(&bots));
    println!("{}", view::totals(&bots));
    for bot in bots.iter().filter(|b| b.error.is_some()) {
        println!("{}: {}", bot.name, bot.error.as_deref().unwrap_or_default());
    }
    if let Some(server) = server {
        server
            .stop()
            .await
            .context("stopping the embedded server")?;
    }
    let ok = bots
        .iter()
        .all(|b| b.phase == Phase::Done && b.connected == b.peers && b.heard_from == b.peers);
    println!(
        "\n{}",
        if ok {
            "every bot connected and exchanged traffic"
        } else {
            "FAILED: not every bot connected and exchanged traffic"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn bot(
    index: usize,
    url: &str,
    pool: &str,
    play_for: Duration,
    views: &Views,
) -> anyhow::Result<()> {
    let name = format!("bot-{}", index + 1);
    let rally = Rally::connect(url).await?;
    let session = rally
        .device_login(
            &format!("rally-demo-{name}-{}", Uuid::new_v4().simple()),
            &name,
        )
        .await?;
    let mut config = NetConfig::default();
    config.transport.bind = "127.0.0.1:0".parse()?;
    let net = Net::start(&session, config).await?;
    let me = session.user_id();

    update(views, index, |v| v.phase = Phase::Matchmaking);
    let ticket = session
        .matchmaking()
        .enqueue(EnqueueRequest {
            pool: pool.to_owned(),
            ..Default::default()
        })
        .await?;
    let mut tickets = session
        .matchmaking()
        .watch_ticket(&ticket.ticket_id)
        .await?;
    let matched = tokio::time::timeout(SETUP_TIMEOUT, async {
        while let Some(ticket) = tickets.next().await {
            let ticket = ticket?;
            match TicketStatus::try_from(ticket.status) {
                Ok(TicketStatus::Matched) => return Ok(ticket.match_result),
                Ok(TicketStatus::Queued) => continue,
                _ => bail!("the ticket ended unmatched"),
            }
        }
        bail!("the ticket stream ended")
    })
    .await
    .context("matchmaking timed out")??
    .context("a matched ticket without its match")?;
    let peers: Vec<Uuid> = matched
        .user_ids
        .iter()
        .filter_map(|id| Uuid::try_parse(id).ok())
        .filter(|id| *id != me)
        .collect();
    update(views, index, |v| {
        v.phase = Phase::Connecting;
        v.room = matched.room_id.clone();
        v.peers = peers.len();
    });

    // Both sides accept room members; the lower user id asks, so requests never cross.
    net.accept_for_current_room().await?;
    for peer in peers.iter().filter(|p| me < **p) {
        net.connect(*peer).await?;
    }
    let connected = tokio::time::timeout(SETUP_TIMEOUT, async {
        loop {
            let connected = peers.iter().filter(|p| net.is_connected(**p)).count();
            update(views, index, |v| v.connected = connected);
            if connected == peers.len() {
                return;
            }
            // Wake on any event (a state change) rather than on a timer.
            let _ = net.next_event().await;
        }
    })
    .await;
    if connected.is_err() {
        bail!("could not connect to every room peer in time");
    }

    update(views, index, |v| v.phase = Phase::Playing);
    play(&net, &peers, play_for, index, views).await;
    update(views, index, |v| v.phase = Phase::Done);
    net.shutdown();
    Ok(())
}

/// Plays: a state update to the room every tick (unreliable), an event every 10 ticks
/// (reliable), a ping to each peer every 30 ticks.
async fn play(net: &Net, peers: &[Uuid], play_for: Duration, index: usize, views: &Views) {
    let end = Instant::now() + play_for;
    let mut tick = tokio::time::interval(TICK);
    let mut frame: u64 = 0;
    let (mut sent, mut received) = (0u64, 0u64);
    let mut rtts = Vec::new();
    let mut heard_from = std::collections::HashSet::new();
    while Instant::now() < end {
        tick.tick().await;
        frame += 1;
        let mut state = vec![0u8; 200];
        state[..8].copy_from_slice(&frame.to_be_bytes());
        if let Ok(true) = net
            .send_packet_to_current_room(state, SendPolicy::Unreliable)
            .await
        {
            sent += peers.len() as u64;
        }
        if frame.is_multiple_of(10)
            && let Ok(true) = net
                .send_packet_to_current_room(frame.to_be_bytes().to_vec(), SendPolicy::Reliable)
                .await
        {
            sent += peers.len() as u64;
        }
        if frame.is_multiple_of(30) {
            for peer in peers {
                let _ = net.ping(*peer);
            }
        }
        while let Some(event) = net.poll_event() {
            if let NetEvent::PingResult { rtt: Some(rtt), .. } = event {
                rtts.push(rtt);
            }
        }
        while let Some(packet) = net.read_packet() {
            received += 1;
            heard_from.insert(packet.sender);
        }
        let (unreliable_sent, unreliable_lost) = peers
            .iter()
            .filter_map(|p| net.stats(*p))
            .fold((0, 0), |(s, l), st| {
                (s + st.unreliable_sent, l + st.unreliable_lost)
            });
        update(views, index, |v| {
            v.sent = sent;
            v.received = received;
            v.heard_from = heard_from.len();
            v.unreliable_sent = unreliable_sent;
            v.unreliable_lost = unreliable_lost;
            v.rtts.clone_from(&rtts);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_split_the_players_evenly() {
        assert_eq!(room_size(8), 4);
        assert_eq!(room_size(6), 2);
        assert_eq!(room_size(3), 3);
    }
}

//! Room fan-out on loopback: one member sends each packet to every other member of its room
//! with `send_packet_to_current_room`, against the same member sending it with one
//! `send_packet` per member (the baseline), in the same room and run. The figure is packets
//! delivered per second, summed over the receivers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use rally_client::net::SendPolicy;
use rally_proto::rooms::v1::CreateRoomRequest;

use crate::Budget;
use crate::rally::{Client, Rig, connect};
use crate::report::{Report, Row};
use crate::scenarios::{FAN_OUT_PEERS, UNRELIABLE_SIZE, fan_out};

/// How long stragglers may take to arrive after a window.
const DRAIN: Duration = Duration::from_millis(200);

pub(crate) async fn run(budget: Budget, report: &mut Report) -> anyhow::Result<()> {
    let rig = Rig::start().await?;
    for peers in FAN_OUT_PEERS {
        let sender = rig.client("sender").await?;
        let room = sender
            .session
            .rooms()
            .create_room(CreateRoomRequest {
                capacity: u32::try_from(peers + 1)?,
                ..Default::default()
            })
            .await
            .context("create room")?
            .room
            .context("no room in the response")?;
        let mut members = Vec::with_capacity(peers);
        for i in 0..peers {
            let member = rig.client(&format!("m{i}")).await?;
            member
                .session
                .rooms()
                .join_room(&room.room_id)
                .await
                .context("join room")?;
            connect(&sender.net, &member.net).await?;
            members.push(member);
        }
        let scenario = fan_out(peers);
        for room_send in [false, true] {
            let (delivered, rounds, window) =
                measure(&sender, &members, room_send, budget.window).await?;
            let handed = rounds * peers as u64;
            let row = Row::rate(
                scenario.clone(),
                if room_send {
                    "Rally send_packet_to_current_room"
                } else {
                    "one send_packet per member"
                },
                delivered as f64 / window.as_secs_f64(),
                "packets/s",
            )
            .loss(1.0 - (delivered as f64 / handed.max(1) as f64).min(1.0))
            .settings(format!(
                "unreliable {UNRELIABLE_SIZE} B; {rounds} rounds to {peers} members, yielding \
                 after each; loss includes packets refused by a full queue"
            ));
            report.push(if room_send { row } else { row.baseline() });
        }
        sender.net.shutdown();
        for member in &members {
            member.net.shutdown();
        }
    }
    Ok(())
}

/// Sends rounds for one window; returns the packets delivered, the rounds and the window.
async fn measure(
    sender: &Client,
    members: &[Client],
    room_send: bool,
    window: Duration,
) -> anyhow::Result<(u64, u64, Duration)> {
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<_> = members
        .iter()
        .map(|member| {
            let (net, delivered, stop) = (member.net.clone(), delivered.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(DRAIN, net.recv()).await {
                        Ok(Some(packet)) if packet.data.len() == UNRELIABLE_SIZE => {
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Some(_)) | Err(_) => {}
                        Ok(None) => break,
                    }
                }
            })
        })
        .collect();
    let payload = Bytes::from(vec![0x33; UNRELIABLE_SIZE]);
    let targets: Vec<_> = members.iter().map(Client::user).collect();
    let started = Instant::now();
    let mut rounds = 0u64;
    while started.elapsed() < window {
        if room_send {
            let in_room = sender
                .net
                .send_packet_to_current_room(payload.clone(), SendPolicy::Unreliable)
                .await
                .context("send to room")?;
            anyhow::ensure!(in_room, "the sender is in no room");
        } else {
            for to in &targets {
                sender
                    .net
                    .send_packet(*to, payload.clone(), SendPolicy::Unreliable)
                    .context("send")?;
            }
        }
        rounds += 1;
        tokio::task::yield_now().await;
    }
    let window = started.elapsed();
    tokio::time::sleep(DRAIN).await;
    stop.store(true, Ordering::Relaxed);
    for counter in counters {
        counter.await.context("counter task")?;
    }
    Ok((delivered.load(Ordering::Relaxed), rounds, window))
}

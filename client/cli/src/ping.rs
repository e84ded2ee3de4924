//! `rally ping`: connects to a peer through the broker and measures the round trip over QUIC.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rally_client::net::{ConnectionState, Net, NetConfig, NetEvent};
use uuid::Uuid;

use crate::view::quantile;

/// `rally ping` options.
#[derive(Debug, clap::Args)]
pub(crate) struct PingArgs {
    #[command(flatten)]
    server: crate::server::ServerArgs,
    /// The local UDP address for peer-to-peer traffic (every interface by default).
    #[arg(long, default_value = "0.0.0.0:0")]
    bind: std::net::SocketAddr,
    /// Your name (picks a stable device account on this machine).
    #[arg(long)]
    user: String,
    /// How many pings.
    #[arg(long, default_value_t = 10)]
    count: u32,
    /// The peer's user id (it must accept the connection, e.g. from `rally chat` in a shared room).
    peer: Uuid,
}

pub(crate) async fn run(args: PingArgs) -> anyhow::Result<ExitCode> {
    let rally = args.server.connect().await?;
    let session = rally
        .device_login(&format!("rally-ping-device-{}", args.user), &args.user)
        .await
        .context("signing in")?;
    let mut config = NetConfig::default();
    config.transport.bind = args.bind;
    let net = Net::start(&session, config).await?;
    net.connect(args.peer).await?;
    let connected = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match net.next_event().await {
                Some(NetEvent::ConnectionStateChanged { user, state }) if user == args.peer => {
                    match state {
                        ConnectionState::Connected => return Ok(()),
                        ConnectionState::Connecting => {}
                        other => bail!("the connection ended: {other:?}"),
                    }
                }
                Some(_) => {}
                None => bail!("stopped"),
            }
        }
    })
    .await
    .context("no connection within 30 s")?;
    connected?;
    let mut rtts = Vec::new();
    for _ in 0..args.count {
        let id = net.ping(args.peer)?;
        loop {
            match net.next_event().await {
                Some(NetEvent::PingResult { ping_id, rtt, .. }) if ping_id == id => {
                    match rtt {
                        Some(rtt) => {
                            println!(
                                "pong from {}: {:.3} ms",
                                args.peer,
                                rtt.as_secs_f64() * 1000.0
                            );
                            rtts.push(rtt);
                        }
                        None => println!("no pong from {} within 5 s", args.peer),
                    }
                    break;
                }
                Some(_) => {}
                None => bail!("stopped"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rtts.sort();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    println!(
        "{} of {} answered; RTT p50 {:.3} ms, p99 {:.3} ms",
        rtts.len(),
        args.count,
        ms(quantile(&rtts, 0.5)),
        ms(quantile(&rtts, 0.99))
    );
    net.close(args.peer).await?;
    net.shutdown();
    Ok(if rtts.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

//! `rally-lab-node`: one node of the NAT lab (`rally_e2e::lab`), run inside a network namespace
//! and driven over stdin/stdout by a test. Five modes:
//!
//! - `server -- <rallyd flags>`: rallyd in-process; prints `listening`, runs until its input
//!   ends (or `quit`, SIGTERM, SIGINT), then shuts down gracefully.
//! - `peer --server URL --name NAME [--bind IP:PORT] [--relay-policy P]`: an SDK client
//!   (device login, `Net`) driven by the commands of `rally_e2e::lab::node::protocol`.
//! - `udp --bind IP:PORT`: a plain UDP socket (`send IP:PORT text`, prints every datagram).
//! - `delay --a IF --b IF --delay-ms N --jitter-ms N [--seed N]`: forwards every frame between
//!   two interfaces after its own delay (`rally_e2e::lab::delay`); prints `{"event":"ready"}`,
//!   answers `stats` with its counters, runs until its input ends.
//! - `hostile --listen IP:PORT --upstream IP:PORT --flip-percent N --replay-percent M
//!   [--marker TEXT]`: a tampering UDP forwarder in front of the relay
//!   (`rally_e2e::lab::hostile`); prints `hostile-ready`, answers `stats` with its counters.
//!
//! stdout carries only the protocol's JSON lines; logs go to stderr (filter: `RALLY_LOG`, default
//! `info,rally_client=debug`), which the lab keeps in a file.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rally_client::net::{ConnectionState, Net, NetConfig, NetEvent, RelayPolicy, SendPolicy};
use rally_e2e::lab::delay::{DelayArgs, Forwarder};
use rally_e2e::lab::node::protocol::{
    NodeEvent, PeerCommand, Policy, Received, StatsReport, read_test_packet, test_packet,
};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use uuid::Uuid;

/// How long a `send` command waits, in all, for room in a full send buffer.
const SEND_PATIENCE: Duration = Duration::from_secs(30);

/// How often a waiting command looks again without a notification (a bound, not a sync).
const POLL: Duration = Duration::from_millis(50);

#[derive(Parser)]
#[command(about = "A node of Rally's NAT lab, driven over stdin/stdout")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Runs rallyd with these flags (after `--`).
    Server {
        /// rallyd's flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rallyd: Vec<String>,
    },
    /// Runs an SDK client.
    Peer {
        /// rallyd's URL.
        #[arg(long)]
        server: String,
        /// Display name (also part of the device id).
        #[arg(long)]
        name: String,
        /// Local address of the QUIC endpoint.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: SocketAddr,
        /// When connections may go through the relay.
        #[arg(long, value_enum, default_value = "fallback")]
        relay_policy: Relay,
        /// PEM file of the CA that issued rallyd's certificate (for an `https://` server).
        #[arg(long)]
        ca_file: Option<std::path::PathBuf>,
    },
    /// Runs a plain UDP socket.
    Udp {
        /// Local address.
        #[arg(long)]
        bind: SocketAddr,
    },
    /// Forwards frames between two interfaces, each after its own delay.
    Delay(DelayArgs),
    /// Forwards to the relay and back, tampering with what it carries.
    Hostile(rally_e2e::lab::hostile::HostileArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("RALLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rally_client=debug"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter)
        .init();
    let result = match cli.mode {
        Mode::Server { rallyd } => server(rallyd).await,
        Mode::Peer {
            server,
            name,
            bind,
            relay_policy,
            ca_file,
        } => peer(&server, &name, bind, relay_policy.into(), ca_file).await,
        Mode::Udp { bind } => udp(bind).await,
        Mode::Delay(args) => delay(args).await,
        Mode::Hostile(args) => rally_e2e::lab::hostile::run(args, stdin_lines())
            .await
            .map_err(Into::into),
    };
    match result {
        Ok(()) => {
            emit(&NodeEvent::Bye);
            ExitCode::SUCCESS
        }
        Err(error) => {
            let message = format!("{error:#}");
            eprintln!("rally-lab-node: {message}");
            emit(&NodeEvent::Error { message });
            ExitCode::FAILURE
        }
    }
}

/// Writes one event line to stdout, flushed (a closed stdout is ignored: the test is gone).
fn emit(event: &NodeEvent) {
    let Ok(line) = serde_json::to_string(event) else {
        return;
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn error(message: impl Into<String>) {
    emit(&NodeEvent::Error {
        message: message.into(),
    });
}

/// stdin's lines; the channel closes at end of input.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn lowercase(value: impl std::fmt::Debug) -> String {
    format!("{value:?}").to_lowercase()
}

async fn server(flags: Vec<String>) -> anyhow::Result<()> {
    let config = rallyd::Config::try_parse_from(std::iter::once("rallyd".to_owned()).chain(flags))?;
    let running = rallyd::start(config).await?;
    emit(&NodeEvent::Listening {
        grpc: running.grpc_addr(),
        relay: running.relay_addr(),
    });
    let mut lines = stdin_lines();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = async {
            while let Some(line) = lines.recv().await {
                if line.trim() == "quit" {
                    break;
                }
            }
        } => {}
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    running.shutdown_token().cancel();
    running.wait().await?;
    Ok(())
}

async fn udp(bind: SocketAddr) -> anyhow::Result<()> {
    let socket = Arc::new(tokio::net::UdpSocket::bind(bind).await?);
    emit(&NodeEvent::Ready {
        user: None,
        local: socket.local_addr()?,
        nat: None,
    });
    let receiver = socket.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            match receiver.recv_from(&mut buf).await {
                Ok((n, from)) => emit(&NodeEvent::Recv {
                    from,
                    text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                }),
                Err(e) => error(format!("recv: {e}")),
            }
        }
    });
    let mut lines = stdin_lines();
    while let Some(line) = lines.recv().await {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next()) {
            (Some("send"), Some(to)) => {
                let text = words.next().unwrap_or_default();
                match to.parse::<SocketAddr>() {
                    Ok(to) => match socket.send_to(text.as_bytes(), to).await {
                        Ok(_) => emit(&NodeEvent::DatagramSent {
                            to,
                            text: text.to_owned(),
                        }),
                        Err(e) => error(format!("send to {to}: {e}")),
                    },
                    Err(e) => error(format!("{to:?} is not an address: {e}")),
                }
            }
            (Some("quit"), None) => break,
            (Some(""), None) => {}
            _ => error(format!(
                "unknown command {line:?} (send IP:PORT text, quit)"
            )),
        }
    }
    Ok(())
}

async fn delay(args: DelayArgs) -> anyhow::Result<()> {
    let forwarder = Forwarder::open(&args.a, &args.b)?;
    let stats = forwarder.stats();
    let print = |value: serde_json::Value| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    };
    print(serde_json::json!({ "event": "ready" }));
    let mut lines = stdin_lines();
    tokio::select! {
        result = forwarder.run(args.settings()) => result?,
        () = async {
            while let Some(line) = lines.recv().await {
                match line.trim() {
                    "stats" => print(serde_json::to_value(stats.report()).unwrap_or_default()),
                    "quit" => break,
                    "" => {}
                    other => error(format!("unknown command {other:?} (stats, quit)")),
                }
            }
        } => {}
    }
    eprintln!("delay: {}", serde_json::to_string(&stats.report())?);
    Ok(())
}

/// `--relay-policy`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Relay {
    Never,
    Fallback,
    Always,
}

impl From<Relay> for RelayPolicy {
    fn from(relay: Relay) -> Self {
        match relay {
            Relay::Never => RelayPolicy::Never,
            Relay::Fallback => RelayPolicy::Fallback,
            Relay::Always => RelayPolicy::Always,
        }
    }
}

async fn peer(
    server: &str,
    name: &str,
    bind: SocketAddr,
    relay_policy: RelayPolicy,
    ca_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let config = match ca_file {
        Some(path) => {
            rally_client::RallyConfig::with_trust(rally_client::ServerTrust::ca_file(path)?)
        }
        None => rally_client::RallyConfig::default(),
    };
    let rally = rally_client::Rally::connect_with(server, &config).await?;
    let device = format!("rally-lab-{name}-{}", Uuid::new_v4().simple());
    let session = rally.device_login(&device, name).await?;
    let mut config = NetConfig::default();
    config.transport.bind = bind;
    config.relay_policy = relay_policy;
    let net = Net::start(&session, config).await?;
    emit(&NodeEvent::Ready {
        user: Some(session.user_id()),
        local: net.local_addr(),
        nat: Some(lowercase(net.nat_report().nat_type)),
    });
    let changed = Arc::new(Notify::new());
    tokio::spawn(report_events(net.clone(), changed.clone()));
    let mut node = PeerNode {
        net: net.clone(),
        started: Instant::now(),
        changed,
        connect_at: HashMap::new(),
        next_sent: HashMap::new(),
        next_expected: HashMap::new(),
    };
    let mut lines = stdin_lines();
    while let Some(line) = lines.recv().await {
        if line.trim().is_empty() {
            continue;
        }
        match line.parse::<PeerCommand>() {
            Ok(PeerCommand::Quit) => break,
            Ok(command) => node.run(command).await,
            Err(message) => error(message),
        }
    }
    net.shutdown();
    drop(session);
    Ok(())
}

/// Prints every `Net` notification and wakes the commands that wait on connection states.
async fn report_events(net: Net, changed: Arc<Notify>) {
    while let Some(event) = net.next_event().await {
        let line = match &event {
            NetEvent::ConnectionStateChanged { user, state } => NodeEvent::State {
                user: *user,
                state: lowercase(state),
            },
            NetEvent::PeerConnectRequest { user } => NodeEvent::ConnectRequest { user: *user },
            other => NodeEvent::Net {
                debug: format!("{other:?}"),
            },
        };
        emit(&line);
        changed.notify_waiters();
    }
}

/// The peer's state between commands.
struct PeerNode {
    net: Net,
    started: Instant,
    changed: Arc<Notify>,
    /// When the last `connect` (or `accept`) command for each peer came.
    connect_at: HashMap<Uuid, Instant>,
    /// The next sequence number to send, per peer and policy.
    next_sent: HashMap<(Uuid, Policy), u64>,
    /// The next sequence number expected, per peer and policy.
    next_expected: HashMap<(Uuid, Policy), u64>,
}

impl PeerNode {
    async fn run(&mut self, command: PeerCommand) {
        let result = match command {
            PeerCommand::Connect(user) => {
                self.connect_at.insert(user, Instant::now());
                self.net.connect(user).await
            }
            PeerCommand::Accept(user) => {
                self.connect_at.entry(user).or_insert_with(Instant::now);
                self.net.accept(user).await
            }
            PeerCommand::Close(user) => self.net.close(user).await,
            PeerCommand::WaitConnected { user, timeout } => {
                self.wait_connected(user, timeout).await;
                Ok(())
            }
            PeerCommand::Send {
                user,
                policy,
                count,
                size,
            } => {
                self.send(user, policy, count, size).await;
                Ok(())
            }
            PeerCommand::Expect {
                user,
                policy,
                count,
                timeout,
            } => {
                self.expect(user, policy, count, timeout).await;
                Ok(())
            }
            PeerCommand::Stats(user) => {
                self.stats(user);
                Ok(())
            }
            PeerCommand::Quit => Ok(()),
        };
        if let Err(e) = result {
            error(e.to_string());
        }
    }

    fn since_connect(&self, user: Uuid) -> u64 {
        millis(
            self.connect_at
                .get(&user)
                .unwrap_or(&self.started)
                .elapsed(),
        )
    }

    async fn wait_connected(&self, user: Uuid, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            // Registered before looking, so a change in between still wakes us.
            let changed = self.changed.notified();
            let stats = self.net.stats(user);
            let state = stats.as_ref().map(|s| s.state);
            let failed = |why: &str| NodeEvent::Failed {
                user,
                state: why.to_owned(),
                current: state_name(state),
                ms: self.since_connect(user),
            };
            match state {
                Some(ConnectionState::Connected) => {
                    let path = stats.and_then(|s| s.path).map(lowercase);
                    emit(&NodeEvent::Connected {
                        user,
                        path: path.unwrap_or_else(|| "unknown".to_owned()),
                        ms: self.since_connect(user),
                    });
                    return;
                }
                Some(ConnectionState::Timeout) => return emit(&failed("timeout")),
                Some(ConnectionState::Closed) => return emit(&failed("closed")),
                _ if Instant::now() >= deadline => return emit(&failed("timeout")),
                _ => {}
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep(POLL) => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn send(&mut self, user: Uuid, policy: Policy, count: u64, size: usize) {
        let started = Instant::now();
        let deadline = started + SEND_PATIENCE;
        let next = self.next_sent.entry((user, policy)).or_insert(0);
        let first_seq = *next;
        let send_policy = match policy {
            Policy::Reliable => SendPolicy::Reliable,
            Policy::Unreliable => SendPolicy::Unreliable,
        };
        for _ in 0..count {
            let data = bytes::Bytes::from(test_packet(*next, size));
            loop {
                match self.net.send_packet(user, data.clone(), send_policy) {
                    Ok(()) => break,
                    Err(rally_client::Error::SendBufferFull) if Instant::now() < deadline => {
                        // Back-pressure: the buffer drains as QUIC sends; look again shortly.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err(e) => {
                        return error(format!(
                            "send {policy} #{} to {user} (after {} sent): {e}",
                            *next,
                            *next - first_seq
                        ));
                    }
                }
            }
            *next += 1;
        }
        emit(&NodeEvent::Sent {
            user,
            policy,
            count,
            first_seq,
            ms: millis(started.elapsed()),
        });
    }

    async fn expect(&mut self, user: Uuid, policy: Policy, count: u64, timeout: Duration) {
        let started = Instant::now();
        let deadline = started + timeout;
        let next = self.next_expected.entry((user, policy)).or_insert(0);
        let mut report = Received {
            user,
            policy,
            count: 0,
            expected: count,
            complete: false,
            in_order: true,
            intact: true,
            duplicates: 0,
            other_policy: 0,
            other_senders: 0,
            first_packet_ms: None,
            ms: 0,
        };
        let mut seen = std::collections::HashSet::new();
        while report.count < count {
            let packet = match tokio::time::timeout_at(deadline, self.net.recv()).await {
                Ok(Some(packet)) => packet,
                Ok(None) | Err(_) => break,
            };
            if packet.sender != user {
                report.other_senders += 1;
                continue;
            }
            let this = match packet.policy {
                SendPolicy::Unreliable => Policy::Unreliable,
                SendPolicy::Reliable | SendPolicy::ReliableLane(_) => Policy::Reliable,
            };
            if this != policy {
                report.other_policy += 1;
                continue;
            }
            report
                .first_packet_ms
                .get_or_insert(millis(started.elapsed()));
            report.count += 1;
            let Some((seq, intact)) = read_test_packet(&packet.data) else {
                report.intact = false;
                continue;
            };
            report.intact &= intact;
            if !seen.insert(seq) {
                report.duplicates += 1;
            }
            let in_order = match policy {
                Policy::Reliable => seq == *next,
                Policy::Unreliable => seq >= *next,
            };
            report.in_order &= in_order;
            *next = (*next).max(seq + 1);
        }
        report.complete = report.count >= count;
        report.ms = millis(started.elapsed());
        emit(&NodeEvent::Received(report));
    }

    fn stats(&self, user: Uuid) {
        let Some(s) = self.net.stats(user) else {
            return emit(&NodeEvent::Stats(StatsReport {
                user,
                state: "none".to_owned(),
                ..StatsReport::default()
            }));
        };
        emit(&NodeEvent::Stats(StatsReport {
            user,
            state: lowercase(s.state),
            path: s.path.map(lowercase),
            rtt_ms: s.rtt.map(|rtt| rtt.as_secs_f64() * 1000.0),
            reliable_sent: s.reliable_sent,
            reliable_received: s.reliable_received,
            unreliable_sent: s.unreliable_sent,
            unreliable_received: s.unreliable_received,
            unreliable_lost: s.unreliable_lost,
            unreliable_dropped_not_connected: s.unreliable_dropped_not_connected,
            unreliable_dropped_queue_full: s.unreliable_dropped_queue_full,
            unreliable_dropped_fake: s.unreliable_dropped_fake,
            unreliable_dropped_inbox_full: s.unreliable_dropped_inbox_full,
            malformed_received: s.malformed_received,
            remote: s.remote_addr,
        }));
    }
}

fn state_name(state: Option<ConnectionState>) -> String {
    state.map_or_else(|| "none".to_owned(), lowercase)
}

//! Drivers for `rally-lab-node` processes in lab namespaces: a rallyd ([`ServerNode`]), an SDK
//! client ([`PeerNode`]) and a plain UDP socket ([`UdpNode`]). Each method writes one command of
//! the [`protocol`] and waits, with a deadline, for its answer; a missing answer or an `error`
//! answer panics with the node's output (these are test helpers).
//!
//! The binary's path comes from the test (`env!("CARGO_BIN_EXE_rally-lab-node")`), which only
//! integration tests know.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use uuid::Uuid;

use super::{ExpectFailed, Host, Lab, Namespace, NamespacedProcess};

pub mod protocol;

use protocol::{NodeEvent, PeerCommand, Policy, Received, StatsReport};

/// rallyd's gRPC port on the lab's internet ([`ServerNode::start_default`]).
pub const GRPC_PORT: u16 = 7350;

/// The relay's first port on the lab's internet ([`ServerNode::start_default`]).
pub const RELAY_PORT: u16 = 3478;

/// How long a node may take to start (rallyd: open its database; peer: sign in and attach).
const START: Duration = Duration::from_secs(20);

/// How long a command that does not wait on the network may take to answer, and how much longer
/// than its own timeout a waiting command may take.
const ANSWER: Duration = Duration::from_secs(10);

/// Reads events until `wanted` (or an `error`) comes.
fn expect_event(
    process: &mut NamespacedProcess,
    timeout: Duration,
    mut wanted: impl FnMut(&NodeEvent) -> bool,
) -> Result<NodeEvent, ExpectFailed> {
    process.expect_map(
        |line| {
            serde_json::from_str::<NodeEvent>(line)
                .ok()
                .filter(|e| wanted(e) || matches!(e, NodeEvent::Error { .. }))
        },
        timeout,
    )
}

/// The answer, or a panic showing what the node printed.
#[track_caller]
fn answer(
    process: &mut NamespacedProcess,
    what: &str,
    timeout: Duration,
    wanted: impl FnMut(&NodeEvent) -> bool,
) -> NodeEvent {
    match expect_event(process, timeout, wanted) {
        Ok(NodeEvent::Error { message }) => panic!(
            "{} answered {what} with an error: {message}\n{}",
            process.label(),
            process.stderr()
        ),
        Ok(event) => event,
        Err(failed) => panic!("{what}: {failed}"),
    }
}

#[track_caller]
fn command(process: &mut NamespacedProcess, line: &str) {
    if let Err(error) = process.send_line(line) {
        panic!(
            "{} does not take `{line}`: {error}\n{}",
            process.label(),
            process.stderr()
        );
    }
}

/// `rally-lab-node server`: a rallyd in the lab (usually in [`Lab::internet`]).
#[derive(Debug)]
pub struct ServerNode {
    process: NamespacedProcess,
    grpc: SocketAddr,
    relay: Option<SocketAddr>,
    /// Whether it serves gRPC over TLS.
    tls: bool,
}

impl ServerNode {
    /// Starts rallyd in `ns` with gRPC on `grpc`, the relay on `relay`, SQLite in the lab's
    /// directory, and `flags` (more rallyd flags); waits until it listens.
    #[track_caller]
    pub fn start(
        lab: &Lab,
        ns: &Namespace,
        bin: &Path,
        grpc: SocketAddr,
        relay: SocketAddr,
        flags: &[&str],
    ) -> ServerNode {
        let data = lab
            .dir()
            .join(format!("rallyd-{}-{}", grpc.ip(), grpc.port()));
        if let Err(error) = std::fs::create_dir_all(&data) {
            panic!("cannot make rallyd's data directory {data:?}: {error}");
        }
        let (grpc_text, relay_text) = (grpc.to_string(), relay.to_string());
        let data_text = data.display().to_string();
        let mut args = vec![
            "server",
            "--",
            "--listen",
            &grpc_text,
            "--relay-listen",
            &relay_text,
            "--data-dir",
            &data_text,
        ];
        args.extend_from_slice(flags);
        let tls = flags.contains(&"--tls-cert-file");
        if !tls {
            // The lab's internet is not loopback: plaintext must be asked for.
            args.push("--allow-plaintext");
        }
        let mut process = match ns.spawn("rallyd", bin, &args) {
            Ok(process) => process,
            Err(error) => panic!("cannot start {bin:?} server: {error}"),
        };
        match answer(&mut process, "start-up", START, |e| {
            matches!(e, NodeEvent::Listening { .. })
        }) {
            NodeEvent::Listening { grpc, relay } => ServerNode {
                process,
                grpc,
                relay,
                tls,
            },
            other => panic!("rallyd started with {other:?}"),
        }
    }

    /// As [`ServerNode::start_default`], serving gRPC over TLS with the certificate and key in
    /// `tls_flags` (`--tls-cert-file`, `--tls-key-file`).
    #[track_caller]
    pub fn start_default_tls(lab: &Lab, bin: &Path, tls_flags: &[&str]) -> ServerNode {
        let [first, second, _] = lab.server_ips();
        let more = format!("{second}:{RELAY_PORT},{first}:{}", RELAY_PORT + 1);
        let mut flags = vec!["--relay-listen", &more];
        flags.extend_from_slice(tls_flags);
        ServerNode::start(
            lab,
            lab.internet(),
            bin,
            SocketAddr::from((first, GRPC_PORT)),
            SocketAddr::from((first, RELAY_PORT)),
            &flags,
        )
    }

    /// rallyd on the lab's internet as most lab tests want it: gRPC on the first server address,
    /// port [`GRPC_PORT`]; the relay on three addresses (the first and second server addresses on
    /// [`RELAY_PORT`], and the first on the port after it), so clients can measure their NAT's
    /// mapping and filtering.
    #[track_caller]
    pub fn start_default(lab: &Lab, bin: &Path) -> ServerNode {
        let [first, second, _] = lab.server_ips();
        let more = format!("{second}:{RELAY_PORT},{first}:{}", RELAY_PORT + 1);
        ServerNode::start(
            lab,
            lab.internet(),
            bin,
            SocketAddr::from((first, GRPC_PORT)),
            SocketAddr::from((first, RELAY_PORT)),
            &["--relay-listen", &more],
        )
    }

    /// The URL clients connect to (`https://` when it serves TLS).
    pub fn url(&self) -> String {
        match self.tls {
            true => format!("https://{}", self.grpc),
            false => format!("http://{}", self.grpc),
        }
    }

    /// The gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// The relay's UDP address, when it runs one.
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        self.relay
    }

    /// The process, to read its output.
    pub fn process(&mut self) -> &mut NamespacedProcess {
        &mut self.process
    }

    /// Stops rallyd gracefully (end of its input) and waits for it to exit.
    pub fn stop(self) -> Result<ExitStatus, ExpectFailed> {
        self.process.finish(Duration::from_secs(20))
    }

    /// Kills rallyd hard (SIGKILL, as in a crash: no graceful shutdown, nothing flushed or said
    /// to clients) and reaps it. Starting a server again with the same gRPC address reuses its
    /// data directory (see [`ServerNode::start`]).
    pub fn kill(self) -> Result<ExitStatus, ExpectFailed> {
        self.process.kill()
    }
}

/// An established connection, as `wait-connected` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `direct`, `relayed`, ...
    pub path: String,
    /// Milliseconds from the `connect` command.
    pub ms: u64,
}

/// A connection that did not come up, as `wait-connected` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectFailed {
    /// `timeout` (the SDK's or the command's) or `closed`.
    pub state: String,
    /// The connection's state when the command gave up.
    pub current: String,
    /// Milliseconds from the `connect` command.
    pub ms: u64,
}

/// `rally-lab-node peer`: a signed-in SDK client with `Net` started, on a lab host.
#[derive(Debug)]
pub struct PeerNode {
    process: NamespacedProcess,
    name: String,
    user: Uuid,
    local: SocketAddr,
    nat: String,
}

impl PeerNode {
    /// Starts a peer on `host`, signed in to `server` as `name`, bound to every interface.
    #[track_caller]
    pub fn start(host: &Host, bin: &Path, server: &ServerNode, name: &str) -> PeerNode {
        Self::start_with(host, bin, &server.url(), name, &[])
    }

    /// As [`PeerNode::start`], with a server URL and more `peer` flags (`--bind IP:PORT`).
    #[track_caller]
    pub fn start_with(
        host: &Host,
        bin: &Path,
        server_url: &str,
        name: &str,
        flags: &[&str],
    ) -> PeerNode {
        let mut args = vec!["peer", "--server", server_url, "--name", name];
        args.extend_from_slice(flags);
        let mut process = match host.spawn(name, bin, &args) {
            Ok(process) => process,
            Err(error) => panic!("cannot start {bin:?} peer: {error}"),
        };
        match answer(&mut process, "start-up", START, |e| {
            matches!(e, NodeEvent::Ready { .. })
        }) {
            NodeEvent::Ready {
                user: Some(user),
                local,
                nat,
            } => PeerNode {
                process,
                name: name.to_owned(),
                user,
                local,
                nat: nat.unwrap_or_default(),
            },
            other => panic!("peer {name} started with {other:?}"),
        }
    }

    /// The NAT type it measured at start (`open`, `moderate`, `strict`, `unknown`).
    pub fn nat(&self) -> &str {
        &self.nat
    }

    /// Its user id.
    pub fn user(&self) -> Uuid {
        self.user
    }

    /// The local address of its QUIC endpoint.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Its display name (also its process label).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process, to read its output.
    pub fn process(&mut self) -> &mut NamespacedProcess {
        &mut self.process
    }

    /// Sends a command that has no answer (`connect`, `accept`, `close`).
    #[track_caller]
    pub fn command(&mut self, line: &PeerCommand) {
        command(&mut self.process, &line.to_string());
    }

    /// `Net::connect(peer)`.
    #[track_caller]
    pub fn connect(&mut self, peer: Uuid) {
        self.command(&PeerCommand::Connect(peer));
    }

    /// Waits up to `timeout` for the connection to `peer`: `Ok` with its path, or `Err` with how
    /// it failed.
    #[track_caller]
    pub fn wait_connected(
        &mut self,
        peer: Uuid,
        timeout: Duration,
    ) -> Result<Connection, ConnectFailed> {
        self.command(&PeerCommand::WaitConnected {
            user: peer,
            timeout,
        });
        let event = answer(
            &mut self.process,
            "wait-connected",
            timeout + ANSWER,
            |e| matches!(e, NodeEvent::Connected { user, .. } | NodeEvent::Failed { user, .. } if *user == peer),
        );
        match event {
            NodeEvent::Connected { path, ms, .. } => Ok(Connection { path, ms }),
            NodeEvent::Failed {
                state, current, ms, ..
            } => Err(ConnectFailed { state, current, ms }),
            other => panic!("wait-connected answered {other:?}"),
        }
    }

    /// Sends `count` numbered packets of `size` bytes to `peer`; returns how long it took (ms).
    #[track_caller]
    pub fn send(&mut self, peer: Uuid, policy: Policy, count: u64, size: usize) -> u64 {
        self.command(&PeerCommand::Send {
            user: peer,
            policy,
            count,
            size,
        });
        match answer(
            &mut self.process,
            "send",
            START + ANSWER,
            |e| matches!(e, NodeEvent::Sent { user, .. } if *user == peer),
        ) {
            NodeEvent::Sent { ms, .. } => ms,
            other => panic!("send answered {other:?}"),
        }
    }

    /// Waits up to `timeout` for `count` numbered packets from `peer` and reports what came.
    #[track_caller]
    pub fn expect_packets(
        &mut self,
        peer: Uuid,
        policy: Policy,
        count: u64,
        timeout: Duration,
    ) -> Received {
        self.command(&PeerCommand::Expect {
            user: peer,
            policy,
            count,
            timeout,
        });
        match answer(
            &mut self.process,
            "expect",
            timeout + ANSWER,
            |e| matches!(e, NodeEvent::Received(r) if r.user == peer),
        ) {
            NodeEvent::Received(received) => received,
            other => panic!("expect answered {other:?}"),
        }
    }

    /// The connection's figures.
    #[track_caller]
    pub fn stats(&mut self, peer: Uuid) -> StatsReport {
        self.command(&PeerCommand::Stats(peer));
        match answer(
            &mut self.process,
            "stats",
            ANSWER,
            |e| matches!(e, NodeEvent::Stats(s) if s.user == peer),
        ) {
            NodeEvent::Stats(stats) => stats,
            other => panic!("stats answered {other:?}"),
        }
    }

    /// Shuts the client down and waits for it to exit.
    pub fn quit(mut self) -> Result<ExitStatus, ExpectFailed> {
        let _ = self.process.send_line(&PeerCommand::Quit.to_string());
        self.process.finish(ANSWER)
    }
}

/// `rally-lab-node udp`: one plain UDP socket, for checking the lab itself.
#[derive(Debug)]
pub struct UdpNode {
    process: NamespacedProcess,
    local: SocketAddr,
}

impl UdpNode {
    /// Binds a socket to `bind` in `ns`.
    #[track_caller]
    pub fn start(ns: &Namespace, bin: &Path, bind: SocketAddr) -> UdpNode {
        let bind_text = bind.to_string();
        let label = format!("udp-{bind}");
        let mut process = match ns.spawn(&label, bin, ["udp", "--bind", &bind_text]) {
            Ok(process) => process,
            Err(error) => panic!("cannot start {bin:?} udp: {error}"),
        };
        match answer(&mut process, "start-up", START, |e| {
            matches!(e, NodeEvent::Ready { .. })
        }) {
            NodeEvent::Ready { local, .. } => UdpNode { process, local },
            other => panic!("udp node started with {other:?}"),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends `text` (no newline) to `to` and waits until it left the socket.
    #[track_caller]
    pub fn send(&mut self, to: SocketAddr, text: &str) {
        command(&mut self.process, &format!("send {to} {text}"));
        answer(&mut self.process, "send", ANSWER, |e| {
            matches!(e, NodeEvent::DatagramSent { .. })
        });
    }

    /// The next datagram: its source and text.
    pub fn recv(&mut self, timeout: Duration) -> Result<(SocketAddr, String), ExpectFailed> {
        self.process.expect_map(
            |line| match serde_json::from_str(line) {
                Ok(NodeEvent::Recv { from, text }) => Some((from, text)),
                _ => None,
            },
            timeout,
        )
    }

    /// The process, to read its output.
    pub fn process(&mut self) -> &mut NamespacedProcess {
        &mut self.process
    }
}

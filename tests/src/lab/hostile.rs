//! A hostile relay for lab tests: a UDP forwarder put in front of the real relay (rallyd announces
//! its address as the relay's), which tampers with what it carries and looks for plaintext in it.
//! It stands for a compromised relay, or anyone on the relay's path: the SDK must notice every
//! change it makes (QUIC's AEAD drops a tampered packet; QUIC's packet numbers drop a replayed
//! one) and it must never see a game's bytes in the clear.
//!
//! It runs as `rally-lab-node hostile` (see [`HostileArgs`] for its flags), usually in the lab's
//! internet namespace. Every client source address gets its own upstream socket, so the relay
//! sees one source per client, as through a NAT; whatever comes back to that socket (from any
//! address) goes back to the client from the listening address. In both directions it:
//! - flips one random bit in the payload of `--flip-percent` % of relay `Data` datagrams, after
//!   their 20-byte header, so the relay still forwards them to the other side;
//! - sends `--replay-percent` % of all datagrams twice;
//! - counts datagrams, and those in which the bytes of `--marker` appear.
//!
//! It prints [`HostileEvent`]s, one JSON object per line: `hostile-ready` once bound, and
//! `hostile-stats` (its counters) for each `stats` line on its input; it runs until its input
//! ends or says `quit`. [`HostileNode`] drives it from a test.
//!
//! Two parts, as elsewhere in the lab: [`Tamper`] decides what to do with each datagram (no IO,
//! seeded randomness, unit-tested), and [`run`] is the thin tokio layer around it.
//!
//! Not for: loss, delay or reordering (iptables and the `delay` forwarder do those).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rally_relay::wire::{self, Message};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{ExpectFailed, Namespace, NamespacedProcess};

/// The largest datagram read.
const MAX_DATAGRAM: usize = 65_535;

/// How long the forwarder may take to start, or to answer `stats`.
const ANSWER: Duration = Duration::from_secs(10);

/// `rally-lab-node hostile`'s flags; also what [`HostileNode::start`] starts it with.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct HostileArgs {
    /// Where clients send (the address rallyd announces as its relay).
    #[arg(long)]
    pub listen: SocketAddr,
    /// The real relay.
    #[arg(long)]
    pub upstream: SocketAddr,
    /// Share of relay `Data` datagrams (each direction) with one payload bit flipped, in percent.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub flip_percent: u8,
    /// Share of datagrams (each direction) sent twice, in percent.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub replay_percent: u8,
    /// Text whose bytes are looked for in every datagram forwarded.
    #[arg(long)]
    pub marker: Option<String>,
    /// Seed of the random draws (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl HostileArgs {
    /// A forwarder from `listen` to `upstream` that changes nothing (set the other fields).
    pub fn new(listen: SocketAddr, upstream: SocketAddr) -> Self {
        Self {
            listen,
            upstream,
            flip_percent: 0,
            replay_percent: 0,
            marker: None,
            seed: None,
        }
    }

    /// The command line (after `hostile`) that gives these flags.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--listen".to_owned(),
            self.listen.to_string(),
            "--upstream".to_owned(),
            self.upstream.to_string(),
            "--flip-percent".to_owned(),
            self.flip_percent.to_string(),
            "--replay-percent".to_owned(),
            self.replay_percent.to_string(),
        ];
        if let Some(marker) = &self.marker {
            args.extend(["--marker".to_owned(), marker.clone()]);
        }
        if let Some(seed) = self.seed {
            args.extend(["--seed".to_owned(), seed.to_string()]);
        }
        args
    }
}

/// What the forwarder did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostileStats {
    /// Client source addresses seen (each has its own upstream socket).
    pub clients: u64,
    /// Datagrams from clients.
    pub from_clients: u64,
    /// Datagrams from the relay side (to clients).
    pub from_relay: u64,
    /// Of all those, relay `Data` datagrams with a payload (the ones bits may be flipped in).
    pub data: u64,
    /// Datagrams forwarded with a bit flipped.
    pub flipped: u64,
    /// Datagrams forwarded twice.
    pub replayed: u64,
    /// Datagrams in which the marker's bytes appeared.
    pub marker_seen: u64,
    /// Sends that failed.
    pub send_errors: u64,
}

/// A line of `rally-lab-node hostile`'s stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum HostileEvent {
    /// Bound and forwarding.
    HostileReady {
        /// The address clients send to.
        listen: SocketAddr,
        /// The real relay.
        upstream: SocketAddr,
    },
    /// The counters (answer to `stats`).
    HostileStats(HostileStats),
    /// A command was not understood; the forwarder goes on.
    HostileError {
        /// What went wrong.
        message: String,
    },
}

/// What to do with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// It is a relay `Data` datagram with a payload.
    pub data: bool,
    /// The bit to flip (an index into the datagram's bits, never in the `Data` header).
    pub flip: Option<usize>,
    /// How many times to send it (1, or 2 for a replay).
    pub copies: usize,
}

/// The forwarder's decisions, with seeded randomness and no IO.
#[derive(Debug, Clone)]
pub struct Tamper {
    flip_percent: u8,
    replay_percent: u8,
    rng: fastrand::Rng,
}

impl Tamper {
    /// Flips a bit in `flip_percent` % of `Data` datagrams and sends `replay_percent` % of all
    /// datagrams twice (both capped at 100).
    pub fn new(flip_percent: u8, replay_percent: u8, seed: u64) -> Self {
        Self {
            flip_percent: flip_percent.min(100),
            replay_percent: replay_percent.min(100),
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// What to do with `datagram`.
    pub fn judge(&mut self, datagram: &[u8]) -> Verdict {
        let data = is_data_with_payload(datagram);
        let flip = (data && self.roll(self.flip_percent)).then(|| {
            let payload_bits = (datagram.len() - wire::DATA_OVERHEAD) * 8;
            wire::DATA_OVERHEAD * 8 + self.rng.usize(..payload_bits)
        });
        let copies = if self.roll(self.replay_percent) { 2 } else { 1 };
        Verdict { data, flip, copies }
    }

    fn roll(&mut self, percent: u8) -> bool {
        percent > 0 && self.rng.u8(..100) < percent
    }
}

/// Whether `datagram` is a relay `Data` datagram with at least one payload byte.
fn is_data_with_payload(datagram: &[u8]) -> bool {
    matches!(wire::decode(datagram), Ok(Message::Data { payload, .. }) if !payload.is_empty())
}

/// Flips bit `bit` of `datagram` (bit 0 is the lowest bit of the first byte).
pub fn flip_bit(datagram: &mut [u8], bit: usize) {
    if let Some(byte) = datagram.get_mut(bit / 8) {
        *byte ^= 1 << (bit % 8);
    }
}

/// Whether `needle`'s bytes appear in `haystack` (an empty needle never does).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The forwarder's counters, shared by its tasks.
#[derive(Debug, Default)]
struct Counters {
    clients: AtomicU64,
    from_clients: AtomicU64,
    from_relay: AtomicU64,
    data: AtomicU64,
    flipped: AtomicU64,
    replayed: AtomicU64,
    marker_seen: AtomicU64,
    send_errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> HostileStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        HostileStats {
            clients: get(&self.clients),
            from_clients: get(&self.from_clients),
            from_relay: get(&self.from_relay),
            data: get(&self.data),
            flipped: get(&self.flipped),
            replayed: get(&self.replayed),
            marker_seen: get(&self.marker_seen),
            send_errors: get(&self.send_errors),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the forwarding tasks share.
#[derive(Debug)]
struct Hostile {
    tamper: Mutex<Tamper>,
    marker: Vec<u8>,
    counters: Counters,
}

impl Hostile {
    /// Counts, tampers with and sends one datagram to `to` through `socket`.
    async fn forward(&self, datagram: &[u8], socket: &UdpSocket, to: SocketAddr) {
        let counters = &self.counters;
        if contains(datagram, &self.marker) {
            bump(&counters.marker_seen);
        }
        let verdict = self
            .tamper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .judge(datagram);
        if verdict.data {
            bump(&counters.data);
        }
        let mut tampered;
        let mut bytes = datagram;
        if let Some(bit) = verdict.flip {
            tampered = datagram.to_vec();
            flip_bit(&mut tampered, bit);
            bytes = &tampered;
            bump(&counters.flipped);
        }
        if verdict.copies > 1 {
            bump(&counters.replayed);
        }
        for _ in 0..verdict.copies {
            if socket.send_to(bytes, to).await.is_err() {
                bump(&counters.send_errors);
            }
        }
    }
}

/// Runs the forwarder until `commands` ends or says `quit`; answers `stats` with the counters.
/// Prints its events to stdout.
pub async fn run(
    args: HostileArgs,
    mut commands: mpsc::UnboundedReceiver<String>,
) -> io::Result<()> {
    let listen = Arc::new(UdpSocket::bind(args.listen).await?);
    let hostile = Arc::new(Hostile {
        tamper: Mutex::new(Tamper::new(
            args.flip_percent,
            args.replay_percent,
            args.seed.unwrap_or_else(|| fastrand::u64(..)),
        )),
        marker: args.marker.clone().unwrap_or_default().into_bytes(),
        counters: Counters::default(),
    });
    emit(&HostileEvent::HostileReady {
        listen: listen.local_addr()?,
        upstream: args.upstream,
    });
    let forwarding = tokio::spawn(from_clients(listen, args.upstream, hostile.clone()));
    while let Some(line) = commands.recv().await {
        match line.trim() {
            "stats" => emit(&HostileEvent::HostileStats(hostile.counters.snapshot())),
            "quit" => break,
            "" => {}
            other => emit(&HostileEvent::HostileError {
                message: format!("unknown command {other:?} (stats, quit)"),
            }),
        }
    }
    forwarding.abort();
    eprintln!(
        "hostile: {}",
        serde_json::to_string(&hostile.counters.snapshot()).unwrap_or_default()
    );
    Ok(())
}

/// Reads what clients send and forwards it upstream, each client from its own socket (whose
/// task forwards the answers back); those tasks end with this one.
async fn from_clients(listen: Arc<UdpSocket>, upstream: SocketAddr, hostile: Arc<Hostile>) {
    let mut sockets: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut back = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let local_ip = match listen.local_addr() {
        Ok(address) => address.ip(),
        Err(error) => return eprintln!("hostile: no local address: {error}"),
    };
    loop {
        let (len, client) = match listen.recv_from(&mut buf).await {
            Ok(received) => received,
            // ICMP errors surface on the next receive: not fatal for a forwarder.
            Err(_) => continue,
        };
        bump(&hostile.counters.from_clients);
        let socket = match sockets.get(&client) {
            Some(socket) => socket.clone(),
            None => {
                let socket = match UdpSocket::bind(SocketAddr::new(local_ip, 0)).await {
                    Ok(socket) => Arc::new(socket),
                    Err(error) => {
                        eprintln!("hostile: no upstream socket for {client}: {error}");
                        continue;
                    }
                };
                bump(&hostile.counters.clients);
                sockets.insert(client, socket.clone());
                back.spawn(to_client(
                    socket.clone(),
                    listen.clone(),
                    client,
                    hostile.clone(),
                ));
                socket
            }
        };
        hostile.forward(&buf[..len], &socket, upstream).await;
    }
}

/// Forwards whatever reaches `upstream_socket` to `client`, from the listening socket.
async fn to_client(
    upstream_socket: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    hostile: Arc<Hostile>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((len, _)) = upstream_socket.recv_from(&mut buf).await else {
            continue;
        };
        bump(&hostile.counters.from_relay);
        hostile.forward(&buf[..len], &listen, client).await;
    }
}

/// Writes one event line to stdout, flushed (a closed stdout is ignored: the test is gone).
fn emit(event: &HostileEvent) {
    use std::io::Write;
    let Ok(line) = serde_json::to_string(event) else {
        return;
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `rally-lab-node hostile` in a lab namespace, driven by a test.
#[derive(Debug)]
pub struct HostileNode {
    process: NamespacedProcess,
    listen: SocketAddr,
}

impl HostileNode {
    /// Starts the forwarder in `ns` (`bin` is `rally-lab-node`) and waits until it listens.
    #[track_caller]
    pub fn start(ns: &Namespace, bin: &Path, args: &HostileArgs) -> HostileNode {
        let mut all = vec!["hostile".to_owned()];
        all.extend(args.to_args());
        let label = format!("hostile-{}", args.listen);
        let mut process = match ns.spawn(&label, bin, &all) {
            Ok(process) => process,
            Err(error) => panic!("cannot start {bin:?} hostile: {error}"),
        };
        let ready = process.expect_map(
            |line| match serde_json::from_str(line) {
                Ok(HostileEvent::HostileReady { listen, .. }) => Some(listen),
                _ => None,
            },
            ANSWER,
        );
        match ready {
            Ok(listen) => HostileNode { process, listen },
            Err(failed) => panic!("the hostile forwarder did not start: {failed}"),
        }
    }

    /// The address clients send to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Its counters now.
    #[track_caller]
    pub fn stats(&mut self) -> HostileStats {
        if let Err(error) = self.process.send_line("stats") {
            panic!("the hostile forwarder does not take `stats`: {error}");
        }
        let stats = self.process.expect_map(
            |line| match serde_json::from_str(line) {
                Ok(HostileEvent::HostileStats(stats)) => Some(stats),
                _ => None,
            },
            ANSWER,
        );
        stats.unwrap_or_else(|failed| panic!("the hostile forwarder's stats: {failed}"))
    }

    /// The process, to read its output.
    pub fn process(&mut self) -> &mut NamespacedProcess {
        &mut self.process
    }

    /// Stops it (end of its input) and waits for it to exit.
    pub fn stop(self) -> Result<ExitStatus, ExpectFailed> {
        self.process.finish(ANSWER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        wire::encode(
            &Message::Data {
                allocation: [7; 16],
                payload,
            },
            &mut out,
        );
        out
    }

    #[test]
    fn every_flip_lands_in_a_data_payload_and_leaves_the_header_alone() {
        let datagram = data(&[0x55; 40]);
        let mut tamper = Tamper::new(100, 0, 1);
        for _ in 0..1000 {
            let verdict = tamper.judge(&datagram);
            assert!(verdict.data);
            assert_eq!(verdict.copies, 1);
            let bit = verdict
                .flip
                .expect("every Data datagram is flipped at 100%");
            let mut flipped = datagram.clone();
            flip_bit(&mut flipped, bit);
            assert_eq!(
                flipped[..wire::DATA_OVERHEAD],
                datagram[..wire::DATA_OVERHEAD]
            );
            let changed: u32 = flipped
                .iter()
                .zip(&datagram)
                .map(|(a, b)| (a ^ b).count_ones())
                .sum();
            assert_eq!(changed, 1);
            // The relay still reads it as Data for the same allocation.
            assert!(matches!(
                wire::decode(&flipped),
                Ok(Message::Data { allocation, .. }) if allocation == [7; 16]
            ));
        }
    }

    #[test]
    fn other_relay_messages_and_empty_payloads_are_never_flipped() {
        let mut tamper = Tamper::new(100, 0, 2);
        for datagram in [
            data(&[]),
            b"RY\x01\x04 not data".to_vec(),
            vec![0; 48],
            vec![],
        ] {
            let verdict = tamper.judge(&datagram);
            assert_eq!(
                verdict,
                Verdict {
                    data: false,
                    flip: None,
                    copies: 1
                },
                "{datagram:?}"
            );
        }
    }

    #[test]
    fn shares_follow_the_percentages() {
        let datagram = data(&[1; 100]);
        let mut tamper = Tamper::new(5, 20, 3);
        let (mut flips, mut replays) = (0, 0);
        for _ in 0..10_000 {
            let verdict = tamper.judge(&datagram);
            flips += usize::from(verdict.flip.is_some());
            replays += usize::from(verdict.copies == 2);
        }
        assert!((350..650).contains(&flips), "{flips} flips of 10 000 at 5%");
        assert!(
            (1_700..2_300).contains(&replays),
            "{replays} replays of 10 000 at 20%"
        );
        let mut none = Tamper::new(0, 0, 4);
        assert!((0..1000).all(|_| none.judge(&datagram)
            == Verdict {
                data: true,
                flip: None,
                copies: 1
            }));
    }

    #[test]
    fn the_marker_is_found_anywhere_and_an_empty_one_never() {
        assert!(contains(b"xxMARKERyy", b"MARKER"));
        assert!(contains(b"MARKER", b"MARKER"));
        assert!(!contains(b"MARKE", b"MARKER"));
        assert!(!contains(b"anything", b""));
    }

    #[test]
    fn the_flags_read_what_to_args_writes() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: HostileArgs,
        }
        let mut args = HostileArgs::new(
            "100.64.0.3:3478".parse().expect("address"),
            "100.64.0.1:3478".parse().expect("address"),
        );
        args.flip_percent = 5;
        args.replay_percent = 100;
        args.marker = Some("0123 marker".to_owned());
        args.seed = Some(9);
        let parsed = <Cli as clap::Parser>::try_parse_from(
            std::iter::once("hostile".to_owned()).chain(args.to_args()),
        )
        .expect("the flags parse");
        assert_eq!(parsed.args, args);
        assert!(
            <Cli as clap::Parser>::try_parse_from([
                "hostile",
                "--listen",
                "1.2.3.4:5",
                "--upstream",
                "1.2.3.4:6",
                "--flip-percent",
                "101"
            ])
            .is_err()
        );
    }
}

//! Resilience through real NATs: what happens to established connections when the network or the
//! server misbehaves. A NAT that moves a player to a new public port (NAT rebinding), a relay that
//! tampers with what it carries, a control plane that crashes and comes back, and how often
//! birthday probing finds a direct path between the hardest pair that has one. Same rules as
//! `nat_lab.rs`: root only (`skipped` otherwise, a failure under `CI=true`), one lab at a time,
//! every wait bounded.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use rally_e2e::lab::hostile::{HostileArgs, HostileNode};
use rally_e2e::lab::node::protocol::{NodeEvent, PeerCommand, Policy, pattern};
use rally_e2e::lab::node::{GRPC_PORT, PeerNode, RELAY_PORT, ServerNode, UdpNode};
use rally_e2e::lab::pair::{
    CONNECT, DELIVERY, all_reliable, connect_both, reliable_packets_arrive, wait_both,
};
use rally_e2e::lab::{Lab, Namespace, NatKind};
use uuid::Uuid;

const NODE: &str = env!("CARGO_BIN_EXE_rally-lab-node");

/// How long a command that does not wait on the network may take to answer.
const ANSWER: Duration = Duration::from_secs(10);

/// Size of the test packets: their pattern then covers [`marker`].
const PACKET: usize = 200;

fn node() -> &'static Path {
    Path::new(NODE)
}

/// rallyd on the lab's internet, its relay on three addresses (as in `nat_lab.rs`).
fn rallyd(lab: &Lab) -> ServerNode {
    ServerNode::start_default(lab, node())
}

/// The connection states `peer` reported for `user` so far, in order.
fn states(peer: &mut PeerNode, user: Uuid) -> Vec<String> {
    peer.process()
        .transcript()
        .iter()
        .filter_map(|line| match serde_json::from_str(line) {
            Ok(NodeEvent::State { user: u, state }) if u == user => Some(state),
            _ => None,
        })
        .collect()
}

/// Panics unless `peer`'s connection with `user` came up once and never changed state since.
fn never_left_connected(peer: &mut PeerNode, user: Uuid) {
    let seen = states(peer, user);
    let up = seen.iter().position(|s| s == "connected");
    assert!(
        up.is_some_and(|i| i + 1 == seen.len()),
        "{}: the connection left `connected`: states {seen:?}",
        peer.name()
    );
}

/// A symmetric NAT gives the dialer a new public port mid-connection, twice: once because the
/// router forgot every mapping (conntrack flush), once because the idle mapping timed out (a 1 s
/// UDP timeout). Each time the QUIC server follows the migration: packets flow both ways again,
/// once, in order and intact, and neither side ever leaves `connected`.
#[test]
fn a_nat_rebinding_does_not_drop_the_connection() {
    let lab = rally_e2e::lab_or_skip!("nat-rebinding");
    let started = Instant::now();
    let server = rallyd(&lab);
    let router = lab.add_router(NatKind::Symmetric);
    let ns = router.ns().expect("a symmetric router has a namespace");
    // Packet counts on conntrack entries, to tell when the connection is idle.
    ns.sysctl("net.netfilter.nf_conntrack_acct", "1")
        .expect("turn on conntrack accounting");
    let sym_host = router.add_host();
    let open_host = lab.add_router(NatKind::None).add_host();
    let mut sym = PeerNode::start(&sym_host, node(), &server, "sym");
    let mut open = PeerNode::start(&open_host, node(), &server, "open");
    let (ab, ba) = connect_both(&mut sym, &mut open);
    assert_eq!((ab.path.as_str(), ba.path.as_str()), ("direct", "direct"));
    reliable_packets_arrive(&mut sym, &mut open, 100, PACKET);
    reliable_packets_arrive(&mut open, &mut sym, 100, PACKET);
    // The stricter NAT dials, so the public player is the QUIC server and sees the symmetric
    // NAT's public address.
    let original = open.stats(sym.user()).remote.expect("open sees sym");
    assert_eq!(original.ip(), router.public_ip(), "{original}");

    // 1. The router forgets every mapping at once (as when it reboots), while the connection is
    // idle. Not right after the packets: sym's last ACKs (QUIC delays them up to 25 ms) would
    // then leave after the flush and move the connection to a new port at once. The flush also
    // drops sym's TCP mapping to rallyd: its broker link breaks and re-attaches by itself.
    let peer_ip = open_host.ip.into();
    let quiet = Duration::from_millis(300);
    let waited = mapping_goes_quiet(ns, original, peer_ip, quiet, Duration::from_secs(10));
    router
        .flush_conntrack()
        .expect("flush the router's conntrack");
    eprintln!("flush: after the mapping {original} saw no packet for {quiet:?} ({waited:?})");
    let flushed = rebinding_is_survived(&mut sym, &mut open, original, "conntrack flush");

    // 2. The router forgets an idle mapping (a short UDP timeout). Both sides send a keep-alive
    // when they have sent nothing for 5 s, so an idle connection still has a packet at least
    // every 2.5 s one way or the other: the timeout must be shorter than that for the mapping to
    // expire between them.
    router
        .set_udp_timeout(1)
        .expect("shorten the router's UDP timeout");
    let waited = mapping_expires(ns, flushed, peer_ip, Duration::from_secs(20));
    eprintln!("timeout: the mapping to {flushed} expired after {waited:?} of idling");
    rebinding_is_survived(&mut sym, &mut open, flushed, "idle timeout");

    never_left_connected(&mut sym, open.user());
    never_left_connected(&mut open, sym.user());
    eprintln!("nat rebinding: {:?}", started.elapsed());
}

/// After the symmetric side's mapping `old` died: the public side sends first, into the dead
/// mapping, then the other way; every packet arrives, the connection stays up and the public
/// side's QUIC server now sees a new port. Returns the new address.
fn rebinding_is_survived(
    sym: &mut PeerNode,
    open: &mut PeerNode,
    old: SocketAddr,
    what: &str,
) -> SocketAddr {
    // The public side's packets (its own keep-alives and retransmissions too) go to the old
    // port and are dropped by the router until the symmetric side sends anything: at the latest
    // its keep-alive, 5 s after its last packet. That packet leaves from a new public port; the
    // QUIC server sees the connection's packet from a new address, validates the new path,
    // migrates and retransmits there. So the first packet takes up to 5 s minus the idle time
    // already spent (the keep-alive is what rebinds an idle connection).
    let down = reliable_packets_arrive(open, sym, 200, PACKET);
    let up = reliable_packets_arrive(sym, open, 200, PACKET);
    let stats = open.stats(sym.user());
    let new = stats.remote.expect("open still sees sym");
    eprintln!(
        "{what}: open sees sym at {old} before, {new} after; first packet to sym after {:?} ms, \
         to open after {:?} ms",
        down.first_packet_ms, up.first_packet_ms
    );
    assert_eq!(stats.state, "connected", "{stats:?}");
    assert_eq!(stats.path.as_deref(), Some("direct"), "{stats:?}");
    assert_eq!(new.ip(), old.ip(), "the same NAT");
    assert_ne!(
        new.port(),
        old.port(),
        "the QUIC server followed the new mapping"
    );
    let back = sym.stats(open.user());
    assert_eq!(back.state, "connected", "{back:?}");
    new
}

/// The router's conntrack entry that maps `public` for traffic with `peer`, in `table`
/// (`conntrack -L` output). Its reply direction reads `src=PEER dst=PUBLIC_IP sport=..
/// dport=PUBLIC_PORT`.
fn mapping_line(table: &str, public: SocketAddr, peer: IpAddr) -> Option<&str> {
    let needle = format!("src={peer} dst={} ", public.ip());
    let port = format!("dport={} ", public.port());
    table
        .lines()
        .find(|line| line.contains(&needle) && line.contains(&port))
}

/// The router's UDP conntrack table.
fn udp_table(ns: &Namespace) -> String {
    ns.run("conntrack", &["-L", "-p", "udp"])
        .expect("list the router's conntrack")
}

/// Polls the router's conntrack table until no UDP entry maps `public` for traffic with
/// `peer`; returns how long that took. Panics after `limit`.
fn mapping_expires(ns: &Namespace, public: SocketAddr, peer: IpAddr, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let table = udp_table(ns);
        if mapping_line(&table, public, peer).is_none() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "the mapping {public} did not expire within {limit:?}:\n{table}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls the packet counts (conntrack accounting) of the entry mapping `public` for traffic
/// with `peer` until they stay the same for `quiet`; returns how long that took. Panics when
/// the entry is missing, or after `limit`.
fn mapping_goes_quiet(
    ns: &Namespace,
    public: SocketAddr,
    peer: IpAddr,
    quiet: Duration,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let mut last: Option<(u64, Instant)> = None;
    loop {
        let table = udp_table(ns);
        let line = mapping_line(&table, public, peer)
            .unwrap_or_else(|| panic!("no mapping {public} for {peer}:\n{table}"));
        let packets: u64 = line
            .split_whitespace()
            .filter_map(|field| field.strip_prefix("packets="))
            .filter_map(|n| n.parse::<u64>().ok())
            .sum();
        match last {
            Some((seen, since)) if seen == packets => {
                if since.elapsed() >= quiet {
                    return started.elapsed();
                }
            }
            _ => last = Some((packets, Instant::now())),
        }
        assert!(
            started.elapsed() < limit,
            "the mapping {public} never went quiet for {quiet:?} within {limit:?}:\n{line}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The bytes every [`PACKET`]-byte test packet carries in the clear at offsets 48..91 (the
/// pattern's printable stretch): what a relay that could read the traffic would find.
fn marker() -> String {
    (48..91).map(|i| char::from(pattern(i))).collect()
}

/// rallyd whose broker announces `hostile` as its relay (allocations go there) and the real
/// relay's other two addresses after it. `hostile` is then also the first reflector: players
/// see its upstream socket as their public address and class their NAT as strict, which does
/// not matter when every connection is relayed.
fn rallyd_behind(lab: &Lab, hostile: SocketAddr) -> ServerNode {
    let [first, second, _] = lab.server_ips();
    let more = format!("{second}:{RELAY_PORT},{first}:{}", RELAY_PORT + 1);
    let public = format!("{hostile},{more}");
    ServerNode::start(
        lab,
        lab.internet(),
        node(),
        SocketAddr::from((first, GRPC_PORT)),
        SocketAddr::from((first, RELAY_PORT)),
        &["--relay-listen", &more, "--relay-public-addresses", &public],
    )
}

/// A relay (or anyone on its path) that flips bits and replays datagrams: at 5% each, a relayed
/// pair connects and 2 000 reliable packets each way arrive once, in order, intact, and the
/// forwarder never sees their bytes in the clear (a plaintext probe shows that it would). At
/// 100% flips the connection fails, and the dialer is told that the handshake through the relay
/// failed.
#[test]
fn a_hostile_relay_cannot_corrupt_or_read_the_traffic() {
    let lab = rally_e2e::lab_or_skip!("hostile-relay");
    let started = Instant::now();
    let [first, _, third] = lab.server_ips();
    let relay = SocketAddr::from((first, RELAY_PORT));
    let listen = SocketAddr::from((third, RELAY_PORT));
    let server = rallyd_behind(&lab, listen);
    let marker = marker();
    let sample = rally_e2e::lab::node::protocol::test_packet(0, PACKET);
    assert!(
        rally_e2e::lab::hostile::contains(&sample, marker.as_bytes()),
        "test packets carry the marker"
    );

    // (a) 5% of Data datagrams with a bit flipped, 5% of datagrams replayed.
    let mut args = HostileArgs::new(listen, relay);
    args.flip_percent = 5;
    args.replay_percent = 5;
    args.marker = Some(marker.clone());
    let mut hostile = HostileNode::start(lab.internet(), node(), &args);
    // The detector works: a datagram with the marker in the clear is counted.
    let mut probe = UdpNode::start(lab.internet(), node(), SocketAddr::from((third, 4000)));
    probe.send(listen, &format!("plaintext {marker}"));
    let deadline = Instant::now() + ANSWER;
    while hostile.stats().marker_seen == 0 {
        assert!(
            Instant::now() < deadline,
            "the forwarder never saw the probe"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = server.url();
    let always = ["--relay-policy", "always"];
    let ada_host = lab.add_router(NatKind::PortRestricted).add_host();
    let bob_host = lab.add_router(NatKind::None).add_host();
    let mut ada = PeerNode::start_with(&ada_host, node(), &url, "ada", &always);
    let mut bob = PeerNode::start_with(&bob_host, node(), &url, "bob", &always);
    let (ab, ba) = connect_both(&mut ada, &mut bob);
    assert_eq!((ab.path.as_str(), ba.path.as_str()), ("relayed", "relayed"));
    reliable_packets_arrive(&mut ada, &mut bob, 2000, PACKET);
    reliable_packets_arrive(&mut bob, &mut ada, 2000, PACKET);
    let stats = hostile.stats();
    eprintln!("hostile relay at 5% flips, 5% replays: {stats:?}");
    assert!(
        stats.clients >= 2,
        "both players went through it: {stats:?}"
    );
    assert!(stats.flipped > 0 && stats.replayed > 0, "{stats:?}");
    assert_eq!(
        stats.marker_seen, 1,
        "the marker was seen in the clear beyond the probe: {stats:?}"
    );
    never_left_connected(&mut ada, bob.user());
    never_left_connected(&mut bob, ada.user());
    let _ = ada.quit();
    let _ = bob.quit();
    let _ = hostile.stop();

    // (b) Every Data datagram with a bit flipped: nothing can get through, and the SDK says so.
    args.flip_percent = 100;
    args.replay_percent = 0;
    let mut hostile = HostileNode::start(lab.internet(), node(), &args);
    let carol_host = lab.add_router(NatKind::FullCone).add_host();
    let dave_host = lab.add_router(NatKind::None).add_host();
    let mut carol = PeerNode::start_with(&carol_host, node(), &url, "carol", &always);
    let mut dave = PeerNode::start_with(&dave_host, node(), &url, "dave", &always);
    carol.connect(dave.user());
    dave.connect(carol.user());
    // Wait on the `timeout` state events rather than `wait-connected`: after the SDK reported
    // `Timeout`, its `Net::stats` still says `Connecting` (it derives the state from the link
    // and the consent, and never answers `Timeout`), so `wait-connected`, which polls it, would
    // only give up at its own deadline.
    let (carol_user, dave_user) = (carol.user(), dave.user());
    for (peer, other) in [(&mut carol, dave_user), (&mut dave, carol_user)] {
        let timeout = format!(r#"{{"event":"state","user":"{other}","state":"timeout"}}"#);
        peer.process()
            .expect_line(|line| line == timeout, CONNECT)
            .expect("the connection times out");
        let seen = states(peer, other);
        assert!(!seen.iter().any(|s| s == "connected"), "{seen:?}");
    }
    let reasons: Vec<String> = [&mut carol, &mut dave]
        .into_iter()
        .flat_map(|peer| peer.process().transcript())
        .filter(|line| line.contains("ConnectionFailed"))
        .collect();
    eprintln!("100% flips: both sides timed out; told: {reasons:#?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("relay") && r.contains("handshake")),
        "no side was told that the handshake through the relay failed: {reasons:?}"
    );
    for (peer, other) in [(&mut carol, dave_user), (&mut dave, carol_user)] {
        let got = peer.expect_packets(other, Policy::Reliable, 1, Duration::from_millis(500));
        assert_eq!(
            got.count + got.other_policy + got.other_senders,
            0,
            "{got:?}"
        );
        let stats = peer.stats(other);
        assert_ne!(stats.state, "connected", "{stats:?}");
        assert_eq!(stats.reliable_received + stats.unreliable_received, 0);
    }
    let stats = hostile.stats();
    eprintln!("hostile relay at 100% flips: {stats:?}");
    assert!(stats.data > 0 && stats.flipped == stats.data, "{stats:?}");
    eprintln!("hostile relay: {:?}", started.elapsed());
}

/// Sends `connect` to `from` for `to` until it is taken: while the broker says that `to` is
/// offline, or `from`'s own link is still re-attaching, it tries again (both SDKs re-attach by
/// themselves, with backoff). Returns the errors seen before. Panics on any other error, or
/// after `limit`.
fn connect_once_online(from: &mut PeerNode, to: Uuid, limit: Duration) -> Vec<String> {
    let started = Instant::now();
    let mut refused = Vec::new();
    loop {
        // Commands run in order: an error for `connect` comes before the answer to `stats`.
        from.command(&PeerCommand::Connect(to));
        from.command(&PeerCommand::Stats(to));
        let mut errors = Vec::new();
        from.process()
            .expect_map(
                |line| match serde_json::from_str(line) {
                    Ok(NodeEvent::Error { message }) => {
                        errors.push(message);
                        None
                    }
                    Ok(NodeEvent::Stats(stats)) if stats.user == to => Some(()),
                    _ => None,
                },
                ANSWER,
            )
            .expect("the peer answers `stats`");
        let Some(error) = errors.first().map(|e| e.to_lowercase()) else {
            return refused;
        };
        assert!(
            error.contains("offline") || error.contains("not attached"),
            "{} could not connect: {errors:?}",
            from.name()
        );
        assert!(
            started.elapsed() < limit,
            "{} still cannot connect to {to} after {limit:?}: {errors:?}",
            from.name()
        );
        refused.extend(errors);
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// 20 reliable packets from `from` reach `to`, each once, in order and intact (no output).
fn quiet_round(from: &mut PeerNode, to: &mut PeerNode, round: u32) {
    from.send(to.user(), Policy::Reliable, 20, PACKET);
    let got = to.expect_packets(from.user(), Policy::Reliable, 20, DELIVERY);
    assert!(all_reliable(&got, 20), "round {round}: {got:?}");
}

/// rallyd is killed (SIGKILL) while a directly connected pair exchanges packets: every packet
/// still arrives in order, also while rallyd is down. rallyd comes back on the same addresses
/// and data, both SDKs re-attach by themselves, and a new player connects to each of them.
#[test]
fn traffic_survives_the_control_plane_and_the_sdks_reattach() {
    let lab = rally_e2e::lab_or_skip!("control-plane-crash");
    let started = Instant::now();
    let server = rallyd(&lab);
    let ada_host = lab.add_router(NatKind::PortRestricted).add_host();
    let bob_host = lab.add_router(NatKind::FullCone).add_host();
    let mut ada = PeerNode::start(&ada_host, node(), &server, "ada");
    let mut bob = PeerNode::start(&bob_host, node(), &server, "bob");
    let (ab, ba) = connect_both(&mut ada, &mut bob);
    assert_eq!((ab.path.as_str(), ba.path.as_str()), ("direct", "direct"));
    reliable_packets_arrive(&mut ada, &mut bob, 500, PACKET);

    // A burst in flight while rallyd dies.
    let burst = 5000;
    let burst_started = Instant::now();
    ada.command(&PeerCommand::Send {
        user: bob.user(),
        policy: Policy::Reliable,
        count: burst,
        size: 1000,
    });
    let status = server.kill().expect("rallyd is killed");
    let killed = Instant::now();
    eprintln!(
        "rallyd killed ({status}) {:?} after ada began sending a burst of {burst} packets",
        killed - burst_started
    );
    let sent = ada
        .process()
        .expect_map(
            |line| match serde_json::from_str(line) {
                Ok(NodeEvent::Sent { ms, .. }) => Some(ms),
                _ => None,
            },
            DELIVERY,
        )
        .expect("ada sends the burst");
    let got = bob.expect_packets(ada.user(), Policy::Reliable, burst, DELIVERY);
    eprintln!(
        "burst across the crash: sent in {sent} ms, received in {} ms: {got:?}",
        got.ms
    );
    assert!(all_reliable(&got, burst), "{got:?}");
    // Without a control plane, both ways, at a game's pace for a few seconds: the SDKs saw the
    // broker link drop at once (its TCP stream closed) and keep trying to re-attach meanwhile.
    let mut rounds = 0;
    while killed.elapsed() < Duration::from_secs(6) {
        quiet_round(&mut ada, &mut bob, rounds);
        quiet_round(&mut bob, &mut ada, rounds);
        rounds += 1;
        // Pacing (a game's tick), not a wait for anything.
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("without rallyd: {rounds} rounds of 20 reliable packets each way, all delivered");

    // rallyd again, on the same address, ports and data directory.
    let server = rallyd(&lab);
    let restarted = Instant::now();
    eprintln!("rallyd restarted {:?} after the kill", killed.elapsed());
    reliable_packets_arrive(&mut ada, &mut bob, 200, PACKET);
    let carol_host = lab.add_router(NatKind::AddressRestricted).add_host();
    let mut carol = PeerNode::start(&carol_host, node(), &server, "carol");
    for peer in [&mut ada, &mut bob] {
        let refused = connect_once_online(&mut carol, peer.user(), Duration::from_secs(30));
        let refused_back = connect_once_online(peer, carol.user(), Duration::from_secs(30));
        eprintln!(
            "{} and carol asked for the connection {:?} after the restart; refused before: \
             carol {refused:?}, {} {refused_back:?}",
            peer.name(),
            restarted.elapsed(),
            peer.name()
        );
        let (to, from) = wait_both(&mut carol, peer);
        assert_eq!(to.path, from.path);
        reliable_packets_arrive(&mut carol, peer, 100, PACKET);
        reliable_packets_arrive(peer, &mut carol, 100, PACKET);
    }
    never_left_connected(&mut ada, bob.user());
    never_left_connected(&mut bob, ada.user());
    eprintln!("control plane crash: {:?}", started.elapsed());
}

/// Symmetric x port-restricted, 8 fresh pairs: prints each try's path and time and the success
/// rate; at least 6 of 8 connect directly (theory ~98% each with 256 sockets x 1024 probes) and
/// every try connects (a failed birthday round falls back to the relay).
#[test]
fn birthday_probing_connects_symmetric_and_port_restricted_players_most_of_the_time() {
    const TRIES: usize = 8;
    let lab = rally_e2e::lab_or_skip!("birthday-rate");
    let started = Instant::now();
    let server = rallyd(&lab);
    let mut table = vec![
        "| try | path | connected after (ms) | via a birthday socket |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
    let mut outcomes = Vec::new();
    for i in 1..=TRIES {
        let sym_host = lab.add_router(NatKind::Symmetric).add_host();
        let port_host = lab.add_router(NatKind::PortRestricted).add_host();
        let mut sym = PeerNode::start(&sym_host, node(), &server, &format!("sym{i}"));
        let mut port = PeerNode::start(&port_host, node(), &server, &format!("port{i}"));
        let (ab, ba) = connect_both(&mut sym, &mut port);
        assert_eq!(ab.path, ba.path, "try {i}: both sides see one path");
        reliable_packets_arrive(&mut sym, &mut port, 50, PACKET);
        let ms = ab.ms.max(ba.ms);
        // Informational (the SDK's debug log): whether the direct path is a birthday socket's.
        let birthday = sym
            .process()
            .stderr()
            .contains("birthday probe got through");
        table.push(format!("| {i} | {} | {ms} | {birthday} |", ab.path));
        outcomes.push((ab.path, ms));
        let _ = sym.quit();
        let _ = port.quit();
    }
    let direct: Vec<u64> = outcomes
        .iter()
        .filter(|(path, _)| path == "direct")
        .map(|(_, ms)| *ms)
        .collect();
    let all: Vec<u64> = outcomes.iter().map(|(_, ms)| *ms).collect();
    let text = |ms: Option<u64>| ms.map_or("-".to_owned(), |ms| ms.to_string());
    table.push(format!(
        "direct {} of {TRIES}; median time to connect {} ms (direct only: {} ms); {:?} in all",
        direct.len(),
        text(median(all)),
        text(median(direct.clone())),
        started.elapsed()
    ));
    eprintln!("{}", table.join("\n"));
    for (path, _) in &outcomes {
        assert!(
            path == "direct" || path == "relayed",
            "a failed try must still connect through the relay: {outcomes:?}"
        );
    }
    assert!(
        direct.len() >= 6,
        "birthday probing connected directly only {} of {TRIES} times (theory: ~98% each)",
        direct.len()
    );
}

/// The median (the mean of the two middle values for an even count); `None` when empty.
fn median(mut values: Vec<u64>) -> Option<u64> {
    values.sort_unstable();
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2),
    }
}

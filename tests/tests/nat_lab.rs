//! End to end through real NATs: rallyd on the lab's internet, players as `rally-lab-node`
//! processes in their own namespaces, behind iptables NATs (see `rally_e2e::lab` for the
//! topology and its rules). Root only: without root or iptables these tests say `skipped`, and
//! fail under `CI=true`. One lab at a time (the lab serialises itself), every wait bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rally_e2e::lab::node::protocol::Policy;
use rally_e2e::lab::node::{PeerNode, ServerNode, UdpNode};
use rally_e2e::lab::pair::{CONNECT, DELIVERY, connect_both, reliable_packets_arrive};
use rally_e2e::lab::{Lab, NatKind};

const NODE: &str = env!("CARGO_BIN_EXE_rally-lab-node");

/// How long one plain UDP datagram may take (it takes milliseconds).
const DATAGRAM: Duration = Duration::from_secs(3);

fn node() -> &'static Path {
    Path::new(NODE)
}

/// rallyd on the lab's internet; its relay listens on three addresses (two IPs, and two ports
/// on the first), so clients can measure their NAT's mapping and filtering.
fn rallyd(lab: &Lab) -> ServerNode {
    ServerNode::start_default(lab, node())
}

#[test]
fn public_players_connect_directly() {
    let lab = rally_e2e::lab_or_skip!("public-players");
    let server = rallyd(&lab);
    let ada_host = lab.add_router(NatKind::None).add_host();
    let bob_host = lab.add_router(NatKind::None).add_host();
    let mut ada = PeerNode::start(&ada_host, node(), &server, "ada");
    let mut bob = PeerNode::start(&bob_host, node(), &server, "bob");

    let (ab, ba) = connect_both(&mut ada, &mut bob);
    assert_eq!(ab.path, "direct");
    assert_eq!(ba.path, "direct");
    reliable_packets_arrive(&mut ada, &mut bob, 1000, 200);
    let stats = ada.stats(bob.user());
    assert_eq!(stats.reliable_sent, 1000, "{stats:?}");
}

#[test]
fn players_behind_the_same_nat_connect_directly() {
    let lab = rally_e2e::lab_or_skip!("same-nat");
    let server = rallyd(&lab);
    let router = lab.add_router(NatKind::PortRestricted);
    let ada_host = router.add_host();
    let bob_host = router.add_host();
    let mut ada = PeerNode::start(&ada_host, node(), &server, "ada");
    let mut bob = PeerNode::start(&bob_host, node(), &server, "bob");

    let (ab, ba) = connect_both(&mut ada, &mut bob);
    assert_eq!(ab.path, "direct");
    assert_eq!(ba.path, "direct");
    reliable_packets_arrive(&mut ada, &mut bob, 1000, 200);
}

#[test]
fn players_behind_nats_connect_with_the_control_plane_over_tls() {
    use rally_e2e::pki::{TestCa, TlsFolder, Validity};
    let lab = rally_e2e::lab_or_skip!("tls");
    let ca = TestCa::new("Lab CA");
    let [server_ip, _, _] = lab.server_ips();
    let folder = TlsFolder::new(lab.dir());
    folder.install(&ca.issue(&[&server_ip.to_string()], Validity::Current));
    let ca_file = lab.dir().join("lab-ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write the CA");
    let tls_flags = folder.flags();
    let tls_flags: Vec<&str> = tls_flags.iter().map(String::as_str).collect();
    let server = ServerNode::start_default_tls(&lab, node(), &tls_flags);
    assert!(server.url().starts_with("https://"), "{}", server.url());

    let ca_flag = ca_file.display().to_string();
    let ada_host = lab.add_router(NatKind::FullCone).add_host();
    let bob_host = lab.add_router(NatKind::PortRestricted).add_host();
    let flags = ["--ca-file", ca_flag.as_str()];
    let mut ada = PeerNode::start_with(&ada_host, node(), &server.url(), "ada", &flags);
    let mut bob = PeerNode::start_with(&bob_host, node(), &server.url(), "bob", &flags);

    let (ab, ba) = connect_both(&mut ada, &mut bob);
    assert_eq!(ab.path, "direct");
    assert_eq!(ba.path, "direct");
    reliable_packets_arrive(&mut ada, &mut bob, 500, 200);
}

/// Which of the unsolicited senders get through to a host that sent one packet to `contacted`:
/// one on another port of the contacted address, and one on an address never contacted.
fn admitted(kind: NatKind) -> Vec<&'static str> {
    match kind {
        NatKind::None | NatKind::FullCone => vec!["other-port", "stranger"],
        NatKind::AddressRestricted => vec!["other-port"],
        NatKind::PortRestricted | NatKind::Symmetric => vec![],
    }
}

/// The lab itself, with plain UDP: per NAT kind, the public port a server sees for two
/// destinations (one port for cone NATs, a new one per destination for the symmetric NAT), and
/// who may send to that port unsolicited.
#[test]
fn the_lab_nats_behave_as_configured() {
    let lab = rally_e2e::lab_or_skip!("nat-behaviour");
    let started = Instant::now();
    let [s1, s2, s3] = lab.server_ips();
    let internet = lab.internet();
    let mut contacted = UdpNode::start(internet, node(), SocketAddr::from((s1, 4001)));
    let mut second = UdpNode::start(internet, node(), SocketAddr::from((s2, 4001)));
    let mut other_port = UdpNode::start(internet, node(), SocketAddr::from((s1, 4002)));
    let mut stranger = UdpNode::start(internet, node(), SocketAddr::from((s3, 4001)));

    for kind in NatKind::ALL {
        let router = lab.add_router(kind);
        let host = router.add_host();
        let mut player = UdpNode::start(&host.ns, node(), SocketAddr::from((host.ip, 5000)));

        // Mapping: the public address each destination sees.
        player.send(contacted.local_addr(), &format!("{kind:?} to the first"));
        player.send(second.local_addr(), &format!("{kind:?} to the second"));
        let (first_seen, text) = contacted.recv(DATAGRAM).expect("the first server hears");
        assert_eq!(text, format!("{kind:?} to the first"));
        let (second_seen, text) = second.recv(DATAGRAM).expect("the second server hears");
        assert_eq!(text, format!("{kind:?} to the second"));
        assert_eq!(first_seen.ip(), router.public_ip(), "{kind:?}");
        assert_eq!(second_seen.ip(), router.public_ip(), "{kind:?}");
        if kind.is_endpoint_independent() {
            assert_eq!(first_seen.port(), second_seen.port(), "{kind:?}: one port");
        } else {
            assert_ne!(
                first_seen.port(),
                second_seen.port(),
                "{kind:?}: a port each"
            );
        }
        if kind == NatKind::None {
            assert_eq!(first_seen, player.local_addr());
        }

        // Filtering: unsolicited senders first, then the contacted server's answer, which always
        // gets in; whatever was going to pass arrives before it (same path, sent earlier).
        other_port.send(first_seen, "other-port");
        stranger.send(first_seen, "stranger");
        contacted.send(first_seen, "answer");
        let mut got = Vec::new();
        loop {
            let (_, text) = player
                .recv(DATAGRAM)
                .unwrap_or_else(|e| panic!("{kind:?}: the answer did not arrive: {e}"));
            if text == "answer" {
                break;
            }
            got.push(text);
        }
        got.sort();
        assert_eq!(got, admitted(kind), "{kind:?}: who got in unsolicited");
        eprintln!("{kind:?}: seen as {first_seen} and {second_seen}; admitted {got:?}");
    }
    eprintln!("checked every kind in {:?}", started.elapsed());
}

/// The NAT class each router kind should measure.
fn expected_nat(kind: NatKind) -> &'static str {
    match kind {
        NatKind::None | NatKind::FullCone => "open",
        NatKind::AddressRestricted | NatKind::PortRestricted => "moderate",
        NatKind::Symmetric => "strict",
    }
}

/// The path a pair must take: direct unless both sides are symmetric.
fn expected_path(a: NatKind, b: NatKind) -> &'static str {
    if a == NatKind::Symmetric && b == NatKind::Symmetric {
        "relayed"
    } else {
        "direct"
    }
}

/// One pair of fresh players behind fresh routers of kinds `a` and `b`: connects them, checks
/// the NAT each measured and that 100 reliable packets cross; returns (path, connect ms).
fn connect_pair_of_kinds(lab: &Lab, server: &ServerNode, a: NatKind, b: NatKind) -> (String, u64) {
    let a_host = lab.add_router(a).add_host();
    let b_host = lab.add_router(b).add_host();
    let mut ada = PeerNode::start(&a_host, node(), server, &format!("{a:?}-a"));
    let mut bob = PeerNode::start(&b_host, node(), server, &format!("{b:?}-b"));
    assert_eq!(
        ada.nat(),
        expected_nat(a),
        "{a:?} measured as {}",
        ada.nat()
    );
    assert_eq!(
        bob.nat(),
        expected_nat(b),
        "{b:?} measured as {}",
        bob.nat()
    );
    let (ab, ba) = connect_both(&mut ada, &mut bob);
    assert_eq!(ab.path, ba.path, "{a:?} x {b:?}: both sides see one path");
    reliable_packets_arrive(&mut ada, &mut bob, 100, 200);
    reliable_packets_arrive(&mut bob, &mut ada, 100, 200);
    let _ = ada.quit();
    let _ = bob.quit();
    (ab.path, ab.ms.max(ba.ms))
}

/// Every pair of the five NAT kinds (15 pairs) connects: directly when at most one side is
/// symmetric (symmetric x port-restricted through birthday probing), through the relay when
/// both are. Prints the table of paths and times.
#[test]
fn every_pair_of_nat_kinds_connects_on_the_expected_path() {
    let lab = rally_e2e::lab_or_skip!("nat-matrix");
    let server = rallyd(&lab);
    let mut table = vec![
        "| A | B | path | connected after (ms) | tries |".to_owned(),
        "|---|---|---|---|---|".to_owned(),
    ];
    let mut wrong = Vec::new();
    for (i, a) in NatKind::ALL.into_iter().enumerate() {
        for b in NatKind::ALL.into_iter().skip(i) {
            let expected = expected_path(a, b);
            // Birthday probing succeeds with ~98% probability: its pair gets a second try.
            let tries =
                if expected == "direct" && (a == NatKind::Symmetric || b == NatKind::Symmetric) {
                    2
                } else {
                    1
                };
            let mut outcome = (String::new(), 0);
            let mut used = 0;
            for _ in 0..tries {
                used += 1;
                outcome = connect_pair_of_kinds(&lab, &server, a, b);
                if outcome.0 == expected {
                    break;
                }
            }
            table.push(format!(
                "| {a:?} | {b:?} | {} | {} | {used} |",
                outcome.0, outcome.1
            ));
            if outcome.0 != expected {
                wrong.push(format!(
                    "{a:?} x {b:?}: {} (expected {expected})",
                    outcome.0
                ));
            }
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(wrong.is_empty(), "pairs on the wrong path: {wrong:?}");
}

/// Relay policy "never": two symmetric NATs have no direct path, so the connection fails, and
/// the game is told why.
#[test]
fn relay_policy_never_fails_two_symmetric_nats_with_a_clear_reason() {
    let lab = rally_e2e::lab_or_skip!("policy-never");
    let server = rallyd(&lab);
    let a_host = lab.add_router(NatKind::Symmetric).add_host();
    let b_host = lab.add_router(NatKind::Symmetric).add_host();
    let url = server.url();
    let mut ada = PeerNode::start_with(&a_host, node(), &url, "ada", &["--relay-policy", "never"]);
    let mut bob = PeerNode::start(&b_host, node(), &server, "bob");
    ada.connect(bob.user());
    bob.connect(ada.user());
    // Each side is told why, then sees the connection time out.
    let reason = ada
        .process()
        .expect_line(|line| line.contains("ConnectionFailed"), CONNECT)
        .expect("ada is told why");
    assert!(reason.contains("NoDirectPath"), "{reason}");
    ada.process()
        .expect_line(|line| line.contains(r#""state":"timeout""#), CONNECT)
        .expect("then ada's connection times out");
    // Bob's side does not connect either: as the dialer it asks for the relay and is refused
    // (ada never relays); as the acceptor it times out waiting.
    let line = bob
        .process()
        .expect_line(
            |line| line.contains("ConnectionFailed") || line.contains(r#""state":"timeout""#),
            CONNECT,
        )
        .expect("bob's side fails too");
    if line.contains("ConnectionFailed") {
        assert!(
            line.contains("RelayRefused") && line.contains("never relays"),
            "{line}"
        );
    }
    eprintln!("ada was told: {reason}; bob: {line}");
}

/// Relay policy "always": a pair that could go direct goes through the relay, and the peer
/// never learns the hiding side's address.
#[test]
fn relay_policy_always_relays_and_hides_the_address() {
    let lab = rally_e2e::lab_or_skip!("policy-always");
    let server = rallyd(&lab);
    let a_router = lab.add_router(NatKind::FullCone);
    let a_host = a_router.add_host();
    let b_host = lab.add_router(NatKind::None).add_host();
    let url = server.url();
    let mut ada = PeerNode::start_with(&a_host, node(), &url, "ada", &["--relay-policy", "always"]);
    let mut bob = PeerNode::start(&b_host, node(), &server, "bob");
    let (ab, ba) = connect_both(&mut ada, &mut bob);
    assert_eq!(ab.path, "relayed");
    assert_eq!(ba.path, "relayed");
    reliable_packets_arrive(&mut ada, &mut bob, 500, 200);
    reliable_packets_arrive(&mut bob, &mut ada, 500, 200);
    let seen = bob.stats(ada.user()).remote.expect("connected");
    assert!(
        seen.ip().is_loopback(),
        "bob sees ada only behind his relay forwarder: {seen}"
    );
    assert_ne!(seen.ip(), std::net::IpAddr::V4(a_router.public_ip()));
    assert_ne!(seen.ip(), std::net::IpAddr::V4(a_host.ip));
}

/// Path upgrade: with the direct path blocked (an iptables DROP in one router), the pair
/// connects through the relay; once it is unblocked, the connection moves to the direct path
/// while reliable packets flow, and every packet arrives once, in order, intact.
#[test]
fn a_relayed_connection_moves_to_the_direct_path_when_it_opens() {
    let lab = rally_e2e::lab_or_skip!("path-upgrade");
    let server = rallyd(&lab);
    let a_router = lab.add_router(NatKind::PortRestricted);
    let b_router = lab.add_router(NatKind::FullCone);
    let a_host = a_router.add_host();
    let b_host = b_router.add_host();
    let a_ns = a_router.ns().expect("a router namespace");
    let b_public = b_router.public_ip().to_string();
    let rules: [[&str; 6]; 2] = [
        ["FORWARD", "-d", &b_public, "-p", "udp", "-j"],
        ["FORWARD", "-s", &b_public, "-p", "udp", "-j"],
    ];
    for rule in &rules {
        let mut args = vec!["-I"];
        args.extend_from_slice(rule);
        args.push("DROP");
        a_ns.iptables(&args).expect("block the direct path");
    }
    let mut ada = PeerNode::start(&a_host, node(), &server, "ada");
    let mut bob = PeerNode::start(&b_host, node(), &server, "bob");
    let (ab, ba) = connect_both(&mut ada, &mut bob);
    assert_eq!((ab.path.as_str(), ba.path.as_str()), ("relayed", "relayed"));
    let mut sent = 0;
    ada.send(bob.user(), Policy::Reliable, 1000, 500);
    sent += 1000;
    for rule in &rules {
        let mut args = vec!["-D"];
        args.extend_from_slice(rule);
        args.push("DROP");
        a_ns.iptables(&args).expect("unblock the direct path");
    }
    let unblocked = Instant::now();
    // Keep packets flowing until both sides report the direct path (the next round of direct
    // attempts runs within the upgrade interval, 5 s).
    let deadline = unblocked + Duration::from_secs(20);
    loop {
        ada.send(bob.user(), Policy::Reliable, 50, 500);
        sent += 50;
        let a_path = ada.stats(bob.user()).path;
        let b_path = bob.stats(ada.user()).path;
        if a_path.as_deref() == Some("direct") && b_path.as_deref() == Some("direct") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {a_path:?}/{b_path:?} 20 s after unblocking"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "moved to the direct path {} ms after unblocking",
        unblocked.elapsed().as_millis()
    );
    ada.send(bob.user(), Policy::Reliable, 1000, 500);
    sent += 1000;
    let got = bob.expect_packets(ada.user(), Policy::Reliable, sent, DELIVERY);
    assert!(
        got.complete && got.count == sent && got.in_order && got.intact && got.duplicates == 0,
        "{sent} reliable packets across the move: {got:?}"
    );
    // And the other way, on the direct path.
    reliable_packets_arrive(&mut bob, &mut ada, 500, 200);
}

//! End to end over an impaired link: one player's router reaches the lab's internet through
//! loss, delay and jitter (`Lab::add_router_impaired`: iptables `statistic` loss in the router, a
//! user-space delay forwarder in a namespace between its WAN and the internet). Root only, as
//! `nat_lab.rs`: without root or iptables these tests say `skipped`, and fail under `CI=true`.

use std::path::Path;
use std::time::{Duration, Instant};

use rally_e2e::lab::node::protocol::{Policy, StatsReport};
use rally_e2e::lab::node::{PeerNode, ServerNode};
use rally_e2e::lab::{Impairment, NatKind};

const NODE: &str = env!("CARGO_BIN_EXE_rally-lab-node");

/// The impaired link: 10% loss each way, 50 ± 20 ms each way (so ~100 ms of RTT, reordering).
const IMPAIRED: Impairment = Impairment {
    loss: 0.10,
    delay_ms: 50,
    jitter_ms: 20,
};

/// How long a connection may take to come up over the impaired link (the SDK's own connect
/// timeout is 10 s).
const CONNECT: Duration = Duration::from_secs(20);

/// Reliable packets each way, and their size.
const RELIABLE: u64 = 10_000;
const RELIABLE_SIZE: usize = 64;

/// How long the reliable packets may take to arrive (they take seconds).
const RELIABLE_DELIVERY: Duration = Duration::from_secs(90);

/// Unreliable packets one way, their size, and how many are sent before the receiver is waited
/// for (QUIC's datagram queue holds 1024: the sender must not outrun the path by that much).
/// At 1000 bytes each packet is a QUIC packet of its own, so a batch is 100 independent draws
/// of the link's loss (small packets share QUIC packets: a batch of 100 was ten draws, and one
/// could lose half by chance).
const UNRELIABLE: u64 = 2_000;
const UNRELIABLE_SIZE: usize = 1000;
const UNRELIABLE_BATCH: u64 = 100;

/// Before the next batch, the receiver must have seen this share of what was sent so far (well
/// under the ~90% that 10% loss lets through, so a batch waits for the path, not for luck).
const PACING_SHARE: f64 = 0.6;

/// How long one batch may take to arrive, and how long stragglers may take after the last.
const BATCH_DELIVERY: Duration = Duration::from_secs(15);
const SETTLE: Duration = Duration::from_secs(10);

/// The receiver's figures stop changing for this long: the stragglers are in.
const QUIET: Duration = Duration::from_secs(2);

/// At most this many single flush packets after the measured ones (each arrives with 90%).
const FLUSH_MAX: u64 = 10;

fn node() -> &'static Path {
    Path::new(NODE)
}

/// `count` reliable packets each way, all sent before either side waits.
fn reliable_both_ways(ada: &mut PeerNode, bob: &mut PeerNode, count: u64) {
    let started = Instant::now();
    let ada_ms = ada.send(bob.user(), Policy::Reliable, count, RELIABLE_SIZE);
    let bob_ms = bob.send(ada.user(), Policy::Reliable, count, RELIABLE_SIZE);
    let at_bob = bob.expect_packets(ada.user(), Policy::Reliable, count, RELIABLE_DELIVERY);
    let at_ada = ada.expect_packets(bob.user(), Policy::Reliable, count, RELIABLE_DELIVERY);
    eprintln!(
        "{count} reliable packets of {RELIABLE_SIZE} bytes each way: handed over in {ada_ms}/{bob_ms} ms, \
         all in after {} ms",
        started.elapsed().as_millis()
    );
    for (from, to, got) in [("ada", "bob", &at_bob), ("bob", "ada", &at_ada)] {
        assert!(
            got.complete
                && got.count == count
                && got.in_order
                && got.intact
                && got.duplicates == 0
                && got.other_policy == 0,
            "reliable packets {from} -> {to}: {got:?}"
        );
    }
}

/// What the receiver's `expect` commands saw of the unreliable packets.
#[derive(Debug, Default)]
struct Seen {
    count: u64,
    duplicates: u64,
    intact: bool,
}

impl Seen {
    fn expect(&mut self, to: &mut PeerNode, from: &PeerNode, count: u64, timeout: Duration) {
        if count == 0 {
            return;
        }
        let got = to.expect_packets(from.user(), Policy::Unreliable, count, timeout);
        self.count += got.count;
        self.duplicates += got.duplicates;
        self.intact &= got.intact;
    }
}

/// Sends `UNRELIABLE` packets from `from` to `to` in batches, each once the receiver has seen
/// [`PACING_SHARE`] of what was sent so far; then waits until the receiver's figures are quiet
/// (or balance exactly) and flushes the tail. Returns both sides' stats and what the test saw.
fn unreliable_one_way(from: &mut PeerNode, to: &mut PeerNode) -> Unreliable {
    let mut seen = Seen {
        intact: true,
        ..Seen::default()
    };
    let mut sent = 0;
    while sent < UNRELIABLE {
        from.send(
            to.user(),
            Policy::Unreliable,
            UNRELIABLE_BATCH,
            UNRELIABLE_SIZE,
        );
        sent += UNRELIABLE_BATCH;
        let floor = (sent as f64 * PACING_SHARE) as u64;
        let need = floor.saturating_sub(seen.count);
        seen.expect(to, from, need, BATCH_DELIVERY);
        assert!(
            seen.count >= floor,
            "after {sent} unreliable packets only {} arrived (more than {:.0}% lost)",
            seen.count,
            (1.0 - PACING_SHARE) * 100.0
        );
    }
    // The receiver counts a packet as lost only when a later one arrives, so packets lost at
    // the very end would stay unaccounted. Once the stragglers are in, send single flush packets
    // (bounded) until every measured packet is accounted for as received or lost.
    let measured = handed_to_quic(&from.stats(to.user()));
    let mut flushes = 0;
    let (sender, receiver) = loop {
        let (sender, receiver) = settle(from, to);
        let accounted = receiver.unreliable_received + receiver.unreliable_lost;
        if accounted >= measured || flushes >= FLUSH_MAX {
            break (sender, receiver);
        }
        from.send(to.user(), Policy::Unreliable, 1, UNRELIABLE_SIZE);
        flushes += 1;
    };
    // Collect what is still in the receiver's inbox.
    let waiting = receiver
        .unreliable_received
        .saturating_sub(receiver.unreliable_dropped_inbox_full)
        .saturating_sub(seen.count);
    seen.expect(to, from, waiting, BATCH_DELIVERY);
    Unreliable {
        seen,
        sender,
        receiver,
        measured,
        flushes,
    }
}

/// What [`unreliable_one_way`] found.
struct Unreliable {
    seen: Seen,
    sender: StatsReport,
    receiver: StatsReport,
    /// Packets handed to QUIC before the flush packets.
    measured: u64,
    /// Flush packets sent after them.
    flushes: u64,
}

/// Waits until the receiver's unreliable figures balance the sender's (nothing lost at the
/// tail) or stop changing for [`QUIET`]; bounded by [`SETTLE`].
fn settle(from: &mut PeerNode, to: &mut PeerNode) -> (StatsReport, StatsReport) {
    let deadline = Instant::now() + SETTLE;
    let mut last = None;
    let mut quiet_since = Instant::now();
    loop {
        let sender = from.stats(to.user());
        let receiver = to.stats(from.user());
        let now = (receiver.unreliable_received, receiver.unreliable_lost);
        if last != Some(now) {
            last = Some(now);
            quiet_since = Instant::now();
        }
        let balanced = handed_to_quic(&sender) == now.0 + now.1;
        if balanced || quiet_since.elapsed() >= QUIET || Instant::now() >= deadline {
            return (sender, receiver);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unreliable packets the sender gave to QUIC: each got a sequence number, so the receiver
/// counts it as received or (when a later one arrives) lost.
fn handed_to_quic(sender: &StatsReport) -> u64 {
    sender.unreliable_sent
        - sender.unreliable_dropped_queue_full
        - sender.unreliable_dropped_not_connected
        - sender.unreliable_dropped_fake
}

/// A player behind a port-restricted NAT whose link loses 10% each way and delays 50 ± 20 ms
/// each way, and one behind a full cone: they connect directly; 10 000 reliable packets each way
/// arrive exactly once, in order, intact; unreliable packets the other way are lost about as
/// often as the link drops them, and the counters account for every one.
#[test]
fn reliable_packets_survive_loss_and_delay() {
    let lab = rally_e2e::lab_or_skip!("loss-and-delay");
    let started = Instant::now();
    let server = ServerNode::start_default(&lab, node());
    let a_router = lab.add_router_impaired(NatKind::PortRestricted, IMPAIRED, node());
    let a_host = a_router.add_host();
    let b_host = lab.add_router(NatKind::FullCone).add_host();
    let mut ada = PeerNode::start(&a_host, node(), &server, "ada");
    let mut bob = PeerNode::start(&b_host, node(), &server, "bob");
    eprintln!(
        "lab and players up after {} ms (ada measured {}, bob {})",
        started.elapsed().as_millis(),
        ada.nat(),
        bob.nat()
    );

    ada.connect(bob.user());
    bob.connect(ada.user());
    let ab = ada
        .wait_connected(bob.user(), CONNECT)
        .unwrap_or_else(|failed| panic!("ada could not connect to bob: {failed:?}"));
    let ba = bob
        .wait_connected(ada.user(), CONNECT)
        .unwrap_or_else(|failed| panic!("bob could not connect to ada: {failed:?}"));
    eprintln!(
        "connected: ada {} after {} ms, bob {} after {} ms",
        ab.path, ab.ms, ba.path, ba.ms
    );
    assert_eq!((ab.path.as_str(), ba.path.as_str()), ("direct", "direct"));

    let phase = Instant::now();
    reliable_both_ways(&mut ada, &mut bob, RELIABLE);
    let reliable_ms = phase.elapsed().as_millis();
    let rtt = ada.stats(bob.user()).rtt_ms;
    eprintln!("after the reliable phase: ada's RTT to bob {rtt:?} ms");

    // Unreliable, bob to ada: through ada's link once, so ~10% of QUIC packets are dropped.
    let phase = Instant::now();
    let Unreliable {
        seen,
        sender,
        receiver,
        measured,
        flushes,
    } = unreliable_one_way(&mut bob, &mut ada);
    let unreliable_ms = phase.elapsed().as_millis();
    let handed = handed_to_quic(&sender);
    let lost = receiver.unreliable_lost;
    let accounted = receiver.unreliable_received + lost;
    let tail = handed.saturating_sub(accounted);
    let loss = lost as f64 / accounted.max(1) as f64;
    eprintln!(
        "unreliable bob -> ada: {} sent ({flushes} of them flush packets), {} refused by the full \
         queue, {handed} handed to QUIC, {} received ({} seen by the test), {lost} lost \
         ({:.1}%), {tail} unaccounted at the tail; RTT {:?} ms (ada) / {:?} ms (bob)",
        sender.unreliable_sent,
        sender.unreliable_dropped_queue_full,
        receiver.unreliable_received,
        seen.count,
        loss * 100.0,
        receiver.rtt_ms,
        sender.rtt_ms,
    );
    eprintln!(
        "phases: reliable {reliable_ms} ms, unreliable {unreliable_ms} ms; test {} ms",
        started.elapsed().as_millis()
    );

    // The link dropped about what it was told to, and the forwarder only delayed: it neither
    // dropped nor failed to send a frame.
    let link = lab.link_report(&a_router).expect("ada's link is impaired");
    eprintln!(
        "ada's link dropped {:.1}% out ({} of {}), {:.1}% in ({} of {}); forwarder {:?}",
        link.loss_out() * 100.0,
        link.dropped_out,
        link.seen_out,
        link.loss_in() * 100.0,
        link.dropped_in,
        link.seen_in,
        link.forwarder
    );
    for direction in [link.forwarder.a_to_b, link.forwarder.b_to_a] {
        assert!(
            direction.received > 0
                && direction.dropped_full == 0
                && direction.send_failed == 0
                && direction.forwarded <= direction.received,
            "{link:?}"
        );
    }
    for loss in [link.loss_out(), link.loss_in()] {
        assert!((0.04..=0.20).contains(&loss), "{link:?}");
    }

    assert_eq!(sender.unreliable_sent, UNRELIABLE + flushes, "{sender:?}");
    assert!(seen.intact && seen.duplicates == 0, "{seen:?}");
    assert_eq!(
        seen.count + receiver.unreliable_dropped_inbox_full,
        receiver.unreliable_received,
        "the test saw every packet the receiver counted: {receiver:?}"
    );
    assert!(
        receiver.unreliable_received + lost <= handed,
        "more received and lost than sent: {sender:?} {receiver:?}"
    );
    // Every measured packet is accounted for as received or lost (the flush packets sent after
    // them show the gaps); only flush packets may be left at the tail.
    assert!(
        accounted >= measured && tail <= flushes,
        "{measured} measured packets, {accounted} accounted for, {tail} unaccounted after \
         {flushes} flush packets: {sender:?} {receiver:?}"
    );
    assert!(
        (0.03..=0.30).contains(&loss),
        "{:.1}% of unreliable packets lost on a link that drops 10% one way",
        loss * 100.0
    );
    let rtt = receiver.rtt_ms.expect("connected, so an RTT");
    assert!(
        rtt >= 70.0,
        "RTT {rtt:.1} ms over a link delaying 50 ± 20 ms each way"
    );
}

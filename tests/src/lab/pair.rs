//! What most lab tests do with two players: connect them both ways and check that reliable
//! packets cross, once each, in order and intact. Every wait is bounded by the caller's limits.

use std::time::Duration;

use super::node::protocol::{Policy, Received};
use super::node::{Connection, PeerNode};

/// How long a connection may take to come up (the SDK's own connect timeout is 10 s).
pub const CONNECT: Duration = Duration::from_secs(15);
/// How long a burst of packets may take to arrive.
pub const DELIVERY: Duration = Duration::from_secs(20);

/// Both players ask for the connection (crossing connects count as consent on both sides) and
/// wait for it; returns each side's view. Panics when either side does not connect.
#[track_caller]
pub fn connect_both(a: &mut PeerNode, b: &mut PeerNode) -> (Connection, Connection) {
    a.connect(b.user());
    b.connect(a.user());
    wait_both(a, b)
}

/// Waits for the connection on both sides (within [`CONNECT`]); panics when either does not
/// come up.
#[track_caller]
pub fn wait_both(a: &mut PeerNode, b: &mut PeerNode) -> (Connection, Connection) {
    let (a_user, b_user) = (a.user(), b.user());
    let ab = a.wait_connected(b_user, CONNECT).unwrap_or_else(|failed| {
        panic!("{} could not connect to {}: {failed:?}", a.name(), b.name())
    });
    let ba = b.wait_connected(a_user, CONNECT).unwrap_or_else(|failed| {
        panic!("{} could not connect to {}: {failed:?}", b.name(), a.name())
    });
    eprintln!(
        "{} -> {}: {} after {} ms; {} -> {}: {} after {} ms",
        a.name(),
        b.name(),
        ab.path,
        ab.ms,
        b.name(),
        a.name(),
        ba.path,
        ba.ms
    );
    (ab, ba)
}

/// Whether `got` is `count` reliable packets, each once, in order and intact.
pub fn all_reliable(got: &Received, count: u64) -> bool {
    got.complete && got.count == count && got.in_order && got.intact && got.duplicates == 0
}

/// `count` reliable packets of `size` bytes from `from` reach `to` exactly once, in order and
/// intact (within [`DELIVERY`]); returns what `to` saw. Panics otherwise.
#[track_caller]
pub fn reliable_packets_arrive(
    from: &mut PeerNode,
    to: &mut PeerNode,
    count: u64,
    size: usize,
) -> Received {
    let sent_ms = from.send(to.user(), Policy::Reliable, count, size);
    let got = to.expect_packets(from.user(), Policy::Reliable, count, DELIVERY);
    eprintln!(
        "{count} reliable packets {} -> {}: sent in {sent_ms} ms, first after {:?} ms, all \
         received in {} ms",
        from.name(),
        to.name(),
        got.first_packet_ms,
        got.ms
    );
    assert!(
        all_reliable(&got, count),
        "reliable packets {} -> {}: {got:?}",
        from.name(),
        to.name()
    );
    got
}

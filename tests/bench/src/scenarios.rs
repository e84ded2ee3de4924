//! The scenarios' names, shared by the modules that measure Rally and those that measure the
//! baselines: rows compare (as ratios) only within one scenario name and metric.

/// Unreliable 1200-byte packets between one pair.
pub(crate) const UNRELIABLE: &str = "unreliable 1200 B, one pair";

/// The size of an unreliable packet in [`UNRELIABLE`] and of the background load of [`rtt`].
pub(crate) const UNRELIABLE_SIZE: usize = 1200;

/// Reliable packets of `size` bytes between one pair (1024, and 65533: the largest reliable
/// packet Rally takes, "64 KiB").
pub(crate) fn reliable(size: usize) -> String {
    match size {
        1024 => "reliable 1 KiB, one pair".to_owned(),
        65533 => "reliable 64 KiB (65533 B), one pair".to_owned(),
        other => format!("reliable {other} B, one pair"),
    }
}

/// The reliable packet sizes measured.
pub(crate) const RELIABLE_SIZES: [usize; 2] = [1024, 65533];

/// The size of a ping in the round-trip scenarios.
pub(crate) const PING_SIZE: usize = 64;

/// Round trips of [`PING_SIZE`]-byte pings, idle (`load_percent` 0) or with background
/// unreliable [`UNRELIABLE_SIZE`]-byte packets at `load_percent` of the maximum load (the best
/// bare s2n-quic datagram rate measured in [`UNRELIABLE`]) in the same direction.
pub(crate) fn rtt(load_percent: u8) -> String {
    if load_percent == 0 {
        "RTT, idle".to_owned()
    } else {
        format!("RTT at {load_percent}% load")
    }
}

/// The loads of the round-trip scenarios, in percent of the maximum.
pub(crate) const RTT_LOADS: [u8; 4] = [0, 10, 50, 90];

/// One packet to each of `peers` members of a room.
pub(crate) fn fan_out(peers: usize) -> String {
    format!("room fan-out to {peers} peers")
}

/// The room sizes of the fan-out scenario (other members).
pub(crate) const FAN_OUT_PEERS: [usize; 4] = [2, 4, 8, 16];

/// Time from asking to connect until both sides are connected, on loopback.
pub(crate) const CONNECT: &str = "connect on loopback";

/// One unary gRPC call at a time, answered with about [`UNARY_ANSWER_BYTES`].
pub(crate) const UNARY: &str = "unary GetRoom, ~4 KiB answer";

/// The size of the `GetRoom` answer in [`UNARY`].
pub(crate) const UNARY_ANSWER_BYTES: usize = 4096;

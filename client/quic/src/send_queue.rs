//! The outgoing datagram queue of one connection, with no IO: what goes into each packet.
//!
//! s2n-quic's default sender drops a queued datagram that does not fit the packet being built,
//! silently. This queue keeps it for the next packet instead, and gives up on it only when the
//! path has not carried it for longer than [`STUCK_BOUND`]; every datagram it gives up on is
//! counted. It is driven through s2n-quic's [`Packet`] trait, so tests drive it with a fake
//! packet and a fake clock.
//!
//! Not for: waking the connection or the application (see `datagram.rs`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use s2n_quic::provider::datagram::{Packet, WriteError};

/// How long the path may fail to carry the datagram at the head of the queue before it is dropped
/// (and counted in [`SendCounters::dropped_too_large`]).
pub(crate) const STUCK_BOUND: Duration = Duration::from_secs(1);

/// What the queue has done since the connection started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SendCounters {
    /// Datagrams written into packets.
    pub sent: u64,
    /// Datagrams refused by [`SendQueue::push`] because the queue was full.
    pub refused_queue_full: u64,
    /// Accepted datagrams dropped because the path did not carry them for longer than
    /// [`STUCK_BOUND`] (or the peer's limit refused them).
    pub dropped_too_large: u64,
    /// Accepted datagrams still queued when the connection closed.
    pub dropped_closed: u64,
}

/// The most header bytes a queued datagram carries in front of its payload.
pub const MAX_DATAGRAM_HEADER: usize = 16;

/// A datagram waiting to be sent: a short header kept inline and the payload, written into the
/// packet side by side, so that framing a payload never copies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outgoing {
    header: [u8; MAX_DATAGRAM_HEADER],
    header_len: u8,
    payload: Bytes,
}

impl Outgoing {
    /// `header` (at most [`MAX_DATAGRAM_HEADER`] bytes, else `None`) followed by `payload`.
    pub(crate) fn new(header: &[u8], payload: Bytes) -> Option<Self> {
        let mut inline = [0; MAX_DATAGRAM_HEADER];
        inline.get_mut(..header.len())?.copy_from_slice(header);
        Some(Self {
            header: inline,
            header_len: u8::try_from(header.len()).ok()?,
            payload,
        })
    }

    /// The datagram's size: header and payload.
    pub(crate) fn len(&self) -> usize {
        usize::from(self.header_len) + self.payload.len()
    }

    fn header(&self) -> &[u8] {
        &self.header[..usize::from(self.header_len)]
    }
}

impl From<Bytes> for Outgoing {
    fn from(payload: Bytes) -> Self {
        Self {
            header: [0; MAX_DATAGRAM_HEADER],
            header_len: 0,
            payload,
        }
    }
}

/// Why [`SendQueue::push`] refused a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue holds its capacity already.
    QueueFull,
    /// Larger than the connection ever carries.
    TooLarge { size: usize, max: usize },
    /// The connection is closed.
    Closed,
}

/// The head of the queue did not fit the packets offered since `since`.
#[derive(Debug, Clone, Copy)]
struct Stuck {
    since: Instant,
    /// The most room any packet offered meanwhile.
    best_room: usize,
}

/// The datagrams waiting to be sent on one connection.
#[derive(Debug)]
pub(crate) struct SendQueue {
    queue: VecDeque<Outgoing>,
    capacity: usize,
    max_payload: usize,
    stuck: Option<Stuck>,
    /// Set when the head was given up on: the most room the path offered while it waited.
    /// Datagrams larger than this are dropped at once until a packet offers more room.
    ceiling: Option<usize>,
    /// When streams have data too, datagrams take every other packet.
    streams_turn: bool,
    closed: bool,
    counters: SendCounters,
}

impl SendQueue {
    /// A queue of at most `capacity` datagrams of at most `max_payload` bytes each.
    pub(crate) fn new(capacity: usize, max_payload: usize) -> Self {
        Self {
            queue: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            max_payload,
            stuck: None,
            ceiling: None,
            streams_turn: false,
            closed: false,
            counters: SendCounters::default(),
        }
    }

    /// Queues a datagram. `Ok(true)` means the queue was empty (or stuck) before: the connection
    /// must be woken to look at it.
    pub(crate) fn push(&mut self, datagram: impl Into<Outgoing>) -> Result<bool, PushError> {
        let datagram = datagram.into();
        if self.closed {
            return Err(PushError::Closed);
        }
        if datagram.len() > self.max_payload {
            return Err(PushError::TooLarge {
                size: datagram.len(),
                max: self.max_payload,
            });
        }
        if self.queue.len() >= self.capacity {
            self.counters.refused_queue_full += 1;
            return Err(PushError::QueueFull);
        }
        let wake = self.queue.is_empty() || self.stuck.is_some();
        self.queue.push_back(datagram);
        Ok(wake)
    }

    /// Whether the connection should build a packet for us.
    pub(crate) fn has_interest(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether [`push`](Self::push) would take a datagram now (or refuse it for good: closed).
    pub(crate) fn has_room(&self) -> bool {
        self.closed || self.queue.len() < self.capacity
    }

    /// Whether the queue has drained to half its capacity or less: a sender waiting for room
    /// is woken then, so it refills a batch rather than one datagram at a time.
    pub(crate) fn half_empty(&self) -> bool {
        self.closed || self.queue.len() <= self.capacity / 2
    }

    /// Fills the packet being built with queued datagrams, oldest first. A datagram that does
    /// not fit stays at the head for the next packet, unless the path has failed to carry it
    /// for longer than [`STUCK_BOUND`]. `now` is read only when a datagram does not fit.
    pub(crate) fn on_transmit<P: Packet>(&mut self, packet: &mut P, now: impl Fn() -> Instant) {
        if self.queue.is_empty() {
            return;
        }
        if packet.has_pending_streams() {
            self.streams_turn = !self.streams_turn;
            if self.streams_turn {
                return;
            }
        }
        let room = packet.remaining_capacity();
        if self.ceiling.is_some_and(|ceiling| room > ceiling) {
            self.ceiling = None;
        }
        if let Some(stuck) = &mut self.stuck {
            stuck.best_room = stuck.best_room.max(room);
        }
        while let Some(head) = self.queue.front() {
            if head.len() <= packet.remaining_capacity() {
                match packet.write_datagram_vectored(&[head.header(), &head.payload]) {
                    Ok(()) => {
                        self.queue.pop_front();
                        self.counters.sent += 1;
                        self.stuck = None;
                        continue;
                    }
                    Err(WriteError::ExceedsPeerTransportLimits) => {
                        self.queue.pop_front();
                        self.counters.dropped_too_large += 1;
                        continue;
                    }
                    // The packet had less room than it said: treat as not fitting.
                    Err(_) => {}
                }
            }
            if !self.give_up_on_head(room, &now) {
                break;
            }
        }
    }

    /// The head does not fit this packet. Drops it (and says so) when the path is known to be
    /// too small for it or has not carried it for longer than [`STUCK_BOUND`].
    fn give_up_on_head(&mut self, room: usize, now: &impl Fn() -> Instant) -> bool {
        let Some(size) = self.queue.front().map(Outgoing::len) else {
            return false;
        };
        if self.ceiling.is_some_and(|ceiling| size > ceiling) {
            self.drop_head();
            return true;
        }
        let now = now();
        let stuck = *self.stuck.get_or_insert(Stuck {
            since: now,
            best_room: room,
        });
        if now.saturating_duration_since(stuck.since) < STUCK_BOUND {
            return false;
        }
        self.ceiling = Some(stuck.best_room);
        self.drop_head();
        true
    }

    fn drop_head(&mut self) {
        self.queue.pop_front();
        self.counters.dropped_too_large += 1;
        self.stuck = None;
    }

    /// The connection closed: nothing more is accepted, and what is queued is counted as
    /// dropped.
    pub(crate) fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.counters.dropped_closed += self.queue.len() as u64;
        self.queue.clear();
        self.stuck = None;
    }

    /// The counters so far.
    pub(crate) fn counters(&self) -> SendCounters {
        self.counters
    }

    /// How many datagrams wait.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet with a fixed amount of room that records what was written.
    struct FakePacket {
        room: usize,
        streams: bool,
        written: Vec<usize>,
        /// The bytes of each datagram written.
        contents: Vec<Vec<u8>>,
    }

    impl FakePacket {
        fn new(room: usize) -> Self {
            Self {
                room,
                streams: false,
                written: Vec::new(),
                contents: Vec::new(),
            }
        }
    }

    impl Packet for FakePacket {
        fn remaining_capacity(&self) -> usize {
            self.room
        }
        fn write_datagram(&mut self, data: &[u8]) -> Result<(), WriteError> {
            self.write_datagram_vectored(&[data])
        }
        fn write_datagram_vectored(&mut self, data: &[&[u8]]) -> Result<(), WriteError> {
            let len: usize = data.iter().map(|d| d.len()).sum();
            if len > self.room {
                return Err(WriteError::ExceedsPacketCapacity);
            }
            // Frame type and length take a few bytes too.
            self.room = self.room.saturating_sub(len + 3);
            self.written.push(len);
            self.contents.push(data.concat());
            Ok(())
        }
        fn has_pending_streams(&self) -> bool {
            self.streams
        }
        fn datagrams_prioritized(&self) -> bool {
            false
        }
    }

    fn datagram(len: usize) -> Bytes {
        Bytes::from(vec![7u8; len])
    }

    #[test]
    fn a_header_goes_in_front_of_its_payload_and_counts_against_the_limits() {
        let mut queue = SendQueue::new(4, 10);
        let framed = Outgoing::new(&[1, 2, 3], Bytes::from_static(&[9, 9, 9, 9])).expect("short");
        assert_eq!(framed.len(), 7);
        assert_eq!(queue.push(framed), Ok(true));
        assert_eq!(queue.push(datagram(2)), Ok(false));
        let too_large = Outgoing::new(&[1, 2, 3], datagram(8)).expect("short");
        assert_eq!(
            queue.push(too_large),
            Err(PushError::TooLarge { size: 11, max: 10 })
        );
        let mut packet = FakePacket::new(1400);
        queue.on_transmit(&mut packet, Instant::now);
        assert_eq!(packet.contents, vec![vec![1, 2, 3, 9, 9, 9, 9], vec![7, 7]]);
        assert!(Outgoing::new(&[0; MAX_DATAGRAM_HEADER + 1], Bytes::new()).is_none());
    }

    fn queue_with(sizes: &[usize]) -> SendQueue {
        let mut queue = SendQueue::new(16, 1400);
        for &size in sizes {
            assert!(queue.push(datagram(size)).is_ok());
        }
        queue
    }

    #[test]
    fn a_datagram_that_does_not_fit_waits_for_the_next_packet() {
        let start = Instant::now();
        let mut queue = queue_with(&[1000, 1216]);

        let mut first = FakePacket::new(1400);
        queue.on_transmit(&mut first, || start);
        assert_eq!(first.written, vec![1000]);
        assert_eq!(queue.len(), 1, "the 1216-byte datagram is kept");

        let mut second = FakePacket::new(1400);
        queue.on_transmit(&mut second, || start);
        assert_eq!(second.written, vec![1216]);
        assert_eq!(queue.counters().sent, 2);
        assert_eq!(queue.counters().dropped_too_large, 0);
    }

    #[test]
    fn a_packet_filled_by_acks_keeps_every_datagram_for_later() {
        let start = Instant::now();
        let mut queue = queue_with(&[1216, 1216]);
        queue.on_transmit(&mut FakePacket::new(40), || start);
        assert_eq!(queue.len(), 2);
        for _ in 0..2 {
            queue.on_transmit(&mut FakePacket::new(1400), || start);
        }
        assert_eq!(queue.counters().sent, 2);
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn room_opens_when_a_full_queue_drains_and_half_empty_comes_at_half() {
        let mut queue = queue_with(&[100; 16]);
        assert!(!queue.has_room() && !queue.half_empty());
        assert_eq!(queue.push(datagram(100)), Err(PushError::QueueFull));
        // Each packet takes a few: room comes with the first, half empty only at 8 left.
        let mut taken = 0;
        while !queue.half_empty() {
            queue.on_transmit(&mut FakePacket::new(350), Instant::now);
            taken += 3;
            assert!(queue.has_room());
        }
        assert_eq!(taken, 9);
        assert_eq!(queue.len(), 7);
        queue.close();
        assert!(
            queue.has_room() && queue.half_empty(),
            "closed: nobody waits"
        );
    }

    #[test]
    fn small_datagrams_share_a_packet_in_order() {
        let mut queue = queue_with(&[100, 200, 300]);
        let mut packet = FakePacket::new(1400);
        queue.on_transmit(&mut packet, Instant::now);
        assert_eq!(packet.written, vec![100, 200, 300]);
        assert!(!queue.has_interest());
    }

    #[test]
    fn a_path_too_small_for_longer_than_the_bound_drops_and_counts_the_datagram() {
        let start = Instant::now();
        let mut queue = queue_with(&[1216, 1216, 1216, 100]);
        // The path fell back to a 1228-byte MTU: about 1150 bytes of room.
        queue.on_transmit(&mut FakePacket::new(1150), || start);
        queue.on_transmit(&mut FakePacket::new(1150), || start + STUCK_BOUND / 2);
        assert_eq!(queue.len(), 4, "within the bound everything waits");
        assert_eq!(queue.counters().dropped_too_large, 0);

        let mut packet = FakePacket::new(1150);
        queue.on_transmit(&mut packet, || start + STUCK_BOUND);
        // The head waited the bound; the ones behind it are larger than the path has offered
        // meanwhile, so they go at once; the small one is sent.
        assert_eq!(queue.counters().dropped_too_large, 3);
        assert_eq!(packet.written, vec![100]);
        assert_eq!(queue.counters().sent, 1);
    }

    #[test]
    fn a_larger_packet_lifts_the_ceiling() {
        let start = Instant::now();
        let mut queue = queue_with(&[1216]);
        queue.on_transmit(&mut FakePacket::new(1150), || start);
        queue.on_transmit(&mut FakePacket::new(1150), || start + STUCK_BOUND);
        assert_eq!(queue.counters().dropped_too_large, 1);

        // The MTU probe succeeded: packets are large again.
        assert!(queue.push(datagram(1216)).is_ok());
        let mut packet = FakePacket::new(1400);
        queue.on_transmit(&mut packet, || start + STUCK_BOUND);
        assert_eq!(packet.written, vec![1216]);
        assert_eq!(queue.counters().dropped_too_large, 1);
    }

    #[test]
    fn a_datagram_sent_after_waiting_resets_the_wait() {
        let start = Instant::now();
        let mut queue = queue_with(&[1216, 1216]);
        queue.on_transmit(&mut FakePacket::new(40), || start);
        queue.on_transmit(&mut FakePacket::new(1400), || start + STUCK_BOUND / 2);
        assert_eq!(queue.counters().sent, 1);
        // The second datagram starts its own wait.
        queue.on_transmit(&mut FakePacket::new(40), || start + STUCK_BOUND);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.counters().dropped_too_large, 0);
    }

    #[test]
    fn a_full_queue_refuses_and_counts() {
        let mut queue = SendQueue::new(2, 1400);
        assert_eq!(queue.push(datagram(10)), Ok(true));
        assert_eq!(queue.push(datagram(10)), Ok(false));
        assert_eq!(queue.push(datagram(10)), Err(PushError::QueueFull));
        assert_eq!(queue.counters().refused_queue_full, 1);
    }

    #[test]
    fn an_oversized_datagram_is_refused_up_front() {
        let mut queue = SendQueue::new(2, 1400);
        assert_eq!(
            queue.push(datagram(1401)),
            Err(PushError::TooLarge {
                size: 1401,
                max: 1400
            })
        );
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn closing_counts_what_was_still_queued() {
        let mut queue = queue_with(&[10, 20, 30]);
        queue.close();
        assert_eq!(queue.counters().dropped_closed, 3);
        assert_eq!(queue.push(datagram(10)), Err(PushError::Closed));
        assert!(!queue.has_interest());
    }

    #[test]
    fn streams_and_datagrams_take_turns() {
        let mut queue = queue_with(&[100, 100, 100, 100]);
        let mut sent_per_packet = Vec::new();
        for _ in 0..4 {
            let mut packet = FakePacket::new(150);
            packet.streams = true;
            queue.on_transmit(&mut packet, Instant::now);
            sent_per_packet.push(packet.written.len());
        }
        assert_eq!(sent_per_packet, vec![0, 1, 0, 1]);
    }

    #[test]
    fn the_peer_limit_drops_and_counts() {
        struct Refusing;
        impl Packet for Refusing {
            fn remaining_capacity(&self) -> usize {
                1400
            }
            fn write_datagram(&mut self, _: &[u8]) -> Result<(), WriteError> {
                Err(WriteError::ExceedsPeerTransportLimits)
            }
            fn write_datagram_vectored(&mut self, _: &[&[u8]]) -> Result<(), WriteError> {
                Err(WriteError::ExceedsPeerTransportLimits)
            }
            fn has_pending_streams(&self) -> bool {
                false
            }
            fn datagrams_prioritized(&self) -> bool {
                false
            }
        }
        let mut queue = queue_with(&[100, 200]);
        queue.on_transmit(&mut Refusing, Instant::now);
        assert_eq!(queue.counters().dropped_too_large, 2);
        assert!(!queue.has_interest());
    }
}

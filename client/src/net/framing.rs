//! Rally's framing on a peer-to-peer QUIC connection (sans-IO: bytes in, values out).
//!
//! - **Datagrams** (unreliable packets and pings): a 1-byte kind, a 4-byte big-endian sequence
//!   number (unreliable packets) or ping id (pings), then the payload. The receiver counts the
//!   gaps in the unreliable sequence as packets the network lost.
//! - **Reliable streams**: each side opens one QUIC stream per lane it sends on; the stream
//!   starts with a 1-byte lane number, then carries frames of a 2-byte big-endian payload
//!   length and the payload. A frame is at most 65535 bytes, so a reliable packet carries at most
//!   [`MAX_RELIABLE_PAYLOAD`] bytes of game data.

use bytes::{BufMut, Bytes, BytesMut};

/// Most bytes of game data in an unreliable packet.
pub const MAX_UNRELIABLE_PAYLOAD: usize = 1200;
/// Bytes of Rally's header on a datagram.
pub const DATAGRAM_HEADER: usize = 5;
/// Most bytes a reliable packet takes on the wire, Rally's framing included.
pub const MAX_RELIABLE_FRAME: usize = 65535;
/// Bytes of Rally's framing on a reliable packet.
pub const RELIABLE_HEADER: usize = 2;
/// Most bytes of game data in a reliable packet.
pub const MAX_RELIABLE_PAYLOAD: usize = MAX_RELIABLE_FRAME - RELIABLE_HEADER;
/// Independent reliable lanes per peer (0 to `LANES - 1`).
pub const LANES: u8 = 8;

const KIND_UNRELIABLE: u8 = 1;
const KIND_PING: u8 = 2;
const KIND_PONG: u8 = 3;

/// A decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram {
    /// An unreliable game packet and its sequence number.
    Unreliable {
        /// Sender's sequence number (one per unreliable packet handed to QUIC).
        sequence: u32,
        /// Game data.
        payload: Bytes,
    },
    /// A ping with its id.
    Ping {
        /// Echoed in the pong.
        id: u32,
    },
    /// The answer to a ping.
    Pong {
        /// The ping's id.
        id: u32,
    },
}

/// Why a datagram did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Shorter than the header.
    #[error("datagram shorter than Rally's header")]
    Short,
    /// An unknown kind byte.
    #[error("unknown datagram kind {0}")]
    UnknownKind(u8),
    /// Larger than a Rally datagram can be.
    #[error("datagram of {0} bytes is larger than Rally sends")]
    TooLong(usize),
    /// A lane number outside `0..LANES`.
    #[error("lane {0} does not exist")]
    BadLane(u8),
    /// Stream header flags this version does not know.
    #[error("unknown stream flags {0:#04x}")]
    BadFlags(u8),
}

impl Datagram {
    /// The header of an unreliable datagram with `sequence`: what goes in front of its
    /// payload (`encode` without copying the payload).
    pub fn unreliable_header(sequence: u32) -> [u8; DATAGRAM_HEADER] {
        let [a, b, c, d] = sequence.to_be_bytes();
        [KIND_UNRELIABLE, a, b, c, d]
    }

    /// The encoded datagram.
    pub fn encode(&self) -> Bytes {
        let (kind, number, payload): (u8, u32, &[u8]) = match self {
            Self::Unreliable { sequence, payload } => (KIND_UNRELIABLE, *sequence, payload),
            Self::Ping { id } => (KIND_PING, *id, &[]),
            Self::Pong { id } => (KIND_PONG, *id, &[]),
        };
        let mut out = BytesMut::with_capacity(DATAGRAM_HEADER + payload.len());
        out.put_u8(kind);
        out.put_u32(number);
        out.put_slice(payload);
        out.freeze()
    }

    /// Decodes a received datagram (any bytes: a peer controls them).
    pub fn decode(datagram: Bytes) -> Result<Self, FramingError> {
        if datagram.len() < DATAGRAM_HEADER {
            return Err(FramingError::Short);
        }
        if datagram.len() > DATAGRAM_HEADER + MAX_UNRELIABLE_PAYLOAD {
            return Err(FramingError::TooLong(datagram.len()));
        }
        let number = u32::from_be_bytes([datagram[1], datagram[2], datagram[3], datagram[4]]);
        match datagram[0] {
            KIND_UNRELIABLE => Ok(Self::Unreliable {
                sequence: number,
                payload: datagram.slice(DATAGRAM_HEADER..),
            }),
            KIND_PING if datagram.len() == DATAGRAM_HEADER => Ok(Self::Ping { id: number }),
            KIND_PONG if datagram.len() == DATAGRAM_HEADER => Ok(Self::Pong { id: number }),
            KIND_PING | KIND_PONG => Err(FramingError::TooLong(datagram.len())),
            kind => Err(FramingError::UnknownKind(kind)),
        }
    }
}

/// Bytes that open a reliable stream: the lane (1), the lane's stream number (4, big-endian)
/// and flags (1).
pub const STREAM_HEADER: usize = 6;
const FLAG_FOLLOWS: u8 = 1;

/// What opens a reliable stream. A lane's frames travel on one stream per connection; when the
/// sender moves a lane to another connection (a path upgrade), the new stream `follows` the
/// previous one, which it finished cleanly on a connection still open: the receiver delivers the
/// new stream's frames only after the previous stream's, so nothing is reordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    /// The lane.
    pub lane: u8,
    /// The lane's stream number (0, 1, 2, ... per sender and lane).
    pub index: u32,
    /// Whether the previous stream (`index - 1`) must be read to its end first.
    pub follows: bool,
}

impl StreamHeader {
    /// The encoded header.
    pub fn encode(&self) -> [u8; STREAM_HEADER] {
        let index = self.index.to_be_bytes();
        let flags = if self.follows { FLAG_FOLLOWS } else { 0 };
        [self.lane, index[0], index[1], index[2], index[3], flags]
    }

    fn decode(bytes: &[u8]) -> Result<Self, FramingError> {
        let [lane, a, b, c, d, flags] = bytes else {
            return Err(FramingError::Short);
        };
        if flags & !FLAG_FOLLOWS != 0 {
            return Err(FramingError::BadFlags(*flags));
        }
        Ok(Self {
            lane: check_lane(*lane)?,
            index: u32::from_be_bytes([*a, *b, *c, *d]),
            follows: flags & FLAG_FOLLOWS != 0,
        })
    }
}

/// Checks a lane byte read from a stream.
pub fn check_lane(byte: u8) -> Result<u8, FramingError> {
    if byte < LANES {
        Ok(byte)
    } else {
        Err(FramingError::BadLane(byte))
    }
}

/// The frame header of a reliable payload (at most [`MAX_RELIABLE_PAYLOAD`] bytes; the caller
/// checks).
pub fn frame_header(payload_len: usize) -> [u8; RELIABLE_HEADER] {
    u16::try_from(payload_len).unwrap_or(u16::MAX).to_be_bytes()
}

/// Reassembles a reliable stream's frames from the chunks QUIC delivers (any split: a peer
/// controls them).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    header: Option<StreamHeader>,
    buffer: BytesMut,
}

impl FrameDecoder {
    /// Adds received bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The stream's lane, once its header arrived.
    pub fn lane(&self) -> Option<u8> {
        self.header.map(|h| h.lane)
    }

    /// The stream's header, once it arrived.
    pub fn header(&self) -> Option<StreamHeader> {
        self.header
    }

    /// The next complete frame's payload, if one is buffered. Call until `Ok(None)` after each
    /// push, so the buffer never holds more than one frame and one chunk.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FramingError> {
        if self.header.is_none() {
            if self.buffer.len() < STREAM_HEADER {
                return Ok(None);
            }
            let header = self.buffer.split_to(STREAM_HEADER);
            self.header = Some(StreamHeader::decode(&header)?);
        }
        if self.buffer.len() < RELIABLE_HEADER {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([self.buffer[0], self.buffer[1]]));
        if len > MAX_RELIABLE_PAYLOAD {
            return Err(FramingError::TooLong(len));
        }
        if self.buffer.len() < RELIABLE_HEADER + len {
            return Ok(None);
        }
        let mut frame = self.buffer.split_to(RELIABLE_HEADER + len);
        Ok(Some(frame.split_off(RELIABLE_HEADER).freeze()))
    }

    /// Bytes buffered and not yet returned (a stream that ends with some is truncated).
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

/// Counts what the network lost of a peer's unreliable packets from their sequence numbers.
///
/// Sequence numbers start at 0 and grow by one per packet handed to QUIC; a gap is counted lost
/// when a later packet arrives, and un-counted if the missing one arrives late (reordered).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LossCounter {
    /// The next sequence number expected (one past the highest seen).
    next: u64,
    /// Packets received.
    received: u64,
    /// Packets received that were older than the highest seen (reordered or duplicated).
    late: u64,
}

impl LossCounter {
    /// Records a received sequence number (a `u32` that wraps; tracked as 64 bits).
    pub fn record(&mut self, sequence: u32) {
        self.received += 1;
        let expected_low = (self.next & 0xffff_ffff) as u32;
        let ahead = sequence.wrapping_sub(expected_low);
        if ahead < 0x8000_0000 {
            self.next += u64::from(ahead) + 1;
        } else {
            self.late += 1;
        }
    }

    /// Packets received.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets sent but not (yet) received, as far as the sequence numbers tell: a duplicate
    /// makes it smaller, never below zero.
    pub fn lost(&self) -> u64 {
        self.next.saturating_sub(self.received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_unreliable_header_is_what_encode_puts_before_the_payload() {
        let payload = Bytes::from_static(b"state");
        let datagram = Datagram::Unreliable {
            sequence: 0x0102_0304,
            payload: payload.clone(),
        };
        let framed = [&Datagram::unreliable_header(0x0102_0304)[..], &payload].concat();
        assert_eq!(&datagram.encode()[..], &framed[..]);
    }

    #[test]
    fn datagrams_round_trip() {
        for datagram in [
            Datagram::Unreliable {
                sequence: 7,
                payload: Bytes::from(vec![9; MAX_UNRELIABLE_PAYLOAD]),
            },
            Datagram::Unreliable {
                sequence: u32::MAX,
                payload: Bytes::new(),
            },
            Datagram::Ping { id: 1 },
            Datagram::Pong { id: 2 },
        ] {
            assert_eq!(Datagram::decode(datagram.encode()), Ok(datagram));
        }
    }

    #[test]
    fn malformed_datagrams_are_errors() {
        assert_eq!(
            Datagram::decode(Bytes::from_static(&[1, 0, 0])),
            Err(FramingError::Short)
        );
        assert_eq!(
            Datagram::decode(Bytes::from_static(&[9, 0, 0, 0, 0])),
            Err(FramingError::UnknownKind(9))
        );
        assert!(Datagram::decode(Bytes::from(vec![1; DATAGRAM_HEADER + 1201])).is_err());
        assert!(Datagram::decode(Bytes::from_static(&[2, 0, 0, 0, 0, 1])).is_err());
        assert_eq!(check_lane(LANES), Err(FramingError::BadLane(LANES)));
        assert_eq!(check_lane(0), Ok(0));
    }

    #[test]
    fn the_largest_reliable_payload_fills_a_frame_exactly() {
        assert_eq!(frame_header(MAX_RELIABLE_PAYLOAD), [0xff, 0xfd]);
        assert_eq!(MAX_RELIABLE_PAYLOAD + RELIABLE_HEADER, 65535);
    }

    #[test]
    fn gaps_count_as_lost_until_the_late_packet_arrives() {
        let mut counter = LossCounter::default();
        for sequence in [0, 1, 4] {
            counter.record(sequence);
        }
        assert_eq!((counter.received(), counter.lost()), (3, 2));
        counter.record(2);
        assert_eq!((counter.received(), counter.lost()), (4, 1));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut counter = LossCounter {
            next: u64::from(u32::MAX) - 1,
            received: u64::from(u32::MAX) - 1,
            late: 0,
        };
        counter.record(u32::MAX - 1);
        counter.record(u32::MAX);
        counter.record(0);
        counter.record(2);
        assert_eq!(counter.lost(), 1);
    }

    fn encode_stream(lane: u8, payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut stream = StreamHeader {
            lane,
            index: 7,
            follows: true,
        }
        .encode()
        .to_vec();
        for payload in payloads {
            stream.extend_from_slice(&frame_header(payload.len()));
            stream.extend_from_slice(payload);
        }
        stream
    }

    #[test]
    fn a_bad_lane_or_an_oversized_frame_is_an_error() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&[LANES, 0, 0, 0, 0, 0]);
        assert_eq!(decoder.next_frame(), Err(FramingError::BadLane(LANES)));
        let mut decoder = FrameDecoder::default();
        decoder.push(&[0, 0, 0, 0, 0, 2]);
        assert_eq!(decoder.next_frame(), Err(FramingError::BadFlags(2)));
        let mut decoder = FrameDecoder::default();
        decoder.push(&[0, 0, 0, 0, 0, 0, 0xff, 0xfe]);
        assert!(decoder.next_frame().is_err());
    }

    proptest! {
        #[test]
        fn frames_survive_any_split_into_chunks(
            lane in 0..LANES,
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..8),
            cuts in proptest::collection::vec(1usize..4000, 0..20),
        ) {
            let stream = encode_stream(lane, &payloads);
            let mut decoder = FrameDecoder::default();
            let mut got = Vec::new();
            let mut rest = stream.as_slice();
            for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                let (chunk, tail) = rest.split_at((*cut).min(rest.len()));
                rest = tail;
                decoder.push(chunk);
                while let Some(frame) = decoder.next_frame().expect("valid stream") {
                    got.push(frame.to_vec());
                }
            }
            prop_assert_eq!(decoder.lane(), Some(lane));
            prop_assert_eq!(decoder.header().map(|h| (h.index, h.follows)), Some((7, true)));
            prop_assert_eq!(got, payloads);
            prop_assert_eq!(decoder.pending(), 0);
        }

        #[test]
        fn any_stream_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let mut decoder = FrameDecoder::default();
            decoder.push(&bytes);
            while let Ok(Some(_)) = decoder.next_frame() {}
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let _ = Datagram::decode(Bytes::from(bytes));
        }

        #[test]
        fn in_order_delivery_with_drops_counts_exactly_the_drops(drops in proptest::collection::vec(any::<bool>(), 1..500)) {
            let mut counter = LossCounter::default();
            let mut dropped = 0u64;
            let last_kept = drops.iter().rposition(|d| !d);
            for (sequence, drop) in drops.iter().enumerate() {
                if *drop {
                    if last_kept.is_some_and(|last| sequence < last) {
                        dropped += 1;
                    }
                } else {
                    counter.record(sequence as u32);
                }
            }
            prop_assert_eq!(counter.lost(), dropped);
        }
    }
}

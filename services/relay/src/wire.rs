//! The relay's datagram format: a sans-IO codec.
//!
//! Every datagram starts with a four-byte header: the magic `RY`, the version (1) and a kind.
//! Integers are big-endian. Decoding accepts exactly the encoded forms and answers anything else
//! with a [`WireError`], never a panic; sizes are bounded by the datagram itself.
//!
//! | kind | message | body |
//! |---|---|---|
//! | 1 | [`Message::BindingRequest`] | transaction id (12), respond-from (1: 0, 1 or 2), zero padding to [`BINDING_REQUEST_BYTES`] |
//! | 2 | [`Message::BindingResponse`] | transaction id (12), address |
//! | 3 | [`Message::Allocate`] | side (1: 0 or 1), grant ([`GRANT_BYTES`]) |
//! | 4 | [`Message::Allocated`] | allocation (16), expiry in ms (8) |
//! | 5 | [`Message::Refused`] | allocation (16), reason (1) |
//! | 6 | [`Message::Data`] | allocation (16), payload (the rest, opaque) |
//! | 7 | [`Message::Release`] | release ([`RELEASE_BYTES`]: key id, allocation, issue time, MAC) |
//!
//! An address is a family byte (4 or 6), the port (2) and the IP (4 or 16 bytes). A binding
//! request is padded so that it is never smaller than any binding response: the reflector cannot
//! be used to amplify traffic towards a spoofed source.
//!
//! A binding request says where its answer should come from ([`RespondFrom`]): the address it
//! was sent to, or another of the relay's addresses. That is what a client needs to classify its
//! NAT the way RFC 5780 does: its mapping behaviour from the addresses two relay IPs see, its
//! filtering behaviour from whether an answer from an address or port it never sent to gets
//! through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::grant::{GRANT_BYTES, RELEASE_BYTES};

/// The first two bytes of every relay datagram.
pub const MAGIC: [u8; 2] = *b"RY";
/// The protocol version this codec speaks.
pub const VERSION: u8 = 1;
/// Header bytes before every body.
pub const HEADER_BYTES: usize = 4;
/// The exact size of a binding request (larger than any binding response).
pub const BINDING_REQUEST_BYTES: usize = 48;
/// Bytes of Data framing before the payload.
pub const DATA_OVERHEAD: usize = HEADER_BYTES + 16;

/// Why an allocation or a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedReason {
    /// The grant did not verify (unknown key, bad MAC, malformed).
    BadGrant,
    /// The grant or allocation expired.
    Expired,
    /// The side was already bound to another address.
    SideTaken,
    /// The relay holds as many allocations as it may.
    Full,
    /// The allocation's byte cap or rate was exceeded.
    OverLimit,
    /// No such allocation, or not from one of its two addresses.
    UnknownAllocation,
    /// The grant is for the other side.
    WrongSide,
    /// The allocation was released (its pair ended): its grants no longer count.
    Released,
    /// One of the grant's users holds as many allocations as a user may.
    UserQuota,
}

impl RefusedReason {
    fn code(self) -> u8 {
        match self {
            Self::BadGrant => 1,
            Self::Expired => 2,
            Self::SideTaken => 3,
            Self::Full => 4,
            Self::OverLimit => 5,
            Self::UnknownAllocation => 6,
            Self::WrongSide => 7,
            Self::Released => 8,
            Self::UserQuota => 9,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::BadGrant,
            2 => Self::Expired,
            3 => Self::SideTaken,
            4 => Self::Full,
            5 => Self::OverLimit,
            6 => Self::UnknownAllocation,
            7 => Self::WrongSide,
            8 => Self::Released,
            9 => Self::UserQuota,
            _ => return None,
        })
    }
}

/// Which of the relay's addresses a binding response is sent from (RFC 5780's CHANGE-REQUEST).
///
/// A relay that has no such address does not answer at all, so a client tells "filtered by my
/// NAT" from "not offered by this relay" only by asking one that has it (the broker announces
/// every address of a relay that listens on several).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RespondFrom {
    /// The address the request was sent to.
    #[default]
    Same,
    /// An address with another IP (and, where the relay has one, another port).
    OtherAddress,
    /// An address with the same IP and another port.
    OtherPort,
}

impl RespondFrom {
    fn code(self) -> u8 {
        match self {
            Self::Same => 0,
            Self::OtherAddress => 1,
            Self::OtherPort => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Same,
            1 => Self::OtherAddress,
            2 => Self::OtherPort,
            _ => return None,
        })
    }
}

/// A relay datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// "What address do you see me at?"
    BindingRequest {
        /// Echoed in the response.
        transaction: [u8; 12],
        /// Which of the relay's addresses should answer.
        respond_from: RespondFrom,
    },
    /// The address the reflector saw.
    BindingResponse {
        /// The request's transaction id.
        transaction: [u8; 12],
        /// The source address of the request.
        address: SocketAddr,
    },
    /// A peer presents its grant from the socket it will use.
    Allocate {
        /// Which of the grant's users this is: 0 for `user_a`, 1 for `user_b`.
        side: u8,
        /// The signed grant, as the broker gave it.
        grant: &'a [u8; GRANT_BYTES],
    },
    /// The relay bound this peer's address to the allocation.
    Allocated {
        /// The allocation.
        allocation: [u8; 16],
        /// When it ends (milliseconds since the Unix epoch).
        expires_at_ms: u64,
    },
    /// An allocation request or a datagram was refused.
    Refused {
        /// The allocation concerned.
        allocation: [u8; 16],
        /// Why.
        reason: RefusedReason,
    },
    /// A datagram for the other peer of an allocation, forwarded unchanged.
    Data {
        /// The allocation.
        allocation: [u8; 16],
        /// The peers' opaque, end-to-end encrypted bytes.
        payload: &'a [u8],
    },
    /// The broker ends an allocation whose pair ended (signed, see
    /// [`crate::grant::sign_release`]). Never answered.
    Release {
        /// The signed release.
        release: &'a [u8; RELEASE_BYTES],
    },
}

/// Why a datagram did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its kind requires, or longer than it allows.
    #[error("datagram has the wrong length for its kind")]
    Length,
    /// Not a relay datagram.
    #[error("not a relay datagram")]
    Magic,
    /// A version this relay does not speak.
    #[error("unsupported relay protocol version {0}")]
    Version(u8),
    /// An unknown message kind.
    #[error("unknown relay message kind {0}")]
    Kind(u8),
    /// A field with a value outside its range.
    #[error("invalid {0}")]
    Field(&'static str),
}

fn take<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], WireError> {
    bytes
        .get(at..at + N)
        .and_then(|slice| slice.try_into().ok())
        .ok_or(WireError::Length)
}

/// Decodes one datagram.
pub fn decode(datagram: &[u8]) -> Result<Message<'_>, WireError> {
    let header: [u8; HEADER_BYTES] = take(datagram, 0)?;
    if header[..2] != MAGIC {
        return Err(WireError::Magic);
    }
    if header[2] != VERSION {
        return Err(WireError::Version(header[2]));
    }
    let body = &datagram[HEADER_BYTES..];
    let exact = |len: usize| {
        if body.len() == len {
            Ok(())
        } else {
            Err(WireError::Length)
        }
    };
    match header[3] {
        1 => {
            exact(BINDING_REQUEST_BYTES - HEADER_BYTES)?;
            let [code] = take(body, 12)?;
            let respond_from =
                RespondFrom::from_code(code).ok_or(WireError::Field("respond_from"))?;
            if body[13..].iter().any(|b| *b != 0) {
                return Err(WireError::Field("padding"));
            }
            Ok(Message::BindingRequest {
                transaction: take(body, 0)?,
                respond_from,
            })
        }
        2 => {
            let transaction = take(body, 0)?;
            let (address, used) = decode_address(&body[12..])?;
            exact(12 + used)?;
            Ok(Message::BindingResponse {
                transaction,
                address,
            })
        }
        3 => {
            exact(1 + GRANT_BYTES)?;
            let side = body[0];
            if side > 1 {
                return Err(WireError::Field("side"));
            }
            let grant = body[1..].try_into().map_err(|_| WireError::Length)?;
            Ok(Message::Allocate { side, grant })
        }
        4 => {
            exact(16 + 8)?;
            Ok(Message::Allocated {
                allocation: take(body, 0)?,
                expires_at_ms: u64::from_be_bytes(take(body, 16)?),
            })
        }
        5 => {
            exact(16 + 1)?;
            let reason = RefusedReason::from_code(body[16]).ok_or(WireError::Field("reason"))?;
            Ok(Message::Refused {
                allocation: take(body, 0)?,
                reason,
            })
        }
        6 => Ok(Message::Data {
            allocation: take(body, 0)?,
            payload: &body[16..],
        }),
        7 => {
            exact(RELEASE_BYTES)?;
            let release = body.try_into().map_err(|_| WireError::Length)?;
            Ok(Message::Release { release })
        }
        kind => Err(WireError::Kind(kind)),
    }
}

fn decode_address(bytes: &[u8]) -> Result<(SocketAddr, usize), WireError> {
    let family = *bytes.first().ok_or(WireError::Length)?;
    let port = u16::from_be_bytes(take(bytes, 1)?);
    let (ip, len): (IpAddr, usize) = match family {
        4 => (Ipv4Addr::from(take::<4>(bytes, 3)?).into(), 4),
        6 => (Ipv6Addr::from(take::<16>(bytes, 3)?).into(), 16),
        _ => return Err(WireError::Field("address family")),
    };
    Ok((SocketAddr::new(ip, port), 3 + len))
}

/// Appends the encoding of `message` to `out`.
pub fn encode(message: &Message<'_>, out: &mut Vec<u8>) {
    let kind = match message {
        Message::BindingRequest { .. } => 1,
        Message::BindingResponse { .. } => 2,
        Message::Allocate { .. } => 3,
        Message::Allocated { .. } => 4,
        Message::Refused { .. } => 5,
        Message::Data { .. } => 6,
        Message::Release { .. } => 7,
    };
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[VERSION, kind]);
    match message {
        Message::BindingRequest {
            transaction,
            respond_from,
        } => {
            out.extend_from_slice(transaction);
            out.push(respond_from.code());
            out.resize(out.len() + BINDING_REQUEST_BYTES - HEADER_BYTES - 13, 0);
        }
        Message::BindingResponse {
            transaction,
            address,
        } => {
            out.extend_from_slice(transaction);
            match address.ip() {
                IpAddr::V4(ip) => {
                    out.push(4);
                    out.extend_from_slice(&address.port().to_be_bytes());
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(6);
                    out.extend_from_slice(&address.port().to_be_bytes());
                    out.extend_from_slice(&ip.octets());
                }
            }
        }
        Message::Allocate { side, grant } => {
            out.push(*side);
            out.extend_from_slice(&grant[..]);
        }
        Message::Allocated {
            allocation,
            expires_at_ms,
        } => {
            out.extend_from_slice(allocation);
            out.extend_from_slice(&expires_at_ms.to_be_bytes());
        }
        Message::Refused { allocation, reason } => {
            out.extend_from_slice(allocation);
            out.push(reason.code());
        }
        Message::Data {
            allocation,
            payload,
        } => {
            out.extend_from_slice(allocation);
            out.extend_from_slice(payload);
        }
        Message::Release { release } => out.extend_from_slice(&release[..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(message: &Message<'_>) {
        let mut bytes = Vec::new();
        encode(message, &mut bytes);
        assert_eq!(decode(&bytes).as_ref(), Ok(message));
    }

    #[test]
    fn no_binding_response_is_larger_than_a_binding_request() {
        let mut request = Vec::new();
        encode(
            &Message::BindingRequest {
                transaction: [7; 12],
                respond_from: RespondFrom::OtherAddress,
            },
            &mut request,
        );
        assert_eq!(request.len(), BINDING_REQUEST_BYTES);
        let mut response = Vec::new();
        let widest: SocketAddr = "[ffff::1]:65535".parse().expect("addr");
        encode(
            &Message::BindingResponse {
                transaction: [7; 12],
                address: widest,
            },
            &mut response,
        );
        assert!(
            response.len() <= request.len(),
            "{} > {}",
            response.len(),
            request.len()
        );
    }

    #[test]
    fn every_kind_round_trips() {
        let grant = [5u8; GRANT_BYTES];
        for respond_from in [
            RespondFrom::Same,
            RespondFrom::OtherAddress,
            RespondFrom::OtherPort,
        ] {
            round_trip(&Message::BindingRequest {
                transaction: [1; 12],
                respond_from,
            });
        }
        round_trip(&Message::BindingResponse {
            transaction: [2; 12],
            address: "100.64.0.9:40000".parse().expect("addr"),
        });
        round_trip(&Message::BindingResponse {
            transaction: [2; 12],
            address: "[::1]:7371".parse().expect("addr"),
        });
        round_trip(&Message::Allocate {
            side: 1,
            grant: &grant,
        });
        round_trip(&Message::Allocated {
            allocation: [3; 16],
            expires_at_ms: 99,
        });
        round_trip(&Message::Refused {
            allocation: [3; 16],
            reason: RefusedReason::OverLimit,
        });
        round_trip(&Message::Data {
            allocation: [4; 16],
            payload: b"opaque",
        });
        round_trip(&Message::Data {
            allocation: [4; 16],
            payload: b"",
        });
        for reason in [
            RefusedReason::WrongSide,
            RefusedReason::Released,
            RefusedReason::UserQuota,
        ] {
            round_trip(&Message::Refused {
                allocation: [3; 16],
                reason,
            });
        }
        round_trip(&Message::Release {
            release: &[6; RELEASE_BYTES],
        });
    }

    #[test]
    fn malformed_datagrams_are_errors() {
        assert_eq!(decode(b""), Err(WireError::Length));
        assert_eq!(decode(b"XY\x01\x01"), Err(WireError::Magic));
        assert_eq!(decode(b"RY\x02\x01"), Err(WireError::Version(2)));
        assert_eq!(decode(b"RY\x01\x09"), Err(WireError::Kind(9)));
        // A binding request that is too short would let the response amplify.
        assert_eq!(decode(b"RY\x01\x01abcdefghijkl"), Err(WireError::Length));
        let mut bad_side = b"RY\x01\x03\x02".to_vec();
        bad_side.extend_from_slice(&[0; GRANT_BYTES]);
        assert_eq!(decode(&bad_side), Err(WireError::Field("side")));
    }

    #[test]
    fn binding_requests_encode_respond_from_after_the_transaction_and_nothing_else() {
        let mut request = Vec::new();
        encode(
            &Message::BindingRequest {
                transaction: [1; 12],
                respond_from: RespondFrom::OtherPort,
            },
            &mut request,
        );
        assert_eq!(request.len(), BINDING_REQUEST_BYTES);
        assert_eq!(request[HEADER_BYTES + 12], 2);
        assert!(request[HEADER_BYTES + 13..].iter().all(|b| *b == 0));

        let mut unknown = request.clone();
        unknown[HEADER_BYTES + 12] = 3;
        assert_eq!(decode(&unknown), Err(WireError::Field("respond_from")));
        let mut padded = request.clone();
        padded[BINDING_REQUEST_BYTES - 1] = 1;
        assert_eq!(decode(&padded), Err(WireError::Field("padding")));
        assert_eq!(
            decode(&request[..BINDING_REQUEST_BYTES - 1]),
            Err(WireError::Length)
        );
        let mut longer = request;
        longer.push(0);
        assert_eq!(decode(&longer), Err(WireError::Length));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_decode_to_a_value_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_header_never_panic(kind in 0u8..9, body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = vec![b'R', b'Y', VERSION, kind];
            bytes.extend_from_slice(&body);
            if let Ok(message) = decode(&bytes) {
                let mut again = Vec::new();
                encode(&message, &mut again);
                prop_assert_eq!(again, bytes, "decode accepts only the encoded form");
            }
        }

        #[test]
        fn binding_requests_round_trip(transaction in any::<[u8; 12]>(), code in 0u8..3) {
            let respond_from = RespondFrom::from_code(code).expect("0 to 2");
            let message = Message::BindingRequest { transaction, respond_from };
            let mut bytes = Vec::new();
            encode(&message, &mut bytes);
            prop_assert_eq!(bytes.len(), BINDING_REQUEST_BYTES);
            prop_assert_eq!(decode(&bytes), Ok(message));
        }

        #[test]
        fn binding_requests_with_any_respond_from_byte_decode_or_are_refused(transaction in any::<[u8; 12]>(), code in any::<u8>()) {
            let mut bytes = vec![b'R', b'Y', VERSION, 1];
            bytes.extend_from_slice(&transaction);
            bytes.push(code);
            bytes.resize(BINDING_REQUEST_BYTES, 0);
            match RespondFrom::from_code(code) {
                Some(respond_from) => prop_assert_eq!(
                    decode(&bytes),
                    Ok(Message::BindingRequest { transaction, respond_from })
                ),
                None => prop_assert_eq!(decode(&bytes), Err(WireError::Field("respond_from"))),
            }
        }

        #[test]
        fn data_round_trips(allocation in any::<[u8; 16]>(), payload in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let message = Message::Data { allocation, payload: &payload };
            let mut bytes = Vec::new();
            encode(&message, &mut bytes);
            prop_assert_eq!(bytes.len(), DATA_OVERHEAD + payload.len());
            prop_assert_eq!(decode(&bytes), Ok(message));
        }
    }
}

//! Checks of what clients send: every field from the network is bounded and parsed here, before
//! anything is stored or forwarded.

use std::net::IpAddr;

use prost::Message as _;
use rally_proto::broker::v1::{Candidate, CandidateKind, Hello, NatType, RelayPolicy};
use uuid::Uuid;

/// Most candidates a client announces.
pub const MAX_CANDIDATES: usize = 16;
/// Bytes of a certificate fingerprint (SHA-256).
pub const FINGERPRINT_BYTES: usize = 32;
/// Longest client version string.
pub const MAX_CLIENT_VERSION_BYTES: usize = 64;
/// Longest reject reason.
pub const MAX_REASON_BYTES: usize = 256;
/// Longest textual IP address.
const MAX_IP_BYTES: usize = 45;

/// A field that is malformed or out of bounds; the text says which, for the client's developer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(text: impl Into<String>) -> Invalid {
    Invalid(text.into())
}

/// A user id field: a UUID in any of the forms `uuid` accepts, not nil.
pub fn user_id(field: &str, text: &str) -> Result<Uuid, Invalid> {
    if text.len() > 64 {
        return Err(invalid(format!("{field} is not a UUID (too long)")));
    }
    match Uuid::try_parse(text) {
        Ok(id) if !id.is_nil() => Ok(id),
        _ => Err(invalid(format!("{field} is not a UUID: {text:?}"))),
    }
}

/// A peer's user id that must differ from the caller's.
pub fn peer_id(field: &str, text: &str, caller: Uuid) -> Result<Uuid, Invalid> {
    let peer = user_id(field, text)?;
    if peer == caller {
        return Err(invalid(format!("{field} is the caller itself")));
    }
    Ok(peer)
}

/// A reject reason: at most [`MAX_REASON_BYTES`] of UTF-8 (proto strings are UTF-8 already).
pub fn reason(text: &str) -> Result<(), Invalid> {
    if text.len() > MAX_REASON_BYTES {
        return Err(invalid(format!(
            "reason is {} bytes; at most {MAX_REASON_BYTES}",
            text.len()
        )));
    }
    Ok(())
}

/// A client's candidates: at most [`MAX_CANDIDATES`], none relayed, every address valid.
pub fn candidates(candidates: &[Candidate]) -> Result<(), Invalid> {
    if candidates.len() > MAX_CANDIDATES {
        return Err(invalid(format!(
            "{} candidates; at most {MAX_CANDIDATES}",
            candidates.len()
        )));
    }
    for (i, candidate) in candidates.iter().enumerate() {
        match CandidateKind::try_from(candidate.kind) {
            Ok(
                CandidateKind::Host | CandidateKind::ServerReflexive | CandidateKind::PeerReflexive,
            ) => {}
            Ok(CandidateKind::Relayed) => {
                return Err(invalid(format!(
                    "candidates[{i}] is RELAYED; only the broker sends those"
                )));
            }
            _ => {
                return Err(invalid(format!(
                    "candidates[{i}].kind {} is not a candidate kind",
                    candidate.kind
                )));
            }
        }
        let Some(address) = &candidate.address else {
            return Err(invalid(format!("candidates[{i}].address is missing")));
        };
        if address.ip.len() > MAX_IP_BYTES || address.ip.parse::<IpAddr>().is_err() {
            return Err(invalid(format!(
                "candidates[{i}].address.ip is not an IP address"
            )));
        }
        if address.port == 0 || address.port > u32::from(u16::MAX) {
            return Err(invalid(format!(
                "candidates[{i}].address.port {} is not 1 to 65535",
                address.port
            )));
        }
    }
    Ok(())
}

/// A NAT type field.
pub fn nat_type(value: i32) -> Result<NatType, Invalid> {
    NatType::try_from(value).map_err(|_| invalid(format!("nat_type {value} is not a NAT type")))
}

/// A Hello: fingerprint, candidates, relay policy, NAT type and client version.
pub fn hello(hello: &Hello) -> Result<(), Invalid> {
    if hello.certificate_fingerprint.len() != FINGERPRINT_BYTES {
        return Err(invalid(format!(
            "certificate_fingerprint is {} bytes; it must be {FINGERPRINT_BYTES} (SHA-256)",
            hello.certificate_fingerprint.len()
        )));
    }
    candidates(&hello.candidates)?;
    RelayPolicy::try_from(hello.relay_policy).map_err(|_| {
        invalid(format!(
            "relay_policy {} is not a relay policy",
            hello.relay_policy
        ))
    })?;
    nat_type(hello.nat_type)?;
    if hello.client_version.len() > MAX_CLIENT_VERSION_BYTES
        || !hello
            .client_version
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(invalid(format!(
            "client_version must be at most {MAX_CLIENT_VERSION_BYTES} bytes of printable ASCII"
        )));
    }
    Ok(())
}

/// What a client announced, as the store keeps it (an encoded, already validated [`Hello`]),
/// and the IP address the broker saw its attachment come from.
#[derive(Debug, Clone, PartialEq)]
pub struct Announcement {
    /// The validated Hello, with the candidates and NAT type of the latest update.
    pub hello: Hello,
    /// Where the attachment came from, as the broker saw it (`None`: not known).
    pub observed_ip: Option<IpAddr>,
}

impl Announcement {
    /// The relay policy (unspecified means fallback).
    pub fn relay_policy(&self) -> RelayPolicy {
        match RelayPolicy::try_from(self.hello.relay_policy) {
            Ok(RelayPolicy::Never) => RelayPolicy::Never,
            Ok(RelayPolicy::Always) => RelayPolicy::Always,
            _ => RelayPolicy::Fallback,
        }
    }

    /// The NAT type.
    pub fn nat_type(&self) -> NatType {
        NatType::try_from(self.hello.nat_type).unwrap_or(NatType::Unspecified)
    }

    /// The bytes the store keeps: the encoded Hello, preceded, when the observed IP is known, by
    /// a zero byte (never the first byte of an encoded message: field number 0 does not exist),
    /// the IP's length (4 or 16) and its bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(18 + self.hello.encoded_len());
        match self.observed_ip {
            Some(IpAddr::V4(ip)) => {
                out.extend_from_slice(&[0, 4]);
                out.extend_from_slice(&ip.octets());
            }
            Some(IpAddr::V6(ip)) => {
                out.extend_from_slice(&[0, 16]);
                out.extend_from_slice(&ip.octets());
            }
            None => {}
        }
        self.hello
            .encode(&mut out)
            .unwrap_or_else(|_| unreachable!("a Vec grows to fit any message"));
        out
    }

    /// Reads stored bytes back (they were validated before they were stored; they are checked
    /// again, since the database is outside this process).
    pub fn decode(bytes: &[u8]) -> Result<Self, Invalid> {
        let (observed_ip, hello_bytes) = match bytes {
            [0, 4, rest @ ..] if rest.len() >= 4 => {
                let ip: [u8; 4] = rest[..4].try_into().map_err(|_| invalid("observed IP"))?;
                (Some(IpAddr::from(ip)), &rest[4..])
            }
            [0, 16, rest @ ..] if rest.len() >= 16 => {
                let ip: [u8; 16] = rest[..16].try_into().map_err(|_| invalid("observed IP"))?;
                (Some(IpAddr::from(ip)), &rest[16..])
            }
            [0, ..] => return Err(invalid("stored announcement has a malformed observed IP")),
            _ => (None, bytes),
        };
        let hello = Hello::decode(hello_bytes)
            .map_err(|e| invalid(format!("stored announcement does not decode: {e}")))?;
        self::hello(&hello)?;
        Ok(Self { hello, observed_ip })
    }
}

/// Whether two relay policies leave any way to connect (never relay on one side and always relay
/// on the other do not).
pub fn policies_compatible(a: RelayPolicy, b: RelayPolicy) -> bool {
    !matches!(
        (a, b),
        (RelayPolicy::Never, RelayPolicy::Always) | (RelayPolicy::Always, RelayPolicy::Never)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rally_proto::broker::v1::SocketAddress;

    fn candidate(ip: &str, port: u32, kind: CandidateKind) -> Candidate {
        Candidate {
            kind: kind as i32,
            address: Some(SocketAddress {
                ip: ip.into(),
                port,
            }),
            priority: 1,
        }
    }

    fn good_hello() -> Hello {
        Hello {
            certificate_fingerprint: vec![7; 32],
            candidates: vec![
                candidate("192.0.2.1", 4000, CandidateKind::Host),
                candidate("2001:db8::1", 4000, CandidateKind::ServerReflexive),
            ],
            relay_policy: RelayPolicy::Fallback as i32,
            nat_type: NatType::Moderate as i32,
            client_version: "rally-sdk-rust/0.1.0".into(),
        }
    }

    #[test]
    fn a_good_hello_passes_and_round_trips_through_the_store_encoding() {
        let hello_message = good_hello();
        hello(&hello_message).expect("valid");
        for observed_ip in [
            None,
            Some(IpAddr::from([203, 0, 113, 9])),
            Some("2001:db8::9".parse().expect("v6")),
        ] {
            let announcement = Announcement {
                hello: hello_message.clone(),
                observed_ip,
            };
            let decoded = Announcement::decode(&announcement.encode()).expect("decodes");
            assert_eq!(decoded, announcement);
        }
        // Rows stored before the observed IP was kept are plain Hellos.
        let old = Announcement::decode(&hello_message.encode_to_vec()).expect("decodes");
        assert_eq!(old.observed_ip, None);
        assert!(
            Announcement::decode(&[0, 4, 1, 2]).is_err(),
            "a truncated IP"
        );
    }

    #[test]
    fn every_malformed_field_is_refused_with_its_name() {
        type Breaker = Box<dyn Fn(&mut Hello)>;
        let cases: Vec<(&str, Breaker)> = vec![
            (
                "certificate_fingerprint",
                Box::new(|h| h.certificate_fingerprint.truncate(31)),
            ),
            (
                "candidates",
                Box::new(|h| {
                    h.candidates = (0..17)
                        .map(|p| candidate("192.0.2.1", 1000 + p, CandidateKind::Host))
                        .collect()
                }),
            ),
            (
                "RELAYED",
                Box::new(|h| h.candidates[0].kind = CandidateKind::Relayed as i32),
            ),
            (
                "kind",
                Box::new(|h| h.candidates[0].kind = CandidateKind::Unspecified as i32),
            ),
            (
                "address is missing",
                Box::new(|h| h.candidates[0].address = None),
            ),
            (
                "ip",
                Box::new(|h| {
                    if let Some(a) = h.candidates[0].address.as_mut() {
                        a.ip = "[::1]".into();
                    }
                }),
            ),
            (
                "port",
                Box::new(|h| {
                    if let Some(a) = h.candidates[0].address.as_mut() {
                        a.port = 70000;
                    }
                }),
            ),
            ("relay_policy", Box::new(|h| h.relay_policy = 9)),
            ("nat_type", Box::new(|h| h.nat_type = -1)),
            (
                "client_version",
                Box::new(|h| h.client_version = "x\u{7}".into()),
            ),
            (
                "client_version",
                Box::new(|h| h.client_version = "v".repeat(65)),
            ),
        ];
        for (field, break_it) in cases {
            let mut message = good_hello();
            break_it(&mut message);
            let error = hello(&message).expect_err(field);
            assert!(error.0.contains(field), "{field}: {error}");
        }
    }

    #[test]
    fn the_largest_announcement_fits_the_store_and_the_bus() {
        let mut message = good_hello();
        message.candidates = (0..MAX_CANDIDATES as u32)
            .map(|p| {
                candidate(
                    "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
                    65535 - p,
                    CandidateKind::PeerReflexive,
                )
            })
            .collect();
        for c in &mut message.candidates {
            c.priority = u32::MAX;
        }
        message.client_version = "v".repeat(MAX_CLIENT_VERSION_BYTES);
        hello(&message).expect("the largest valid hello");
        let bytes = Announcement {
            hello: message,
            observed_ip: Some("2001:db8::1".parse().expect("v6")),
        }
        .encode();
        assert!(bytes.len() <= rally_store::broker::MAX_ANNOUNCEMENT_BYTES);
    }

    #[test]
    fn user_ids_must_be_uuids_and_not_the_caller() {
        let me = Uuid::new_v4();
        assert!(peer_id("user_id", "nope", me).is_err());
        assert!(peer_id("user_id", &Uuid::nil().to_string(), me).is_err());
        assert!(peer_id("user_id", &me.to_string(), me).is_err());
        assert!(peer_id("user_id", &"a".repeat(100), me).is_err());
        let other = Uuid::new_v4();
        assert_eq!(peer_id("user_id", &other.to_string(), me), Ok(other));
    }

    #[test]
    fn never_and_always_exclude_each_other_only() {
        use RelayPolicy::*;
        for a in [Never, Fallback, Always] {
            for b in [Never, Fallback, Always] {
                let expected = !matches!((a, b), (Never, Always) | (Always, Never));
                assert_eq!(policies_compatible(a, b), expected, "{a:?} {b:?}");
            }
        }
    }
}

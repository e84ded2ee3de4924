//! Broker messages the tests announce: one loopback host candidate and a fingerprint of the
//! test's choosing.

use rally_client::broker::Announcement;
use rally_proto::broker::v1::{
    Candidate, CandidateKind, Hello, NatType, RelayPolicy, SocketAddress,
};

/// A host candidate at `127.0.0.1:port`.
pub fn loopback_candidate(port: u32) -> Candidate {
    Candidate {
        kind: CandidateKind::Host as i32,
        address: Some(SocketAddress {
            ip: "127.0.0.1".into(),
            port,
        }),
        priority: 100,
    }
}

/// A Hello announcing `[fingerprint; 32]` at `127.0.0.1:4000`, relay fallback, moderate NAT.
pub fn hello(fingerprint: u8) -> Hello {
    Hello {
        certificate_fingerprint: vec![fingerprint; 32],
        candidates: vec![loopback_candidate(4000)],
        relay_policy: RelayPolicy::Fallback as i32,
        nat_type: NatType::Moderate as i32,
        client_version: "rally-e2e/0".into(),
    }
}

/// The SDK's announcement of the same.
pub fn announcement(fingerprint: u8) -> Announcement {
    Announcement {
        fingerprint: [fingerprint; 32],
        candidates: vec![loopback_candidate(4000)],
        relay_policy: RelayPolicy::Fallback,
        nat_type: NatType::Moderate,
    }
}

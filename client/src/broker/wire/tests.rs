//! The wire conversions: what each server message becomes, and that nothing a server sends can
//! panic the SDK.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use prost::Message as _;
use rally_proto::broker::v1::attach_response::Body;
use rally_proto::broker::v1::*;
use uuid::Uuid;

use super::*;
use crate::Error;

const PEER: &str = "6f1d2c4e-8a7b-4c3d-9e2f-1a2b3c4d5e6f";

fn peer() -> Uuid {
    Uuid::parse_str(PEER).expect("uuid")
}

fn address(ip: &str, port: u32) -> SocketAddress {
    SocketAddress {
        ip: ip.into(),
        port,
    }
}

fn candidate(kind: CandidateKind, ip: &str, port: u32, priority: u32) -> Candidate {
    Candidate {
        kind: kind as i32,
        address: Some(address(ip, port)),
        priority,
    }
}

fn unsolicited(body: Body) -> AttachResponse {
    AttachResponse {
        request_id: 0,
        body: Some(body),
    }
}

fn classify_now(message: AttachResponse) -> Incoming {
    classify(message, &ClockSync::default(), Instant::now())
}

fn dropped(incoming: &Incoming) -> bool {
    matches!(incoming, Incoming::Dropped(_))
}

fn peer_info(fingerprint: Vec<u8>, candidates: Vec<Candidate>) -> AttachResponse {
    unsolicited(Body::PeerInfo(PeerInfo {
        user_id: PEER.into(),
        certificate_fingerprint: fingerprint,
        candidates,
        nat_type: NatType::Strict as i32,
    }))
}

#[test]
fn peer_info_keeps_direct_candidates_by_priority_and_the_relayed_one_apart() {
    let incoming = classify_now(peer_info(
        vec![7; 32],
        vec![
            candidate(CandidateKind::Host, "10.0.0.2", 5000, 10),
            candidate(CandidateKind::Relayed, "198.51.100.1", 7371, 1),
            candidate(CandidateKind::ServerReflexive, "2001:db8::1", 6000, 50),
            Candidate {
                kind: 99,
                address: Some(address("10.0.0.3", 1)),
                priority: 100,
            },
        ],
    ));
    let expected = BrokerEvent::PeerInfo {
        user: peer(),
        fingerprint: [7; 32],
        candidates: vec![
            "[2001:db8::1]:6000".parse::<SocketAddr>().expect("addr"),
            "10.0.0.2:5000".parse().expect("addr"),
        ],
        relayed: Some("198.51.100.1:7371".parse().expect("addr")),
        nat_type: NatType::Strict,
    };
    assert_eq!(incoming, Incoming::Event(expected));
}

#[test]
fn peer_info_with_a_bad_fingerprint_user_or_address_is_dropped() {
    assert!(dropped(&classify_now(peer_info(vec![7; 31], vec![]))));
    assert!(dropped(&classify_now(peer_info(
        vec![7; 32],
        vec![candidate(CandidateKind::Host, "10.0.0.256", 5000, 1)]
    ))));
    assert!(dropped(&classify_now(peer_info(
        vec![7; 32],
        vec![candidate(CandidateKind::Host, "10.0.0.1", 0, 1)]
    ))));
    assert!(dropped(&classify_now(peer_info(
        vec![7; 32],
        vec![candidate(CandidateKind::Host, "10.0.0.1", 70000, 1)]
    ))));
    assert!(dropped(&classify_now(peer_info(
        vec![7; 32],
        vec![candidate(CandidateKind::Host, "[::1]", 1, 1)]
    ))));
    let many = vec![candidate(CandidateKind::Host, "10.0.0.1", 1, 1); 33];
    assert!(dropped(&classify_now(peer_info(vec![7; 32], many))));
    let bad_user = unsolicited(Body::PeerConnectRequest(PeerConnectRequest {
        user_id: "not-a-uuid".into(),
    }));
    assert!(dropped(&classify_now(bad_user)));
}

#[test]
fn punch_start_converts_the_start_time_and_the_role() {
    let now = Instant::now();
    let mut clock = ClockSync::default();
    // The server's clock reads 1000 s at `now`.
    clock.sample(now, now, 1_000_000_000_000, true);
    let punch = |role: PunchRole| {
        unsolicited(Body::PunchStart(PunchStart {
            user_id: PEER.into(),
            candidates: vec![
                candidate(CandidateKind::Host, "10.0.0.2", 5000, 1),
                candidate(CandidateKind::ServerReflexive, "100.64.0.9", 6000, 2),
            ],
            start_at: Some(prost_types::Timestamp {
                seconds: 1000,
                nanos: 250_000_000,
            }),
            role: role as i32,
            observed_ip: "100.64.0.9".into(),
        }))
    };
    let Incoming::Event(BrokerEvent::PunchStart {
        user,
        candidates,
        reflexive,
        start_at,
        dialer,
    }) = classify(punch(PunchRole::Dialer), &clock, now)
    else {
        panic!("expected a PunchStart");
    };
    assert_eq!(user, peer());
    let public: SocketAddr = "100.64.0.9:6000".parse().expect("addr");
    assert_eq!(
        candidates,
        vec![public, "10.0.0.2:5000".parse::<SocketAddr>().expect("addr")],
        "highest priority first"
    );
    assert_eq!(
        reflexive,
        vec![public],
        "the public addresses are told apart"
    );
    // Only where the broker saw the peer: an announced public address elsewhere, or no observed
    // address at all, leaves nothing to probe.
    for observed in ["198.51.100.1", "", "not an address"] {
        let mut message = punch(PunchRole::Dialer);
        if let Some(Body::PunchStart(punch)) = &mut message.body {
            punch.observed_ip = observed.into();
        }
        let Incoming::Event(BrokerEvent::PunchStart { reflexive, .. }) =
            classify(message, &clock, now)
        else {
            panic!("expected a PunchStart");
        };
        assert!(reflexive.is_empty(), "observed {observed:?}: {reflexive:?}");
    }
    assert_eq!(start_at, now + Duration::from_millis(250));
    assert!(dialer);
    let Incoming::Event(BrokerEvent::PunchStart { dialer, .. }) =
        classify(punch(PunchRole::Acceptor), &clock, now)
    else {
        panic!("expected a PunchStart");
    };
    assert!(!dialer);
    assert!(dropped(&classify(
        punch(PunchRole::Unspecified),
        &clock,
        now
    )));
}

#[test]
fn answers_carry_their_request_id_and_unasked_answers_are_dropped() {
    let ack = AttachResponse {
        request_id: 5,
        body: Some(Body::Ack(Ack {})),
    };
    assert_eq!(
        classify_now(ack),
        Incoming::Answer {
            request_id: 5,
            answer: Ok(Answer::Ack)
        }
    );
    let error = AttachResponse {
        request_id: 6,
        body: Some(Body::Error(rally_proto::broker::v1::Error {
            code: ErrorCode::UserOffline as i32,
            message: "offline".into(),
        })),
    };
    assert_eq!(
        classify_now(error),
        Incoming::Answer {
            request_id: 6,
            answer: Err(Error::Broker {
                code: ErrorCode::UserOffline,
                message: "offline".into()
            })
        }
    );
    assert!(dropped(&classify_now(unsolicited(Body::Ack(Ack {})))));
    assert!(dropped(&classify_now(AttachResponse {
        request_id: 1,
        body: None
    })));
    assert!(dropped(&classify_now(unsolicited(Body::Welcome(
        Welcome::default()
    )))));
}

fn grant() -> RelayGrant {
    RelayGrant {
        user_id: PEER.into(),
        relay_address: Some(address("127.0.0.1", 7371)),
        allocation_id: vec![1; 16],
        token: vec![2; 64],
        expires_at: Some(prost_types::Timestamp {
            seconds: 10,
            nanos: 0,
        }),
        max_bytes: 1,
        max_bytes_per_second: 1,
        side: 1,
    }
}

#[test]
fn a_relay_grant_is_an_answer_when_asked_for_and_an_event_otherwise() {
    let asked = AttachResponse {
        request_id: 9,
        body: Some(Body::RelayGrant(grant())),
    };
    assert_eq!(
        classify_now(asked),
        Incoming::Answer {
            request_id: 9,
            answer: Ok(Answer::RelayGrant(grant()))
        }
    );
    assert_eq!(
        classify_now(unsolicited(Body::RelayGrant(grant()))),
        Incoming::Event(BrokerEvent::RelayGrant(grant()))
    );
    let bad = RelayGrant { side: 2, ..grant() };
    assert!(dropped(&classify_now(unsolicited(Body::RelayGrant(
        bad.clone()
    )))));
    let Incoming::Answer {
        answer: Err(Error::Protocol(_)),
        ..
    } = classify_now(AttachResponse {
        request_id: 3,
        body: Some(Body::RelayGrant(bad)),
    })
    else {
        panic!("a malformed asked-for grant fails its request");
    };
}

#[test]
fn connect_answers_and_closes_are_events_whatever_their_request_id() {
    let accepted = AttachResponse {
        request_id: 4,
        body: Some(Body::ConnectAccepted(ConnectAccepted {
            user_id: PEER.into(),
        })),
    };
    assert_eq!(
        classify_now(accepted),
        Incoming::Event(BrokerEvent::ConnectAccepted { user: peer() })
    );
    let closed = unsolicited(Body::PeerClosed(PeerClosed {
        user_id: PEER.into(),
        reason: PeerClosedReason::Detached as i32,
    }));
    assert_eq!(
        classify_now(closed),
        Incoming::Event(BrokerEvent::PeerClosed {
            user: peer(),
            detached: true
        })
    );
    assert_eq!(
        classify_now(unsolicited(Body::Superseded(Superseded::default()))),
        Incoming::Superseded
    );
}

#[test]
fn a_welcome_is_read_with_bounds() {
    let welcomed = welcome(&Welcome {
        attachment_id: "a".into(),
        user_id: PEER.into(),
        server_time: Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        }),
        keepalive_interval: Some(prost_types::Duration {
            seconds: 0,
            nanos: 1,
        }),
        detach_grace_period: None,
        reflector_addresses: vec![address("127.0.0.1", 7371), address("nope", 1)],
        superseded_attachment_id: String::new(),
        reauthenticate_by: None,
    });
    assert_eq!(welcomed.keepalive, KEEPALIVE_RANGE.0);
    assert_eq!(
        welcomed.reflectors,
        vec!["127.0.0.1:7371".parse::<SocketAddr>().expect("addr")]
    );
    assert_eq!(welcomed.server_time, Some(1_000_000_000));
    assert_eq!(welcome(&Welcome::default()).keepalive, DEFAULT_KEEPALIVE);
}

#[test]
fn own_candidates_are_checked_before_sending() {
    let good = candidate(CandidateKind::Host, "192.0.2.1", 4000, 1);
    assert!(check_candidates(std::slice::from_ref(&good)).is_ok());
    assert!(check_candidates(&vec![good.clone(); MAX_CANDIDATES + 1]).is_err());
    let relayed = candidate(CandidateKind::Relayed, "192.0.2.1", 4000, 1);
    assert!(check_candidates(&[relayed]).is_err());
    let unspecified = candidate(CandidateKind::Unspecified, "192.0.2.1", 4000, 1);
    assert!(check_candidates(&[unspecified]).is_err());
    let no_address = Candidate {
        address: None,
        ..good
    };
    assert!(matches!(
        check_candidates(&[no_address]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(check_reason(&"x".repeat(MAX_REASON_BYTES)).is_ok());
    assert!(check_reason(&"x".repeat(MAX_REASON_BYTES + 1)).is_err());
}

#[test]
fn the_hello_carries_the_announcement_and_the_sdk_version() {
    let hello = hello(&Announcement {
        fingerprint: [3; 32],
        candidates: vec![],
        relay_policy: RelayPolicy::Always,
        nat_type: NatType::Open,
    });
    assert_eq!(hello.certificate_fingerprint, vec![3; 32]);
    assert_eq!(hello.relay_policy, RelayPolicy::Always as i32);
    assert!(hello.client_version.starts_with("rally-sdk-rust/"));
    assert!(hello.client_version.len() <= 64);
}

proptest! {
    #[test]
    fn arbitrary_server_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(message) = AttachResponse::decode(bytes.as_slice()) {
            let _ = classify_now(message);
        }
    }

    #[test]
    fn arbitrary_peer_info_never_panics(
        user in ".{0,40}",
        fingerprint in proptest::collection::vec(any::<u8>(), 0..40),
        kinds in proptest::collection::vec(-1i32..6, 0..20),
        ip in ".{0,50}",
        port in any::<u32>(),
        nat in any::<i32>(),
    ) {
        let candidates = kinds.into_iter().map(|kind| Candidate {
            kind,
            address: Some(SocketAddress { ip: ip.clone(), port }),
            priority: 1,
        }).collect();
        let message = unsolicited(Body::PeerInfo(PeerInfo {
            user_id: user,
            certificate_fingerprint: fingerprint,
            candidates,
            nat_type: nat,
        }));
        let _ = classify_now(message);
    }

    #[test]
    fn arbitrary_punch_times_never_panic(seconds in any::<i64>(), nanos in any::<i32>(), role in any::<i32>()) {
        let now = Instant::now();
        let mut clock = ClockSync::default();
        clock.sample(now, now, 0, true);
        let message = unsolicited(Body::PunchStart(PunchStart {
            user_id: PEER.into(),
            candidates: vec![],
            start_at: Some(prost_types::Timestamp { seconds, nanos }),
            role,
            observed_ip: String::new(),
        }));
        if let Incoming::Event(BrokerEvent::PunchStart { start_at, .. }) = classify(message, &clock, now) {
            prop_assert!(start_at <= now + super::super::clock::MAX_AHEAD);
        }
    }
}

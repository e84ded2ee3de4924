//! The broker end to end through gRPC, on SQLite and Postgres: attach, supersede, keepalive,
//! presence and the grace period, the connect/accept/reject handshake with candidates and punch
//! start, who may learn what, bad input, rate limits, slow clients, relay grants used on the real
//! relay, and two replicas on one Postgres.

use std::time::Duration;

use futures::StreamExt;
use rally_e2e::attach::{Attached, accept, allocate_datagram, connect, handshake, open, present};
use rally_e2e::{Backend, TestServer, TestUser, on_both_backends};
use rally_proto::broker::v1::attach_request::Body as Req;
use rally_proto::broker::v1::attach_response::Body;
use rally_proto::broker::v1::broker_client::BrokerClient;
use rally_proto::broker::v1::*;
use rally_proto::rooms::v1::room_event::Kind;
use rally_proto::rooms::v1::watch_room_response::Payload;
use rally_proto::rooms::v1::{
    CreateRoomRequest, GetRoomRequest, JoinRoomRequest, LeaveReason, WatchRoomRequest,
};
use rally_relay::wire::{self, Message, RespondFrom};
use tokio::sync::mpsc;
use tonic::Code;
use tonic::codec::Streaming;

/// How long a test waits for one expected message.
const WAIT: Duration = Duration::from_secs(20);

fn candidate(port: u32) -> Candidate {
    Candidate {
        kind: CandidateKind::Host as i32,
        address: Some(SocketAddress {
            ip: "127.0.0.1".into(),
            port,
        }),
        priority: 100,
    }
}

fn hello(fingerprint: u8, port: u32) -> Hello {
    Hello {
        certificate_fingerprint: vec![fingerprint; 32],
        candidates: vec![candidate(port)],
        relay_policy: RelayPolicy::Fallback as i32,
        nat_type: NatType::Moderate as i32,
        client_version: "rally-e2e/0".into(),
    }
}

fn error_code(body: &Body) -> ErrorCode {
    match body {
        Body::Error(error) => ErrorCode::try_from(error.code).expect("a known code"),
        other => panic!("expected an Error, got {other:?}"),
    }
}

async fn attach_welcomes_and_answers_pings(server: &TestServer) {
    let alice = server.user("alice").await;
    let mut a = Attached::new(server, &alice, hello(1, 4000)).await;
    assert!(uuid::Uuid::try_parse(&a.welcome.attachment_id).is_ok());
    assert_eq!(a.welcome.superseded_attachment_id, "");
    assert_eq!(
        a.welcome.keepalive_interval,
        Some(prost_types::Duration {
            seconds: 10,
            nanos: 0
        })
    );
    assert_eq!(
        a.welcome.detach_grace_period,
        Some(prost_types::Duration {
            seconds: 30,
            nanos: 0
        })
    );
    let relay = server.relay_addr().expect("relay");
    assert_eq!(
        a.welcome.reflector_addresses,
        vec![SocketAddress {
            ip: relay.ip().to_string(),
            port: u32::from(relay.port())
        }]
    );
    match a.request(Req::Ping(Ping { nonce: 7 })).await {
        Body::Pong(pong) => {
            assert_eq!(pong.nonce, 7);
            assert!(pong.server_time.is_some());
        }
        other => panic!("expected Pong, got {other:?}"),
    }
}

async fn a_newer_attachment_supersedes_the_older(server: &TestServer) {
    let alice = server.user("alice").await;
    let mut first = Attached::new(server, &alice, hello(1, 4000)).await;
    let second = Attached::new(server, &alice, hello(2, 4001)).await;
    assert_eq!(
        second.welcome.superseded_attachment_id,
        first.welcome.attachment_id
    );
    match first.unsolicited().await {
        Body::Superseded(superseded) => {
            assert_eq!(superseded.by_attachment_id, second.welcome.attachment_id);
        }
        other => panic!("expected Superseded, got {other:?}"),
    }
    assert!(
        first.end().await.is_none(),
        "a superseded stream ends with OK"
    );
}

async fn connect_accept_exchanges_candidates_fingerprints_and_punch_start(server: &TestServer) {
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mut a = Attached::new(server, &alice, hello(0xA1, 4000)).await;
    let mut b = Attached::new(server, &bob, hello(0xB0, 5000)).await;
    let (a_punch, b_punch) = handshake(&mut a, &alice, &mut b, &bob).await;
    assert_eq!(a_punch.candidates, vec![candidate(5000)]);
    assert_eq!(b_punch.candidates, vec![candidate(4000)]);
    // Equal NAT types: the user id that sorts first dials.
    let alice_dials = alice.user_id < bob.user_id;
    let dialer = PunchRole::Dialer as i32;
    assert_eq!(a_punch.role == dialer, alice_dials);
    assert_eq!(b_punch.role == dialer, !alice_dials);
    // Each learns where the broker saw the other come from (both over loopback here).
    assert_eq!(a_punch.observed_ip, "127.0.0.1");
    assert_eq!(b_punch.observed_ip, "127.0.0.1");

    // New candidates reach the agreed peer, with a new punch for both.
    let update = Req::UpdateCandidates(UpdateCandidates {
        candidates: vec![candidate(4100), candidate(4101)],
        nat_type: NatType::Strict as i32,
    });
    assert!(matches!(a.request(update).await, Body::Ack(_)));
    match b.unsolicited().await {
        Body::PeerInfo(info) => {
            assert_eq!(info.certificate_fingerprint, vec![0xA1; 32]);
            assert_eq!(info.candidates, vec![candidate(4100), candidate(4101)]);
            assert_eq!(info.nat_type, NatType::Strict as i32);
        }
        other => panic!("expected PeerInfo, got {other:?}"),
    }
    let Body::PunchStart(punch) = a.unsolicited().await else {
        panic!("expected PunchStart");
    };
    assert_eq!(punch.role, dialer, "the stricter NAT dials");
    let Body::PunchStart(punch) = b.unsolicited().await else {
        panic!("expected PunchStart");
    };
    assert_eq!(punch.role, PunchRole::Acceptor as i32);
    assert_eq!(punch.candidates, vec![candidate(4100), candidate(4101)]);

    // Close ends the pair; the peer is told.
    assert!(matches!(
        b.request(Req::Close(Close {
            user_id: alice.user_id.clone()
        }))
        .await,
        Body::Ack(_)
    ));
    match a.unsolicited().await {
        Body::PeerClosed(closed) => {
            assert_eq!(closed.user_id, bob.user_id);
            assert_eq!(closed.reason, PeerClosedReason::Closed as i32);
        }
        other => panic!("expected PeerClosed, got {other:?}"),
    }
    let grant = Req::RequestRelayGrant(RequestRelayGrant {
        user_id: bob.user_id.clone(),
    });
    assert_eq!(error_code(&a.request(grant).await), ErrorCode::NotAgreed);
}

async fn crossing_connects_agree_the_pair(server: &TestServer) {
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mut a = Attached::new(server, &alice, hello(1, 4000)).await;
    let mut b = Attached::new(server, &bob, hello(2, 5000)).await;
    let a_connect = a.send(connect(&bob));
    assert_eq!(a.next().await.request_id, a_connect);
    assert!(matches!(b.unsolicited().await, Body::PeerConnectRequest(_)));
    let b_connect = b.send(connect(&alice));
    assert_eq!(b.next().await.request_id, b_connect, "Ack first");
    let accepted = b.next().await;
    assert_eq!(accepted.request_id, b_connect);
    assert!(matches!(accepted.body, Some(Body::ConnectAccepted(_))));
    let accepted = a.next().await;
    assert_eq!(accepted.request_id, a_connect);
    assert!(matches!(accepted.body, Some(Body::ConnectAccepted(_))));
    assert!(matches!(a.unsolicited().await, Body::PeerInfo(_)));
    assert!(matches!(b.unsolicited().await, Body::PeerInfo(_)));
    assert!(matches!(a.unsolicited().await, Body::PunchStart(_)));
    assert!(matches!(b.unsolicited().await, Body::PunchStart(_)));
}

async fn reject_reaches_the_requester_with_its_reason(server: &TestServer) {
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mut a = Attached::new(server, &alice, hello(1, 4000)).await;
    let mut b = Attached::new(server, &bob, hello(2, 5000)).await;
    let connect_id = a.send(connect(&bob));
    assert_eq!(a.next().await.request_id, connect_id);
    assert!(matches!(b.unsolicited().await, Body::PeerConnectRequest(_)));
    let reject = Req::Reject(Reject {
        user_id: alice.user_id.clone(),
        reason: "busy".into(),
    });
    assert!(matches!(b.request(reject.clone()).await, Body::Ack(_)));
    let rejected = a.next().await;
    assert_eq!(rejected.request_id, connect_id);
    match rejected.body {
        Some(Body::ConnectRejected(rejected)) => {
            assert_eq!(rejected.user_id, bob.user_id);
            assert_eq!(rejected.reason, "busy");
        }
        other => panic!("expected ConnectRejected, got {other:?}"),
    }
    // Nothing is pending any more.
    assert_eq!(
        error_code(&b.request(reject).await),
        ErrorCode::NoPendingRequest
    );
    assert_eq!(
        error_code(&b.request(accept(&alice)).await),
        ErrorCode::NoPendingRequest
    );
}

async fn offline_unknown_and_malformed_targets_get_clear_errors(server: &TestServer) {
    let alice = server.user("alice").await;
    let carol = server.user("carol").await;
    let mut a = Attached::new(server, &alice, hello(1, 4000)).await;
    assert_eq!(
        error_code(&a.request(connect(&carol)).await),
        ErrorCode::UserOffline
    );
    let stranger = Req::Connect(Connect {
        user_id: uuid::Uuid::new_v4().to_string(),
    });
    assert_eq!(
        error_code(&a.request(stranger).await),
        ErrorCode::UserNotFound
    );
    for bad in ["", "not-a-uuid", &alice.user_id] {
        let request = Req::Connect(Connect {
            user_id: bad.to_owned(),
        });
        assert_eq!(
            error_code(&a.request(request).await),
            ErrorCode::InvalidArgument,
            "{bad:?}"
        );
    }
    let too_many = Req::UpdateCandidates(UpdateCandidates {
        candidates: (0..17).map(|p| candidate(4000 + p)).collect(),
        nat_type: 0,
    });
    assert_eq!(
        error_code(&a.request(too_many).await),
        ErrorCode::InvalidArgument
    );
    let mut relayed = candidate(4000);
    relayed.kind = CandidateKind::Relayed as i32;
    let relayed = Req::UpdateCandidates(UpdateCandidates {
        candidates: vec![relayed],
        nat_type: 0,
    });
    assert_eq!(
        error_code(&a.request(relayed).await),
        ErrorCode::InvalidArgument
    );
    let long_reason = Req::Reject(Reject {
        user_id: carol.user_id.clone(),
        reason: "x".repeat(257),
    });
    assert_eq!(
        error_code(&a.request(long_reason).await),
        ErrorCode::InvalidArgument
    );
    // request_id 0 and an empty body are refused, and the stream goes on.
    a.tx.send(AttachRequest {
        request_id: 0,
        body: Some(Req::Ping(Ping { nonce: 1 })),
    })
    .expect("send");
    let answer = a.next().await;
    assert_eq!(answer.request_id, 0);
    assert_eq!(
        error_code(&answer.body.expect("body")),
        ErrorCode::InvalidArgument
    );
    a.tx.send(AttachRequest {
        request_id: 50,
        body: None,
    })
    .expect("send");
    let answer = a.next().await;
    assert_eq!(answer.request_id, 50);
    assert_eq!(
        error_code(&answer.body.expect("body")),
        ErrorCode::InvalidArgument
    );
    a.nothing_pending().await;
}

async fn a_third_user_never_learns_candidates_it_was_not_given(server: &TestServer) {
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let mut a = Attached::new(server, &alice, hello(1, 4000)).await;
    let mut b = Attached::new(server, &bob, hello(2, 5000)).await;
    let mut c = Attached::new(server, &carol, hello(3, 6000)).await;
    // Carol asks Alice, who never answers.
    assert!(matches!(c.request(connect(&alice)).await, Body::Ack(_)));
    assert!(matches!(a.unsolicited().await, Body::PeerConnectRequest(_)));
    handshake(&mut a, &alice, &mut b, &bob).await;
    let update = Req::UpdateCandidates(UpdateCandidates {
        candidates: vec![candidate(4200)],
        nat_type: 0,
    });
    assert!(matches!(a.request(update).await, Body::Ack(_)));
    assert!(matches!(b.unsolicited().await, Body::PeerInfo(_)));
    // Carol's pending request gives her nothing: no PeerInfo, no PunchStart, no grant.
    let grant = Req::RequestRelayGrant(RequestRelayGrant {
        user_id: alice.user_id.clone(),
    });
    assert_eq!(error_code(&c.request(grant).await), ErrorCode::NotAgreed);
    // Connecting again while pending changes nothing.
    assert!(matches!(c.request(connect(&alice)).await, Body::Ack(_)));
    c.nothing_pending().await;
    // Nor does Bob learn about Carol.
    assert!(matches!(a.unsolicited().await, Body::PunchStart(_)));
    assert!(matches!(b.unsolicited().await, Body::PunchStart(_)));
    b.nothing_pending().await;
}

async fn bad_streams_end_with_the_documented_status(server: &TestServer) {
    let alice = server.user("alice").await;
    let mut bad_hello = hello(1, 4000);
    bad_hello.certificate_fingerprint.truncate(31);
    let hello_request = |hello: Hello| AttachRequest {
        request_id: 1,
        body: Some(Req::Hello(hello)),
    };
    let status = open(server, &alice, hello_request(bad_hello))
        .await
        .expect_err("a malformed Hello ends the stream");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("certificate_fingerprint"));

    let ping = AttachRequest {
        request_id: 1,
        body: Some(Req::Ping(Ping { nonce: 1 })),
    };
    let status = open(server, &alice, ping).await.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let mut a = Attached::new(server, &alice, hello(1, 4000)).await;
    a.send(Req::Hello(hello(1, 4000)));
    let status = a.end().await.expect("a status");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let mut a = Attached::new(server, &alice, hello(1, 4000)).await;
    a.send(Req::Reject(Reject {
        user_id: alice.user_id.clone(),
        reason: "x".repeat(20_000),
    }));
    let status = a.end().await.expect("a status");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // No token at all.
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(hello_request(hello(1, 4000))).expect("queue");
    let status = BrokerClient::new(server.channel().await)
        .attach(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
}

async fn a_client_that_never_reads_is_dropped_not_buffered(server: &TestServer) {
    let alice = server.user("alice").await;
    let a = Attached::new(server, &alice, hello(1, 4000)).await;
    // Pongs pile up: first in HTTP/2's flow-control windows, then in the bounded queue.
    for nonce in 0..200_000u64 {
        let ping = AttachRequest {
            request_id: nonce + 10,
            body: Some(Req::Ping(Ping { nonce })),
        };
        if a.tx.send(ping).is_err() {
            // The call is over already: the server ended it.
            break;
        }
    }
    let status = a.end().await.expect("the server ends the stream");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

async fn relay_grants_work_on_the_real_relay(server: &TestServer) {
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mut a = Attached::new(server, &alice, hello(1, 4000)).await;
    let mut b = Attached::new(server, &bob, hello(2, 5000)).await;
    handshake(&mut a, &alice, &mut b, &bob).await;
    let request = Req::RequestRelayGrant(RequestRelayGrant {
        user_id: bob.user_id.clone(),
    });
    let Body::RelayGrant(mine) = a.request(request.clone()).await else {
        panic!("expected RelayGrant");
    };
    let Body::RelayGrant(theirs) = b.unsolicited().await else {
        panic!("expected RelayGrant");
    };
    assert_eq!(mine.user_id, bob.user_id);
    assert_eq!(theirs.user_id, alice.user_id);
    assert_eq!(mine.allocation_id, theirs.allocation_id);
    assert_eq!(mine.allocation_id.len(), 16);
    assert_eq!(mine.side + theirs.side, 1);
    let relay = server.relay_addr().expect("relay");
    assert_eq!(
        mine.relay_address,
        Some(SocketAddress {
            ip: relay.ip().to_string(),
            port: u32::from(relay.port())
        })
    );

    // Both present their grant from their own socket; then datagrams flow between them.
    let allocation: [u8; 16] = mine.allocation_id.as_slice().try_into().expect("16 bytes");
    let sock_a = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sock_b = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    for (socket, grant) in [(&sock_a, &mine), (&sock_b, &theirs)] {
        let answer = present(socket, relay, grant).await;
        assert!(
            matches!(wire::decode(&answer), Ok(Message::Allocated { allocation: got, .. }) if got == allocation),
            "{:?}",
            wire::decode(&answer)
        );
    }
    let mut datagram = Vec::new();
    wire::encode(
        &Message::Data {
            allocation,
            payload: b"opaque quic bytes",
        },
        &mut datagram,
    );
    sock_a.send_to(&datagram, relay).await.expect("send");
    let mut buf = [0u8; 256];
    let (len, from) = tokio::time::timeout(WAIT, sock_b.recv_from(&mut buf))
        .await
        .expect("relayed")
        .expect("receive");
    assert_eq!(from, relay);
    assert_eq!(
        wire::decode(&buf[..len]),
        Ok(Message::Data {
            allocation,
            payload: b"opaque quic bytes"
        })
    );

    // A side's grant binds that side only: Bob cannot take Alice's side with his.
    let stolen = RelayGrant {
        side: mine.side,
        ..theirs.clone()
    };
    let thief = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    assert!(matches!(
        wire::decode(&present(&thief, relay, &stolen).await),
        Ok(Message::Refused {
            reason: wire::RefusedReason::WrongSide,
            ..
        })
    ));

    // Asking again renews the same allocation.
    let Body::RelayGrant(renewed) = b
        .request(Req::RequestRelayGrant(RequestRelayGrant {
            user_id: alice.user_id.clone(),
        }))
        .await
    else {
        panic!("expected RelayGrant");
    };
    assert_eq!(renewed.allocation_id, mine.allocation_id);
    let millis = |grant: &RelayGrant| {
        let at = grant.expires_at.expect("expiry");
        u64::try_from(at.seconds * 1000 + i64::from(at.nanos / 1_000_000)).expect("positive")
    };
    assert!(millis(&renewed) >= millis(&mine));
    assert!(matches!(a.unsolicited().await, Body::RelayGrant(_)));
    // The relay takes the renewal from the bound socket and extends the allocation.
    let answer = present(&sock_b, relay, &renewed).await;
    assert_eq!(
        wire::decode(&answer),
        Ok(Message::Allocated {
            allocation,
            expires_at_ms: millis(&renewed)
        })
    );

    // Closing the pair releases the allocation: the relay drops it, and its grants, still
    // unexpired, cannot bring it back.
    let released_before = server.relay_counters().expect("relay").released;
    assert!(matches!(
        a.request(Req::Close(Close {
            user_id: bob.user_id.clone(),
        }))
        .await,
        Body::Ack(_)
    ));
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.relay_counters().expect("relay").released == released_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never saw the release"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(
        wire::decode(&present(&sock_a, relay, &mine).await),
        Ok(Message::Refused {
            allocation,
            reason: wire::RefusedReason::Released
        })
    );
}

async fn relay_policies_shape_what_peers_see(server: &TestServer) {
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let mut always = hello(1, 4000);
    always.relay_policy = RelayPolicy::Always as i32;
    let mut never = hello(3, 6000);
    never.relay_policy = RelayPolicy::Never as i32;
    let mut a = Attached::new(server, &alice, always).await;
    let mut b = Attached::new(server, &bob, hello(2, 5000)).await;
    let mut c = Attached::new(server, &carol, never).await;
    assert_eq!(
        error_code(&c.request(connect(&alice)).await),
        ErrorCode::RelayPolicyConflict
    );

    assert!(matches!(a.request(connect(&bob)).await, Body::Ack(_)));
    assert!(matches!(b.unsolicited().await, Body::PeerConnectRequest(_)));
    assert!(matches!(b.request(accept(&alice)).await, Body::Ack(_)));
    assert!(matches!(
        a.next().await.body,
        Some(Body::ConnectAccepted(_))
    ));
    // A side that always relays gets the allocation at once, and its addresses stay hidden.
    assert!(matches!(a.unsolicited().await, Body::RelayGrant(_)));
    assert!(matches!(b.unsolicited().await, Body::RelayGrant(_)));
    let relay = server.relay_addr().expect("relay");
    let relayed = Candidate {
        kind: CandidateKind::Relayed as i32,
        address: Some(SocketAddress {
            ip: relay.ip().to_string(),
            port: u32::from(relay.port()),
        }),
        priority: 0,
    };
    let Body::PeerInfo(about_bob) = a.unsolicited().await else {
        panic!("expected PeerInfo");
    };
    assert_eq!(about_bob.candidates, vec![candidate(5000), relayed.clone()]);
    let Body::PeerInfo(about_alice) = b.unsolicited().await else {
        panic!("expected PeerInfo");
    };
    assert_eq!(about_alice.candidates, vec![relayed]);
    assert_eq!(about_alice.certificate_fingerprint, vec![1; 32]);

    // A pair with a side that never relays gets no grant.
    assert!(matches!(b.unsolicited().await, Body::PunchStart(_)));
    handshake(&mut b, &bob, &mut c, &carol).await;
    let grant = Req::RequestRelayGrant(RequestRelayGrant {
        user_id: carol.user_id.clone(),
    });
    assert_eq!(
        error_code(&b.request(grant).await),
        ErrorCode::RelayPolicyConflict
    );
}

async fn room_presence_lists_members_with_their_presence(server: &TestServer) {
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mut a = Attached::new(server, &alice, hello(1, 4000)).await;
    let Body::RoomPresence(nothing) = a
        .request(Req::QueryRoomPresence(QueryRoomPresence {}))
        .await
    else {
        panic!("expected RoomPresence");
    };
    assert_eq!(nothing, RoomPresence::default());
    let room = server
        .rooms(&alice)
        .await
        .create_room(CreateRoomRequest {
            capacity: 4,
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .room
        .expect("room");
    server
        .rooms(&bob)
        .await
        .join_room(JoinRoomRequest {
            room_id: room.room_id.clone(),
        })
        .await
        .expect("join");
    let Body::RoomPresence(presence) = a
        .request(Req::QueryRoomPresence(QueryRoomPresence {}))
        .await
    else {
        panic!("expected RoomPresence");
    };
    assert_eq!(presence.room_id, room.room_id);
    assert_eq!(
        presence.members,
        vec![
            MemberPresence {
                user_id: alice.user_id.clone(),
                online: true
            },
            MemberPresence {
                user_id: bob.user_id.clone(),
                online: false
            },
        ]
    );
}

on_both_backends!(
    attach_welcomes_and_answers_pings,
    a_newer_attachment_supersedes_the_older,
    connect_accept_exchanges_candidates_fingerprints_and_punch_start,
    crossing_connects_agree_the_pair,
    reject_reaches_the_requester_with_its_reason,
    offline_unknown_and_malformed_targets_get_clear_errors,
    a_third_user_never_learns_candidates_it_was_not_given,
    bad_streams_end_with_the_documented_status,
    a_client_that_never_reads_is_dropped_not_buffered,
    relay_grants_work_on_the_real_relay,
    relay_policies_shape_what_peers_see,
    room_presence_lists_members_with_their_presence,
    a_fingerprint_another_online_user_announced_is_refused,
);

/// A Hello announcing the certificate fingerprint of another online user ends with
/// INVALID_ARGUMENT; once that user is gone, the fingerprint is free.
async fn a_fingerprint_another_online_user_announced_is_refused(server: &TestServer) {
    let alice = server.user("alice").await;
    let mallory = server.user("mallory").await;
    let a = Attached::new(server, &alice, hello(0x5A, 4000)).await;
    let copied = AttachRequest {
        request_id: 1,
        body: Some(Req::Hello(hello(0x5A, 5000))),
    };
    let status = match open(server, &mallory, copied.clone()).await {
        Err(status) => status,
        Ok((_tx, mut rx)) => match tokio::time::timeout(WAIT, rx.next()).await {
            Ok(Some(Err(status))) => status,
            other => panic!("expected the stream to end, got {other:?}"),
        },
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("certificate_fingerprint"),
        "{status:?}"
    );
    // Mallory was not attached: Alice cannot reach it.
    let mut a = a;
    let refused = a.request(connect(&mallory)).await;
    assert_eq!(error_code(&refused), ErrorCode::UserOffline);
    // Alice leaves; the fingerprint is free.
    drop(a);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match open(server, &mallory, copied.clone()).await {
            Ok((tx, mut rx)) => match tokio::time::timeout(WAIT, rx.next()).await {
                Ok(Some(Ok(welcome))) => {
                    assert!(
                        matches!(welcome.body, Some(Body::Welcome(_))),
                        "{welcome:?}"
                    );
                    drop(tx);
                    break;
                }
                Ok(Some(Err(status))) if status.code() == Code::InvalidArgument => {}
                other => panic!("expected a Welcome, got {other:?}"),
            },
            Err(status) if status.code() == Code::InvalidArgument => {}
            Err(status) => panic!("{status:?}"),
        }
        // Alice's detach is recorded when the server sees her stream end.
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fingerprint stayed taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_past_the_rate_limit_are_refused_and_pings_still_answered() {
    let server = TestServer::start_with(
        Backend::Sqlite,
        &[
            "--broker-signals-per-second",
            "1",
            "--broker-signal-burst",
            "5",
        ],
    )
    .await
    .expect("server");
    let alice = server.user("alice").await;
    let mut a = Attached::new(&server, &alice, hello(1, 4000)).await;
    let mut codes = Vec::new();
    for _ in 0..10 {
        let body = a
            .request(Req::QueryRoomPresence(QueryRoomPresence {}))
            .await;
        codes.push(match body {
            Body::RoomPresence(_) => None,
            other => Some(error_code(&other)),
        });
    }
    assert_eq!(&codes[..5], &[None; 5], "the burst passes");
    assert!(
        codes[5..].contains(&Some(ErrorCode::RateLimited)),
        "the rest is limited: {codes:?}"
    );
    assert!(matches!(
        a.request(Req::Ping(Ping { nonce: 1 })).await,
        Body::Pong(_)
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_three_keepalive_intervals() {
    let server = TestServer::start_with(Backend::Sqlite, &["--broker-keepalive-ms", "200"])
        .await
        .expect("server");
    let alice = server.user("alice").await;
    let a = Attached::new(&server, &alice, hello(1, 4000)).await;
    let started = std::time::Instant::now();
    let status = a.end().await.expect("a status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    server.stop().await;
}

/// Watches a room from the start; returns the stream.
async fn watch(
    server: &TestServer,
    user: &TestUser,
    room_id: &str,
) -> Streaming<rally_proto::rooms::v1::WatchRoomResponse> {
    server
        .rooms(user)
        .await
        .watch_room(WatchRoomRequest {
            room_id: room_id.into(),
            after_sequence: None,
        })
        .await
        .expect("watch")
        .into_inner()
}

/// The next MemberLeft event of a watch: (user, reason).
async fn next_left(
    watch: &mut Streaming<rally_proto::rooms::v1::WatchRoomResponse>,
) -> (String, i32) {
    loop {
        let message = tokio::time::timeout(WAIT, watch.next())
            .await
            .expect("an event in time")
            .expect("the watch is open")
            .expect("an event");
        if let Some(Payload::Event(event)) = message.payload
            && let Some(Kind::MemberLeft(left)) = event.kind
        {
            return (left.user_id, left.reason);
        }
    }
}

async fn grace_period_test(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, &["--broker-detach-grace-ms", "400"]).await
    else {
        return;
    };
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let dave = server.user("dave").await;
    let room = server
        .rooms(&alice)
        .await
        .create_room(CreateRoomRequest {
            capacity: 4,
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .room
        .expect("room");
    for user in [&bob, &dave] {
        server
            .rooms(user)
            .await
            .join_room(JoinRoomRequest {
                room_id: room.room_id.clone(),
            })
            .await
            .expect("join");
    }
    let mut events = watch(&server, &alice, &room.room_id).await;
    let mut a = Attached::new(&server, &alice, hello(1, 4000)).await;
    let mut b = Attached::new(&server, &bob, hello(2, 5000)).await;
    let d = Attached::new(&server, &dave, hello(3, 6000)).await;
    handshake(&mut a, &alice, &mut b, &bob).await;

    // Bob drops and comes straight back; then Dave drops for good.
    drop(b);
    let mut b = Attached::new(&server, &bob, hello(2, 5000)).await;
    drop(d);
    // Dave, detached after Bob, leaves the room once the grace period is over; Bob, back within
    // it, does not (the oldest detach is handled first, so Bob would have gone before Dave).
    assert_eq!(
        next_left(&mut events).await,
        (dave.user_id.clone(), LeaveReason::Disconnected as i32)
    );
    let members: Vec<String> = server
        .rooms(&alice)
        .await
        .get_room(GetRoomRequest {
            room_id: room.room_id.clone(),
        })
        .await
        .expect("get room")
        .into_inner()
        .room
        .expect("room")
        .members
        .into_iter()
        .map(|m| m.user_id)
        .collect();
    assert_eq!(members, vec![alice.user_id.clone(), bob.user_id.clone()]);

    // Bob's pair with Alice survived his reconnect: a Connect renews it.
    assert!(matches!(b.request(connect(&alice)).await, Body::Ack(_)));
    assert!(matches!(a.unsolicited().await, Body::PeerInfo(_)));

    // Now Bob goes for good: he leaves the room and Alice's pair with him ends.
    drop(b);
    assert_eq!(
        next_left(&mut events).await,
        (bob.user_id.clone(), LeaveReason::Disconnected as i32)
    );
    loop {
        match a.unsolicited().await {
            Body::PeerClosed(closed) => {
                assert_eq!(closed.user_id, bob.user_id);
                assert_eq!(closed.reason, PeerClosedReason::Detached as i32);
                break;
            }
            Body::PunchStart(_) | Body::PeerInfo(_) => continue,
            other => panic!("expected PeerClosed, got {other:?}"),
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_users_leave_their_room_after_the_grace_period_on_sqlite() {
    grace_period_test(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_users_leave_their_room_after_the_grace_period_on_postgres() {
    grace_period_test(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_on_two_replicas_complete_the_whole_handshake() {
    let Some(first) = TestServer::start(Backend::Postgres).await else {
        return;
    };
    let second = first.replica(&[]).await;
    let alice = first.user("alice").await;
    let bob = first.user("bob").await;
    let mut a = Attached::new(&first, &alice, hello(1, 4000)).await;
    let mut b = Attached::new(&second, &bob, hello(2, 5000)).await;
    let (a_punch, b_punch) = handshake(&mut a, &alice, &mut b, &bob).await;
    assert_eq!(a_punch.candidates, vec![candidate(5000)]);
    assert_eq!(b_punch.candidates, vec![candidate(4000)]);

    // Relay grants and closes cross too.
    let Body::RelayGrant(mine) = b
        .request(Req::RequestRelayGrant(RequestRelayGrant {
            user_id: alice.user_id.clone(),
        }))
        .await
    else {
        panic!("expected RelayGrant");
    };
    let Body::RelayGrant(theirs) = a.unsolicited().await else {
        panic!("expected RelayGrant");
    };
    assert_eq!(mine.allocation_id, theirs.allocation_id);

    // Bob attaches again on the first replica: his attachment on the second is superseded.
    let b2 = Attached::new(&first, &bob, hello(2, 5001)).await;
    assert_eq!(b2.welcome.superseded_attachment_id, b.welcome.attachment_id);
    match b.unsolicited().await {
        Body::Superseded(superseded) => {
            assert_eq!(superseded.by_attachment_id, b2.welcome.attachment_id);
        }
        other => panic!("expected Superseded, got {other:?}"),
    }
    assert!(b.end().await.is_none());
    // His new candidates reached Alice.
    match a.unsolicited().await {
        Body::PeerInfo(info) => {
            // The pair holds a relay allocation now, so its relayed candidate comes too.
            assert_eq!(info.candidates.len(), 2, "{info:?}");
            assert_eq!(info.candidates[0], candidate(5001));
            assert_eq!(info.candidates[1].kind, CandidateKind::Relayed as i32);
        }
        other => panic!("expected PeerInfo, got {other:?}"),
    }
    second.stop().await;
    first.stop().await;
}

/// Presents a grant to `relay` from `socket`; returns the relay's answer.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_keeps_accepting_grants_signed_with_an_older_secret() {
    // The old deployment's broker signs with its secret...
    let old = TestServer::start(Backend::Sqlite).await.expect("server");
    let alice = old.user("alice").await;
    let bob = old.user("bob").await;
    let mut a = Attached::new(&old, &alice, hello(1, 4000)).await;
    let mut b = Attached::new(&old, &bob, hello(2, 5000)).await;
    handshake(&mut a, &alice, &mut b, &bob).await;
    let Body::RelayGrant(grant) = a
        .request(Req::RequestRelayGrant(RequestRelayGrant {
            user_id: bob.user_id.clone(),
        }))
        .await
    else {
        panic!("expected RelayGrant");
    };
    // ...and a relay with a new secret that still verifies the old one admits the grant, while
    // one without it refuses.
    let old_secret = old.data_dir().join("relay-grant-secret");
    let old_secret = old_secret.to_str().expect("UTF-8 path");
    let token_key = old.key_file();
    let token_key = token_key.to_str().expect("UTF-8 path");
    let rotated = TestServer::start_with(
        Backend::Sqlite,
        &[
            "--services",
            "relay",
            "--token-key-file",
            token_key,
            "--relay-verify-secret-files",
            old_secret,
        ],
    )
    .await
    .expect("server");
    let other = TestServer::start_with(
        Backend::Sqlite,
        &["--services", "relay", "--token-key-file", token_key],
    )
    .await
    .expect("server");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let answer = present(&socket, rotated.relay_addr().expect("relay"), &grant).await;
    assert!(
        matches!(wire::decode(&answer), Ok(Message::Allocated { .. })),
        "{:?}",
        wire::decode(&answer)
    );
    // An unverifiable grant gets no answer at all: the next datagram from that relay answers the
    // binding request sent after it.
    let relay = other.relay_addr().expect("relay");
    let mut datagram = allocate_datagram(&grant);
    socket.send_to(&datagram, relay).await.expect("send");
    datagram.clear();
    wire::encode(
        &Message::BindingRequest {
            transaction: [9; 12],
            respond_from: RespondFrom::Same,
        },
        &mut datagram,
    );
    socket.send_to(&datagram, relay).await.expect("send");
    let mut buf = [0u8; 256];
    let (len, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("an answer")
        .expect("receive");
    assert!(
        matches!(
            wire::decode(&buf[..len]),
            Ok(Message::BindingResponse {
                transaction: [9, ..],
                ..
            })
        ),
        "{:?}",
        wire::decode(&buf[..len])
    );
    other.stop().await;
    rotated.stop().await;
    old.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_attachments_with_unavailable_without_waiting_out_the_grace() {
    // A grace far longer than TestServer::stop waits: stopping only finishes in time if the
    // broker ends its streams itself.
    let server = TestServer::start_with(Backend::Sqlite, &["--shutdown-grace-secs", "600"])
        .await
        .expect("server");
    let alice = server.user("alice").await;
    let a = Attached::new(&server, &alice, hello(1, 4000)).await;
    let ended = tokio::spawn(a.end());
    server.stop().await;
    let status = ended.await.expect("joined").expect("a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

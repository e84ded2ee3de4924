//! The relay on real UDP sockets on loopback.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rally_relay::allocations::{Counters, Relay, RelayLimits};
use rally_relay::grant::{GRANT_BYTES, Grant, GrantKey};
use rally_relay::server::RelayServer;
use rally_relay::wire::{self, Message, RefusedReason, RespondFrom};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

fn key() -> GrantKey {
    GrantKey::new(3, *b"a relay secret for these tests!!")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Side 0's grant.
fn grant(allocation: u8, expires_at_ms: u64) -> [u8; GRANT_BYTES] {
    grant_side(allocation, 0, expires_at_ms)
}

fn grant_side(allocation: u8, side: u8, expires_at_ms: u64) -> [u8; GRANT_BYTES] {
    Grant {
        key_id: 0,
        allocation: [allocation; 16],
        user_a: [1; 16],
        user_b: [2; 16],
        side,
        expires_at_ms,
        byte_cap: 1 << 30,
        rate_bytes_per_sec: 1 << 30,
    }
    .sign(&key())
}

fn encode(message: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode(message, &mut out);
    out
}

async fn relay() -> (RelayServer, CancellationToken) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind relay");
    let shutdown = CancellationToken::new();
    let server = RelayServer::spawn(
        vec![socket],
        Relay::new(vec![key()], RelayLimits::default()),
        shutdown.clone(),
    )
    .expect("spawn");
    (server, shutdown)
}

async fn peer() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.expect("bind peer")
}

async fn receive(socket: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65_535];
    let (len, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("a datagram within 10 s")
        .expect("receive");
    buf.truncate(len);
    buf
}

/// A binding request round trip: once it is answered, everything this socket sent before it
/// has been handled.
async fn sync(socket: &UdpSocket, relay: SocketAddr) -> SocketAddr {
    let request = encode(&Message::BindingRequest {
        transaction: [9; 12],
        respond_from: RespondFrom::Same,
    });
    socket.send_to(&request, relay).await.expect("send");
    match wire::decode(&receive(socket).await) {
        Ok(Message::BindingResponse {
            transaction: [9, ..],
            address,
        }) => address,
        other => panic!("expected a binding response, got {other:?}"),
    }
}

fn data(allocation: u8, payload: &[u8]) -> Vec<u8> {
    encode(&Message::Data {
        allocation: [allocation; 16],
        payload,
    })
}

async fn allocate(
    socket: &UdpSocket,
    relay: SocketAddr,
    side: u8,
    grant: &[u8; GRANT_BYTES],
) -> Vec<u8> {
    socket
        .send_to(&encode(&Message::Allocate { side, grant }), relay)
        .await
        .expect("send");
    receive(socket).await
}

#[tokio::test]
async fn the_reflector_answers_with_the_address_it_saw() {
    let (server, shutdown) = relay().await;
    let client = peer().await;
    assert_eq!(
        sync(&client, server.local_addr()).await,
        client.local_addr().expect("addr")
    );
    shutdown.cancel();
    server.wait().await;
}

#[tokio::test]
async fn two_peers_exchange_datagrams_through_an_allocation_and_nobody_else_can() {
    let (server, shutdown) = relay().await;
    let relay_addr = server.local_addr();
    let (a, b, intruder) = (peer().await, peer().await, peer().await);
    for (socket, side) in [(&a, 0), (&b, 1)] {
        let g = grant_side(5, side, now_ms() + 60_000);
        let answer = allocate(socket, relay_addr, side, &g).await;
        assert!(matches!(
            wire::decode(&answer),
            Ok(Message::Allocated {
                allocation: [5, ..],
                ..
            })
        ));
    }
    let data = encode(&Message::Data {
        allocation: [5; 16],
        payload: b"quic bytes the relay cannot read",
    });
    a.send_to(&data, relay_addr).await.expect("send");
    assert_eq!(receive(&b).await, data, "forwarded unchanged");
    b.send_to(&data, relay_addr).await.expect("send");
    assert_eq!(receive(&a).await, data);

    // The same grant from a third address cannot take a side, and its data goes nowhere.
    let refused = allocate(&intruder, relay_addr, 0, &grant(5, now_ms() + 60_000)).await;
    assert!(matches!(
        wire::decode(&refused),
        Ok(Message::Refused { .. })
    ));
    intruder.send_to(&data, relay_addr).await.expect("send");
    sync(&intruder, relay_addr).await;
    assert_eq!(server.counters().dropped_unauthorised, 1);
    assert_eq!(server.counters().forwarded, 2);
    shutdown.cancel();
    server.wait().await;
}

#[tokio::test]
async fn a_grant_replayed_from_a_third_address_after_both_peers_bound_gains_it_nothing() {
    let (server, shutdown) = relay().await;
    let relay_addr = server.local_addr();
    let (a, b, thief) = (peer().await, peer().await, peer().await);
    for (socket, side) in [(&a, 0), (&b, 1)] {
        let g = grant_side(8, side, now_ms() + 60_000);
        let answer = allocate(socket, relay_addr, side, &g).await;
        assert!(matches!(
            wire::decode(&answer),
            Ok(Message::Allocated {
                allocation: [8, ..],
                ..
            })
        ));
    }

    // The valid grant, replayed for either side, binds nothing.
    for side in [0, 1] {
        let g = grant_side(8, side, now_ms() + 60_000);
        let answer = allocate(&thief, relay_addr, side, &g).await;
        assert_eq!(
            wire::decode(&answer),
            Ok(Message::Refused {
                allocation: [8; 16],
                reason: RefusedReason::SideTaken
            }),
            "side {side}"
        );
    }

    // It cannot send into the allocation. The sync proves the relay handled the datagram; had
    // it been forwarded, it would be the first thing a or b receives below.
    thief
        .send_to(&data(8, b"from the third address"), relay_addr)
        .await
        .expect("send");
    sync(&thief, relay_addr).await;

    // Nor receive from it: the peers still reach each other, and only each other.
    let (from_a, from_b) = (data(8, b"from a"), data(8, b"from b"));
    a.send_to(&from_a, relay_addr).await.expect("send");
    assert_eq!(receive(&b).await, from_a);
    b.send_to(&from_b, relay_addr).await.expect("send");
    assert_eq!(receive(&a).await, from_b);
    // Both were forwarded before this request was handled: had either gone to the third
    // address, sync would have received it before its binding response, and failed.
    sync(&thief, relay_addr).await;

    let counters = server.counters();
    assert_eq!(counters.refused_grants, 2, "{counters:?}");
    assert_eq!(counters.dropped_unauthorised, 1, "{counters:?}");
    assert_eq!(counters.forwarded, 2, "{counters:?}");
    assert_eq!(server.allocation_count(), 1);
    shutdown.cancel();
    server.wait().await;
}

#[tokio::test]
async fn forged_and_expired_grants_are_dropped_without_an_answer() {
    let (server, shutdown) = relay().await;
    let relay_addr = server.local_addr();
    let client = peer().await;
    let mut forged = grant(6, now_ms() + 60_000);
    forged[30] ^= 0x40;
    let expired = grant(6, now_ms() - 1);
    for g in [&forged, &expired] {
        client
            .send_to(
                &encode(&Message::Allocate { side: 0, grant: g }),
                relay_addr,
            )
            .await
            .expect("send");
    }
    // The next answer is the sync's: the grants got none.
    sync(&client, relay_addr).await;
    assert_eq!(server.counters().refused_grants, 2);
    assert_eq!(server.allocation_count(), 0);
    shutdown.cancel();
    server.wait().await;
}

/// The `i`th junk datagram, from xorshift state `seed`. A third of it looks like ours (the
/// right header, garbage after it), a sixth is a well-formed allocation request with a forged
/// grant (a tampered copy of `real`, or one signed with a secret the relay does not have), a
/// sixth is Data for the real allocation `[7; 16]`, and the rest is noise.
fn junk(i: u32, seed: u64, real: &[u8; GRANT_BYTES]) -> Vec<u8> {
    let len = 1 + (seed % 1200) as usize;
    let mut bytes: Vec<u8> = (0..len)
        .map(|j| (seed >> (j % 8 * 8)) as u8 ^ j as u8)
        .collect();
    match i % 6 {
        0 | 3 if bytes.len() > 4 => {
            bytes[..4].copy_from_slice(&[b'R', b'Y', 1, (i % 7) as u8]);
            bytes
        }
        1 => {
            let forged = if seed & 1 == 0 {
                let mut tampered = *real;
                tampered[(seed >> 8) as usize % GRANT_BYTES] ^= 1 << (seed >> 16 & 7);
                tampered
            } else {
                Grant {
                    key_id: 0,
                    allocation: [(seed >> 8) as u8 % 16; 16],
                    user_a: [1; 16],
                    user_b: [2; 16],
                    side: (seed >> 24) as u8 & 1,
                    expires_at_ms: now_ms() + 60_000,
                    byte_cap: 1 << 30,
                    rate_bytes_per_sec: 1 << 30,
                }
                .sign(&GrantKey::new(3, *b"not the relay's secret, 32 bytes"))
            };
            encode(&Message::Allocate {
                side: (seed >> 24) as u8 & 1,
                grant: &forged,
            })
        }
        4 => data(7, &bytes),
        _ => bytes,
    }
}

#[tokio::test]
async fn ten_thousand_junk_datagrams_leave_state_bounded_and_traffic_flowing() {
    let (server, shutdown) = relay().await;
    let relay_addr = server.local_addr();
    let (a, b, junk_peer) = (peer().await, peer().await, peer().await);
    for (socket, side) in [(&a, 0), (&b, 1)] {
        let g = grant_side(7, side, now_ms() + 60_000);
        let answer = allocate(socket, relay_addr, side, &g).await;
        assert!(matches!(
            wire::decode(&answer),
            Ok(Message::Allocated { .. })
        ));
    }
    // What each junk datagram should cost: one counter, no state, no answer.
    let mut expected = Counters::default();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..10_000u32 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let bytes = junk(i, seed, &grant(7, now_ms() + 60_000));
        match wire::decode(&bytes) {
            Ok(Message::Allocate { .. }) => expected.refused_grants += 1,
            Ok(Message::Data { .. }) => expected.dropped_unauthorised += 1,
            Ok(Message::BindingRequest { .. }) => panic!("junk {i} asks for an answer"),
            _ => expected.dropped_malformed += 1,
        }
        junk_peer
            .send_to(&bytes, relay_addr)
            .await
            .expect("send junk");
        if i % 50 == 49 {
            // Pace the flood so that the relay's socket buffer is not what drops it; this also
            // fails if any junk was answered.
            sync(&junk_peer, relay_addr).await;
        }
    }
    sync(&junk_peer, relay_addr).await;
    let counters = server.counters();
    assert_eq!(server.allocation_count(), 1, "junk created no allocation");
    // Paced so that no socket buffer overflows: every junk datagram reached the relay and was
    // dropped and counted where it should be.
    assert_eq!(
        (
            counters.dropped_malformed,
            counters.refused_grants,
            counters.dropped_unauthorised,
            counters.forwarded,
            counters.allocations,
        ),
        (
            expected.dropped_malformed,
            expected.refused_grants,
            expected.dropped_unauthorised,
            0,
            1
        ),
        "{counters:?}"
    );
    assert!(expected.refused_grants > 1000 && expected.dropped_unauthorised > 1000);
    let data = data(7, b"still here");
    a.send_to(&data, relay_addr).await.expect("send");
    assert_eq!(receive(&b).await, data, "real traffic unaffected");
    shutdown.cancel();
    server.wait().await;
}

#[tokio::test]
async fn a_relay_needs_at_least_one_socket() {
    let refused = RelayServer::spawn(
        Vec::new(),
        Relay::new(vec![key()], RelayLimits::default()),
        CancellationToken::new(),
    );
    assert_eq!(
        refused.err().map(|e| e.kind()),
        Some(std::io::ErrorKind::InvalidInput)
    );
}

#[tokio::test]
async fn binding_requests_are_answered_from_the_socket_they_ask_for() {
    let mut sockets = Vec::new();
    for address in ["127.0.0.1:0", "127.0.0.2:0", "127.0.0.1:0"] {
        sockets.push(UdpSocket::bind(address).await.expect("bind relay"));
    }
    let shutdown = CancellationToken::new();
    let server = RelayServer::spawn(
        sockets,
        Relay::new(vec![key()], RelayLimits::default()),
        shutdown.clone(),
    )
    .expect("spawn");
    let addrs = server.local_addrs().to_vec();
    assert_eq!(addrs.len(), 3);
    assert_eq!(server.local_addr(), addrs[0]);
    let client = peer().await;
    let expected = client.local_addr().expect("addr");
    for (respond_from, answers_from) in [
        (RespondFrom::Same, addrs[0]),
        (RespondFrom::OtherAddress, addrs[1]),
        (RespondFrom::OtherPort, addrs[2]),
    ] {
        let request = encode(&Message::BindingRequest {
            transaction: [1; 12],
            respond_from,
        });
        client.send_to(&request, addrs[0]).await.expect("send");
        let mut buf = [0u8; 128];
        let (len, from) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
            .await
            .expect("an answer within 10 s")
            .expect("receive");
        assert_eq!(from, answers_from, "{respond_from:?}");
        assert_eq!(
            wire::decode(&buf[..len]),
            Ok(Message::BindingResponse {
                transaction: [1; 12],
                address: expected,
            })
        );
    }
    assert_eq!(server.counters().bindings, 3);
    shutdown.cancel();
    server.wait().await;
}

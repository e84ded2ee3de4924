//! Matchmaking end to end through gRPC, on SQLite and Postgres: tickets, matches into rooms,
//! cancellation, expiry, restarts, and 1000 tickets through two replicas.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rally_e2e::{Backend, TestServer, TestUser};
use rally_proto::rooms::v1::*;
use tonic::Code;

/// How long a test waits for one expected stream message.
const WAIT: Duration = Duration::from_secs(30);

const POOLS: &str = r#"[
  {"name": "duel", "match_size": 2},
  {"name": "trio", "match_size": 3},
  {"name": "brief", "match_size": 2, "max_wait_secs": 1},
  {"name": "ranked", "match_size": 4, "max_wait_secs": 600,
   "numeric": [{"attribute": "skill", "initial_window": 50, "widen_per_second": 400, "max_window": 3000}],
   "strings": ["region"]}
]"#;

async fn server(backend: Backend) -> Option<(TestServer, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let pools = dir.path().join("pools.json");
    std::fs::write(&pools, POOLS).expect("write pools");
    let pools = pools.display().to_string();
    let server = TestServer::start_with(
        backend,
        &[
            "--matchmaking-pools",
            &pools,
            "--matchmaking-tick-ms",
            "50",
            "--signin-per-address-per-minute",
            "100000",
        ],
    )
    .await?;
    Some((server, dir))
}

fn enqueue_request(pool: &str) -> EnqueueRequest {
    EnqueueRequest {
        pool: pool.into(),
        ..Default::default()
    }
}

async fn enqueue(
    server: &TestServer,
    user: &TestUser,
    request: EnqueueRequest,
) -> Result<Ticket, tonic::Status> {
    server
        .matchmaking(user)
        .await
        .enqueue(request)
        .await
        .map(|r| r.into_inner().ticket.expect("ticket"))
}

/// Watches a ticket until it is final and returns its last state.
async fn final_state(server: &TestServer, user: &TestUser, ticket: &str) -> Ticket {
    let mut stream = server
        .matchmaking(user)
        .await
        .watch_ticket(WatchTicketRequest {
            ticket_id: ticket.into(),
        })
        .await
        .expect("watch ticket")
        .into_inner();
    let mut last = None;
    loop {
        let next = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a ticket update within 30 s");
        match next {
            Some(message) => last = Some(message.expect("no error").ticket.expect("ticket")),
            None => return last.expect("at least one message"),
        }
    }
}

/// The first state a watch of `ticket` reports.
async fn current_state(server: &TestServer, user: &TestUser, ticket: &str) -> Ticket {
    let mut stream = server
        .matchmaking(user)
        .await
        .watch_ticket(WatchTicketRequest {
            ticket_id: ticket.into(),
        })
        .await
        .expect("watch ticket")
        .into_inner();
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("first message")
        .expect("stream open")
        .expect("no error")
        .ticket
        .expect("ticket")
}

async fn two_players_are_matched_into_one_private_room(backend: Backend) {
    let Some((server, _dir)) = server(backend).await else {
        return;
    };
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let first = enqueue(&server, &alice, enqueue_request("duel"))
        .await
        .expect("enqueue");
    assert_eq!(first.status, TicketStatus::Queued as i32);
    let second = enqueue(&server, &bob, enqueue_request("duel"))
        .await
        .expect("enqueue");
    let a = final_state(&server, &alice, &first.ticket_id).await;
    let b = final_state(&server, &bob, &second.ticket_id).await;
    assert_eq!(a.status, TicketStatus::Matched as i32);
    assert_eq!(b.status, TicketStatus::Matched as i32);
    let matched = a.match_result.expect("match");
    assert_eq!(Some(&matched), b.match_result.as_ref());
    assert_eq!(
        matched.user_ids,
        [alice.user_id.clone(), bob.user_id.clone()]
    );

    let room = server
        .rooms(&bob)
        .await
        .get_current_room(GetCurrentRoomRequest {})
        .await
        .expect("current room")
        .into_inner()
        .room
        .expect("bob is in the match's room");
    assert_eq!(room.room_id, matched.room_id);
    assert_eq!(
        room.owner_user_id, alice.user_id,
        "the longest-waiting ticket's user owns the room"
    );
    assert_eq!(room.capacity, 2);
    assert_eq!(room.visibility, RoomVisibility::Private as i32);
    assert_eq!(room.join_policy, JoinPolicy::InviteOnly as i32);
    let members: Vec<_> = room.members.iter().map(|m| m.user_id.clone()).collect();
    assert_eq!(members, [alice.user_id.clone(), bob.user_id.clone()]);
    server.stop().await;
}

async fn bad_tickets_get_the_documented_codes(backend: Backend) {
    let Some((server, _dir)) = server(backend).await else {
        return;
    };
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let status = enqueue(&server, &alice, enqueue_request("nope"))
        .await
        .expect_err("unknown pool");
    assert_eq!(status.code(), Code::NotFound);
    let missing = enqueue(&server, &alice, enqueue_request("ranked"))
        .await
        .expect_err("missing attributes");
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(
        missing.message().contains("skill") || missing.message().contains("region"),
        "{missing:?}"
    );
    let nan = EnqueueRequest {
        pool: "ranked".into(),
        numeric_attributes: HashMap::from([("skill".into(), f64::NAN)]),
        string_attributes: HashMap::from([("region".into(), "eu".into())]),
    };
    assert_eq!(
        enqueue(&server, &alice, nan).await.expect_err("NaN").code(),
        Code::InvalidArgument
    );
    let too_many = EnqueueRequest {
        pool: "duel".into(),
        numeric_attributes: (0..17).map(|i| (format!("a{i}"), 1.0)).collect(),
        ..Default::default()
    };
    assert_eq!(
        enqueue(&server, &alice, too_many)
            .await
            .expect_err("17")
            .code(),
        Code::InvalidArgument
    );
    let long_value = EnqueueRequest {
        pool: "duel".into(),
        string_attributes: HashMap::from([("mode".into(), "m".repeat(257))]),
        ..Default::default()
    };
    assert_eq!(
        enqueue(&server, &alice, long_value)
            .await
            .expect_err("257")
            .code(),
        Code::InvalidArgument
    );

    let ticket = enqueue(&server, &alice, enqueue_request("trio"))
        .await
        .expect("enqueue");
    let mut as_bob = server.matchmaking(&bob).await;
    let status = as_bob
        .cancel(CancelRequest {
            ticket_id: ticket.ticket_id.clone(),
        })
        .await
        .expect_err("not bob's");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = as_bob
        .watch_ticket(WatchTicketRequest {
            ticket_id: ticket.ticket_id.clone(),
        })
        .await
        .expect_err("not bob's");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = as_bob
        .cancel(CancelRequest {
            ticket_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    let status = as_bob
        .cancel(CancelRequest {
            ticket_id: "x".into(),
        })
        .await
        .expect_err("malformed");
    assert_eq!(status.code(), Code::InvalidArgument);
    server.stop().await;
}

async fn cancel_replace_and_expiry_end_tickets(backend: Backend) {
    let Some((server, _dir)) = server(backend).await else {
        return;
    };
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut mm = server.matchmaking(&alice).await;

    let ticket = enqueue(&server, &alice, enqueue_request("trio"))
        .await
        .expect("enqueue");
    let cancelled = mm
        .cancel(CancelRequest {
            ticket_id: ticket.ticket_id.clone(),
        })
        .await
        .expect("cancel")
        .into_inner()
        .ticket
        .expect("ticket");
    assert_eq!(cancelled.status, TicketStatus::Cancelled as i32);
    // Cancelling again changes nothing; watching a final ticket sends it and ends.
    mm.cancel(CancelRequest {
        ticket_id: ticket.ticket_id.clone(),
    })
    .await
    .expect("cancel again");
    assert_eq!(
        final_state(&server, &alice, &ticket.ticket_id).await.status,
        TicketStatus::Cancelled as i32
    );

    // A second enqueue replaces the waiting ticket.
    let older = enqueue(&server, &alice, enqueue_request("trio"))
        .await
        .expect("enqueue");
    let newer = enqueue(&server, &alice, enqueue_request("trio"))
        .await
        .expect("enqueue again");
    assert_eq!(
        final_state(&server, &alice, &older.ticket_id).await.status,
        TicketStatus::Cancelled as i32
    );
    assert_eq!(
        current_state(&server, &alice, &newer.ticket_id)
            .await
            .status,
        TicketStatus::Queued as i32
    );

    // A ticket that waits past the pool's limit expires.
    let brief = enqueue(&server, &bob, enqueue_request("brief"))
        .await
        .expect("enqueue");
    assert_eq!(
        final_state(&server, &bob, &brief.ticket_id).await.status,
        TicketStatus::Expired as i32
    );

    // A matched ticket cannot be cancelled.
    let carol = server.user("carol").await;
    let duel_a = enqueue(&server, &bob, enqueue_request("duel"))
        .await
        .expect("enqueue");
    enqueue(&server, &carol, enqueue_request("duel"))
        .await
        .expect("enqueue");
    assert_eq!(
        final_state(&server, &bob, &duel_a.ticket_id).await.status,
        TicketStatus::Matched as i32
    );
    let status = server
        .matchmaking(&bob)
        .await
        .cancel(CancelRequest {
            ticket_id: duel_a.ticket_id.clone(),
        })
        .await
        .expect_err("matched");
    assert_eq!(status.code(), Code::FailedPrecondition);
    server.stop().await;
}

async fn tickets_survive_a_restart_and_match_after_it(backend: Backend) {
    let Some((server, dir)) = server(backend).await else {
        return;
    };
    let users = [
        server.user("a").await,
        server.user("b").await,
        server.user("c").await,
    ];
    let mut tickets = Vec::new();
    for user in &users[..2] {
        tickets.push(
            enqueue(&server, user, enqueue_request("trio"))
                .await
                .expect("enqueue"),
        );
    }
    let pools = dir.path().join("pools.json").display().to_string();
    let server = server
        .restart(&["--matchmaking-pools", &pools, "--matchmaking-tick-ms", "50"])
        .await;
    for (user, ticket) in users.iter().zip(&tickets) {
        assert_eq!(
            current_state(&server, user, &ticket.ticket_id).await.status,
            TicketStatus::Queued as i32
        );
    }
    let third = enqueue(&server, &users[2], enqueue_request("trio"))
        .await
        .expect("enqueue");
    tickets.push(third);
    let mut rooms = HashSet::new();
    for (user, ticket) in users.iter().zip(&tickets) {
        let done = final_state(&server, user, &ticket.ticket_id).await;
        assert_eq!(done.status, TicketStatus::Matched as i32);
        rooms.insert(done.match_result.expect("match").room_id);
    }
    assert_eq!(rooms.len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_players_are_matched_into_one_private_room() {
    two_players_are_matched_into_one_private_room(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_players_are_matched_into_one_private_room() {
    two_players_are_matched_into_one_private_room(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bad_tickets_get_the_documented_codes() {
    bad_tickets_get_the_documented_codes(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bad_tickets_get_the_documented_codes() {
    bad_tickets_get_the_documented_codes(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_cancel_replace_and_expiry_end_tickets() {
    cancel_replace_and_expiry_end_tickets(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cancel_replace_and_expiry_end_tickets() {
    cancel_replace_and_expiry_end_tickets(Backend::Postgres).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tickets_survive_a_restart_and_match_after_it() {
    tickets_survive_a_restart_and_match_after_it(Backend::Sqlite).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tickets_survive_a_restart_and_match_after_it() {
    tickets_survive_a_restart_and_match_after_it(Backend::Postgres).await;
}

/// The window of the "ranked" pool's skill rule for a ticket that waited `waited_ms`.
fn ranked_window(waited_ms: i64) -> f64 {
    (50.0 + 400.0 * (waited_ms.max(0) as f64) / 1000.0).min(3000.0)
}

fn millis(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tickets_through_two_replicas_each_match_once_within_the_rules() {
    const TICKETS: usize = 1000;
    let Some((a, dir)) = server(Backend::Postgres).await else {
        return;
    };
    let pools = dir.path().join("pools.json").display().to_string();
    let b = a
        .replica(&[
            "--matchmaking-pools",
            &pools,
            "--matchmaking-tick-ms",
            "50",
            "--signin-per-address-per-minute",
            "100000",
        ])
        .await;
    let started = Instant::now();
    // Deterministic pseudo-random skills and regions.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut plan = Vec::new();
    for i in 0..TICKETS {
        let skill = (next() % 3000) as f64;
        let region = if next() % 2 == 0 { "eu" } else { "us" };
        plan.push((i, skill, region));
    }
    // Users sign in and enqueue through both replicas, 50 at a time.
    let mut tickets: Vec<(TestUser, Ticket, &'static str)> = Vec::new();
    for chunk in plan.chunks(50) {
        let enqueues = chunk.iter().map(|&(i, skill, region)| {
            let server = if i % 2 == 0 { &a } else { &b };
            async move {
                let user = server.user(&format!("p{i}")).await;
                let request = EnqueueRequest {
                    pool: "ranked".into(),
                    numeric_attributes: HashMap::from([("skill".into(), skill)]),
                    string_attributes: HashMap::from([("region".into(), region.into())]),
                };
                let ticket = enqueue(server, &user, request).await.expect("enqueue");
                (user, ticket, region)
            }
        });
        tickets.extend(futures::future::join_all(enqueues).await);
    }
    let enqueued_in = started.elapsed();
    let per_region = |r: &str| tickets.iter().filter(|(_, _, region)| *region == r).count();
    let expected_matched = (per_region("eu") / 4 + per_region("us") / 4) * 4;

    // Follow every ticket (over four connections per replica) until the expected number are
    // matched; the rest are their regions' remainders and can never match.
    let mut channels = Vec::new();
    for server in [&a, &b] {
        for _ in 0..4 {
            channels.push(server.channel().await);
        }
    }
    let mut watches: futures::stream::FuturesUnordered<_> = tickets
        .iter()
        .enumerate()
        .map(|(i, (user, ticket, _))| {
            watch_until_matched(
                channels[i % channels.len()].clone(),
                user,
                &ticket.ticket_id,
            )
        })
        .collect();
    let mut matched = Vec::new();
    while matched.len() < expected_matched {
        let ticket = tokio::time::timeout(Duration::from_secs(120), watches.next())
            .await
            .expect("the expected matches formed within 120 s")
            .expect("a watch is left");
        matched.push(ticket);
    }
    drop(watches);
    let elapsed = started.elapsed();
    let matched_ids: HashSet<_> = matched.iter().map(|t| t.ticket_id.clone()).collect();
    for (user, ticket, _) in tickets
        .iter()
        .filter(|(_, t, _)| !matched_ids.contains(&t.ticket_id))
    {
        let state = current_state(&a, user, &ticket.ticket_id).await;
        assert_eq!(
            state.status,
            TicketStatus::Queued as i32,
            "a remainder ticket is still queued"
        );
    }
    let matched: Vec<&Ticket> = matched.iter().collect();

    let mut rooms: HashMap<String, Vec<&Ticket>> = HashMap::new();
    for ticket in &matched {
        rooms
            .entry(ticket.match_result.as_ref().expect("match").room_id.clone())
            .or_default()
            .push(ticket);
    }
    for (room, members) in &rooms {
        assert_eq!(
            members.len(),
            4,
            "room {room} has {} tickets",
            members.len()
        );
        let regions: HashSet<_> = members
            .iter()
            .map(|t| t.string_attributes.get("region").cloned())
            .collect();
        assert_eq!(regions.len(), 1, "room {room} mixes regions");
        let skills: Vec<f64> = members
            .iter()
            .map(|t| t.numeric_attributes["skill"])
            .collect();
        let spread = skills.iter().cloned().fold(f64::MIN, f64::max)
            - skills.iter().cloned().fold(f64::MAX, f64::min);
        let matched_at = millis(
            members[0]
                .match_result
                .as_ref()
                .and_then(|m| m.matched_at.as_ref())
                .expect("time"),
        );
        let window = members
            .iter()
            .map(|t| ranked_window(matched_at - millis(t.created_at.as_ref().expect("created"))))
            .fold(f64::MAX, f64::min);
        assert!(
            spread <= window,
            "room {room}: skill spread {spread} exceeds window {window}"
        );
    }
    // No ticket is in two matches: each ticket id appears once, and each user in one room.
    let users: HashSet<_> = matched.iter().map(|t| t.user_id.clone()).collect();
    assert_eq!(users.len(), matched.len());
    println!(
        "1000 tickets: enqueued through two replicas in {:.1} s; {} matched into {} rooms, {} still queued; {:.1} s in all",
        enqueued_in.as_secs_f64(),
        matched.len(),
        rooms.len(),
        TICKETS - matched.len(),
        elapsed.as_secs_f64()
    );
    b.stop().await;
    a.stop().await;
}

/// Watches a ticket until it is matched.
async fn watch_until_matched(
    channel: tonic::transport::Channel,
    user: &TestUser,
    ticket: &str,
) -> Ticket {
    let mut client =
        rally_proto::rooms::v1::matchmaking_client::MatchmakingClient::with_interceptor(
            channel,
            rally_client::Bearer::new(&user.access_token).expect("ascii"),
        );
    let mut stream = client
        .watch_ticket(WatchTicketRequest {
            ticket_id: ticket.into(),
        })
        .await
        .expect("watch")
        .into_inner();
    loop {
        match stream.next().await {
            Some(Ok(message)) => {
                let ticket = message.ticket.expect("ticket");
                if ticket.status == TicketStatus::Matched as i32 {
                    return ticket;
                }
                assert_eq!(ticket.status, TicketStatus::Queued as i32, "{ticket:?}");
            }
            Some(Err(status)) => panic!("watch failed: {status:?}"),
            None => panic!("the watch ended without a final status"),
        }
    }
}

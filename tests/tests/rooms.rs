//! Rooms end to end through gRPC, on SQLite and Postgres: lifecycle, ownership, kicks, data
//! limits, privacy rules, the one-room rule, watching and resuming, bad input, races, restarts.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use rally_e2e::{Backend, TestServer, TestUser, on_both_backends};
use rally_proto::rooms::v1::room_event::Kind;
use rally_proto::rooms::v1::watch_room_response::Payload;
use rally_proto::rooms::v1::*;
use tonic::Code;
use tonic::codec::Streaming;

/// How long a test waits for one expected stream message.
const WAIT: Duration = Duration::from_secs(20);

async fn create(server: &TestServer, owner: &TestUser, capacity: u32) -> Room {
    create_with(
        server,
        owner,
        CreateRoomRequest {
            capacity,
            ..Default::default()
        },
    )
    .await
}

async fn create_with(server: &TestServer, owner: &TestUser, request: CreateRoomRequest) -> Room {
    server
        .rooms(owner)
        .await
        .create_room(request)
        .await
        .expect("create room")
        .into_inner()
        .room
        .expect("room")
}

async fn join(
    server: &TestServer,
    user: &TestUser,
    room: &str,
) -> Result<JoinRoomResponse, tonic::Status> {
    server
        .rooms(user)
        .await
        .join_room(JoinRoomRequest {
            room_id: room.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn leave(
    server: &TestServer,
    user: &TestUser,
    room: &str,
) -> Result<LeaveRoomResponse, tonic::Status> {
    server
        .rooms(user)
        .await
        .leave_room(LeaveRoomRequest {
            room_id: room.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn get(server: &TestServer, user: &TestUser, room: &str) -> Result<Room, tonic::Status> {
    server
        .rooms(user)
        .await
        .get_room(GetRoomRequest {
            room_id: room.into(),
        })
        .await
        .map(|r| r.into_inner().room.expect("room"))
}

async fn current(server: &TestServer, user: &TestUser) -> Option<Room> {
    server
        .rooms(user)
        .await
        .get_current_room(GetCurrentRoomRequest {})
        .await
        .expect("current room")
        .into_inner()
        .room
}

async fn watch(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    after: Option<u64>,
) -> Streaming<WatchRoomResponse> {
    server
        .rooms(user)
        .await
        .watch_room(WatchRoomRequest {
            room_id: room.into(),
            after_sequence: after,
        })
        .await
        .expect("watch")
        .into_inner()
}

async fn next(stream: &mut Streaming<WatchRoomResponse>) -> Payload {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a watch message within 20 s")
        .expect("stream still open")
        .expect("no error")
        .payload
        .expect("payload")
}

async fn next_event(stream: &mut Streaming<WatchRoomResponse>) -> RoomEvent {
    match next(stream).await {
        Payload::Event(event) => event,
        Payload::Snapshot(room) => panic!("expected an event, got a snapshot at {}", room.sequence),
    }
}

fn member_ids(room: &Room) -> Vec<&str> {
    room.members.iter().map(|m| m.user_id.as_str()).collect()
}

async fn room_lifecycle_from_create_to_close(server: &TestServer) {
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let room = create_with(
        server,
        &alice,
        CreateRoomRequest {
            capacity: 4,
            data: HashMap::from([("mode".into(), "ctf".into())]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(room.owner_user_id, alice.user_id);
    assert_eq!(member_ids(&room), [alice.user_id.as_str()]);
    assert_eq!(room.sequence, 0);
    assert_eq!(room.data.get("mode").map(String::as_str), Some("ctf"));
    assert_eq!(room.visibility, RoomVisibility::Public as i32);
    assert_eq!(room.join_policy, JoinPolicy::Open as i32);

    let joined = join(server, &bob, &room.room_id)
        .await
        .expect("join")
        .room
        .expect("room");
    assert_eq!(
        member_ids(&joined),
        [alice.user_id.as_str(), bob.user_id.as_str()]
    );
    assert_eq!(joined.members[1].display_name, "bob");
    assert_eq!(joined.sequence, 1);
    assert_eq!(
        current(server, &bob).await.map(|r| r.room_id),
        Some(room.room_id.clone())
    );
    assert_eq!(get(server, &bob, &room.room_id).await.expect("get"), joined);

    let listed = server
        .rooms(&bob)
        .await
        .list_rooms(ListRoomsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.rooms.iter().any(|r| r.room_id == room.room_id));

    assert!(
        !leave(server, &bob, &room.room_id)
            .await
            .expect("leave")
            .room_closed
    );
    assert_eq!(current(server, &bob).await, None);
    assert!(
        leave(server, &alice, &room.room_id)
            .await
            .expect("leave")
            .room_closed
    );
    assert_eq!(
        get(server, &alice, &room.room_id)
            .await
            .expect_err("closed")
            .code(),
        Code::NotFound
    );
    assert_eq!(
        join(server, &bob, &room.room_id)
            .await
            .expect_err("closed")
            .code(),
        Code::NotFound
    );
}

async fn ownership_passes_to_the_longest_present_member(server: &TestServer) {
    let (alice, bob, carol) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("carol").await,
    );
    let room = create(server, &alice, 8).await;
    join(server, &bob, &room.room_id).await.expect("bob joins");
    join(server, &carol, &room.room_id)
        .await
        .expect("carol joins");
    let mut events = watch(server, &carol, &room.room_id, Some(2)).await;

    leave(server, &alice, &room.room_id)
        .await
        .expect("owner leaves");
    let left = next_event(&mut events).await;
    assert_eq!(left.sequence, 3);
    assert!(
        matches!(left.kind, Some(Kind::MemberLeft(ref m)) if m.user_id == alice.user_id && m.reason == LeaveReason::Left as i32)
    );
    let owner = next_event(&mut events).await;
    assert_eq!(owner.sequence, 4);
    match owner.kind {
        Some(Kind::OwnerChanged(change)) => {
            assert_eq!(change.previous_owner_user_id, alice.user_id);
            assert_eq!(change.new_owner_user_id, bob.user_id);
        }
        other => panic!("expected OwnerChanged, got {other:?}"),
    }
    assert_eq!(
        get(server, &carol, &room.room_id)
            .await
            .expect("get")
            .owner_user_id,
        bob.user_id
    );
}

async fn kick_is_owner_only_and_bans_until_invited_again(server: &TestServer) {
    let (alice, bob, carol) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("carol").await,
    );
    let room = create(server, &alice, 8).await;
    join(server, &bob, &room.room_id).await.expect("bob joins");
    join(server, &carol, &room.room_id)
        .await
        .expect("carol joins");
    let kick = |by: &TestUser, target: &TestUser| {
        let (by, target, room_id) = (by.clone(), target.clone(), room.room_id.clone());
        async move {
            server
                .rooms(&by)
                .await
                .kick_member(KickMemberRequest {
                    room_id,
                    user_id: target.user_id.clone(),
                })
                .await
                .map(|r| r.into_inner().room.expect("room"))
        }
    };
    assert_eq!(
        kick(&bob, &carol).await.expect_err("not owner").code(),
        Code::PermissionDenied
    );
    assert_eq!(
        kick(&alice, &alice).await.expect_err("self").code(),
        Code::InvalidArgument
    );
    let outsider = server.user("outsider").await;
    assert_eq!(
        kick(&alice, &outsider)
            .await
            .expect_err("not a member")
            .code(),
        Code::FailedPrecondition
    );

    let after = kick(&alice, &bob).await.expect("kick");
    assert!(!member_ids(&after).contains(&bob.user_id.as_str()));
    assert_eq!(current(server, &bob).await, None);
    assert_eq!(
        join(server, &bob, &room.room_id)
            .await
            .expect_err("banned")
            .code(),
        Code::PermissionDenied
    );

    server
        .rooms(&alice)
        .await
        .update_room_data(UpdateRoomDataRequest {
            room_id: room.room_id.clone(),
            invite_user_ids: vec![bob.user_id.clone()],
            ..Default::default()
        })
        .await
        .expect("invite bob again");
    join(server, &bob, &room.room_id)
        .await
        .expect("invited again, bob may join");
}

async fn room_data_is_bounded_and_owner_written(server: &TestServer) {
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let room = create(server, &alice, 4).await;
    join(server, &bob, &room.room_id).await.expect("join");
    let update = |user: &TestUser, request: UpdateRoomDataRequest| {
        let user = user.clone();
        async move {
            server
                .rooms(&user)
                .await
                .update_room_data(request)
                .await
                .map(|r| r.into_inner().room.expect("room"))
        }
    };
    let set = |pairs: Vec<(String, String)>| UpdateRoomDataRequest {
        room_id: room.room_id.clone(),
        set: pairs.into_iter().collect(),
        ..Default::default()
    };
    assert_eq!(
        update(&bob, set(vec![("k".into(), "v".into())]))
            .await
            .expect_err("not owner")
            .code(),
        Code::PermissionDenied
    );
    for (name, pairs) in [
        ("key too long", vec![("k".repeat(65), "v".into())]),
        ("empty key", vec![(String::new(), "v".into())]),
        ("value too long", vec![("k".into(), "v".repeat(4097))]),
        (
            "65 keys at once",
            (0..65).map(|i| (format!("k{i}"), String::new())).collect(),
        ),
    ] {
        let status = update(&alice, set(pairs)).await.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
    }
    // 60 keys, then 5 more: 65 in total after the change is refused, and nothing is written.
    let sixty = update(
        &alice,
        set((0..60)
            .map(|i| (format!("a{i}"), "x".repeat(4096)))
            .collect()),
    )
    .await
    .expect("60 keys of 4 KiB");
    assert_eq!(sixty.data.len(), 60);
    let status = update(
        &alice,
        set((0..5).map(|i| (format!("b{i}"), String::new())).collect()),
    )
    .await
    .expect_err("65 keys in total");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        get(server, &bob, &room.room_id)
            .await
            .expect("get")
            .data
            .len(),
        60
    );
    let both = UpdateRoomDataRequest {
        room_id: room.room_id.clone(),
        set: HashMap::from([("a1".into(), "y".into())]),
        delete_keys: vec!["a1".into()],
        ..Default::default()
    };
    assert_eq!(
        update(&alice, both)
            .await
            .expect_err("set and delete")
            .code(),
        Code::InvalidArgument
    );
    let changed = update(
        &alice,
        UpdateRoomDataRequest {
            room_id: room.room_id.clone(),
            set: HashMap::from([("b0".into(), "new".into())]),
            delete_keys: vec!["a0".into(), "a1".into()],
            ..Default::default()
        },
    )
    .await
    .expect("set and delete different keys");
    assert_eq!(changed.data.len(), 59);
    assert_eq!(changed.data.get("b0").map(String::as_str), Some("new"));
}

async fn private_rooms_are_unlisted_and_invite_only_rooms_admit_the_invited(server: &TestServer) {
    let (alice, bob, carol) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("carol").await,
    );
    let private = create_with(
        server,
        &alice,
        CreateRoomRequest {
            capacity: 4,
            visibility: RoomVisibility::Private as i32,
            join_policy: JoinPolicy::InviteOnly as i32,
            invited_user_ids: vec![bob.user_id.clone()],
            data: HashMap::from([("tag".into(), "private-test".into())]),
        },
    )
    .await;
    let listed = server
        .rooms(&carol)
        .await
        .list_rooms(ListRoomsRequest {
            data_equals: HashMap::from([("tag".into(), "private-test".into())]),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.rooms.is_empty(), "a private room was listed");
    // Readable by id all the same, and joinable only by the invited.
    get(server, &carol, &private.room_id)
        .await
        .expect("readable by id");
    assert_eq!(
        join(server, &carol, &private.room_id)
            .await
            .expect_err("not invited")
            .code(),
        Code::PermissionDenied
    );
    join(server, &bob, &private.room_id).await.expect("invited");
}

async fn joining_another_room_leaves_the_current_one_atomically(server: &TestServer) {
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let first = create(server, &alice, 4).await;
    join(server, &bob, &first.room_id)
        .await
        .expect("join first");
    let mut first_events = watch(server, &alice, &first.room_id, Some(1)).await;
    let second = create(server, &alice, 4).await;
    // Alice created a second room: she left the first, which passed to Bob.
    assert_eq!(
        current(server, &alice).await.map(|r| r.room_id),
        Some(second.room_id.clone())
    );
    let left = next_event(&mut first_events).await;
    assert!(matches!(left.kind, Some(Kind::MemberLeft(ref m)) if m.user_id == alice.user_id));
    assert!(matches!(
        next_event(&mut first_events).await.kind,
        Some(Kind::OwnerChanged(_))
    ));

    let moved = join(server, &bob, &second.room_id)
        .await
        .expect("bob moves");
    assert_eq!(moved.left_room_id, first.room_id);
    assert!(matches!(
        next_event(&mut first_events).await.kind,
        Some(Kind::MemberLeft(_))
    ));
    assert!(matches!(
        next_event(&mut first_events).await.kind,
        Some(Kind::RoomClosed(_))
    ));
    // The stream ends after RoomClosed.
    let end = tokio::time::timeout(WAIT, first_events.next())
        .await
        .expect("stream ends");
    assert!(end.is_none(), "{end:?}");

    // A failed join leaves the user where it was.
    let full = create(server, &server.user("carol").await, 2).await;
    join(server, &server.user("dave").await, &full.room_id)
        .await
        .expect("fill");
    assert_eq!(
        join(server, &bob, &full.room_id)
            .await
            .expect_err("full")
            .code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        current(server, &bob).await.map(|r| r.room_id),
        Some(second.room_id.clone())
    );
    // Joining the room one is in changes nothing.
    let again = join(server, &bob, &second.room_id).await.expect("rejoin");
    assert_eq!(
        again.room.expect("room").sequence,
        moved.room.expect("room").sequence
    );
}

async fn a_watcher_resumes_with_exactly_what_it_missed(server: &TestServer) {
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let room = create(server, &alice, 8).await;
    let mut stream = watch(server, &bob, &room.room_id, None).await;
    match next(&mut stream).await {
        Payload::Snapshot(snapshot) => assert_eq!(snapshot.sequence, 0),
        other => panic!("expected a snapshot first, got {other:?}"),
    }
    join(server, &bob, &room.room_id).await.expect("join");
    let first = next_event(&mut stream).await;
    assert_eq!(first.sequence, 1);
    drop(stream);

    // Changes while nobody watches.
    let mut rooms = server.rooms(&alice).await;
    for i in 0..5 {
        rooms
            .update_room_data(UpdateRoomDataRequest {
                room_id: room.room_id.clone(),
                set: HashMap::from([("round".into(), i.to_string())]),
                ..Default::default()
            })
            .await
            .expect("update");
    }
    let mut resumed = watch(server, &bob, &room.room_id, Some(first.sequence)).await;
    for expected in 2..=6 {
        let event = next_event(&mut resumed).await;
        assert_eq!(event.sequence, expected);
        assert!(matches!(event.kind, Some(Kind::DataChanged(_))));
    }
    // Then live events.
    leave(server, &bob, &room.room_id).await.expect("leave");
    assert_eq!(next_event(&mut resumed).await.sequence, 7);

    let status = server
        .rooms(&bob)
        .await
        .watch_room(WatchRoomRequest {
            room_id: room.room_id.clone(),
            after_sequence: Some(99),
        })
        .await
        .expect_err("ahead");
    assert_eq!(status.code(), Code::OutOfRange);
}

async fn unknown_rooms_and_malformed_input_get_the_documented_codes(server: &TestServer) {
    let alice = server.user("alice").await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let mut rooms = server.rooms(&alice).await;
    assert_eq!(
        join(server, &alice, &unknown).await.expect_err("").code(),
        Code::NotFound
    );
    assert_eq!(
        get(server, &alice, &unknown).await.expect_err("").code(),
        Code::NotFound
    );
    assert_eq!(
        leave(server, &alice, &unknown).await.expect_err("").code(),
        Code::NotFound
    );
    let watched = rooms
        .watch_room(WatchRoomRequest {
            room_id: unknown.clone(),
            after_sequence: None,
        })
        .await;
    assert_eq!(watched.expect_err("").code(), Code::NotFound);
    let kicked = rooms
        .kick_member(KickMemberRequest {
            room_id: unknown.clone(),
            user_id: alice.user_id.clone(),
        })
        .await;
    assert_eq!(kicked.expect_err("").code(), Code::NotFound);
    for bad in ["", "room-1", "00000000-0000-0000-0000"] {
        assert_eq!(
            join(server, &alice, bad).await.expect_err(bad).code(),
            Code::InvalidArgument,
            "{bad:?}"
        );
    }
    for capacity in [0, 1, 257] {
        let status = rooms
            .create_room(CreateRoomRequest {
                capacity,
                ..Default::default()
            })
            .await
            .expect_err("capacity");
        assert_eq!(status.code(), Code::InvalidArgument, "capacity {capacity}");
    }
    let room = create(server, &alice, 2).await;
    let bob = server.user("bob").await;
    assert_eq!(
        leave(server, &bob, &room.room_id)
            .await
            .expect_err("not a member")
            .code(),
        Code::FailedPrecondition
    );
    let status = rooms
        .create_room(CreateRoomRequest {
            capacity: 4,
            invited_user_ids: vec!["nope".into()],
            ..Default::default()
        })
        .await
        .expect_err("bad invite");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = rooms
        .list_rooms(ListRoomsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert_eq!(status.code(), Code::InvalidArgument);
}

async fn list_rooms_filters_and_pages_without_gaps(server: &TestServer) {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let mut created = Vec::new();
    for i in 0..7 {
        let owner = server.user(&format!("owner{i}")).await;
        let room = create_with(
            server,
            &owner,
            CreateRoomRequest {
                capacity: 2 + (i % 2),
                data: HashMap::from([("tag".into(), tag.clone())]),
                ..Default::default()
            },
        )
        .await;
        created.push(room.room_id);
    }
    let viewer = server.user("viewer").await;
    let mut rooms = server.rooms(&viewer).await;
    let filter = HashMap::from([("tag".into(), tag.clone())]);
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = rooms
            .list_rooms(ListRoomsRequest {
                page_size: 3,
                page_token: token.clone(),
                data_equals: filter.clone(),
                min_free_seats: 0,
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.rooms.len() <= 3);
        seen.extend(page.rooms.into_iter().map(|r| r.room_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    created.reverse();
    assert_eq!(seen, created, "newest first, each exactly once");

    let two_free = rooms
        .list_rooms(ListRoomsRequest {
            data_equals: filter.clone(),
            min_free_seats: 2,
            ..Default::default()
        })
        .await
        .expect("filter")
        .into_inner();
    assert_eq!(
        two_free.rooms.len(),
        3,
        "rooms of capacity 3 with one member have two free seats"
    );
    let status = rooms
        .list_rooms(ListRoomsRequest {
            page_size: 3,
            page_token: token,
            data_equals: HashMap::new(),
            min_free_seats: 0,
        })
        .await
        .expect_err("other filters");
    assert_eq!(status.code(), Code::InvalidArgument);
}

on_both_backends!(
    room_lifecycle_from_create_to_close,
    ownership_passes_to_the_longest_present_member,
    kick_is_owner_only_and_bans_until_invited_again,
    room_data_is_bounded_and_owner_written,
    private_rooms_are_unlisted_and_invite_only_rooms_admit_the_invited,
    joining_another_room_leaves_the_current_one_atomically,
    a_watcher_resumes_with_exactly_what_it_missed,
    unknown_rooms_and_malformed_input_get_the_documented_codes,
    list_rooms_filters_and_pages_without_gaps,
);

async fn fifty_concurrent_joins_into_eight_seats(backend: Backend) {
    let Some(server) =
        TestServer::start_with(backend, &["--signin-per-address-per-minute", "1000"]).await
    else {
        return;
    };
    let owner = server.user("owner").await;
    let room = create(&server, &owner, 8).await;
    // Fifty joins at once: the owner's own (a no-op that succeeds) and 49 others'.
    let mut users = vec![owner.clone()];
    for i in 0..49 {
        users.push(server.user(&format!("racer{i}")).await);
    }
    let joins = users.iter().map(|user| join(&server, user, &room.room_id));
    let results = futures::future::join_all(joins).await;
    let joined = results.iter().filter(|r| r.is_ok()).count();
    let full = results
        .iter()
        .filter(|r| {
            matches!(r, Err(s) if s.code() == Code::FailedPrecondition && s.message().contains("full"))
        })
        .count();
    assert_eq!((joined, full), (8, 42), "{results:?}");
    assert_eq!(
        get(&server, &owner, &room.room_id)
            .await
            .expect("get")
            .members
            .len(),
        8
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_fifty_concurrent_joins_into_eight_seats() {
    fifty_concurrent_joins_into_eight_seats(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fifty_concurrent_joins_into_eight_seats() {
    fifty_concurrent_joins_into_eight_seats(Backend::Postgres).await;
}

async fn rooms_and_watchers_survive_a_restart(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let room = create(&server, &alice, 4).await;
    join(&server, &bob, &room.room_id).await.expect("join");
    let mut stream = watch(&server, &bob, &room.room_id, Some(0)).await;
    assert_eq!(next_event(&mut stream).await.sequence, 1);

    let server = server.restart(&[]).await;
    // The old stream ends (the server went away); the room is all there.
    let restored = get(&server, &bob, &room.room_id)
        .await
        .expect("room survived");
    assert_eq!(
        member_ids(&restored),
        [alice.user_id.as_str(), bob.user_id.as_str()]
    );
    assert_eq!(
        current(&server, &bob).await.map(|r| r.room_id),
        Some(room.room_id.clone())
    );
    // Resume from the last sequence seen.
    let mut resumed = watch(&server, &bob, &room.room_id, Some(1)).await;
    leave(&server, &alice, &room.room_id).await.expect("leave");
    assert_eq!(next_event(&mut resumed).await.sequence, 2);
    assert_eq!(next_event(&mut resumed).await.sequence, 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rooms_and_watchers_survive_a_restart() {
    rooms_and_watchers_survive_a_restart(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rooms_and_watchers_survive_a_restart() {
    rooms_and_watchers_survive_a_restart(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_one_replica_sees_a_join_made_through_another() {
    let Some(a) = TestServer::start(Backend::Postgres).await else {
        return;
    };
    let b = a.replica(&[]).await;
    let (alice, bob) = (a.user("alice").await, b.user("bob").await);
    let room = create(&a, &alice, 4).await;
    let mut on_a = watch(&a, &alice, &room.room_id, Some(0)).await;
    join(&b, &bob, &room.room_id)
        .await
        .expect("join through replica b");
    let event = next_event(&mut on_a).await;
    assert_eq!(event.sequence, 1);
    assert!(
        matches!(event.kind, Some(Kind::MemberJoined(ref m)) if m.member.as_ref().is_some_and(|m| m.user_id == bob.user_id))
    );
    // And the other way round.
    let mut on_b = watch(&b, &bob, &room.room_id, Some(1)).await;
    leave(&a, &alice, &room.room_id)
        .await
        .expect("leave through replica a");
    assert_eq!(next_event(&mut on_b).await.sequence, 2);
    b.stop().await;
    a.stop().await;
}

//! Conformance cases for ListRooms: what is listed, filters, order and pages.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::{UsersAndRooms, at, create, join, leave, read, room_spec, state, user, users};
use crate::rooms::{JoinPolicy, NewRoom, Room, RoomCensus, RoomCursor, RoomQuery, Visibility};

/// Key/value pairs of a filter.
type Pairs = &'static [(&'static str, &'static str)];

/// Every listed room, on one page.
fn everything() -> RoomQuery {
    RoomQuery {
        limit: 100,
        ..RoomQuery::default()
    }
}

async fn listed(store: &dyn UsersAndRooms, query: RoomQuery) -> Vec<Uuid> {
    read("list_rooms", store.list_rooms(query).await)
        .into_iter()
        .map(|room| room.id)
        .collect()
}

/// Creates a room as `spec` says, owned by a new user, at `now`.
async fn room_at(
    store: &dyn UsersAndRooms,
    spec: impl FnOnce(NewRoom) -> NewRoom,
    now: i64,
) -> Room {
    let owner = user(store, "Owner").await;
    create(store, spec(room_spec(owner)), now).await.room
}

/// Open public rooms are listed whole, newest first and by id (descending) among rooms created
/// at the same time; private and closed rooms are not; invite-only public rooms are.
pub async fn list_rooms_shows_only_open_public_rooms_newest_first(store: &dyn UsersAndRooms) {
    let oldest = room_at(store, |spec| spec, at(1)).await;
    room_at(
        store,
        |spec| NewRoom {
            visibility: Visibility::Private,
            ..spec
        },
        at(2),
    )
    .await;
    let invite_only = room_at(
        store,
        |spec| NewRoom {
            join_policy: JoinPolicy::InviteOnly,
            ..spec
        },
        at(3),
    )
    .await;
    let closed = room_at(store, |spec| spec, at(4)).await;
    leave(store, closed.id, closed.owner, at(5)).await;
    let tied_a = room_at(store, |spec| spec, at(6)).await;
    let tied_b = room_at(store, |spec| spec, at(6)).await;
    let (high, low) = if tied_a.id > tied_b.id {
        (tied_a.id, tied_b.id)
    } else {
        (tied_b.id, tied_a.id)
    };

    let rooms = read("list_rooms", store.list_rooms(everything()).await);
    let ids: Vec<Uuid> = rooms.iter().map(|room| room.id).collect();
    assert_eq!(
        ids,
        vec![high, low, invite_only.id, oldest.id],
        "open public rooms, newest first, then by id descending"
    );
    for room in &rooms {
        assert_eq!(*room, state(store, room.id).await, "listed rooms are whole");
    }
    let first_two = RoomQuery {
        limit: 2,
        ..RoomQuery::default()
    };
    assert_eq!(
        listed(store, first_two).await,
        vec![high, low],
        "at most the limit, from the newest"
    );
}

/// `data_equals` keeps rooms having every given pair exactly; `min_free_seats` rooms with at
/// least that many free seats; together, rooms passing both.
pub async fn list_rooms_filters_by_data_and_free_seats(store: &dyn UsersAndRooms) {
    let data = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    };
    // Free seats: a 3, b 0, c 7, d 1.
    let a = room_at(
        store,
        |spec| NewRoom {
            capacity: 4,
            data: data(&[("mode", "ctf"), ("map", "dust")]),
            ..spec
        },
        at(1),
    )
    .await
    .id;
    let b = room_at(
        store,
        |spec| NewRoom {
            capacity: 2,
            data: data(&[("mode", "ctf"), ("map", "mirage")]),
            ..spec
        },
        at(2),
    )
    .await
    .id;
    let c = room_at(
        store,
        |spec| NewRoom {
            data: data(&[("mode", "dm")]),
            ..spec
        },
        at(3),
    )
    .await
    .id;
    let d = room_at(
        store,
        |spec| NewRoom {
            capacity: 3,
            data: data(&[("mode", "ctf")]),
            ..spec
        },
        at(4),
    )
    .await
    .id;
    for room_id in [b, d] {
        let guest = user(store, "Guest").await;
        join(store, room_id, guest, at(5)).await;
    }

    // (data_equals, min_free_seats, the rooms listed)
    let cases: [(Pairs, u32, Vec<Uuid>); 9] = [
        (&[], 0, vec![d, c, b, a]),
        (&[("mode", "ctf")], 0, vec![d, b, a]),
        (&[("mode", "ctf"), ("map", "dust")], 0, vec![a]),
        (&[("mode", "CTF")], 0, vec![]),
        (&[("rounds", "3")], 0, vec![]),
        (&[], 1, vec![d, c, a]),
        (&[], 3, vec![c, a]),
        (&[], 4, vec![c]),
        (&[("mode", "ctf")], 2, vec![a]),
    ];
    for (data_equals, min_free_seats, expected) in cases {
        let query = RoomQuery {
            data_equals: data(data_equals),
            min_free_seats,
            limit: 100,
            after: None,
        };
        assert_eq!(
            listed(store, query).await,
            expected,
            "data_equals {data_equals:?}, min_free_seats {min_free_seats}"
        );
    }
}

/// Following the cursor from page to page lists every room exactly once, in order; rooms created
/// after the first page do not appear on later ones.
pub async fn list_rooms_pages_through_every_room_once_in_order(store: &dyn UsersAndRooms) {
    let owners = users(store, "Owner", 25).await;
    let mut expected = Vec::new();
    for (i, owner) in (0..).zip(&owners) {
        // Three rooms per instant, so the id tie-break matters.
        let room = create(store, room_spec(*owner), at(i / 3)).await.room;
        expected.push((room.created_at, room.id));
    }
    expected.sort_by(|left, right| right.cmp(left));
    let expected: Vec<Uuid> = expected.into_iter().map(|(_, id)| id).collect();

    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = read(
            "list_rooms",
            store
                .list_rooms(RoomQuery {
                    limit: 7,
                    after,
                    ..RoomQuery::default()
                })
                .await,
        );
        pages += 1;
        assert!(pages <= 5, "25 rooms in pages of 7 take 4 pages");
        if pages == 1 {
            // Newer than everything: must not show up after the first page.
            let late = user(store, "Late").await;
            create(store, room_spec(late), at(100)).await;
        }
        let Some(last) = page.last() else {
            break;
        };
        after = Some(RoomCursor {
            created_at: last.created_at,
            id: last.id,
        });
        let full = page.len() == 7;
        seen.extend(page.into_iter().map(|room| room.id));
        if !full {
            break;
        }
    }
    let distinct: BTreeSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        seen.len(),
        "a room was listed twice: {seen:?}"
    );
    assert_eq!(seen, expected, "pages must list every room once, in order");
}

/// The census counts open rooms, public and private, and the users in them; closed rooms and
/// the users who left count no more.
pub async fn the_census_counts_open_rooms_and_their_members(store: &dyn UsersAndRooms) {
    assert_eq!(
        read("census", store.census().await),
        RoomCensus::default(),
        "an empty store"
    );
    let public = room_at(store, |spec| spec, at(1)).await;
    let private = room_at(
        store,
        |spec| NewRoom {
            visibility: Visibility::Private,
            ..spec
        },
        at(2),
    )
    .await;
    let guest = user(store, "Guest").await;
    join(store, public.id, guest, at(3)).await;
    assert_eq!(
        read("census", store.census().await),
        RoomCensus {
            open_rooms: 2,
            members: 3
        },
        "two open rooms, one of them private, with three members"
    );
    leave(store, private.id, private.owner, at(4)).await;
    assert_eq!(
        read("census", store.census().await),
        RoomCensus {
            open_rooms: 1,
            members: 2
        },
        "the private room closed when its only member left"
    );
}

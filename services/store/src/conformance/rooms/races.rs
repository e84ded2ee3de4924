//! Conformance cases for concurrent changes: capacity, the one-room rule and closing hold
//! whatever the interleaving.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use uuid::Uuid;

use super::super::RACE_ROUNDS;
use super::{
    UsersAndRooms, all_events, assert_consecutive, at, create, create_default, current, join,
    joined, kinds, left, member_ids, ok, room_spec, state, user, users,
};
use crate::rooms::{LeaveReason, NewRoom, RoomError, RoomEvent, RoomEventKind};

/// How many users race into one room.
const JOINERS: usize = 50;
/// The room's capacity, its owner included.
const CAPACITY: u32 = 8;
/// Seats left for the racers once the owner is in.
const FREE_SEATS: usize = 7;

/// Fifty users joining a room of capacity 8 (its owner in it) at once: exactly 7 get in, 43 are
/// refused as `Full` and stay where they were.
pub async fn concurrent_joins_never_overfill_a_room(store: &dyn UsersAndRooms) {
    for round in 0..RACE_ROUNDS {
        race_into_one_room(store, round).await;
    }
}

async fn race_into_one_room(store: &dyn UsersAndRooms, round: usize) {
    let owner = user(store, "Owner").await;
    let spec = NewRoom {
        capacity: CAPACITY,
        ..room_spec(owner)
    };
    let room_id = create(store, spec, at(0)).await.room.id;
    let joiners = users(store, "Joiner", JOINERS).await;
    // Half of the racers start in rooms of their own, which a successful join closes.
    let mut homes = BTreeMap::new();
    for joiner in joiners.iter().step_by(2) {
        homes.insert(*joiner, create_default(store, *joiner, at(1)).await);
    }

    let outcomes = join_all(
        joiners
            .iter()
            .map(|joiner| store.join_room(room_id, *joiner, at(2))),
    )
    .await;
    let mut winners = BTreeSet::new();
    let mut full = 0;
    for (joiner, outcome) in joiners.iter().zip(outcomes) {
        match outcome {
            Ok(_) => {
                winners.insert(*joiner);
            }
            Err(RoomError::Full) => full += 1,
            Err(other) => panic!("round {round}: a racing join failed with {other:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        FREE_SEATS,
        "round {round}: exactly the free seats are taken"
    );
    assert_eq!(
        full,
        JOINERS - FREE_SEATS,
        "round {round}: the rest are Full"
    );

    let room = state(store, room_id).await;
    let mut expected_members = winners.clone();
    expected_members.insert(owner);
    assert_eq!(
        member_ids(&room).into_iter().collect::<BTreeSet<_>>(),
        expected_members,
        "round {round}: the room holds its owner and the winners, nobody else"
    );
    assert_eq!(
        room.members.len(),
        FREE_SEATS + 1,
        "round {round}: the room is exactly full"
    );
    let events = all_events(store, room_id).await;
    assert_consecutive(&events, room_id, 1);
    assert_eq!(room.sequence, 7, "round {round}: one event per winner");
    for event in &events {
        assert!(
            matches!(&event.kind, RoomEventKind::MemberJoined(member) if winners.contains(&member.user_id)),
            "round {round}: unexpected event {event:?}"
        );
    }

    for joiner in &joiners {
        let home = homes.get(joiner).copied();
        if winners.contains(joiner) {
            assert_eq!(current(store, *joiner).await, Some(room_id));
            if let Some(home) = home {
                assert!(
                    state(store, home).await.closed_at.is_some(),
                    "round {round}: a winner's emptied room is closed"
                );
            }
        } else {
            assert_eq!(
                current(store, *joiner).await,
                home,
                "round {round}: a refused racer stays where it was"
            );
            if let Some(home) = home {
                let home = state(store, home).await;
                assert_eq!(
                    (member_ids(&home), home.sequence),
                    (vec![*joiner], 0),
                    "round {round}: a refused racer's room changed"
                );
            }
        }
    }
}

/// One user joining two rooms at once ends in exactly one of them; the other shows it joining
/// and leaving (the later join moved it out) and no longer has it as a member, and a room it
/// started in closes once.
pub async fn concurrent_joins_of_one_user_into_two_rooms_leave_it_in_exactly_one(
    store: &dyn UsersAndRooms,
) {
    for round in 0..RACE_ROUNDS {
        let first_owner = user(store, "First owner").await;
        let second_owner = user(store, "Second owner").await;
        let mover = user(store, "Mover").await;
        let first = create_default(store, first_owner, at(0)).await;
        let second = create_default(store, second_owner, at(0)).await;
        let home = if round % 2 == 1 {
            Some(create_default(store, mover, at(1)).await)
        } else {
            None
        };

        let (into_first, into_second) = futures::join!(
            store.join_room(first, mover, at(2)),
            store.join_room(second, mover, at(2))
        );
        let into_first = ok("the join into the first room", into_first);
        let into_second = ok("the join into the second room", into_second);

        let ended = current(store, mover)
            .await
            .unwrap_or_else(|| panic!("round {round}: the mover is in no room"));
        let (other, other_owner, earlier, later) = if ended == first {
            (second, second_owner, into_second, into_first)
        } else {
            assert_eq!(ended, second, "round {round}: the mover is in a third room");
            (first, first_owner, into_first, into_second)
        };
        assert_eq!(
            member_ids(&state(store, other).await),
            vec![other_owner],
            "round {round}: the mover is still a member of the room it left"
        );
        assert_eq!(
            kinds(&all_events(store, other).await),
            vec![
                joined(mover, "Mover", at(2)),
                left(mover, LeaveReason::Left)
            ],
            "round {round}: the room left"
        );
        assert_eq!(
            kinds(&all_events(store, ended).await),
            vec![joined(mover, "Mover", at(2))],
            "round {round}: the room ended in"
        );
        assert_eq!(later.left_room, Some(other), "round {round}");
        assert_eq!(earlier.left_room, home, "round {round}");
        if let Some(home) = home {
            assert_eq!(
                kinds(&all_events(store, home).await),
                vec![left(mover, LeaveReason::Left), RoomEventKind::RoomClosed],
                "round {round}: the mover's first room closes exactly once"
            );
        }
    }
}

/// Every member of a room leaving at once: all succeed, each owner departure hands the room to
/// a member still there, and the room closes exactly once, last, with gap-free sequences.
pub async fn concurrent_departures_close_the_room_exactly_once(store: &dyn UsersAndRooms) {
    for round in 0..RACE_ROUNDS {
        let owner = user(store, "Owner").await;
        let room_id = create_default(store, owner, at(0)).await;
        let mut everyone = vec![owner];
        for guest in users(store, "Guest", FREE_SEATS).await {
            join(store, room_id, guest, at(1)).await;
            everyone.push(guest);
        }

        let outcomes = join_all(
            everyone
                .iter()
                .map(|member| store.leave_room(room_id, *member, LeaveReason::Left, at(2))),
        )
        .await;
        let mut events: Vec<RoomEvent> = outcomes
            .into_iter()
            .flat_map(|outcome| ok("a racing leave_room", outcome).events)
            .collect();
        events.sort_by_key(|event| event.sequence);
        assert_consecutive(&events, room_id, 8);

        let mut present: BTreeSet<Uuid> = everyone.iter().copied().collect();
        let mut holder = owner;
        for (index, event) in events.iter().enumerate() {
            match &event.kind {
                RoomEventKind::MemberLeft { user_id, .. } => {
                    assert!(
                        present.remove(user_id),
                        "round {round}: {user_id} left twice or was never there"
                    );
                }
                RoomEventKind::OwnerChanged { previous, new } => {
                    assert_eq!(*previous, holder, "round {round}: from a non-owner");
                    assert!(
                        index > 0 && events[index - 1].kind == left(holder, LeaveReason::Left),
                        "round {round}: OwnerChanged must follow its owner's MemberLeft"
                    );
                    assert!(
                        present.contains(new),
                        "round {round}: handed to someone not there"
                    );
                    holder = *new;
                }
                RoomEventKind::RoomClosed => {
                    assert_eq!(
                        index,
                        events.len() - 1,
                        "round {round}: RoomClosed must be last"
                    );
                }
                other => panic!("round {round}: unexpected event {other:?}"),
            }
        }
        assert!(present.is_empty(), "round {round}: {present:?} never left");
        assert_eq!(
            events.last().map(|event| &event.kind),
            Some(&RoomEventKind::RoomClosed),
            "round {round}: the room closes"
        );
        let room = state(store, room_id).await;
        assert!(room.closed_at.is_some() && room.members.is_empty());
        assert_eq!(
            Some(room.sequence),
            events.last().map(|event| event.sequence)
        );
    }
}

/// A user leaving its room while joining another at once: it ends in the other room, and the
/// room it left shows it leaving once and closing once, whichever call came first.
pub async fn a_user_leaving_while_joining_elsewhere_leaves_its_room_once(
    store: &dyn UsersAndRooms,
) {
    for round in 0..RACE_ROUNDS {
        let owner = user(store, "Owner").await;
        let mover = user(store, "Mover").await;
        let target = create_default(store, owner, at(0)).await;
        let home = create_default(store, mover, at(1)).await;

        let (leaving, joining) = futures::join!(
            store.leave_room(home, mover, LeaveReason::Left, at(2)),
            store.join_room(target, mover, at(2))
        );
        let joining = ok("the racing join", joining);
        match leaving {
            Ok(_) => assert_eq!(
                joining.left_room, None,
                "round {round}: the leave came first, so the join left no room"
            ),
            // The join came first, took the user out and so closed the room.
            Err(RoomError::NotFound | RoomError::NotMember) => assert_eq!(
                joining.left_room,
                Some(home),
                "round {round}: the join came first and left the room"
            ),
            Err(other) => panic!("round {round}: the racing leave failed with {other:?}"),
        }
        assert_eq!(current(store, mover).await, Some(target), "round {round}");
        assert_eq!(
            kinds(&all_events(store, home).await),
            vec![left(mover, LeaveReason::Left), RoomEventKind::RoomClosed],
            "round {round}: the room left must show one departure and one closing"
        );
        assert_eq!(
            kinds(&all_events(store, target).await),
            vec![joined(mover, "Mover", at(2))],
            "round {round}: the room joined"
        );
    }
}

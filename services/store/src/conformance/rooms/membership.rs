//! Conformance cases for creating and joining rooms: the one-room rule, capacity, invitations,
//! and which room a user is in.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::{
    UsersAndRooms, all_events, assert_refused, at, create, create_default, current, join, joined,
    kinds, leave, left, member_ids, ok, read, room_spec, state, user,
};
use crate::rooms::{
    DataUpdate, EventsAfter, JoinPolicy, LeaveReason, Member, NewRoom, Room, RoomError, RoomEvent,
    RoomEventKind, Visibility,
};

/// A new room holds its owner only, at sequence 0 with no events, with the settings as given.
pub async fn create_room_makes_the_owner_its_only_member_at_sequence_zero(
    store: &dyn UsersAndRooms,
) {
    let alice = user(store, "Alice").await;
    let guest = Uuid::new_v4();
    let spec = NewRoom {
        capacity: 4,
        visibility: Visibility::Private,
        join_policy: JoinPolicy::InviteOnly,
        data: BTreeMap::from([("mode".to_owned(), "ctf".to_owned())]),
        invited: BTreeSet::from([guest]),
        ..room_spec(alice)
    };
    let change = create(store, spec.clone(), at(1)).await;
    let expected = Room {
        id: spec.id,
        owner: alice,
        members: vec![Member {
            user_id: alice,
            display_name: "Alice".to_owned(),
            joined_at: at(1),
        }],
        capacity: 4,
        visibility: Visibility::Private,
        join_policy: JoinPolicy::InviteOnly,
        data: spec.data.clone(),
        invited: spec.invited.clone(),
        created_at: at(1),
        sequence: 0,
        closed_at: None,
    };
    assert_eq!(change.room, expected, "create_room returned another room");
    assert!(change.events.is_empty(), "creation is not an event");
    assert_eq!(change.left_room, None, "Alice was in no room");
    assert_eq!(
        read("room", store.room(spec.id).await),
        Some(expected.clone())
    );
    assert_eq!(
        read("current_room", store.current_room(alice).await),
        Some(expected),
        "the owner is in its new room"
    );
    assert_eq!(
        read("events_after", store.events_after(spec.id, 0, 10).await),
        Some(EventsAfter::Events(Vec::new())),
        "a new room has no events"
    );
}

/// A room for an owner that does not exist is refused, and no room is written.
pub async fn create_room_for_an_unknown_owner_is_user_not_found_and_writes_nothing(
    store: &dyn UsersAndRooms,
) {
    let spec = room_spec(Uuid::new_v4());
    assert_refused!(
        store.create_room(spec.clone(), at(1)).await,
        RoomError::UserNotFound,
        "create_room for an unknown owner"
    );
    assert_eq!(read("room", store.room(spec.id).await), None);
}

/// Creating a room takes the owner out of its room (`MemberLeft`, `Left`); a room left empty
/// closes (`RoomClosed`).
pub async fn creating_a_room_leaves_the_current_room_which_closes_when_it_empties(
    store: &dyn UsersAndRooms,
) {
    let alice = user(store, "Alice").await;
    let first = create_default(store, alice, at(1)).await;
    let change = create(store, room_spec(alice), at(2)).await;
    assert_eq!(change.left_room, Some(first));
    assert_eq!(
        change.events,
        vec![
            RoomEvent {
                room_id: first,
                sequence: 1,
                occurred_at: at(2),
                kind: left(alice, LeaveReason::Left),
            },
            RoomEvent {
                room_id: first,
                sequence: 2,
                occurred_at: at(2),
                kind: RoomEventKind::RoomClosed,
            },
        ],
        "leaving the old room is part of the creation"
    );
    let old = state(store, first).await;
    assert_eq!(old.closed_at, Some(at(2)), "the emptied room is closed");
    assert!(old.members.is_empty());
    assert_eq!(old.sequence, 2);
    assert_eq!(all_events(store, first).await, change.events);
    assert_eq!(current(store, alice).await, Some(change.room.id));
}

/// An owner creating a room leaves its shared room to the longest-present member
/// (`MemberLeft`, then `OwnerChanged`).
pub async fn creating_a_room_hands_the_old_room_to_its_longest_present_member(
    store: &dyn UsersAndRooms,
) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let carol = user(store, "Carol").await;
    let first = create_default(store, alice, at(1)).await;
    join(store, first, bob, at(2)).await;
    join(store, first, carol, at(3)).await;

    let change = create(store, room_spec(alice), at(4)).await;
    assert_eq!(change.left_room, Some(first));
    assert_eq!(
        kinds(&change.events),
        vec![
            left(alice, LeaveReason::Left),
            RoomEventKind::OwnerChanged {
                previous: alice,
                new: bob,
            },
        ]
    );
    let old = state(store, first).await;
    assert_eq!(old.owner, bob, "Bob has been there longest");
    assert_eq!(member_ids(&old), vec![bob, carol]);
    assert_eq!(old.closed_at, None);
    assert_eq!(old.sequence, 4);
}

/// A join appends the member at the end of the list and one `MemberJoined`, and returns the room
/// at that event's sequence.
pub async fn join_room_adds_the_member_last_with_its_member_joined_event(
    store: &dyn UsersAndRooms,
) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let carol = user(store, "Carol").await;
    let room_id = create_default(store, alice, at(1)).await;

    let by_bob = join(store, room_id, bob, at(2)).await;
    assert_eq!(
        by_bob.events,
        vec![RoomEvent {
            room_id,
            sequence: 1,
            occurred_at: at(2),
            kind: joined(bob, "Bob", at(2)),
        }]
    );
    assert_eq!(by_bob.left_room, None);
    assert_eq!(by_bob.room.sequence, 1);
    assert_eq!(member_ids(&by_bob.room), vec![alice, bob]);
    assert_eq!(
        by_bob.room.members[1],
        Member {
            user_id: bob,
            display_name: "Bob".to_owned(),
            joined_at: at(2),
        },
        "the member's display name comes from its account"
    );

    let by_carol = join(store, room_id, carol, at(3)).await;
    assert_eq!(by_carol.room.sequence, 2);
    assert_eq!(member_ids(&by_carol.room), vec![alice, bob, carol]);
    assert_eq!(state(store, room_id).await, by_carol.room);
    let mut expected = by_bob.events;
    expected.extend(by_carol.events);
    assert_eq!(all_events(store, room_id).await, expected);
}

/// Joining the room one is in (as a member or as its owner) succeeds with no event.
pub async fn joining_the_room_one_is_in_changes_nothing(store: &dyn UsersAndRooms) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let room_id = create_default(store, alice, at(1)).await;
    join(store, room_id, bob, at(2)).await;
    let before = state(store, room_id).await;
    for (who, name) in [(bob, "a member"), (alice, "the owner")] {
        let again = join(store, room_id, who, at(3)).await;
        assert!(again.events.is_empty(), "{name} joining again: no event");
        assert_eq!(again.left_room, None, "{name} joining again left nothing");
        assert_eq!(again.room, before, "{name} joining again changed the room");
    }
    assert_eq!(state(store, room_id).await, before);
}

/// Joining another room leaves the current one in the same change: its events (hand-over
/// included) come first in the change, and `left_room` names it.
pub async fn joining_another_room_leaves_the_current_one_in_the_same_change(
    store: &dyn UsersAndRooms,
) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let carol = user(store, "Carol").await;
    let dave = user(store, "Dave").await;
    let first = create_default(store, alice, at(1)).await;
    join(store, first, bob, at(2)).await;
    join(store, first, dave, at(3)).await;
    let second = create_default(store, carol, at(4)).await;

    let change = join(store, second, bob, at(5)).await;
    assert_eq!(change.left_room, Some(first));
    assert_eq!(
        change.events,
        vec![
            RoomEvent {
                room_id: first,
                sequence: 3,
                occurred_at: at(5),
                kind: left(bob, LeaveReason::Left),
            },
            RoomEvent {
                room_id: second,
                sequence: 1,
                occurred_at: at(5),
                kind: joined(bob, "Bob", at(5)),
            },
        ]
    );
    assert_eq!(member_ids(&state(store, first).await), vec![alice, dave]);
    assert_eq!(current(store, bob).await, Some(second));

    // The owner moving hands its room on.
    let change = join(store, second, alice, at(6)).await;
    assert_eq!(change.left_room, Some(first));
    assert_eq!(
        kinds(&change.events),
        vec![
            left(alice, LeaveReason::Left),
            RoomEventKind::OwnerChanged {
                previous: alice,
                new: dave,
            },
            joined(alice, "Alice", at(6)),
        ]
    );
    let old = state(store, first).await;
    assert_eq!((old.owner, member_ids(&old)), (dave, vec![dave]));
    assert_eq!(member_ids(&change.room), vec![carol, bob, alice]);
}

/// Unknown and closed rooms cannot be joined, and the user stays in its room.
pub async fn joining_an_unknown_or_closed_room_is_not_found_and_the_user_stays(
    store: &dyn UsersAndRooms,
) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let home = create_default(store, bob, at(1)).await;
    let closed = create_default(store, alice, at(2)).await;
    leave(store, closed, alice, at(3)).await;

    assert_refused!(
        store.join_room(Uuid::new_v4(), bob, at(4)).await,
        RoomError::NotFound,
        "joining an unknown room"
    );
    assert_refused!(
        store.join_room(closed, bob, at(4)).await,
        RoomError::NotFound,
        "joining a closed room"
    );
    let room = state(store, home).await;
    assert_eq!((member_ids(&room), room.sequence), (vec![bob], 0));
    assert_eq!(current(store, bob).await, Some(home));
    assert_eq!(
        state(store, closed).await.sequence,
        2,
        "the closed room changed"
    );
}

/// A user that does not exist cannot join.
pub async fn joining_as_an_unknown_user_is_user_not_found(store: &dyn UsersAndRooms) {
    let alice = user(store, "Alice").await;
    let room_id = create_default(store, alice, at(1)).await;
    assert_refused!(
        store.join_room(room_id, Uuid::new_v4(), at(2)).await,
        RoomError::UserNotFound,
        "joining as an unknown user"
    );
    assert_eq!(state(store, room_id).await.sequence, 0);
}

/// Invite-only rooms refuse uninvited users; invited ones join, and their invitation stays, so
/// they may come back after leaving.
pub async fn an_invite_only_room_admits_only_invited_users_who_may_come_back(
    store: &dyn UsersAndRooms,
) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let carol = user(store, "Carol").await;
    let spec = NewRoom {
        join_policy: JoinPolicy::InviteOnly,
        invited: BTreeSet::from([bob]),
        ..room_spec(alice)
    };
    let room_id = create(store, spec, at(1)).await.room.id;

    assert_refused!(
        store.join_room(room_id, carol, at(2)).await,
        RoomError::NotInvited,
        "an uninvited user joining an invite-only room"
    );
    assert_eq!(current(store, carol).await, None);
    let change = join(store, room_id, bob, at(3)).await;
    assert_eq!(member_ids(&change.room), vec![alice, bob]);
    assert!(
        change.room.invited.contains(&bob),
        "an invitation stays after the join"
    );
    leave(store, room_id, bob, at(4)).await;
    join(store, room_id, bob, at(5)).await;

    ok(
        "update_room_data",
        store
            .update_room_data(
                room_id,
                alice,
                DataUpdate {
                    invite: BTreeSet::from([carol]),
                    ..DataUpdate::default()
                },
                at(6),
            )
            .await,
    );
    let change = join(store, room_id, carol, at(7)).await;
    assert_eq!(member_ids(&change.room), vec![alice, bob, carol]);
}

/// A room at capacity refuses a join, which leaves the user in its own room untouched.
pub async fn a_full_room_refuses_joins_and_the_user_stays_where_it_was(store: &dyn UsersAndRooms) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let carol = user(store, "Carol").await;
    let spec = NewRoom {
        capacity: 2,
        ..room_spec(alice)
    };
    let room_id = create(store, spec, at(1)).await.room.id;
    join(store, room_id, bob, at(2)).await;
    let home = create_default(store, carol, at(3)).await;

    assert_refused!(
        store.join_room(room_id, carol, at(4)).await,
        RoomError::Full,
        "joining a room at capacity"
    );
    assert_eq!(member_ids(&state(store, room_id).await), vec![alice, bob]);
    assert_eq!(state(store, room_id).await.sequence, 1);
    let own = state(store, home).await;
    assert_eq!((member_ids(&own), own.sequence), (vec![carol], 0));

    leave(store, room_id, bob, at(5)).await;
    join(store, room_id, carol, at(6)).await;
    assert_eq!(
        current(store, carol).await,
        Some(room_id),
        "a seat came free"
    );
}

/// `current_room` is the room the user is in, through creations, moves, leaves and kicks.
pub async fn current_room_follows_the_user(store: &dyn UsersAndRooms) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    assert_eq!(current(store, bob).await, None, "a new user is in no room");
    assert_eq!(current(store, Uuid::new_v4()).await, None);

    let first = create_default(store, alice, at(1)).await;
    let second = create_default(store, bob, at(2)).await;
    assert_eq!(current(store, bob).await, Some(second));
    join(store, first, bob, at(3)).await;
    assert_eq!(current(store, bob).await, Some(first));
    let room = read("current_room", store.current_room(bob).await);
    assert_eq!(room, Some(state(store, first).await), "the whole room");
    leave(store, first, bob, at(4)).await;
    assert_eq!(current(store, bob).await, None);
    join(store, first, bob, at(5)).await;
    ok(
        "kick_member",
        store.kick_member(first, alice, bob, at(6)).await,
    );
    assert_eq!(
        current(store, bob).await,
        None,
        "a kicked user is in no room"
    );
    assert_eq!(current(store, alice).await, Some(first));
}

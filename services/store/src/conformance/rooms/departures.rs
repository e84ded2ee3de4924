//! Conformance cases for leaving rooms: ownership hand-over, closing, and what a closed room
//! still allows.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{
    UsersAndRooms, all_events, assert_refused, at, create, create_default, current, join, kinds,
    leave, left, member_ids, ok, read, room_spec, state, user,
};
use crate::rooms::{
    DataUpdate, EventsAfter, LeaveReason, NewRoom, RoomError, RoomEvent, RoomEventKind,
};

/// The owner's room goes to the member present longest: one that left and came back counts from
/// its return.
pub async fn ownership_passes_to_the_longest_present_member(store: &dyn UsersAndRooms) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let carol = user(store, "Carol").await;
    let room_id = create_default(store, alice, at(1)).await;
    join(store, room_id, bob, at(2)).await;
    join(store, room_id, carol, at(3)).await;
    leave(store, room_id, bob, at(4)).await;
    join(store, room_id, bob, at(5)).await;
    assert_eq!(
        member_ids(&state(store, room_id).await),
        vec![alice, carol, bob]
    );

    let change = leave(store, room_id, alice, at(6)).await;
    assert_eq!(
        change.events,
        vec![
            RoomEvent {
                room_id,
                sequence: 5,
                occurred_at: at(6),
                kind: left(alice, LeaveReason::Left),
            },
            RoomEvent {
                room_id,
                sequence: 6,
                occurred_at: at(6),
                kind: RoomEventKind::OwnerChanged {
                    previous: alice,
                    new: carol,
                },
            },
        ]
    );
    assert_eq!(change.room.owner, carol);
    assert_eq!(member_ids(&change.room), vec![carol, bob]);
    assert_eq!(state(store, room_id).await, change.room);

    // A member other than the owner leaving changes no ownership.
    let change = leave(store, room_id, bob, at(7)).await;
    assert_eq!(kinds(&change.events), vec![left(bob, LeaveReason::Left)]);
    assert_eq!(change.room.owner, carol);
}

/// The last member leaving closes the room: `MemberLeft`, then `RoomClosed`.
pub async fn the_last_member_leaving_closes_the_room(store: &dyn UsersAndRooms) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let room_id = create_default(store, alice, at(1)).await;
    join(store, room_id, bob, at(2)).await;
    leave(store, room_id, alice, at(3)).await;

    let change = leave(store, room_id, bob, at(4)).await;
    assert_eq!(
        kinds(&change.events),
        vec![left(bob, LeaveReason::Left), RoomEventKind::RoomClosed]
    );
    assert_eq!(change.events[1].sequence, 5);
    assert_eq!(change.room.closed_at, Some(at(4)));
    assert!(change.room.members.is_empty());
    assert_eq!(change.room.sequence, 5);
    assert_eq!(state(store, room_id).await, change.room);
    assert_eq!(current(store, bob).await, None);
}

/// A closed room refuses every change as `NotFound`, but `room` and `events_after` still read it
/// (without its data).
pub async fn a_closed_room_is_never_changed_again_but_stays_readable(store: &dyn UsersAndRooms) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let spec = NewRoom {
        data: BTreeMap::from([("mode".to_owned(), "ctf".to_owned())]),
        ..room_spec(alice)
    };
    let room_id = create(store, spec, at(1)).await.room.id;
    join(store, room_id, bob, at(2)).await;
    leave(store, room_id, bob, at(3)).await;
    let closing = leave(store, room_id, alice, at(4)).await;
    let closed = state(store, room_id).await;
    assert_eq!(closed.closed_at, Some(at(4)));

    assert_refused!(
        store.join_room(room_id, bob, at(5)).await,
        RoomError::NotFound,
        "joining a closed room"
    );
    assert_refused!(
        store
            .leave_room(room_id, alice, LeaveReason::Left, at(5))
            .await,
        RoomError::NotFound,
        "leaving a closed room"
    );
    assert_refused!(
        store.kick_member(room_id, alice, bob, at(5)).await,
        RoomError::NotFound,
        "kicking from a closed room"
    );
    assert_refused!(
        store
            .update_room_data(
                room_id,
                alice,
                DataUpdate {
                    set: BTreeMap::from([("mode".to_owned(), "dm".to_owned())]),
                    ..DataUpdate::default()
                },
                at(5),
            )
            .await,
        RoomError::NotFound,
        "updating a closed room's data"
    );

    assert_eq!(state(store, room_id).await, closed, "a closed room changed");
    assert!(closed.data.is_empty(), "a closed room keeps no data");
    let events = all_events(store, room_id).await;
    assert_eq!(events.len(), 4);
    assert_eq!(events[2..], closing.events[..]);
    assert_eq!(
        read("events_after", store.events_after(room_id, 4, 10).await),
        Some(EventsAfter::Events(Vec::new())),
        "nothing follows RoomClosed"
    );
}

/// Leaving a room one is not in is refused as `NotMember`; leaving an unknown room, `NotFound`.
pub async fn leaving_a_room_one_is_not_in_is_not_member(store: &dyn UsersAndRooms) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let room_id = create_default(store, alice, at(1)).await;
    let elsewhere = create_default(store, bob, at(2)).await;

    assert_refused!(
        store
            .leave_room(room_id, bob, LeaveReason::Left, at(3))
            .await,
        RoomError::NotMember,
        "leaving a room one is not in"
    );
    assert_refused!(
        store
            .leave_room(Uuid::new_v4(), bob, LeaveReason::Left, at(3))
            .await,
        RoomError::NotFound,
        "leaving an unknown room"
    );
    assert_eq!(current(store, bob).await, Some(elsewhere));
    assert_eq!(state(store, room_id).await.sequence, 0);
}

/// A member removed for staying disconnected leaves with reason `Disconnected`, ownership and
/// closing included.
pub async fn a_disconnected_member_leaves_with_its_reason_recorded(store: &dyn UsersAndRooms) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let room_id = create_default(store, alice, at(1)).await;
    join(store, room_id, bob, at(2)).await;

    let change = ok(
        "leave_room",
        store
            .leave_room(room_id, alice, LeaveReason::Disconnected, at(3))
            .await,
    );
    assert_eq!(
        kinds(&change.events),
        vec![
            left(alice, LeaveReason::Disconnected),
            RoomEventKind::OwnerChanged {
                previous: alice,
                new: bob,
            },
        ]
    );
    let change = ok(
        "leave_room",
        store
            .leave_room(room_id, bob, LeaveReason::Disconnected, at(4))
            .await,
    );
    assert_eq!(
        kinds(&change.events),
        vec![
            left(bob, LeaveReason::Disconnected),
            RoomEventKind::RoomClosed
        ]
    );
    let reasons: Vec<RoomEventKind> = kinds(&all_events(store, room_id).await);
    assert_eq!(reasons[1], left(alice, LeaveReason::Disconnected));
    assert_eq!(reasons[3], left(bob, LeaveReason::Disconnected));
}

//! Conformance cases for the owner's powers: kicks and their bans, room data and invitations.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::{
    UsersAndRooms, all_events, assert_refused, at, create, create_default, current, join, kinds,
    left, member_ids, ok, room_spec, state, user,
};
use crate::rooms::{
    DataUpdate, JoinPolicy, LeaveReason, MAX_DATA_KEYS, MAX_INVITED, NewRoom, RoomError,
    RoomEventKind,
};

fn invite(users: &[Uuid]) -> DataUpdate {
    DataUpdate {
        invite: users.iter().copied().collect(),
        ..DataUpdate::default()
    }
}

fn strings<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

fn keys<const N: usize>(names: [&str; N]) -> BTreeSet<String> {
    names.into_iter().map(str::to_owned).collect()
}

/// A kick removes the member (`MemberLeft`, `Kicked`), withdraws its invitation (`DataChanged`
/// with it uninvited) and bans it: it may not rejoin until invited again.
pub async fn kicking_removes_the_member_withdraws_its_invitation_and_bans_it(
    store: &dyn UsersAndRooms,
) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let spec = NewRoom {
        join_policy: JoinPolicy::InviteOnly,
        invited: BTreeSet::from([bob]),
        ..room_spec(alice)
    };
    let room_id = create(store, spec, at(1)).await.room.id;
    join(store, room_id, bob, at(2)).await;

    let change = ok(
        "kick_member",
        store.kick_member(room_id, alice, bob, at(3)).await,
    );
    assert_eq!(
        kinds(&change.events),
        vec![
            left(bob, LeaveReason::Kicked),
            RoomEventKind::DataChanged {
                set: BTreeMap::new(),
                deleted: BTreeSet::new(),
                invited: BTreeSet::new(),
                uninvited: BTreeSet::from([bob]),
            },
        ]
    );
    assert_eq!(
        (change.events[0].sequence, change.events[1].sequence),
        (2, 3)
    );
    assert_eq!(member_ids(&change.room), vec![alice]);
    assert!(
        change.room.invited.is_empty(),
        "the invitation is withdrawn"
    );
    assert_eq!(change.room.owner, alice);
    assert_eq!(state(store, room_id).await, change.room);
    assert_eq!(current(store, bob).await, None);

    assert_refused!(
        store.join_room(room_id, bob, at(4)).await,
        RoomError::Banned,
        "a kicked user rejoining"
    );
    ok(
        "update_room_data",
        store
            .update_room_data(room_id, alice, invite(&[bob]), at(5))
            .await,
    );
    let change = join(store, room_id, bob, at(6)).await;
    assert_eq!(member_ids(&change.room), vec![alice, bob], "invited again");
}

/// In an open room a kicked user (never invited) is banned too, with no `DataChanged`; an
/// invitation lifts the ban.
pub async fn a_kicked_user_may_rejoin_an_open_room_only_once_invited_again(
    store: &dyn UsersAndRooms,
) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let carol = user(store, "Carol").await;
    let room_id = create_default(store, alice, at(1)).await;
    join(store, room_id, bob, at(2)).await;
    let change = ok(
        "kick_member",
        store.kick_member(room_id, alice, bob, at(3)).await,
    );
    assert_eq!(
        kinds(&change.events),
        vec![left(bob, LeaveReason::Kicked)],
        "no invitation to withdraw"
    );
    assert_refused!(
        store.join_room(room_id, bob, at(4)).await,
        RoomError::Banned,
        "a kicked user rejoining an open room"
    );
    join(store, room_id, carol, at(5)).await;
    assert_refused!(
        store.join_room(room_id, bob, at(6)).await,
        RoomError::Banned,
        "the ban outlasts other changes"
    );
    let change = ok(
        "update_room_data",
        store
            .update_room_data(room_id, alice, invite(&[bob]), at(7))
            .await,
    );
    assert!(change.room.invited.contains(&bob));
    join(store, room_id, bob, at(8)).await;
    assert_eq!(
        member_ids(&state(store, room_id).await),
        vec![alice, carol, bob]
    );
}

/// Only the owner may kick (`NotOwner` for members and outsiders), not itself (`KickSelf`), and
/// only a member (`TargetNotMember`); unknown rooms are `NotFound`. A refusal writes nothing.
pub async fn only_the_owner_may_kick_and_only_another_member(store: &dyn UsersAndRooms) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let carol = user(store, "Carol").await;
    let outsider = user(store, "Outsider").await;
    let room_id = create_default(store, alice, at(1)).await;
    join(store, room_id, bob, at(2)).await;
    join(store, room_id, carol, at(3)).await;
    let before = state(store, room_id).await;

    assert_refused!(
        store.kick_member(room_id, bob, carol, at(4)).await,
        RoomError::NotOwner,
        "a member kicking another"
    );
    assert_refused!(
        store.kick_member(room_id, outsider, carol, at(4)).await,
        RoomError::NotOwner,
        "an outsider kicking a member"
    );
    assert_refused!(
        store.kick_member(room_id, alice, alice, at(4)).await,
        RoomError::KickSelf,
        "the owner kicking itself"
    );
    assert_refused!(
        store.kick_member(room_id, alice, outsider, at(4)).await,
        RoomError::TargetNotMember,
        "kicking a non-member"
    );
    assert_refused!(
        store.kick_member(Uuid::new_v4(), alice, bob, at(4)).await,
        RoomError::NotFound,
        "kicking in an unknown room"
    );
    assert_eq!(state(store, room_id).await, before, "a refused kick wrote");
    // The non-member was not banned by the refused kick.
    join(store, room_id, outsider, at(5)).await;
}

/// An update applies sets, deletes, invitations and withdrawals as one `DataChanged` that lists
/// only what changed: unchanged values, absent keys and existing invitations are left out.
pub async fn update_room_data_is_one_event_listing_only_real_changes(store: &dyn UsersAndRooms) {
    let alice = user(store, "Alice").await;
    let (kept, withdrawn, new) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let spec = NewRoom {
        data: strings([("map", "dust"), ("mode", "ctf"), ("old", "x")]),
        invited: BTreeSet::from([kept, withdrawn]),
        ..room_spec(alice)
    };
    let room_id = create(store, spec, at(1)).await.room.id;
    let update = DataUpdate {
        set: strings([("map", "dust"), ("mode", "dm"), ("rounds", "3")]),
        delete: keys(["old", "absent"]),
        invite: BTreeSet::from([kept, new]),
        uninvite: BTreeSet::from([withdrawn, Uuid::new_v4()]),
    };
    let change = ok(
        "update_room_data",
        store.update_room_data(room_id, alice, update, at(2)).await,
    );
    assert_eq!(
        kinds(&change.events),
        vec![RoomEventKind::DataChanged {
            set: strings([("mode", "dm"), ("rounds", "3")]),
            deleted: keys(["old"]),
            invited: BTreeSet::from([new]),
            uninvited: BTreeSet::from([withdrawn]),
        }]
    );
    assert_eq!(change.events[0].sequence, 1);
    assert_eq!(
        change.room.data,
        strings([("map", "dust"), ("mode", "dm"), ("rounds", "3")])
    );
    assert_eq!(change.room.invited, BTreeSet::from([kept, new]));
    assert_eq!(change.room.sequence, 1);
    assert_eq!(state(store, room_id).await, change.room);
    assert_eq!(all_events(store, room_id).await, change.events);
}

/// An update whose every part is already so appends no event and changes nothing.
pub async fn an_update_that_changes_nothing_appends_no_event(store: &dyn UsersAndRooms) {
    let alice = user(store, "Alice").await;
    let kept = Uuid::new_v4();
    let spec = NewRoom {
        data: strings([("mode", "ctf")]),
        invited: BTreeSet::from([kept]),
        ..room_spec(alice)
    };
    let room_id = create(store, spec, at(1)).await.room.id;
    let before = state(store, room_id).await;
    for update in [
        DataUpdate::default(),
        DataUpdate {
            set: strings([("mode", "ctf")]),
            delete: keys(["absent"]),
            invite: BTreeSet::from([kept]),
            uninvite: BTreeSet::from([Uuid::new_v4()]),
        },
    ] {
        let change = ok(
            "update_room_data",
            store.update_room_data(room_id, alice, update, at(2)).await,
        );
        assert!(change.events.is_empty(), "no change, no event");
        assert_eq!(change.room, before);
    }
    assert_eq!(state(store, room_id).await, before);
}

/// Only the owner writes room data: members and outsiders are `NotOwner`; unknown rooms
/// `NotFound`.
pub async fn only_the_owner_may_update_room_data(store: &dyn UsersAndRooms) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let outsider = user(store, "Outsider").await;
    let room_id = create_default(store, alice, at(1)).await;
    join(store, room_id, bob, at(2)).await;
    let before = state(store, room_id).await;
    let update = DataUpdate {
        set: strings([("mode", "ctf")]),
        ..DataUpdate::default()
    };
    for (by, who) in [(bob, "a member"), (outsider, "an outsider")] {
        assert_refused!(
            store
                .update_room_data(room_id, by, update.clone(), at(3))
                .await,
            RoomError::NotOwner,
            "{who} updating room data"
        );
    }
    assert_refused!(
        store
            .update_room_data(Uuid::new_v4(), alice, update, at(3))
            .await,
        RoomError::NotFound,
        "updating an unknown room"
    );
    assert_eq!(state(store, room_id).await, before);
}

/// At most 64 keys, counted on the result: deletes in the same update make room, and a refused
/// update (`TooManyKeys` with the resulting count) writes none of its parts.
pub async fn the_key_bound_is_checked_after_the_change_and_a_refusal_writes_nothing(
    store: &dyn UsersAndRooms,
) {
    let alice = user(store, "Alice").await;
    let spec = NewRoom {
        data: (0..MAX_DATA_KEYS - 1)
            .map(|i| (format!("key{i}"), "v".to_owned()))
            .collect(),
        ..room_spec(alice)
    };
    let room_id = create(store, spec, at(1)).await.room.id;
    let before = state(store, room_id).await;

    let too_many = DataUpdate {
        set: strings([("a", "1"), ("b", "2"), ("key0", "changed")]),
        delete: keys(["absent"]),
        invite: BTreeSet::from([Uuid::new_v4()]),
        ..DataUpdate::default()
    };
    assert_refused!(
        store
            .update_room_data(room_id, alice, too_many, at(2))
            .await,
        RoomError::TooManyKeys(65),
        "63 keys plus 2 new ones"
    );
    assert_eq!(
        state(store, room_id).await,
        before,
        "a refused update wrote"
    );

    let fits = DataUpdate {
        set: strings([("a", "1"), ("b", "2")]),
        delete: keys(["key0"]),
        ..DataUpdate::default()
    };
    let change = ok(
        "update_room_data",
        store.update_room_data(room_id, alice, fits, at(3)).await,
    );
    assert_eq!(
        change.room.data.len(),
        MAX_DATA_KEYS,
        "64 keys after the change"
    );
}

/// At most 256 invitations, counted on the result: `TooManyInvited` with the resulting count,
/// and nothing of the update written.
pub async fn the_invitation_bound_is_checked_after_the_change_and_a_refusal_writes_nothing(
    store: &dyn UsersAndRooms,
) {
    let alice = user(store, "Alice").await;
    let spec = NewRoom {
        invited: (0..MAX_INVITED - 1).map(|_| Uuid::new_v4()).collect(),
        ..room_spec(alice)
    };
    let room_id = create(store, spec, at(1)).await.room.id;
    let before = state(store, room_id).await;
    let present = *before.invited.first().expect("the room has invitations");

    let too_many = DataUpdate {
        set: strings([("mode", "ctf")]),
        invite: BTreeSet::from([Uuid::new_v4(), Uuid::new_v4(), present]),
        ..DataUpdate::default()
    };
    assert_refused!(
        store
            .update_room_data(room_id, alice, too_many, at(2))
            .await,
        RoomError::TooManyInvited(257),
        "255 invitations plus 2 new ones"
    );
    assert_eq!(
        state(store, room_id).await,
        before,
        "a refused update wrote"
    );

    let fits = DataUpdate {
        invite: BTreeSet::from([Uuid::new_v4(), Uuid::new_v4()]),
        uninvite: BTreeSet::from([present]),
        ..DataUpdate::default()
    };
    let change = ok(
        "update_room_data",
        store.update_room_data(room_id, alice, fits, at(3)).await,
    );
    assert_eq!(change.room.invited.len(), MAX_INVITED);
}

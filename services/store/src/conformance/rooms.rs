//! The behaviour every [`RoomStore`] backend must show, as executable cases.
//!
//! Like the identity cases, each case is a public async function taking a fresh store and
//! panicking with a message naming the broken promise; a backend runs them all with
//! [`room_conformance_tests!`](crate::room_conformance_tests), one `#[tokio::test]` per case.
//! The cases need users too, so they take a [`UsersAndRooms`]. They never look at a backend's
//! tables.
//!
//! Give the stores a small retention ([`RoomStore::retained_events`], at least 8): the pruning
//! case writes a little more than that many events into one room.

use uuid::Uuid;

use super::T0;
use crate::rooms::{
    EventsAfter, JoinPolicy, LeaveReason, Member, NewRoom, Room, RoomChange, RoomError, RoomEvent,
    RoomEventKind, Visibility,
};
use crate::{IdentityStore, NewUser, RoomStore, StoreError, UnixMillis};

mod departures;
mod history;
mod listing;
mod membership;
mod moderation;
mod races;

pub use departures::*;
pub use history::*;
pub use listing::*;
pub use membership::*;
pub use moderation::*;
pub use races::*;

/// What the room cases need from a store: users to put in rooms, and rooms.
pub trait UsersAndRooms: IdentityStore + RoomStore {}

impl<T: IdentityStore + RoomStore> UsersAndRooms for T {}

/// Writes one `#[tokio::test]` per room conformance case, each on its own fresh store.
///
/// `$factory` is as for [`identity_conformance_tests!`](crate::identity_conformance_tests); its
/// store must implement [`IdentityStore`] and [`RoomStore`], with a small retention (at least 8;
/// 16 is good). The
/// case names differ from the identity cases', so both macros can be used in one test file.
///
/// ```ignore
/// async fn fresh_store() -> Option<(SqliteStore, tempfile::TempDir)> { /* ... */ }
///
/// rally_store::room_conformance_tests!(fresh_store());
/// ```
#[macro_export]
macro_rules! room_conformance_tests {
    ($factory:expr) => {
        $crate::room_conformance_tests!(@cases $factory;
            create_room_makes_the_owner_its_only_member_at_sequence_zero,
            create_room_for_an_unknown_owner_is_user_not_found_and_writes_nothing,
            creating_a_room_leaves_the_current_room_which_closes_when_it_empties,
            creating_a_room_hands_the_old_room_to_its_longest_present_member,
            join_room_adds_the_member_last_with_its_member_joined_event,
            joining_the_room_one_is_in_changes_nothing,
            joining_another_room_leaves_the_current_one_in_the_same_change,
            joining_an_unknown_or_closed_room_is_not_found_and_the_user_stays,
            joining_as_an_unknown_user_is_user_not_found,
            an_invite_only_room_admits_only_invited_users_who_may_come_back,
            a_full_room_refuses_joins_and_the_user_stays_where_it_was,
            ownership_passes_to_the_longest_present_member,
            the_last_member_leaving_closes_the_room,
            a_closed_room_is_never_changed_again_but_stays_readable,
            leaving_a_room_one_is_not_in_is_not_member,
            a_disconnected_member_leaves_with_its_reason_recorded,
            current_room_follows_the_user,
            kicking_removes_the_member_withdraws_its_invitation_and_bans_it,
            a_kicked_user_may_rejoin_an_open_room_only_once_invited_again,
            only_the_owner_may_kick_and_only_another_member,
            update_room_data_is_one_event_listing_only_real_changes,
            an_update_that_changes_nothing_appends_no_event,
            only_the_owner_may_update_room_data,
            the_key_bound_is_checked_after_the_change_and_a_refusal_writes_nothing,
            the_invitation_bound_is_checked_after_the_change_and_a_refusal_writes_nothing,
            sequences_start_at_one_and_have_no_gaps_across_a_long_mixed_history,
            events_after_returns_exactly_what_was_missed,
            events_after_a_pruned_sequence_is_a_snapshot,
            large_events_are_retained_within_the_byte_budget,
            a_closing_room_keeps_only_its_latest_small_events,
            list_rooms_shows_only_open_public_rooms_newest_first,
            list_rooms_filters_by_data_and_free_seats,
            list_rooms_pages_through_every_room_once_in_order,
            the_census_counts_open_rooms_and_their_members,
            concurrent_joins_never_overfill_a_room,
            concurrent_joins_of_one_user_into_two_rooms_leave_it_in_exactly_one,
            concurrent_departures_close_the_room_exactly_once,
            a_user_leaving_while_joining_elsewhere_leaves_its_room_once,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let Some((store, guard)) = $factory.await else {
                    return;
                };
                $crate::conformance::within_deadline(
                    stringify!($case),
                    $crate::conformance::rooms::$case(&store),
                )
                .await;
                // The store goes before the database it uses.
                drop(store);
                drop(guard);
            }
        )*
    };
}

/// `T0` plus `seconds`: the cases' clock.
pub(super) fn at(seconds: i64) -> UnixMillis {
    T0 + seconds * 1000
}

/// The value of a room change, or a panic naming the call that failed.
pub(super) fn ok<T>(call: &str, result: Result<T, RoomError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{call} failed: {error} ({error:?})"),
    }
}

/// The value of a read, or a panic naming the call that failed.
pub(super) fn read<T>(call: &str, result: Result<T, StoreError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{call} failed: {error} ({error:?})"),
    }
}

/// Asserts that a room change was refused as `$pattern`.
macro_rules! assert_refused {
    ($outcome:expr, $pattern:pat, $($what:tt)+) => {
        let outcome = $outcome;
        assert!(
            matches!(outcome, Err($pattern)),
            "{}: expected {}, got {:?}",
            format_args!($($what)+),
            stringify!($pattern),
            outcome
        );
    };
}
pub(crate) use assert_refused;

/// A new user whose display name is `name`.
pub(super) async fn user(store: &dyn UsersAndRooms, name: &str) -> Uuid {
    let id = Uuid::new_v4();
    let new_user = NewUser {
        id,
        username: Some(format!("{name}-{}", id.simple())),
        display_name: name.to_owned(),
        password_hash: None,
        created_at: T0,
    };
    read("create_user", store.create_user(new_user).await);
    id
}

/// `count` new users named `{prefix} {i}`.
pub(super) async fn users(store: &dyn UsersAndRooms, prefix: &str, count: usize) -> Vec<Uuid> {
    let mut created = Vec::with_capacity(count);
    for i in 0..count {
        created.push(user(store, &format!("{prefix} {i}")).await);
    }
    created
}

/// A public, open room of capacity 8 owned by `owner`, with no data and no invitations.
pub(super) fn room_spec(owner: Uuid) -> NewRoom {
    NewRoom {
        id: Uuid::new_v4(),
        owner,
        capacity: 8,
        visibility: Visibility::Public,
        join_policy: JoinPolicy::Open,
        data: Default::default(),
        invited: Default::default(),
    }
}

/// Creates `spec` at `now`.
pub(super) async fn create(
    store: &dyn UsersAndRooms,
    spec: NewRoom,
    now: UnixMillis,
) -> RoomChange {
    ok("create_room", store.create_room(spec, now).await)
}

/// Creates a room as [`room_spec`] at `now`; its id.
pub(super) async fn create_default(
    store: &dyn UsersAndRooms,
    owner: Uuid,
    now: UnixMillis,
) -> Uuid {
    create(store, room_spec(owner), now).await.room.id
}

pub(super) async fn join(
    store: &dyn UsersAndRooms,
    room_id: Uuid,
    user: Uuid,
    now: UnixMillis,
) -> RoomChange {
    ok("join_room", store.join_room(room_id, user, now).await)
}

pub(super) async fn leave(
    store: &dyn UsersAndRooms,
    room_id: Uuid,
    user: Uuid,
    now: UnixMillis,
) -> RoomChange {
    ok(
        "leave_room",
        store
            .leave_room(room_id, user, LeaveReason::Left, now)
            .await,
    )
}

/// The room as stored; it must exist.
pub(super) async fn state(store: &dyn UsersAndRooms, room_id: Uuid) -> Room {
    read("room", store.room(room_id).await).unwrap_or_else(|| panic!("room {room_id} should exist"))
}

/// The id of `user`'s current room.
pub(super) async fn current(store: &dyn UsersAndRooms, user: Uuid) -> Option<Uuid> {
    read("current_room", store.current_room(user).await).map(|room| room.id)
}

/// Every event of a room from its first; the room must exist and have pruned none.
pub(super) async fn all_events(store: &dyn UsersAndRooms, room_id: Uuid) -> Vec<RoomEvent> {
    match read(
        "events_after",
        store.events_after(room_id, 0, u32::MAX).await,
    ) {
        Some(EventsAfter::Events(events)) => events,
        other => panic!("events_after({room_id}, 0) should list events, got {other:?}"),
    }
}

/// The kinds of `events`, in order.
pub(super) fn kinds(events: &[RoomEvent]) -> Vec<RoomEventKind> {
    events.iter().map(|event| event.kind.clone()).collect()
}

/// The user ids of a room's members, in order.
pub(super) fn member_ids(room: &Room) -> Vec<Uuid> {
    room.members.iter().map(|member| member.user_id).collect()
}

pub(super) fn joined(user_id: Uuid, display_name: &str, joined_at: UnixMillis) -> RoomEventKind {
    RoomEventKind::MemberJoined(Member {
        user_id,
        display_name: display_name.to_owned(),
        joined_at,
    })
}

pub(super) fn left(user_id: Uuid, reason: LeaveReason) -> RoomEventKind {
    RoomEventKind::MemberLeft { user_id, reason }
}

/// Asserts that `events` are `room_id`'s, numbered `first`, `first + 1`, ... without gaps.
pub(super) fn assert_consecutive(events: &[RoomEvent], room_id: Uuid, first: u64) {
    for (offset, event) in (0..).zip(events) {
        assert_eq!(
            event.room_id, room_id,
            "an event of another room: {event:?}"
        );
        assert_eq!(
            event.sequence,
            first + offset,
            "sequence numbers must be consecutive: {events:?}"
        );
    }
}

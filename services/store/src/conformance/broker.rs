//! The behaviour every [`BrokerStore`] backend must show, as executable cases.
//!
//! Like the other suites, each case is a public async function taking a fresh store and panicking
//! with a message naming the broken promise; a backend runs them all with
//! [`broker_conformance_tests!`](crate::broker_conformance_tests), one `#[tokio::test]` per case.
//! Presence and pairs belong to users, made with the room cases' helpers, so the cases take a
//! [`UsersAndBroker`]. They never look at a backend's tables.

use uuid::Uuid;

use super::must;
use super::rooms::UsersAndRooms;
use crate::UnixMillis;
use crate::broker::{
    BrokerStore, ConnectOutcome, NewAttachment, Pair, PairLimits, PairState, Presence,
};

mod pairs;
mod presence;
mod races;
mod retention;

pub use pairs::*;
pub use presence::*;
pub use races::*;
pub use retention::*;

/// What the broker cases need from a store: users (made as the room cases make them), presence
/// and pairs.
pub trait UsersAndBroker: UsersAndRooms + BrokerStore {}

impl<T: UsersAndRooms + BrokerStore> UsersAndBroker for T {}

/// Writes one `#[tokio::test]` per broker conformance case, each on its own fresh store.
///
/// `$factory` is as for [`identity_conformance_tests!`](crate::identity_conformance_tests); its
/// store must implement [`IdentityStore`](crate::IdentityStore), [`RoomStore`](crate::RoomStore)
/// and [`BrokerStore`]. The case names differ from the other suites', so all the macros can be
/// used in one test file.
///
/// ```ignore
/// async fn fresh_store() -> Option<(SqliteStore, tempfile::TempDir)> { /* ... */ }
///
/// rally_store::broker_conformance_tests!(fresh_store());
/// ```
#[macro_export]
macro_rules! broker_conformance_tests {
    ($factory:expr) => {
        $crate::broker_conformance_tests!(@cases $factory;
            attach_stores_a_live_presence_and_supersedes_nothing_the_first_time,
            attach_returns_the_superseded_attachment_live_or_detached,
            attach_for_an_unknown_user_is_not_found_and_stores_nothing,
            announce_changes_only_the_current_attachment,
            detach_marks_only_the_current_live_attachment,
            detach_replica_detaches_only_that_replicas_live_attachments,
            silent_replicas_are_detached_as_of_their_last_heartbeat_and_forgotten,
            a_replica_that_never_heartbeated_is_left_alone,
            presence_omits_unknown_and_never_attached_users,
            presence_refuses_more_than_1024_users,
            detached_before_lists_the_longest_detached_first_up_to_the_limit,
            forget_deletes_the_presence_and_every_pair_of_the_user_and_returns_them,
            forget_does_nothing_after_a_re_attach_or_before_the_cutoff,
            announcements_longer_than_4096_bytes_are_refused_and_change_nothing,
            connect_stores_a_pending_request_once,
            crossing_requests_make_the_pair_agreed,
            a_caller_at_its_outgoing_pending_limit_is_refused,
            a_caller_in_max_pairs_pairs_is_refused,
            a_peer_in_max_pairs_pairs_is_refused,
            a_peer_with_max_incoming_pending_requests_is_refused,
            repeated_and_crossing_requests_are_answered_at_the_limits,
            connecting_with_an_unknown_user_is_not_found_and_stores_nothing,
            accept_agrees_only_a_pending_request_in_the_right_direction,
            reject_deletes_only_a_pending_request_in_the_right_direction,
            close_returns_the_pair_and_is_idempotent,
            set_relay_records_only_on_agreed_pairs_and_replaces,
            pairs_of_lists_every_pair_of_the_user_oldest_first,
            crossing_connects_end_in_one_agreed_pair,
            concurrent_connects_of_one_user_respect_max_outgoing_pending,
            concurrent_connects_to_one_user_respect_its_max_incoming_pending,
            concurrent_attaches_of_one_user_supersede_each_attachment_once,
            a_fingerprint_belongs_to_one_online_user,
            concurrent_attaches_of_two_users_with_one_fingerprint_admit_one,
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
                    $crate::conformance::broker::$case(&store),
                )
                .await;
                // The store goes before the database it uses.
                drop(store);
                drop(guard);
            }
        )*
    };
}

/// Generous limits, which the cases not about limits never reach.
const ROOMY: PairLimits = PairLimits {
    max_outgoing_pending: 64,
    max_incoming_pending: 1024,
    max_pairs: 1024,
};

/// A new attachment of `user` on `replica` with a fresh id, announcing the user's own
/// fingerprint ([`fingerprint_of`]).
fn attachment(user: Uuid, replica: Uuid, announcement: &[u8]) -> NewAttachment {
    NewAttachment {
        user,
        attachment_id: Uuid::new_v4(),
        replica_id: replica,
        announcement: announcement.to_vec(),
        fingerprint: fingerprint_of(user),
    }
}

/// A fingerprint only `user` announces in these cases.
fn fingerprint_of(user: Uuid) -> [u8; 32] {
    let mut fingerprint = [0; 32];
    fingerprint[..16].copy_from_slice(user.as_bytes());
    fingerprint[16..].copy_from_slice(user.as_bytes());
    fingerprint
}

/// The live presence `attachment` made at `attached_at`, as the store must return it.
fn live(attachment: &NewAttachment, attached_at: UnixMillis) -> Presence {
    Presence {
        user: attachment.user,
        attachment_id: attachment.attachment_id,
        replica_id: attachment.replica_id,
        announcement: attachment.announcement.clone(),
        attached_at,
        detached_at: None,
    }
}

/// `presence` detached at `detached_at`.
fn detached(presence: Presence, detached_at: UnixMillis) -> Presence {
    Presence {
        detached_at: Some(detached_at),
        ..presence
    }
}

/// Attaches `attachment` at `now`; the row it superseded.
async fn attach(
    store: &dyn UsersAndBroker,
    attachment: &NewAttachment,
    now: UnixMillis,
) -> Option<Presence> {
    must("attach", store.attach(attachment.clone(), now).await)
}

/// The presence row of `user`, if any.
async fn presence_of(store: &dyn UsersAndBroker, user: Uuid) -> Option<Presence> {
    let mut found = must("presence", store.presence(&[user]).await);
    assert!(found.len() <= 1, "one row per user, got {found:?}");
    found.pop()
}

/// `from` asks `to` at `now` under `limits`.
async fn connect(
    store: &dyn UsersAndBroker,
    from: Uuid,
    to: Uuid,
    limits: PairLimits,
    now: UnixMillis,
) -> ConnectOutcome {
    must("connect", store.connect(from, to, limits, now).await)
}

/// Makes `a` and `b` an agreed pair (`a` asks at `now`, `b` asks back).
async fn agree(store: &dyn UsersAndBroker, a: Uuid, b: Uuid, now: UnixMillis) {
    assert_eq!(
        connect(store, a, b, ROOMY, now).await,
        ConnectOutcome::Requested
    );
    assert_eq!(
        connect(store, b, a, ROOMY, now).await,
        ConnectOutcome::Crossed
    );
}

/// The pair of `a` and `b`, if any, checking that it reads the same whichever user is named
/// first.
async fn pair(store: &dyn UsersAndBroker, a: Uuid, b: Uuid) -> Option<Pair> {
    let found = must("pair", store.pair(a, b).await);
    let reversed = must("pair", store.pair(b, a).await);
    assert_eq!(
        found, reversed,
        "the pair of {a} and {b} depends on the order"
    );
    found
}

/// The pair of `a` and `b` as the store must hold it: its users in order (the id sorting first
/// is `low`), no relay allocation.
fn expected_pair(a: Uuid, b: Uuid, state: PairState, created_at: UnixMillis) -> Pair {
    let (low, high) = if a < b { (a, b) } else { (b, a) };
    Pair {
        low,
        high,
        state,
        relay: None,
        created_at,
    }
}

/// The users of `pairs`, each pair as (low, high), in order.
fn pair_users(pairs: &[Pair]) -> Vec<(Uuid, Uuid)> {
    pairs.iter().map(|pair| (pair.low, pair.high)).collect()
}

/// The (low, high) key of the pair of `a` and `b`.
fn key(a: Uuid, b: Uuid) -> (Uuid, Uuid) {
    if a < b { (a, b) } else { (b, a) }
}

//! The behaviour every [`TicketStore`] backend must show, as executable cases.
//!
//! Like the identity and room cases, each case is a public async function taking a fresh store
//! and panicking with a message naming the broken promise; a backend runs them all with
//! [`ticket_conformance_tests!`](crate::ticket_conformance_tests), one `#[tokio::test]` per case.
//! Tickets need users, and matches make rooms, so the cases take a [`UsersRoomsAndTickets`]. They
//! never look at a backend's tables.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::rooms::{UsersAndRooms, at};
use crate::matchmaking::{
    Enqueued, FormedMatch, MatchRoom, NewTicket, PlannedMatch, Ticket, TicketError, TicketStatus,
    TicketStore,
};
use crate::{StoreError, UnixMillis};

mod queue;
mod races;
mod retention;
mod rounds;

pub use queue::*;
pub use races::*;
pub use retention::*;
pub use rounds::*;

/// What the ticket cases need from a store: users, rooms, and tickets.
pub trait UsersRoomsAndTickets: UsersAndRooms + TicketStore {}

impl<T: UsersAndRooms + TicketStore> UsersRoomsAndTickets for T {}

/// Writes one `#[tokio::test]` per ticket conformance case, each on its own fresh store.
///
/// `$factory` is as for [`identity_conformance_tests!`](crate::identity_conformance_tests); its
/// store must implement [`IdentityStore`](crate::IdentityStore), [`RoomStore`](crate::RoomStore)
/// and [`TicketStore`], with a retention of at least 16 events per room (as for the room cases).
/// The case names differ from the other suites', so all three macros can be used in one test
/// file.
///
/// ```ignore
/// async fn fresh_store() -> Option<(SqliteStore, tempfile::TempDir)> { /* ... */ }
///
/// rally_store::ticket_conformance_tests!(fresh_store());
/// ```
#[macro_export]
macro_rules! ticket_conformance_tests {
    ($factory:expr) => {
        $crate::ticket_conformance_tests!(@cases $factory;
            enqueue_stores_a_queued_ticket_that_reads_back_exactly,
            enqueue_for_an_unknown_user_is_user_not_found_and_stores_nothing,
            a_second_enqueue_cancels_the_users_queued_ticket_in_any_pool,
            concurrent_enqueues_of_one_user_leave_exactly_one_queued_ticket,
            cancel_cancels_a_queued_ticket_and_then_changes_nothing,
            cancelling_an_overdue_ticket_expires_it,
            cancel_refuses_unknown_foreign_and_matched_tickets_and_changes_nothing,
            expire_tickets_expires_exactly_the_overdue_queued_tickets,
            a_match_is_a_private_invite_only_room_of_its_users_oldest_ticket_first,
            a_match_moves_its_users_out_of_their_rooms_handing_over_and_closing_them,
            planned_groups_naming_unknown_repeated_or_taken_tickets_are_skipped,
            candidates_are_the_pools_oldest_queued_unexpired_tickets_up_to_the_limit,
            concurrent_rounds_put_every_ticket_in_at_most_one_match,
            a_ticket_cancelled_during_a_round_ends_cancelled_or_matched_never_both,
            a_ticket_replaced_during_a_round_ends_replaced_or_matched_never_both,
            purge_history_forgets_only_old_final_tickets_and_closed_rooms,
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
                    $crate::conformance::tickets::$case(&store),
                )
                .await;
                // The store goes before the database it uses.
                drop(store);
                drop(guard);
            }
        )*
    };
}

/// How long a ticket waits before it expires, in the cases.
const MAX_WAIT: UnixMillis = 300_000;

/// The value of a ticket call, or a panic naming the call that failed.
fn accepted<T>(call: &str, result: Result<T, TicketError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{call} failed: {error} ({error:?})"),
    }
}

/// The value of a read, or a panic naming the call that failed.
fn read<T>(call: &str, result: Result<T, StoreError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{call} failed: {error} ({error:?})"),
    }
}

/// A ticket of `user` in `pool` created `seconds` after `T0`, expiring [`MAX_WAIT`] later, with
/// a skill and a region.
fn new_ticket(user: Uuid, pool: &str, seconds: i64) -> NewTicket {
    NewTicket {
        id: Uuid::new_v4(),
        user_id: user,
        pool: pool.to_owned(),
        numeric: BTreeMap::from([("skill".to_owned(), 1500.0)]),
        strings: BTreeMap::from([("region".to_owned(), "eu".to_owned())]),
        created_at: at(seconds),
        expires_at: at(seconds) + MAX_WAIT,
    }
}

/// The ticket `new` describes, as the store must return it while it is queued.
fn queued(new: &NewTicket) -> Ticket {
    Ticket {
        id: new.id,
        user_id: new.user_id,
        pool: new.pool.clone(),
        numeric: new.numeric.clone(),
        strings: new.strings.clone(),
        status: TicketStatus::Queued,
        created_at: new.created_at,
        expires_at: new.expires_at,
        matched: None,
    }
}

async fn enqueue(store: &dyn UsersRoomsAndTickets, ticket: NewTicket) -> Enqueued {
    accepted("enqueue", store.enqueue(ticket).await)
}

/// Enqueues a ticket of each of `users` in `pool`, the first created `first_second` after `T0`
/// and each next one a second later; their ids, oldest first.
async fn enqueue_each(
    store: &dyn UsersRoomsAndTickets,
    users: &[Uuid],
    pool: &str,
    first_second: i64,
) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(users.len());
    for (offset, user) in (0..).zip(users) {
        ids.push(
            enqueue(store, new_ticket(*user, pool, first_second + offset))
                .await
                .ticket
                .id,
        );
    }
    ids
}

/// The ticket as stored; it must exist.
async fn stored(store: &dyn UsersRoomsAndTickets, ticket_id: Uuid) -> Ticket {
    read("ticket", store.ticket(ticket_id).await)
        .unwrap_or_else(|| panic!("ticket {ticket_id} should exist"))
}

/// The stored status of each of `tickets`.
async fn statuses(store: &dyn UsersRoomsAndTickets, tickets: &[Uuid]) -> Vec<TicketStatus> {
    let mut found = Vec::with_capacity(tickets.len());
    for ticket in tickets {
        found.push(stored(store, *ticket).await.status);
    }
    found
}

/// One round in `pool` at `now` that must succeed.
async fn round(
    store: &dyn UsersRoomsAndTickets,
    pool: &str,
    now: UnixMillis,
    limit: u32,
    capacity: u32,
    plan: &(dyn Fn(&[Ticket]) -> Vec<PlannedMatch> + Send + Sync),
) -> Vec<FormedMatch> {
    let outcome = store
        .match_round(pool, now, limit, MatchRoom { capacity }, plan)
        .await;
    match outcome {
        Ok(formed) => formed,
        Err(error) => panic!("match_round failed: {error} ({error:?})"),
    }
}

/// A planner grouping the candidates it sees in consecutive groups of `size`, oldest first.
fn in_groups_of(size: usize) -> impl Fn(&[Ticket]) -> Vec<PlannedMatch> + Send + Sync {
    move |candidates: &[Ticket]| {
        candidates
            .chunks_exact(size)
            .map(|group| group.iter().map(|ticket| ticket.id).collect())
            .collect()
    }
}

/// The ids of `tickets`, in order.
fn ids_of(tickets: &[Ticket]) -> Vec<Uuid> {
    tickets.iter().map(|ticket| ticket.id).collect()
}

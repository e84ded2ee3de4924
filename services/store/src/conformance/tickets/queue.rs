//! Conformance cases for a ticket's life outside rounds: enqueueing (one queued ticket per user),
//! cancelling and expiring.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use uuid::Uuid;

use super::super::RACE_ROUNDS;
use super::super::rooms::{assert_refused, at, user};
use super::{
    UsersRoomsAndTickets, accepted, enqueue, in_groups_of, new_ticket, queued, read, round,
    statuses, stored,
};
use crate::matchmaking::{Enqueued, NewTicket, Ticket, TicketError, TicketStatus};

/// Numbers that a float parser rounding to within one unit in the last place would get wrong,
/// and the extremes of `f64`.
const AWKWARD_NUMBERS: [f64; 12] = [
    0.1 + 0.2,
    1e-300,
    f64::MAX,
    f64::MIN,
    f64::MIN_POSITIVE,
    5e-324,
    -1.071_566_039_146_582_6e-75,
    -1.819_967_304_027_17e-179,
    1.603_964_615_428_183e143,
    1500.25,
    0.0,
    -7.0,
];

/// A ticket as enqueued, with awkward numbers and strings, reads back exactly: every number bit
/// for bit. An unknown ticket id reads as none.
pub async fn enqueue_stores_a_queued_ticket_that_reads_back_exactly(
    store: &dyn UsersRoomsAndTickets,
) {
    let alice = user(store, "Alice").await;
    let numeric = (0..)
        .zip(AWKWARD_NUMBERS)
        .map(|(index, value)| (format!("n{index}"), value))
        .collect();
    let strings = [
        ("region", "eu-west"),
        ("mode", "capture the flag ✓"),
        ("empty", ""),
        ("quoted", "\"'; DROP TABLE tickets; --"),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .into();
    let new = NewTicket {
        numeric,
        strings,
        ..new_ticket(alice, "ranked", 1)
    };
    let enqueued = enqueue(store, new.clone()).await;
    assert_eq!(
        enqueued,
        Enqueued {
            ticket: queued(&new),
            replaced: None
        },
        "enqueue returns the queued ticket and replaces nothing"
    );
    let read_back = stored(store, new.id).await;
    assert_eq!(read_back, queued(&new), "the ticket reads back as enqueued");
    for (name, value) in &new.numeric {
        let stored_value = read_back.numeric.get(name).copied().unwrap_or(f64::NAN);
        assert_eq!(
            stored_value.to_bits(),
            value.to_bits(),
            "numeric attribute {name} = {value:e} must come back bit for bit, not {stored_value:e}"
        );
    }

    let bob = user(store, "Bob").await;
    let bare = NewTicket {
        numeric: BTreeMap::new(),
        strings: BTreeMap::new(),
        ..new_ticket(bob, "ranked", 2)
    };
    enqueue(store, bare.clone()).await;
    assert_eq!(
        stored(store, bare.id).await,
        queued(&bare),
        "a ticket without attributes"
    );
    assert_eq!(
        read("ticket", store.ticket(Uuid::new_v4()).await),
        None,
        "an unknown ticket"
    );
}

/// A ticket of a user that does not exist is refused, and nothing is stored.
pub async fn enqueue_for_an_unknown_user_is_user_not_found_and_stores_nothing(
    store: &dyn UsersRoomsAndTickets,
) {
    let new = new_ticket(Uuid::new_v4(), "duel", 1);
    assert_refused!(
        store.enqueue(new.clone()).await,
        TicketError::UserNotFound,
        "enqueue for an unknown user"
    );
    assert_eq!(read("ticket", store.ticket(new.id).await), None);
}

/// Enqueueing again cancels the user's queued ticket, whatever its pool, and says so; another
/// user's ticket is untouched, and a user whose tickets are all final replaces nothing.
pub async fn a_second_enqueue_cancels_the_users_queued_ticket_in_any_pool(
    store: &dyn UsersRoomsAndTickets,
) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let first = new_ticket(alice, "duel", 1);
    enqueue(store, first.clone()).await;
    let bobs = new_ticket(bob, "duel", 1);
    enqueue(store, bobs.clone()).await;

    let second = new_ticket(alice, "ranked", 2);
    let enqueued = enqueue(store, second.clone()).await;
    assert_eq!(
        enqueued,
        Enqueued {
            ticket: queued(&second),
            replaced: Some(first.id)
        },
        "the second ticket replaces the first"
    );
    assert_eq!(
        stored(store, first.id).await,
        Ticket {
            status: TicketStatus::Cancelled,
            ..queued(&first)
        },
        "the replaced ticket is cancelled and otherwise unchanged"
    );
    assert_eq!(
        stored(store, bobs.id).await,
        queued(&bobs),
        "another user's ticket is untouched"
    );

    accepted("cancel", store.cancel(second.id, alice, at(3)).await);
    let third = new_ticket(alice, "duel", 4);
    assert_eq!(
        enqueue(store, third.clone()).await.replaced,
        None,
        "with no queued ticket, nothing is replaced"
    );
    assert_eq!(
        statuses(store, &[first.id, second.id, third.id]).await,
        vec![
            TicketStatus::Cancelled,
            TicketStatus::Cancelled,
            TicketStatus::Queued
        ]
    );
}

/// Ten enqueues of one user at once all succeed, and leave exactly one of the tickets queued:
/// every other one was replaced, exactly once.
pub async fn concurrent_enqueues_of_one_user_leave_exactly_one_queued_ticket(
    store: &dyn UsersRoomsAndTickets,
) {
    for race in 0..RACE_ROUNDS {
        let alice = user(store, "Alice").await;
        let tickets: Vec<NewTicket> = (0..10)
            .map(|index| new_ticket(alice, if index % 2 == 0 { "duel" } else { "ranked" }, 1))
            .collect();
        let outcomes = join_all(tickets.iter().map(|ticket| store.enqueue(ticket.clone()))).await;
        let mut replaced = BTreeSet::new();
        for outcome in outcomes {
            if let Some(id) = accepted("a racing enqueue", outcome).replaced {
                assert!(replaced.insert(id), "race {race}: {id} was replaced twice");
            }
        }
        let ids: Vec<Uuid> = tickets.iter().map(|ticket| ticket.id).collect();
        let mut still_queued = Vec::new();
        for (id, status) in ids.iter().zip(statuses(store, &ids).await) {
            match status {
                TicketStatus::Queued => still_queued.push(*id),
                TicketStatus::Cancelled => assert!(
                    replaced.contains(id),
                    "race {race}: {id} is cancelled but no enqueue says it replaced it"
                ),
                other => panic!("race {race}: {id} is {other:?}"),
            }
        }
        assert_eq!(
            still_queued.len(),
            1,
            "race {race}: exactly one ticket stays queued, not {still_queued:?}"
        );
        assert_eq!(
            replaced.len(),
            ids.len() - 1,
            "race {race}: every other ticket was replaced"
        );
    }
}

/// Cancelling a queued ticket cancels it; cancelling it again, even past its expiry, changes
/// nothing and returns it as it is.
pub async fn cancel_cancels_a_queued_ticket_and_then_changes_nothing(
    store: &dyn UsersRoomsAndTickets,
) {
    let alice = user(store, "Alice").await;
    let new = new_ticket(alice, "duel", 1);
    enqueue(store, new.clone()).await;
    let expected = Ticket {
        status: TicketStatus::Cancelled,
        ..queued(&new)
    };
    assert_eq!(
        accepted("cancel", store.cancel(new.id, alice, at(2)).await),
        expected
    );
    assert_eq!(stored(store, new.id).await, expected);
    let later = new.expires_at + 1;
    assert_eq!(
        accepted("cancel again", store.cancel(new.id, alice, later).await),
        expected,
        "cancelling a cancelled ticket changes nothing"
    );
    assert_eq!(stored(store, new.id).await, expected);
    assert_eq!(
        read("expire_tickets", store.expire_tickets(later).await),
        Vec::new(),
        "a cancelled ticket never expires"
    );
}

/// A queued ticket cancelled at or after its expiry becomes expired instead; cancelled a moment
/// before, it is cancelled. Cancelling an expired ticket changes nothing.
pub async fn cancelling_an_overdue_ticket_expires_it(store: &dyn UsersRoomsAndTickets) {
    let alice = user(store, "Alice").await;
    let overdue = new_ticket(alice, "duel", 1);
    enqueue(store, overdue.clone()).await;
    let expected = Ticket {
        status: TicketStatus::Expired,
        ..queued(&overdue)
    };
    assert_eq!(
        accepted(
            "cancel at the expiry",
            store.cancel(overdue.id, alice, overdue.expires_at).await
        ),
        expected
    );
    assert_eq!(
        accepted(
            "cancel again",
            store
                .cancel(overdue.id, alice, overdue.expires_at + 1)
                .await
        ),
        expected,
        "cancelling an expired ticket changes nothing"
    );
    assert_eq!(stored(store, overdue.id).await, expected);

    let timely = new_ticket(alice, "duel", 2);
    enqueue(store, timely.clone()).await;
    assert_eq!(
        accepted(
            "cancel just before the expiry",
            store.cancel(timely.id, alice, timely.expires_at - 1).await
        )
        .status,
        TicketStatus::Cancelled
    );
}

/// Cancelling an unknown ticket, another user's ticket or a matched one is refused, and changes
/// nothing.
pub async fn cancel_refuses_unknown_foreign_and_matched_tickets_and_changes_nothing(
    store: &dyn UsersRoomsAndTickets,
) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let alices = new_ticket(alice, "duel", 1);
    enqueue(store, alices.clone()).await;
    assert_refused!(
        store.cancel(Uuid::new_v4(), alice, at(2)).await,
        TicketError::NotFound,
        "cancelling an unknown ticket"
    );
    assert_refused!(
        store.cancel(alices.id, bob, at(2)).await,
        TicketError::NotYours,
        "cancelling another user's ticket"
    );
    assert_eq!(
        stored(store, alices.id).await,
        queued(&alices),
        "a refused cancel changes nothing"
    );

    let bobs = new_ticket(bob, "duel", 2);
    enqueue(store, bobs.clone()).await;
    let formed = round(store, "duel", at(3), 10, 2, &in_groups_of(2)).await;
    assert_eq!(formed.len(), 1, "Alice and Bob are matched");
    let matched = stored(store, alices.id).await;
    assert_refused!(
        store.cancel(alices.id, alice, at(4)).await,
        TicketError::AlreadyMatched,
        "cancelling a matched ticket"
    );
    assert_refused!(
        store.cancel(bobs.id, alice, at(4)).await,
        TicketError::NotYours,
        "cancelling another user's matched ticket"
    );
    assert_eq!(stored(store, alices.id).await, matched, "the match stands");
}

/// `expire_tickets` expires the queued tickets whose expiry is at or before `now`, in every pool,
/// returns exactly those, and leaves everything else as it is.
pub async fn expire_tickets_expires_exactly_the_overdue_queued_tickets(
    store: &dyn UsersRoomsAndTickets,
) {
    let now = at(20);
    let mut spec = Vec::new();
    for (name, pool, expires_at) in [
        ("Overdue", "duel", at(10)),
        ("Due now", "duel", now),
        ("Elsewhere", "ranked", at(15)),
        ("Timely", "duel", now + 1),
        ("Cancelled", "duel", at(5)),
    ] {
        let owner = user(store, name).await;
        let ticket = NewTicket {
            expires_at,
            ..new_ticket(owner, pool, 0)
        };
        enqueue(store, ticket.clone()).await;
        spec.push(ticket);
    }
    let [overdue, due_now, elsewhere, timely, cancelled] = spec.as_slice() else {
        unreachable!("five tickets");
    };
    accepted(
        "cancel",
        store.cancel(cancelled.id, cancelled.user_id, at(1)).await,
    );

    let mut expired = read("expire_tickets", store.expire_tickets(now).await);
    expired.sort_by_key(|ticket| ticket.id);
    let mut expected: Vec<Ticket> = [overdue, due_now, elsewhere]
        .into_iter()
        .map(|ticket| Ticket {
            status: TicketStatus::Expired,
            ..queued(ticket)
        })
        .collect();
    expected.sort_by_key(|ticket| ticket.id);
    assert_eq!(
        expired, expected,
        "exactly the overdue queued tickets expire"
    );
    for ticket in &expected {
        assert_eq!(stored(store, ticket.id).await, *ticket);
    }
    assert_eq!(stored(store, timely.id).await, queued(timely));
    assert_eq!(
        stored(store, cancelled.id).await.status,
        TicketStatus::Cancelled
    );
    assert_eq!(
        read("expire_tickets again", store.expire_tickets(now).await),
        Vec::new(),
        "nothing is expired twice"
    );
    let later: Vec<Uuid> = read("expire_tickets later", store.expire_tickets(now + 1).await)
        .iter()
        .map(|ticket| ticket.id)
        .collect();
    assert_eq!(later, vec![timely.id]);
}

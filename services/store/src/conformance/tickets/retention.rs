//! Conformance case for forgetting old history.

use super::super::rooms::{at, create_default, leave, read, user};
use super::{UsersRoomsAndTickets, accepted, enqueue, in_groups_of, new_ticket, round};
use crate::matchmaking::{Purged, TicketStatus};

/// `purge_history` deletes final tickets created before the cut and rooms closed before it,
/// and nothing else: queued tickets, open rooms and newer history stay. A second purge with
/// the same cut finds nothing left.
pub async fn purge_history_forgets_only_old_final_tickets_and_closed_rooms(
    store: &dyn UsersRoomsAndTickets,
) {
    let (ann, ben, cat, dan) = (
        user(store, "Ann").await,
        user(store, "Ben").await,
        user(store, "Cat").await,
        user(store, "Dan").await,
    );
    let (eve, fay) = (user(store, "Eve").await, user(store, "Fay").await);
    let cut = at(10);

    let closed_early = create_default(store, ann, at(1)).await;
    leave(store, closed_early, ann, at(2)).await;
    let closed_late = create_default(store, ben, at(1)).await;
    leave(store, closed_late, ben, at(20)).await;
    let open = create_default(store, cat, at(1)).await;

    let cancelled_early = enqueue(store, new_ticket(dan, "duo", 1)).await.ticket.id;
    accepted("cancel", store.cancel(cancelled_early, dan, at(3)).await);
    let waiting = enqueue(store, new_ticket(ann, "duo", 2)).await.ticket.id;
    let eves = enqueue(store, new_ticket(eve, "pair", 3)).await.ticket.id;
    let fays = enqueue(store, new_ticket(fay, "pair", 4)).await.ticket.id;
    let formed = round(store, "pair", at(5), 10, 2, &in_groups_of(2)).await;
    assert_eq!(formed.len(), 1, "Eve and Fay are matched");
    let match_room = formed[0].room.room.id;
    leave(store, match_room, eve, at(6)).await;
    leave(store, match_room, fay, at(7)).await;
    let cancelled_late = enqueue(store, new_ticket(dan, "duo", 11)).await.ticket.id;
    accepted("cancel", store.cancel(cancelled_late, dan, at(12)).await);

    let purged = read("purge_history", store.purge_history(cut).await);
    assert_eq!(
        purged,
        Purged {
            tickets: 3,
            rooms: 2
        },
        "the early cancelled ticket and the two matched ones; the early closed room and the match's room"
    );
    for (room, kept) in [
        (closed_early, false),
        (match_room, false),
        (closed_late, true),
        (open, true),
    ] {
        let found = read("room", store.room(room).await).is_some();
        assert_eq!(found, kept, "room {room} kept: {kept}");
    }
    for (ticket, kept) in [
        (cancelled_early, false),
        (eves, false),
        (fays, false),
        (waiting, true),
        (cancelled_late, true),
    ] {
        let found = read("ticket", store.ticket(ticket).await);
        assert_eq!(found.is_some(), kept, "ticket {ticket} kept: {kept}");
    }
    let waiting = read("ticket", store.ticket(waiting).await).map(|t| t.status);
    assert_eq!(
        waiting,
        Some(TicketStatus::Queued),
        "queued tickets are never purged"
    );
    let again = read("purge_history", store.purge_history(cut).await);
    assert_eq!(again, Purged::default(), "nothing left to purge");
}

//! Conformance cases for concurrent rounds, cancels and enqueues: a ticket is in at most one
//! match, and a cancelled or replaced ticket in none, whatever the interleaving.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use uuid::Uuid;

use super::super::RACE_ROUNDS;
use super::super::rooms::{
    all_events, assert_consecutive, at, create_default, current, join, member_ids, state, users,
};
use super::{
    UsersRoomsAndTickets, accepted, enqueue_each, ids_of, in_groups_of, new_ticket, round, stored,
};
use crate::matchmaking::{FormedMatch, MatchRoom, TicketError, TicketStatus};
use crate::rooms::RoomEventKind;

/// How many rounds run at once.
const RACERS: usize = 6;
/// How many players wait in the pool.
const PLAYERS: usize = 200;
/// The pool's match size.
const MATCH_SIZE: usize = 4;
/// How many tickets one round may take: a few matches' worth, so that the racers share the pool.
const ROUND_LIMIT: u32 = 24;
/// How many rooms the players start in; each holds players of several future matches.
const START_ROOMS: usize = 40;
/// How many times the crowded race is run (it is larger than the others).
const CROWDED_RACES: usize = 2;

/// Six rounds at once, each again until it forms nothing, on a pool of 200 waiting players who
/// start spread over shared rooms: every ticket ends in at most one match, every match's room
/// holds exactly its four users (oldest ticket first, owned by the oldest), and every room the
/// players started in sees each of them leave once and closes once. A last round alone then
/// matches whatever the racers left, so every player is matched exactly once.
pub async fn concurrent_rounds_put_every_ticket_in_at_most_one_match(
    store: &dyn UsersRoomsAndTickets,
) {
    for race in 0..CROWDED_RACES {
        let players = users(store, "Player", PLAYERS).await;
        let mut start_rooms = Vec::with_capacity(START_ROOMS);
        for owner in &players[..START_ROOMS] {
            start_rooms.push(create_default(store, *owner, at(1)).await);
        }
        for (index, player) in players.iter().enumerate().skip(START_ROOMS) {
            join(store, start_rooms[index % START_ROOMS], *player, at(2)).await;
        }
        let tickets = enqueue_each(store, &players, "crowded", 10).await;
        let now = at(300);
        let plan = in_groups_of(MATCH_SIZE);
        let capacity = u32::try_from(MATCH_SIZE).unwrap_or(u32::MAX);

        let racing = join_all((0..RACERS).map(|_| async {
            let mut formed = Vec::new();
            loop {
                let batch = round(store, "crowded", now, ROUND_LIMIT, capacity, &plan).await;
                if batch.is_empty() {
                    return formed;
                }
                formed.extend(batch);
            }
        }))
        .await;
        let mut formed: Vec<FormedMatch> = racing.into_iter().flatten().collect();
        let in_race = formed.len();
        let limit = u32::try_from(PLAYERS).unwrap_or(u32::MAX);
        formed.extend(round(store, "crowded", now, limit, capacity, &plan).await);

        let mut matched_in: BTreeMap<Uuid, Uuid> = BTreeMap::new();
        for formed in &formed {
            let room_id = formed.room.room.id;
            assert_eq!(
                formed.tickets.len(),
                MATCH_SIZE,
                "race {race}: a match of the wrong size"
            );
            for ticket in &formed.tickets {
                if let Some(other) = matched_in.insert(ticket.id, room_id) {
                    panic!(
                        "race {race}: ticket {} is in two matches, rooms {other} and {room_id} \
                         ({in_race} matches formed while racing)",
                        ticket.id
                    );
                }
            }
            assert!(
                formed
                    .tickets
                    .windows(2)
                    .all(|pair| pair[0].created_at < pair[1].created_at),
                "race {race}: a match's tickets must be oldest first"
            );
            let users: Vec<Uuid> = formed.tickets.iter().map(|ticket| ticket.user_id).collect();
            let room = state(store, room_id).await;
            assert_eq!(
                member_ids(&room),
                users,
                "race {race}: room {room_id} must hold exactly its match's users, in ticket order"
            );
            assert_eq!(
                room.owner, users[0],
                "race {race}: the oldest ticket's user owns it"
            );
        }
        assert_eq!(
            matched_in.len(),
            PLAYERS,
            "race {race}: every ticket is matched once the racers are done and a last round ran"
        );

        for (player, ticket) in players.iter().zip(&tickets) {
            let stored = stored(store, *ticket).await;
            let room_id = matched_in.get(ticket).copied();
            assert_eq!(stored.status, TicketStatus::Matched, "race {race}");
            assert_eq!(
                stored.matched.map(|record| record.room_id),
                room_id,
                "race {race}: the ticket names the room of the one match it is in"
            );
            assert_eq!(
                current(store, *player).await,
                room_id,
                "race {race}: a player is in its match's room, and so in no other"
            );
        }
        for room_id in &start_rooms {
            let events = all_events(store, *room_id).await;
            assert_consecutive(&events, *room_id, 1);
            let departures = events
                .iter()
                .filter(|event| matches!(event.kind, RoomEventKind::MemberLeft { .. }))
                .count();
            assert_eq!(
                departures,
                PLAYERS / START_ROOMS,
                "race {race}: each player leaves its first room once"
            );
            assert_eq!(
                events.last().map(|event| &event.kind),
                Some(&RoomEventKind::RoomClosed),
                "race {race}: the emptied room closes, last"
            );
        }
    }
}

/// A user cancelling its ticket while a round would match it: either the cancel comes first, and
/// the ticket is cancelled and in no match, or the round does, and the cancel is refused as
/// `AlreadyMatched`.
pub async fn a_ticket_cancelled_during_a_round_ends_cancelled_or_matched_never_both(
    store: &dyn UsersRoomsAndTickets,
) {
    for race in 0..RACE_ROUNDS {
        // A pool per race: a partner left waiting must not be matched in the next race.
        let pool = format!("duel {race}");
        let pair = users(store, "Player", 2).await;
        let tickets = enqueue_each(store, &pair, &pool, 1).await;
        let plan = in_groups_of(2);
        let (cancelled, formed) = futures::join!(
            store.cancel(tickets[0], pair[0], at(5)),
            store.match_round(&pool, at(5), 10, MatchRoom { capacity: 2 }, &plan)
        );
        let formed =
            formed.unwrap_or_else(|error| panic!("race {race}: the round failed: {error}"));
        match cancelled {
            Ok(ticket) => {
                assert_eq!(ticket.status, TicketStatus::Cancelled, "race {race}");
                assert!(
                    formed.is_empty(),
                    "race {race}: the cancel came first, yet the round formed {formed:?}"
                );
                assert_eq!(current(store, pair[0]).await, None, "race {race}");
                assert_eq!(
                    stored(store, tickets[1]).await.status,
                    TicketStatus::Queued,
                    "race {race}: the partner waits on"
                );
            }
            Err(TicketError::AlreadyMatched) => {
                let groups: Vec<Vec<Uuid>> = formed
                    .iter()
                    .map(|formed| ids_of(&formed.tickets))
                    .collect();
                assert_eq!(
                    groups,
                    vec![tickets.clone()],
                    "race {race}: the round came first"
                );
            }
            Err(other) => panic!("race {race}: the racing cancel failed with {other:?}"),
        }
        let status = stored(store, tickets[0]).await.status;
        assert!(
            matches!(status, TicketStatus::Cancelled | TicketStatus::Matched),
            "race {race}: the ticket ended {status:?}"
        );
    }
}

/// A user enqueueing again while a round would match its queued ticket: either the enqueue comes
/// first, and the old ticket is cancelled (reported as replaced) and in no match, or the round
/// does, and the enqueue replaces nothing.
pub async fn a_ticket_replaced_during_a_round_ends_replaced_or_matched_never_both(
    store: &dyn UsersRoomsAndTickets,
) {
    for race in 0..RACE_ROUNDS {
        // A pool per race: tickets left waiting must not be matched in the next race.
        let pool = format!("duel {race}");
        let pair = users(store, "Player", 2).await;
        let first = enqueue_each(store, &pair, &pool, 1).await;
        let again = new_ticket(pair[0], &pool, 3);
        let plan = in_groups_of(2);
        let (enqueued, formed) = futures::join!(
            store.enqueue(again.clone()),
            store.match_round(&pool, at(5), 10, MatchRoom { capacity: 2 }, &plan)
        );
        let enqueued = accepted("the racing enqueue", enqueued);
        let formed =
            formed.unwrap_or_else(|error| panic!("race {race}: the round failed: {error}"));
        let groups: BTreeSet<Vec<Uuid>> = formed
            .iter()
            .map(|formed| ids_of(&formed.tickets))
            .collect();
        match stored(store, first[0]).await.status {
            TicketStatus::Matched => {
                assert_eq!(
                    enqueued.replaced, None,
                    "race {race}: the round came first, so nothing was queued to replace"
                );
                assert_eq!(groups, BTreeSet::from([first.clone()]), "race {race}");
            }
            TicketStatus::Cancelled => {
                assert_eq!(
                    enqueued.replaced,
                    Some(first[0]),
                    "race {race}: the enqueue came first and replaced the old ticket"
                );
                // The round saw either the new ticket, which it may match, or neither.
                assert!(
                    groups.is_empty() || groups == BTreeSet::from([vec![first[1], again.id]]),
                    "race {race}: the replaced ticket was matched: {groups:?}"
                );
            }
            other => panic!("race {race}: the old ticket ended {other:?}"),
        }
    }
}

//! Conformance cases for match rounds: which tickets are candidates, which planned groups are
//! formed, and the room each match gets.

use std::collections::BTreeSet;
use std::sync::Mutex;

use uuid::Uuid;

use super::super::rooms::{
    all_events, at, create, current, join, joined, left, member_ids, room_spec, state, user, users,
};
use super::{
    UsersRoomsAndTickets, accepted, enqueue, enqueue_each, ids_of, in_groups_of, new_ticket,
    queued, round, statuses, stored,
};
use crate::matchmaking::{MatchRecord, NewTicket, PlannedMatch, Ticket, TicketStatus};
use crate::rooms::{JoinPolicy, LeaveReason, Member, Room, RoomEvent, RoomEventKind, Visibility};

/// A match's room is private and invite-only with every matched user invited, has the pool's
/// match size as capacity and no data, and holds the users oldest ticket first, the oldest
/// owning it; the others' `MemberJoined` events are its first events. The tickets are matched,
/// oldest first, and are never candidates again.
pub async fn a_match_is_a_private_invite_only_room_of_its_users_oldest_ticket_first(
    store: &dyn UsersRoomsAndTickets,
) {
    let ann = user(store, "Ann").await;
    let ben = user(store, "Ben").await;
    let cat = user(store, "Cat").await;
    let (anns, bens, cats) = (
        new_ticket(ann, "trio", 1),
        new_ticket(ben, "trio", 2),
        new_ticket(cat, "trio", 3),
    );
    // Enqueued in another order than their age.
    for ticket in [&cats, &anns, &bens] {
        enqueue(store, ticket.clone()).await;
    }
    // The planner names them newest first; the store orders them by age.
    let newest_first = |candidates: &[Ticket]| vec![ids_of(candidates).into_iter().rev().collect()];
    let formed = round(store, "trio", at(10), 10, 3, &newest_first).await;
    assert_eq!(formed.len(), 1, "one match");
    let formed = &formed[0];
    let room_id = formed.room.room.id;

    let record = MatchRecord {
        room_id,
        user_ids: vec![ann, ben, cat],
        matched_at: at(10),
    };
    let tickets: Vec<Ticket> = [&anns, &bens, &cats]
        .into_iter()
        .map(|ticket| Ticket {
            status: TicketStatus::Matched,
            matched: Some(record.clone()),
            ..queued(ticket)
        })
        .collect();
    assert_eq!(formed.tickets, tickets, "the matched tickets, oldest first");
    for ticket in &tickets {
        assert_eq!(
            stored(store, ticket.id).await,
            *ticket,
            "a matched ticket reads back with its match"
        );
    }

    let member = |user_id, name: &str| Member {
        user_id,
        display_name: name.to_owned(),
        joined_at: at(10),
    };
    let room = Room {
        id: room_id,
        owner: ann,
        members: vec![member(ann, "Ann"), member(ben, "Ben"), member(cat, "Cat")],
        capacity: 3,
        visibility: Visibility::Private,
        join_policy: JoinPolicy::InviteOnly,
        data: Default::default(),
        invited: BTreeSet::from([ann, ben, cat]),
        created_at: at(10),
        sequence: 2,
        closed_at: None,
    };
    assert_eq!(formed.room.room, room, "the match's room");
    assert_eq!(
        state(store, room_id).await,
        room,
        "the match's room as stored"
    );
    let events = vec![
        RoomEvent {
            room_id,
            sequence: 1,
            occurred_at: at(10),
            kind: joined(ben, "Ben", at(10)),
        },
        RoomEvent {
            room_id,
            sequence: 2,
            occurred_at: at(10),
            kind: joined(cat, "Cat", at(10)),
        },
    ];
    assert_eq!(formed.room.events, events, "the room's first events");
    assert_eq!(all_events(store, room_id).await, events);
    for user_id in [ann, ben, cat] {
        assert_eq!(current(store, user_id).await, Some(room_id));
    }

    let seen = Mutex::new(Vec::new());
    let recording = |candidates: &[Ticket]| {
        seen.lock()
            .expect("not poisoned")
            .extend(ids_of(candidates));
        Vec::<PlannedMatch>::new()
    };
    assert!(
        round(store, "trio", at(11), 10, 3, &recording)
            .await
            .is_empty()
    );
    assert_eq!(
        seen.into_inner().expect("not poisoned"),
        Vec::<Uuid>::new(),
        "matched tickets are no candidates"
    );
}

/// Matched users leave their rooms in the round, as a join would take them out: the room left
/// sees `MemberLeft` (reason `Left`), then `OwnerChanged` when its owner left, or `RoomClosed`
/// when it emptied. Two matched users of one room leave it in turn.
pub async fn a_match_moves_its_users_out_of_their_rooms_handing_over_and_closing_them(
    store: &dyn UsersRoomsAndTickets,
) {
    let ann = user(store, "Ann").await;
    let ben = user(store, "Ben").await;
    let xan = user(store, "Xan").await;
    let yul = user(store, "Yul").await;
    let cal = user(store, "Cal").await;
    let shared = create(store, room_spec(ann), at(1)).await.room.id;
    join(store, shared, xan, at(2)).await;
    join(store, shared, yul, at(3)).await;
    let alone = create(store, room_spec(ben), at(4)).await.room.id;
    enqueue_each(store, &[ann, ben, xan, cal], "quad", 5).await;

    let formed = round(store, "quad", at(20), 10, 4, &in_groups_of(4)).await;
    assert_eq!(formed.len(), 1, "one match");
    let change = &formed[0].room;
    let room_id = change.room.id;
    assert_eq!(
        change.left_room, None,
        "a match reports its departures as events"
    );
    let event = |room_id, sequence, kind| RoomEvent {
        room_id,
        sequence,
        occurred_at: at(20),
        kind,
    };
    let expected = [
        (
            shared,
            vec![
                event(shared, 3, left(ann, LeaveReason::Left)),
                event(
                    shared,
                    4,
                    RoomEventKind::OwnerChanged {
                        previous: ann,
                        new: xan,
                    },
                ),
                event(shared, 5, left(xan, LeaveReason::Left)),
                event(
                    shared,
                    6,
                    RoomEventKind::OwnerChanged {
                        previous: xan,
                        new: yul,
                    },
                ),
            ],
        ),
        (
            alone,
            vec![
                event(alone, 1, left(ben, LeaveReason::Left)),
                event(alone, 2, RoomEventKind::RoomClosed),
            ],
        ),
        (
            room_id,
            vec![
                event(room_id, 1, joined(ben, "Ben", at(20))),
                event(room_id, 2, joined(xan, "Xan", at(20))),
                event(room_id, 3, joined(cal, "Cal", at(20))),
            ],
        ),
    ];
    let mut total = 0;
    for (room, events) in &expected {
        let appended: Vec<RoomEvent> = change
            .events
            .iter()
            .filter(|event| event.room_id == *room)
            .cloned()
            .collect();
        assert_eq!(appended, *events, "the round's events in room {room}");
        total += events.len();
    }
    assert_eq!(
        change.events.len(),
        total,
        "no other events: {:?}",
        change.events
    );
    assert_eq!(all_events(store, shared).await[2..], expected[0].1);
    assert_eq!(all_events(store, alone).await, expected[1].1);

    let shared_room = state(store, shared).await;
    assert_eq!(
        (shared_room.owner, member_ids(&shared_room)),
        (yul, vec![yul]),
        "the room left keeps its last member as owner"
    );
    assert_eq!(state(store, alone).await.closed_at, Some(at(20)));
    assert_eq!(member_ids(&change.room), vec![ann, ben, xan, cal]);
    assert_eq!(change.room.owner, ann);
    assert_eq!(current(store, yul).await, Some(shared));
}

/// Groups naming a ticket that is not a candidate, a ticket twice, a ticket an earlier group
/// took, no ticket, or more tickets than the room's capacity are skipped; the others are formed,
/// oldest ticket first whatever the order the planner gave.
pub async fn planned_groups_naming_unknown_repeated_or_taken_tickets_are_skipped(
    store: &dyn UsersRoomsAndTickets,
) {
    let players = users(store, "Player", 7).await;
    let tickets = enqueue_each(store, &players, "duel", 1).await;
    let t = |index: usize| tickets[index];
    let unknown = Uuid::new_v4();
    let plan = move |_: &[Ticket]| -> Vec<PlannedMatch> {
        vec![
            vec![unknown, t(0)],
            vec![t(1), t(1)],
            vec![t(2), t(3)],
            vec![t(3), t(4)],
            Vec::new(),
            vec![t(4), t(5), t(6)],
            vec![t(5), t(0)],
        ]
    };
    let formed = round(store, "duel", at(10), 10, 2, &plan).await;
    let groups: Vec<Vec<Uuid>> = formed
        .iter()
        .map(|formed| ids_of(&formed.tickets))
        .collect();
    assert_eq!(
        groups,
        vec![vec![t(2), t(3)], vec![t(0), t(5)]],
        "only the sound groups are formed, oldest ticket first"
    );
    for formed in &formed {
        let room = state(store, formed.room.room.id).await;
        let users: Vec<Uuid> = formed.tickets.iter().map(|ticket| ticket.user_id).collect();
        assert_eq!(member_ids(&room), users);
    }
    assert_eq!(
        statuses(store, &[t(1), t(4), t(6)]).await,
        vec![TicketStatus::Queued; 3],
        "tickets of skipped groups stay queued"
    );
    for index in [1, 4, 6] {
        assert_eq!(current(store, players[index]).await, None);
    }
}

/// The planner sees the pool's queued tickets that are unexpired at the round's time, whole, oldest
/// first (then by id), at most `limit` of them: not other pools' tickets, not cancelled ones, and
/// not queued ones past their expiry that `expire_tickets` has not reached yet. A plan forming
/// nothing changes nothing.
pub async fn candidates_are_the_pools_oldest_queued_unexpired_tickets_up_to_the_limit(
    store: &dyn UsersRoomsAndTickets,
) {
    let now = at(10);
    let mut made = Vec::new();
    for (name, pool, created, expires_at) in [
        ("Newest", "duel", 5, None),
        ("Oldest", "duel", 1, None),
        ("Tied", "duel", 3, None),
        ("Also tied", "duel", 3, None),
        ("Overdue", "duel", 0, Some(now)),
        ("Cancelled", "duel", 2, None),
        ("Elsewhere", "ranked", 1, None),
    ] {
        let owner = user(store, name).await;
        let base = new_ticket(owner, pool, created);
        let ticket = NewTicket {
            expires_at: expires_at.unwrap_or(base.expires_at),
            ..base
        };
        enqueue(store, ticket.clone()).await;
        made.push(ticket);
    }
    let [
        newest,
        oldest,
        tied,
        also_tied,
        _overdue,
        cancelled,
        _elsewhere,
    ] = made.as_slice()
    else {
        unreachable!("seven tickets");
    };
    accepted(
        "cancel",
        store.cancel(cancelled.id, cancelled.user_id, at(4)).await,
    );
    let (first_tied, second_tied) = if tied.id < also_tied.id {
        (tied, also_tied)
    } else {
        (also_tied, tied)
    };
    let expected: Vec<Ticket> = [oldest, first_tied, second_tied, newest]
        .into_iter()
        .map(queued)
        .collect();

    for (limit, wanted) in [(2, 2), (10, 4)] {
        let seen = Mutex::new(Vec::new());
        let recording = |candidates: &[Ticket]| {
            seen.lock().expect("not poisoned").push(candidates.to_vec());
            Vec::<PlannedMatch>::new()
        };
        let formed = round(store, "duel", now, limit, 2, &recording).await;
        assert!(formed.is_empty(), "a plan forming nothing forms nothing");
        assert_eq!(
            seen.into_inner().expect("not poisoned"),
            vec![expected[..wanted].to_vec()],
            "the candidates of a round with limit {limit}"
        );
    }
    for ticket in &expected {
        assert_eq!(stored(store, ticket.id).await, *ticket, "still queued");
    }
}

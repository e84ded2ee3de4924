//! Conformance cases for the event log: sequence numbers, catching up, and retention.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::{
    UsersAndRooms, all_events, assert_consecutive, at, create_default, join, leave, ok, read,
    state, user,
};
use crate::rooms::{DataUpdate, EventsAfter, RoomChange, RoomEvent};

/// The smallest retention the history cases work with.
const MIN_RETENTION: u64 = 8;

fn retention(store: &dyn UsersAndRooms) -> u64 {
    let retained = store.retained_events();
    assert!(
        retained >= MIN_RETENTION,
        "the room conformance cases need a retention of at least {MIN_RETENTION}, got {retained}"
    );
    retained
}

/// Every event of every change, by room, in the order the changes returned them.
#[derive(Default)]
struct Log {
    by_room: BTreeMap<Uuid, Vec<RoomEvent>>,
}

impl Log {
    /// Records `change`, checking that its room is at its latest event's sequence.
    fn record(&mut self, change: RoomChange) {
        if let Some(last) = change
            .events
            .iter()
            .rev()
            .find(|event| event.room_id == change.room.id)
        {
            assert_eq!(
                change.room.sequence, last.sequence,
                "a change returns its room at the sequence of its latest event"
            );
        }
        for event in change.events {
            self.by_room.entry(event.room_id).or_default().push(event);
        }
    }
}

/// Over a long history mixing every kind of change across two rooms, each room's events are
/// numbered 1, 2, 3, ... with no gap, the room's sequence is its latest, and the stored log is
/// what the changes returned.
pub async fn sequences_start_at_one_and_have_no_gaps_across_a_long_mixed_history(
    store: &dyn UsersAndRooms,
) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let carol = user(store, "Carol").await;
    let dave = user(store, "Dave").await;
    let first = create_default(store, alice, at(0)).await;
    let second = create_default(store, bob, at(0)).await;
    let mut log = Log::default();
    for round in 0..12 {
        let now = at(round * 100);
        log.record(join(store, first, carol, now + 1).await);
        log.record(join(store, first, dave, now + 2).await);
        log.record(join(store, first, dave, now + 3).await); // a no-op
        let update = DataUpdate {
            set: BTreeMap::from([("round".to_owned(), round.to_string())]),
            ..DataUpdate::default()
        };
        log.record(ok(
            "update_room_data",
            store.update_room_data(first, alice, update, now + 4).await,
        ));
        log.record(join(store, second, carol, now + 5).await);
        log.record(ok(
            "kick_member",
            store.kick_member(first, alice, dave, now + 6).await,
        ));
        let invite = DataUpdate {
            invite: BTreeSet::from([dave]),
            ..DataUpdate::default()
        };
        log.record(ok(
            "update_room_data",
            store.update_room_data(first, alice, invite, now + 7).await,
        ));
        log.record(join(store, second, dave, now + 8).await);
        log.record(leave(store, second, carol, now + 9).await);
        log.record(join(store, first, bob, now + 10).await);
        log.record(join(store, second, bob, now + 11).await);
    }
    log.record(leave(store, second, bob, at(9000)).await);
    log.record(leave(store, second, dave, at(9001)).await);

    let retained = retention(store);
    for (room_id, events) in &log.by_room {
        assert_consecutive(events, *room_id, 1);
        let latest = u64::try_from(events.len()).expect("a small count");
        let room = state(store, *room_id).await;
        assert_eq!(
            room.sequence, latest,
            "the room's sequence is its latest event's"
        );
        let from = latest.saturating_sub(retained);
        let stored = read(
            "events_after",
            store.events_after(*room_id, from, u32::MAX).await,
        );
        let expected = &events[usize::try_from(from).expect("a small index")..];
        assert_eq!(
            stored,
            Some(EventsAfter::Events(expected.to_vec())),
            "the retained log of {room_id} is not what the changes returned"
        );
    }
    assert!(
        state(store, second).await.closed_at.is_some(),
        "the second room emptied at the end"
    );
}

/// `events_after(S)` is exactly the events after S (at most the limit), nothing when S is the
/// latest, `Ahead` beyond it, and `None` for an unknown room.
pub async fn events_after_returns_exactly_what_was_missed(store: &dyn UsersAndRooms) {
    retention(store);
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let room_id = create_default(store, alice, at(1)).await;
    for round in 0..3 {
        join(store, room_id, bob, at(2 + round * 2)).await;
        leave(store, room_id, bob, at(3 + round * 2)).await;
    }
    let events = all_events(store, room_id).await;
    assert_eq!(events.len(), 6);
    assert_consecutive(&events, room_id, 1);
    for after in 0..=6 {
        let found = read(
            "events_after",
            store.events_after(room_id, after, u32::MAX).await,
        );
        let missed = events[usize::try_from(after).expect("a small index")..].to_vec();
        assert_eq!(
            found,
            Some(EventsAfter::Events(missed)),
            "events after {after}"
        );
    }
    assert_eq!(
        read("events_after", store.events_after(room_id, 1, 2).await),
        Some(EventsAfter::Events(events[1..3].to_vec())),
        "at most the limit, from the first missed"
    );
    for ahead in [7, 100, u64::MAX] {
        assert_eq!(
            read("events_after", store.events_after(room_id, ahead, 10).await),
            Some(EventsAfter::Ahead { latest: 6 }),
            "events after {ahead}, beyond the latest"
        );
    }
    assert_eq!(
        read(
            "events_after",
            store.events_after(Uuid::new_v4(), 0, 10).await
        ),
        None,
        "an unknown room"
    );
}

/// Only the latest `retained_events` events are kept; asking for events from before them gives
/// a snapshot of the room instead.
pub async fn events_after_a_pruned_sequence_is_a_snapshot(store: &dyn UsersAndRooms) {
    let retained = retention(store);
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let room_id = create_default(store, alice, at(0)).await;
    let mut now = 0;
    while state(store, room_id).await.sequence < retained + 5 {
        now += 2;
        join(store, room_id, bob, at(now)).await;
        leave(store, room_id, bob, at(now + 1)).await;
    }
    let room = state(store, room_id).await;
    let latest = room.sequence;
    let oldest_kept = latest - retained + 1;

    for pruned in [0, 1, oldest_kept - 2] {
        assert_eq!(
            read(
                "events_after",
                store.events_after(room_id, pruned, u32::MAX).await
            ),
            Some(EventsAfter::Snapshot(room.clone())),
            "events after {pruned}: event {} is no longer retained",
            pruned + 1
        );
    }
    match read(
        "events_after",
        store.events_after(room_id, oldest_kept - 1, u32::MAX).await,
    ) {
        Some(EventsAfter::Events(events)) => {
            assert_eq!(
                u64::try_from(events.len()).expect("a small count"),
                retained,
                "exactly the retained events are kept"
            );
            assert_consecutive(&events, room_id, oldest_kept);
        }
        other => panic!("events after {}: got {other:?}", oldest_kept - 1),
    }
    match read(
        "events_after",
        store.events_after(room_id, oldest_kept - 1, 3).await,
    ) {
        Some(EventsAfter::Events(events)) => {
            assert_eq!(
                events.len(),
                3,
                "a page of retained events is at most the limit"
            );
            assert_consecutive(&events, room_id, oldest_kept);
        }
        other => panic!("a page of retained events: got {other:?}"),
    }
}

/// However large its events, a room keeps at most `retained_event_bytes` of them: after data
/// changes of 64 values of 4000 bytes each, only as many are retained as fit, the latest always,
/// and asking for the older ones gives a snapshot.
pub async fn large_events_are_retained_within_the_byte_budget(store: &dyn UsersAndRooms) {
    const VALUE_BYTES: usize = 4000;
    const KEYS: usize = 64;
    let budget = store.retained_event_bytes();
    let per_event = u64::try_from(VALUE_BYTES * KEYS).expect("small");
    let fitting = budget / per_event;
    let alice = user(store, "Alice").await;
    let room_id = create_default(store, alice, at(0)).await;
    for round in 0..fitting + 3 {
        let fill = char::from(b'a' + u8::try_from(round % 26).expect("small"));
        let update = DataUpdate {
            set: (0..KEYS)
                .map(|key| (format!("key{key}"), fill.to_string().repeat(VALUE_BYTES)))
                .collect(),
            ..DataUpdate::default()
        };
        ok(
            "update_room_data",
            store
                .update_room_data(
                    room_id,
                    alice,
                    update,
                    at(1 + i64::try_from(round).expect("small")),
                )
                .await,
        );
    }
    let room = state(store, room_id).await;
    let latest = room.sequence;
    let mut retained = 0;
    for after in (0..latest).rev() {
        match read(
            "events_after",
            store.events_after(room_id, after, u32::MAX).await,
        ) {
            Some(EventsAfter::Events(events)) => {
                retained = events.len();
                assert_consecutive(&events, room_id, after + 1);
            }
            Some(EventsAfter::Snapshot(snapshot)) => {
                assert_eq!(snapshot, room, "the snapshot is the room now");
                break;
            }
            other => panic!("events after {after}: {other:?}"),
        }
    }
    let retained = u64::try_from(retained).expect("small");
    assert!(retained >= 1, "the latest event is always retained");
    assert!(
        retained * per_event <= budget,
        "{retained} events of at least {per_event} bytes are kept within {budget} bytes"
    );
}

/// A room that closes keeps no data and only its latest events within
/// `CLOSED_ROOM_EVENT_BYTES`, its closing ones always; asking for older ones gives a snapshot.
pub async fn a_closing_room_keeps_only_its_latest_small_events(store: &dyn UsersAndRooms) {
    let alice = user(store, "Alice").await;
    let room_id = create_default(store, alice, at(0)).await;
    for round in 0..3 {
        let update = DataUpdate {
            set: (0..64)
                .map(|key| (format!("key{key}"), "v".repeat(400)))
                .collect(),
            ..DataUpdate::default()
        };
        ok(
            "update_room_data",
            store
                .update_room_data(room_id, alice, update, at(1 + round))
                .await,
        );
    }
    let closing = leave(store, room_id, alice, at(10)).await;
    let closed = state(store, room_id).await;
    assert!(closed.closed_at.is_some() && closed.data.is_empty());
    let first_closing = closing.events[0].sequence;
    assert_eq!(
        read(
            "events_after",
            store.events_after(room_id, first_closing - 1, 10).await
        ),
        Some(EventsAfter::Events(closing.events.clone())),
        "the closing events stay"
    );
    assert_eq!(
        read("events_after", store.events_after(room_id, 0, 10).await),
        Some(EventsAfter::Snapshot(closed)),
        "the large data changes before them are gone"
    );
}

//! The room changes, each run inside one `BEGIN IMMEDIATE` transaction by its caller: decide from
//! what the transaction reads, write, append the events with the room's next sequence numbers,
//! and prune the events past the retention.
//!
//! Holding SQLite's single write lock from the first read on is what makes the decisions safe
//! (capacity, one room per user, ownership hand-over): no other change runs in between.

use std::collections::{BTreeMap, BTreeSet};

use rally_store::rooms::{
    DataUpdate, JoinPolicy, LeaveReason, Member, NewRoom, Room, RoomChange, RoomError, RoomEvent,
    RoomEventKind,
};
use rally_store::{StoreError, UnixMillis};
use sqlx::SqliteConnection;
use uuid::Uuid;

use super::codec::{self, id_text};
use super::data_change::data_change;
use super::reads::{RoomRow, corrupt, current_room_id, load_room, room_row, unsigned};
use crate::error_mapping::map_error;

/// When a change happens and how many events per room to keep.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(super) now: UnixMillis,
    pub(super) retained_events: u64,
    pub(super) retained_event_bytes: u64,
}

pub(super) async fn create_room(
    conn: &mut SqliteConnection,
    room: NewRoom,
    clock: Clock,
) -> Result<RoomChange, RoomError> {
    let id = id_text(room.id);
    let owner = id_text(room.owner);
    let display_name = display_name(conn, &owner)
        .await?
        .ok_or(RoomError::UserNotFound)?;
    let (events, left_room) = leave_current_room(conn, &owner, clock).await?;

    sqlx::query(
        "INSERT INTO rooms (id, owner, capacity, visibility, join_policy, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(&id)
    .bind(&owner)
    .bind(i64::from(room.capacity))
    .bind(codec::visibility_text(room.visibility))
    .bind(codec::join_policy_text(room.join_policy))
    .bind(clock.now)
    .execute(&mut *conn)
    .await
    .map_err(map_error)?;
    insert_member(conn, &id, &owner, &display_name, clock.now, 0).await?;
    for (key, value) in &room.data {
        set_data(conn, &id, key, value).await?;
    }
    for user in &room.invited {
        invite(conn, &id, *user).await?;
    }
    Ok(RoomChange {
        room: whole_room(conn, &id).await?,
        events,
        left_room,
    })
}

pub(super) async fn join_room(
    conn: &mut SqliteConnection,
    room_id: Uuid,
    user: Uuid,
    clock: Clock,
) -> Result<RoomChange, RoomError> {
    let id = id_text(room_id);
    let user_text = id_text(user);
    let room = open_room(conn, &id).await?;
    let display_name = display_name(conn, &user_text)
        .await?
        .ok_or(RoomError::UserNotFound)?;
    if current_room_id(conn, &user_text).await?.as_deref() == Some(id.as_str()) {
        return Ok(unchanged(whole_room(conn, &id).await?));
    }
    if listed(conn, Listing::Bans, &id, &user_text).await? {
        return Err(RoomError::Banned);
    }
    let policy = codec::parse_join_policy(&room.join_policy).map_err(corrupt)?;
    if policy == JoinPolicy::InviteOnly && !listed(conn, Listing::Invites, &id, &user_text).await? {
        return Err(RoomError::NotInvited);
    }
    if member_count(conn, &id).await? >= room.capacity {
        return Err(RoomError::Full);
    }

    let (mut events, left_room) = leave_current_room(conn, &user_text, clock).await?;
    let joined = RoomEventKind::MemberJoined(Member {
        user_id: user,
        display_name: display_name.clone(),
        joined_at: clock.now,
    });
    let joined = append_events(conn, room_id, vec![joined], clock).await?;
    // Longest-present first: a member joined later has a later MemberJoined.
    let join_order = joined.last().map_or(0, |event| event.sequence);
    let join_order = i64::try_from(join_order).map_err(corrupt)?;
    insert_member(conn, &id, &user_text, &display_name, clock.now, join_order).await?;
    events.extend(joined);
    Ok(RoomChange {
        room: whole_room(conn, &id).await?,
        events,
        left_room,
    })
}

pub(super) async fn leave_room(
    conn: &mut SqliteConnection,
    room_id: Uuid,
    user: Uuid,
    reason: LeaveReason,
    clock: Clock,
) -> Result<RoomChange, RoomError> {
    let id = id_text(room_id);
    let user_text = id_text(user);
    let room = open_room(conn, &id).await?;
    if !is_member(conn, &id, &user_text).await? {
        return Err(RoomError::NotMember);
    }
    let departure = remove_member(conn, &room, &user_text, reason, clock.now).await?;
    let events = append_events(conn, room_id, departure, clock).await?;
    Ok(RoomChange {
        room: whole_room(conn, &id).await?,
        events,
        left_room: None,
    })
}

pub(super) async fn kick_member(
    conn: &mut SqliteConnection,
    room_id: Uuid,
    by: Uuid,
    target: Uuid,
    clock: Clock,
) -> Result<RoomChange, RoomError> {
    let id = id_text(room_id);
    let target_text = id_text(target);
    let room = open_room(conn, &id).await?;
    if room.owner != id_text(by) {
        return Err(RoomError::NotOwner);
    }
    if by == target {
        return Err(RoomError::KickSelf);
    }
    if !is_member(conn, &id, &target_text).await? {
        return Err(RoomError::TargetNotMember);
    }
    let mut kinds =
        remove_member(conn, &room, &target_text, LeaveReason::Kicked, clock.now).await?;
    sqlx::query("INSERT INTO room_bans (room_id, user_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
        .bind(&id)
        .bind(&target_text)
        .execute(&mut *conn)
        .await
        .map_err(map_error)?;
    if uninvite(conn, &id, target).await? {
        kinds.push(RoomEventKind::DataChanged {
            set: BTreeMap::new(),
            deleted: BTreeSet::new(),
            invited: BTreeSet::new(),
            uninvited: BTreeSet::from([target]),
        });
    }
    let events = append_events(conn, room_id, kinds, clock).await?;
    Ok(RoomChange {
        room: whole_room(conn, &id).await?,
        events,
        left_room: None,
    })
}

pub(super) async fn update_room_data(
    conn: &mut SqliteConnection,
    room_id: Uuid,
    by: Uuid,
    update: DataUpdate,
    clock: Clock,
) -> Result<RoomChange, RoomError> {
    let id = id_text(room_id);
    let room = open_room(conn, &id).await?;
    if room.owner != id_text(by) {
        return Err(RoomError::NotOwner);
    }
    let before = whole_room(conn, &id).await?;
    let Some(change) = data_change(&before, &update)? else {
        return Ok(unchanged(before));
    };
    for (key, value) in &change.set {
        set_data(conn, &id, key, value).await?;
    }
    for key in &change.deleted {
        sqlx::query("DELETE FROM room_data WHERE room_id = ?1 AND key = ?2")
            .bind(&id)
            .bind(key)
            .execute(&mut *conn)
            .await
            .map_err(map_error)?;
    }
    for user in &change.invited {
        invite(conn, &id, *user).await?;
    }
    for user in &change.uninvited {
        uninvite(conn, &id, *user).await?;
    }
    let events = append_events(conn, room_id, vec![change.into_event()], clock).await?;
    Ok(RoomChange {
        room: whole_room(conn, &id).await?,
        events,
        left_room: None,
    })
}

/// A change that changed nothing.
fn unchanged(room: Room) -> RoomChange {
    RoomChange {
        room,
        events: Vec::new(),
        left_room: None,
    }
}

/// The room `room_id` if it exists and is open; a closed room is as good as none.
async fn open_room(conn: &mut SqliteConnection, room_id: &str) -> Result<RoomRow, RoomError> {
    match room_row(conn, room_id).await? {
        Some(room) if room.closed_at.is_none() => Ok(room),
        _ => Err(RoomError::NotFound),
    }
}

/// The room `room_id`, whole, which the transaction knows exists.
async fn whole_room(conn: &mut SqliteConnection, room_id: &str) -> Result<Room, StoreError> {
    load_room(conn, room_id)
        .await?
        .ok_or_else(|| corrupt("a room vanished within its transaction"))
}

/// Takes `user` out of its current room, if any (reason `Left`): the events and the room left.
async fn leave_current_room(
    conn: &mut SqliteConnection,
    user: &str,
    clock: Clock,
) -> Result<(Vec<RoomEvent>, Option<Uuid>), StoreError> {
    let Some(current) = current_room_id(conn, user).await? else {
        return Ok((Vec::new(), None));
    };
    let room = room_row(conn, &current)
        .await?
        .ok_or_else(|| corrupt("a member's room does not exist"))?;
    let current_id = codec::parse_id(&current).map_err(corrupt)?;
    let departure = remove_member(conn, &room, user, LeaveReason::Left, clock.now).await?;
    let events = append_events(conn, current_id, departure, clock).await?;
    Ok((events, Some(current_id)))
}

/// Deletes `user`'s membership of `room`, then hands ownership on or closes the room as needed;
/// returns the events to append (`MemberLeft`, then `OwnerChanged` or `RoomClosed`).
async fn remove_member(
    conn: &mut SqliteConnection,
    room: &RoomRow,
    user: &str,
    reason: LeaveReason,
    now: UnixMillis,
) -> Result<Vec<RoomEventKind>, StoreError> {
    sqlx::query("DELETE FROM room_members WHERE room_id = ?1 AND user_id = ?2")
        .bind(&room.id)
        .bind(user)
        .execute(&mut *conn)
        .await
        .map_err(map_error)?;
    let user_id = codec::parse_id(user).map_err(corrupt)?;
    let mut kinds = vec![RoomEventKind::MemberLeft { user_id, reason }];
    let longest_present = sqlx::query_scalar::<_, String>(
        "SELECT user_id FROM room_members WHERE room_id = ?1 ORDER BY join_order LIMIT 1",
    )
    .bind(&room.id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_error)?;
    match longest_present {
        None => {
            sqlx::query("UPDATE rooms SET closed_at = ?1 WHERE id = ?2")
                .bind(now)
                .bind(&room.id)
                .execute(&mut *conn)
                .await
                .map_err(map_error)?;
            // A closed room keeps no data (and, see `append_events`, only its closing events):
            // what a user's churn of rooms leaves behind for the history retention is small.
            sqlx::query("DELETE FROM room_data WHERE room_id = ?1")
                .bind(&room.id)
                .execute(&mut *conn)
                .await
                .map_err(map_error)?;
            kinds.push(RoomEventKind::RoomClosed);
        }
        Some(next) if room.owner == user => {
            sqlx::query("UPDATE rooms SET owner = ?1 WHERE id = ?2")
                .bind(&next)
                .bind(&room.id)
                .execute(&mut *conn)
                .await
                .map_err(map_error)?;
            kinds.push(RoomEventKind::OwnerChanged {
                previous: user_id,
                new: codec::parse_id(&next).map_err(corrupt)?,
            });
        }
        Some(_) => {}
    }
    Ok(kinds)
}

/// Appends `kinds` to the room's log with its next sequence numbers, and deletes the events that
/// fall out of the retention.
async fn append_events(
    conn: &mut SqliteConnection,
    room_id: Uuid,
    kinds: Vec<RoomEventKind>,
    clock: Clock,
) -> Result<Vec<RoomEvent>, StoreError> {
    let id = id_text(room_id);
    let count = i64::try_from(kinds.len()).map_err(corrupt)?;
    let closing = kinds
        .iter()
        .any(|kind| matches!(kind, RoomEventKind::RoomClosed));
    let encoded = kinds
        .iter()
        .map(codec::encode_event)
        .collect::<Result<Vec<_>, _>>()
        .map_err(corrupt)?;
    let added: i64 = encoded
        .iter()
        .map(|(_, payload)| i64::try_from(payload.len()).unwrap_or(i64::MAX))
        .fold(0, i64::saturating_add);
    let (latest, mut stored_bytes) = sqlx::query_as::<_, (i64, i64)>(
        "UPDATE rooms SET sequence = sequence + ?1, event_bytes = event_bytes + ?2 \
         WHERE id = ?3 RETURNING sequence, event_bytes",
    )
    .bind(count)
    .bind(added)
    .bind(&id)
    .fetch_one(&mut *conn)
    .await
    .map_err(map_error)?;
    let mut events = Vec::with_capacity(kinds.len());
    for ((sequence, kind), (kind_text, payload)) in (latest - count + 1..).zip(kinds).zip(encoded) {
        sqlx::query(
            "INSERT INTO room_events (room_id, sequence, occurred_at, kind, payload) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&id)
        .bind(sequence)
        .bind(clock.now)
        .bind(kind_text)
        .bind(payload)
        .execute(&mut *conn)
        .await
        .map_err(map_error)?;
        events.push(RoomEvent {
            room_id,
            sequence: unsigned(sequence)?,
            occurred_at: clock.now,
            kind,
        });
    }
    // The retention: the latest `retained_events`, and of those no more than
    // `retained_event_bytes` of payload (the oldest go first).
    let retained = i64::try_from(clock.retained_events).unwrap_or(i64::MAX);
    let oldest_kept = latest.saturating_sub(retained);
    let mut freed: i64 = 0;
    if oldest_kept > 0 {
        let bytes: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM room_events WHERE room_id = ?1 AND sequence <= ?2 \
             RETURNING length(CAST(payload AS BLOB))",
        )
        .bind(&id)
        .bind(oldest_kept)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_error)?;
        freed = bytes.into_iter().fold(freed, i64::saturating_add);
    }
    // A room that closes keeps only its latest few events (its membership's last changes,
    // rarely its data's), so what a user's churn of rooms leaves for the history retention is
    // small.
    let budget = match closing {
        true => i64::try_from(rally_store::rooms::CLOSED_ROOM_EVENT_BYTES).unwrap_or(i64::MAX),
        false => i64::try_from(clock.retained_event_bytes).unwrap_or(i64::MAX),
    };
    stored_bytes = stored_bytes.saturating_sub(freed);
    while stored_bytes > budget {
        let oldest: Option<i64> = sqlx::query_scalar(
            "DELETE FROM room_events WHERE room_id = ?1 AND sequence = \
             (SELECT min(sequence) FROM room_events WHERE room_id = ?1) \
             AND sequence <= ?2 \
             RETURNING length(CAST(payload AS BLOB))",
        )
        .bind(&id)
        .bind(latest - count)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_error)?;
        let Some(bytes) = oldest else {
            // Only this change's events are left: they stay, however large.
            break;
        };
        freed = freed.saturating_add(bytes);
        stored_bytes = stored_bytes.saturating_sub(bytes);
    }
    if freed > 0 {
        sqlx::query("UPDATE rooms SET event_bytes = event_bytes - ?1 WHERE id = ?2")
            .bind(freed)
            .bind(&id)
            .execute(&mut *conn)
            .await
            .map_err(map_error)?;
    }
    Ok(events)
}

async fn display_name(
    conn: &mut SqliteConnection,
    user: &str,
) -> Result<Option<String>, StoreError> {
    sqlx::query_scalar::<_, String>("SELECT display_name FROM users WHERE id = ?1")
        .bind(user)
        .fetch_optional(conn)
        .await
        .map_err(map_error)
}

async fn insert_member(
    conn: &mut SqliteConnection,
    room_id: &str,
    user: &str,
    display_name: &str,
    joined_at: UnixMillis,
    join_order: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO room_members (room_id, user_id, display_name, joined_at, join_order) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .bind(room_id)
    .bind(user)
    .bind(display_name)
    .bind(joined_at)
    .bind(join_order)
    .execute(conn)
    .await
    .map_err(map_error)?;
    Ok(())
}

async fn is_member(
    conn: &mut SqliteConnection,
    room_id: &str,
    user: &str,
) -> Result<bool, StoreError> {
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM room_members WHERE room_id = ?1 AND user_id = ?2)",
    )
    .bind(room_id)
    .bind(user)
    .fetch_one(conn)
    .await
    .map_err(map_error)
}

async fn member_count(conn: &mut SqliteConnection, room_id: &str) -> Result<i64, StoreError> {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM room_members WHERE room_id = ?1")
        .bind(room_id)
        .fetch_one(conn)
        .await
        .map_err(map_error)
}

/// A per-room list of users.
#[derive(Debug, Clone, Copy)]
enum Listing {
    Invites,
    Bans,
}

async fn listed(
    conn: &mut SqliteConnection,
    listing: Listing,
    room_id: &str,
    user: &str,
) -> Result<bool, StoreError> {
    let sql = match listing {
        Listing::Invites => {
            "SELECT EXISTS (SELECT 1 FROM room_invites WHERE room_id = ?1 AND user_id = ?2)"
        }
        Listing::Bans => {
            "SELECT EXISTS (SELECT 1 FROM room_bans WHERE room_id = ?1 AND user_id = ?2)"
        }
    };
    sqlx::query_scalar::<_, bool>(sql)
        .bind(room_id)
        .bind(user)
        .fetch_one(conn)
        .await
        .map_err(map_error)
}

async fn set_data(
    conn: &mut SqliteConnection,
    room_id: &str,
    key: &str,
    value: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO room_data (room_id, key, value) VALUES (?1, ?2, ?3) \
         ON CONFLICT (room_id, key) DO UPDATE SET value = excluded.value",
    )
    .bind(room_id)
    .bind(key)
    .bind(value)
    .execute(conn)
    .await
    .map_err(map_error)?;
    Ok(())
}

/// Invites `user`, which also lifts its kick ban.
async fn invite(conn: &mut SqliteConnection, room_id: &str, user: Uuid) -> Result<(), StoreError> {
    let user = id_text(user);
    sqlx::query(
        "INSERT INTO room_invites (room_id, user_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
    )
    .bind(room_id)
    .bind(&user)
    .execute(&mut *conn)
    .await
    .map_err(map_error)?;
    sqlx::query("DELETE FROM room_bans WHERE room_id = ?1 AND user_id = ?2")
        .bind(room_id)
        .bind(&user)
        .execute(conn)
        .await
        .map_err(map_error)?;
    Ok(())
}

/// Withdraws `user`'s invitation; whether it had one.
async fn uninvite(
    conn: &mut SqliteConnection,
    room_id: &str,
    user: Uuid,
) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM room_invites WHERE room_id = ?1 AND user_id = ?2")
        .bind(room_id)
        .bind(id_text(user))
        .execute(conn)
        .await
        .map_err(map_error)?;
    Ok(done.rows_affected() > 0)
}

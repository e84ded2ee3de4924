//! Reading rooms and their events: whole rooms (members, data, invitations) for a list of ids in
//! a handful of queries, a user's room, the ListRooms query and the event log.

use std::collections::HashMap;

use rally_store::StoreError;
use rally_store::rooms::{EventsAfter, Member, Room, RoomCensus, RoomEvent, RoomQuery};
use sqlx::{PgConnection, Postgres, QueryBuilder};

use super::codec::{self, PUBLIC};
use crate::error_mapping::map_error;

/// A `rooms` row.
#[derive(sqlx::FromRow)]
pub(super) struct RoomRow {
    pub(super) id: String,
    pub(super) owner: String,
    pub(super) capacity: i64,
    pub(super) visibility: String,
    pub(super) join_policy: String,
    pub(super) created_at: i64,
    pub(super) sequence: i64,
    pub(super) closed_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct MemberRow {
    room_id: String,
    user_id: String,
    display_name: String,
    joined_at: i64,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    room_id: String,
    sequence: i64,
    occurred_at: i64,
    kind: String,
    payload: String,
}

const ROOM_COLUMNS: &str =
    "id, owner, capacity, visibility, join_policy, created_at, sequence, closed_at";

/// A value read from the database that does not fit its type: a broken schema.
pub(crate) fn corrupt(error: impl Into<sqlx::error::BoxDynError>) -> StoreError {
    map_error(sqlx::Error::Decode(error.into()))
}

/// A stored non-negative number as the trait's unsigned type.
pub(super) fn unsigned<T: TryFrom<i64>>(value: i64) -> Result<T, StoreError> {
    T::try_from(value).map_err(|_| corrupt(format!("{value} is out of range")))
}

impl RoomRow {
    fn into_room(self) -> Result<Room, StoreError> {
        Ok(Room {
            id: codec::parse_id(&self.id).map_err(corrupt)?,
            owner: codec::parse_id(&self.owner).map_err(corrupt)?,
            members: Vec::new(),
            capacity: unsigned(self.capacity)?,
            visibility: codec::parse_visibility(&self.visibility).map_err(corrupt)?,
            join_policy: codec::parse_join_policy(&self.join_policy).map_err(corrupt)?,
            data: Default::default(),
            invited: Default::default(),
            created_at: self.created_at,
            sequence: unsigned(self.sequence)?,
            closed_at: self.closed_at,
        })
    }
}

impl EventRow {
    fn into_event(self) -> Result<RoomEvent, StoreError> {
        Ok(RoomEvent {
            room_id: codec::parse_id(&self.room_id).map_err(corrupt)?,
            sequence: unsigned(self.sequence)?,
            occurred_at: self.occurred_at,
            kind: codec::decode_event(&self.kind, &self.payload).map_err(corrupt)?,
        })
    }
}

/// The `rooms` row of `room_id`, open or closed.
pub(super) async fn room_row(
    conn: &mut PgConnection,
    room_id: &str,
) -> Result<Option<RoomRow>, StoreError> {
    sqlx::query_as::<_, RoomRow>(&format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE id = $1"))
        .bind(room_id)
        .fetch_optional(conn)
        .await
        .map_err(map_error)
}

/// The id of the room `user_id` is in.
pub(super) async fn current_room_id(
    conn: &mut PgConnection,
    user_id: &str,
) -> Result<Option<String>, StoreError> {
    sqlx::query_scalar::<_, String>("SELECT room_id FROM room_members WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(conn)
        .await
        .map_err(map_error)
}

/// How many rooms are open and how many members they have.
pub(super) async fn census(conn: &mut PgConnection) -> Result<RoomCensus, StoreError> {
    let (open_rooms, members) = sqlx::query_as::<_, (i64, i64)>(
        "SELECT (SELECT count(*) FROM rooms WHERE closed_at IS NULL), \
                (SELECT count(*) FROM room_members)",
    )
    .fetch_one(conn)
    .await
    .map_err(map_error)?;
    Ok(RoomCensus {
        open_rooms: u64::try_from(open_rooms).unwrap_or_default(),
        members: u64::try_from(members).unwrap_or_default(),
    })
}

/// One room, whole.
pub(super) async fn load_room(
    conn: &mut PgConnection,
    room_id: &str,
) -> Result<Option<Room>, StoreError> {
    let mut rooms = load_rooms(conn, &[room_id.to_owned()]).await?;
    Ok(rooms.pop())
}

/// The rooms of `ids` that exist, whole, in the order of `ids`.
pub(super) async fn load_rooms(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<Room>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = QueryBuilder::new(format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE id IN "));
    push_id_list(&mut query, ids);
    let rows: Vec<RoomRow> = query
        .build_query_as()
        .fetch_all(&mut *conn)
        .await
        .map_err(map_error)?;
    let mut rooms = HashMap::with_capacity(rows.len());
    for row in rows {
        rooms.insert(row.id.clone(), row.into_room()?);
    }

    let mut query = QueryBuilder::new(
        "SELECT room_id, user_id, display_name, joined_at FROM room_members WHERE room_id IN ",
    );
    push_id_list(&mut query, ids);
    query.push(" ORDER BY join_order");
    let members: Vec<MemberRow> = query
        .build_query_as()
        .fetch_all(&mut *conn)
        .await
        .map_err(map_error)?;
    for member in members {
        if let Some(room) = rooms.get_mut(&member.room_id) {
            room.members.push(Member {
                user_id: codec::parse_id(&member.user_id).map_err(corrupt)?,
                display_name: member.display_name,
                joined_at: member.joined_at,
            });
        }
    }

    let mut query =
        QueryBuilder::new("SELECT room_id, key, value FROM room_data WHERE room_id IN ");
    push_id_list(&mut query, ids);
    let data: Vec<(String, String, String)> = query
        .build_query_as()
        .fetch_all(&mut *conn)
        .await
        .map_err(map_error)?;
    for (room_id, key, value) in data {
        if let Some(room) = rooms.get_mut(&room_id) {
            room.data.insert(key, value);
        }
    }

    let mut query =
        QueryBuilder::new("SELECT room_id, user_id FROM room_invites WHERE room_id IN ");
    push_id_list(&mut query, ids);
    let invites: Vec<(String, String)> = query
        .build_query_as()
        .fetch_all(&mut *conn)
        .await
        .map_err(map_error)?;
    for (room_id, user_id) in invites {
        if let Some(room) = rooms.get_mut(&room_id) {
            room.invited
                .insert(codec::parse_id(&user_id).map_err(corrupt)?);
        }
    }

    Ok(ids.iter().filter_map(|id| rooms.remove(id)).collect())
}

/// Appends `(?, ?, ...)` binding `ids`.
fn push_id_list<'a>(query: &mut QueryBuilder<'a, Postgres>, ids: &'a [String]) {
    query.push("(");
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(id.as_str());
    }
    list.push_unseparated(")");
}

/// The ids of the open public rooms matching `query`, newest first, then by id descending.
pub(super) async fn listed_room_ids(
    conn: &mut PgConnection,
    query: &RoomQuery,
) -> Result<Vec<String>, StoreError> {
    // Named literally (not bound) so that the planner can use the `rooms_listed` partial index.
    let mut sql = QueryBuilder::<Postgres>::new(format!(
        "SELECT r.id FROM rooms r WHERE r.closed_at IS NULL AND r.visibility = '{PUBLIC}'"
    ));
    if let Some(after) = &query.after {
        sql.push(" AND (r.created_at, r.id) < (")
            .push_bind(after.created_at)
            .push(", ")
            .push_bind(codec::id_text(after.id))
            .push(")");
    }
    for (key, value) in &query.data_equals {
        sql.push(" AND EXISTS (SELECT 1 FROM room_data d WHERE d.room_id = r.id AND d.key = ")
            .push_bind(key.as_str())
            .push(" AND d.value = ")
            .push_bind(value.as_str())
            .push(")");
    }
    if query.min_free_seats > 0 {
        sql.push(
            " AND r.capacity - (SELECT count(*) FROM room_members m WHERE m.room_id = r.id) >= ",
        )
        .push_bind(i64::from(query.min_free_seats));
    }
    sql.push(" ORDER BY r.created_at DESC, r.id DESC LIMIT ")
        .push_bind(i64::from(query.limit));
    sql.build_query_scalar()
        .fetch_all(conn)
        .await
        .map_err(map_error)
}

/// What a watcher that saw the room up to sequence `after` reads next; `None` for no such room.
pub(super) async fn events_after_in(
    conn: &mut PgConnection,
    room_id: &str,
    after: u64,
    limit: u32,
) -> Result<Option<EventsAfter>, StoreError> {
    let Some(row) = room_row(&mut *conn, room_id).await? else {
        return Ok(None);
    };
    let latest: u64 = unsigned(row.sequence)?;
    let after_stored = match i64::try_from(after) {
        Ok(after_stored) if after <= latest => after_stored,
        _ => return Ok(Some(EventsAfter::Ahead { latest })),
    };
    if after == latest {
        return Ok(Some(EventsAfter::Events(Vec::new())));
    }
    // At least one, to tell a pruned start from an empty page.
    let fetch = i64::from(limit.max(1));
    let rows = sqlx::query_as::<_, EventRow>(
        "SELECT room_id, sequence, occurred_at, kind, payload FROM room_events \
         WHERE room_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
    )
    .bind(room_id)
    .bind(after_stored)
    .bind(fetch)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_error)?;
    if rows.first().map(|first| first.sequence) != Some(after_stored + 1) {
        let room = load_room(conn, room_id)
            .await?
            .ok_or_else(|| corrupt("the room vanished within its transaction"))?;
        return Ok(Some(EventsAfter::Snapshot(room)));
    }
    let mut events = rows
        .into_iter()
        .map(EventRow::into_event)
        .collect::<Result<Vec<_>, _>>()?;
    events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(Some(EventsAfter::Events(events)))
}

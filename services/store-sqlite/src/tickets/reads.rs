//! Reading tickets whole: their rows, their attributes and, for matched ones, their match's users
//! (the users of the tickets naming the match's room, oldest ticket first), in a handful of
//! queries for any number of tickets.

use std::collections::{BTreeMap, HashMap};

use rally_store::matchmaking::{MatchRecord, Ticket, TicketStatus};
use rally_store::{StoreError, UnixMillis};
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, QueryBuilder, SqliteConnection};
use uuid::Uuid;

use super::codec::{self, QUEUED};
use crate::error_mapping::map_error;
use crate::rooms::{corrupt, parse_id};

/// A `tickets` row.
#[derive(sqlx::FromRow)]
pub(super) struct TicketRow {
    pub(super) id: String,
    pub(super) user_id: String,
    pub(super) pool: String,
    pub(super) status: String,
    pub(super) created_at: i64,
    pub(super) expires_at: i64,
    pub(super) room_id: Option<String>,
    pub(super) matched_at: Option<i64>,
}

/// The columns of a [`TicketRow`], for `SELECT` and `RETURNING`.
pub(super) const TICKET_COLUMNS: &str =
    "id, user_id, pool, status, created_at, expires_at, room_id, matched_at";

/// Most ids bound in one `IN (...)` list (SQLite allows 32766 bound values per statement).
const IDS_PER_QUERY: usize = 500;

/// The `tickets` row of `ticket_id`.
pub(super) async fn ticket_row(
    conn: &mut SqliteConnection,
    ticket_id: &str,
) -> Result<Option<TicketRow>, StoreError> {
    sqlx::query_as::<_, TicketRow>(&format!(
        "SELECT {TICKET_COLUMNS} FROM tickets WHERE id = ?1"
    ))
    .bind(ticket_id)
    .fetch_optional(conn)
    .await
    .map_err(map_error)
}

/// Up to `limit` of `pool`'s queued tickets unexpired at `now`, whole, oldest first (then by id).
pub(super) async fn candidates(
    conn: &mut SqliteConnection,
    pool: &str,
    now: UnixMillis,
    limit: u32,
) -> Result<Vec<Ticket>, StoreError> {
    // The status is named literally so that the planner can use the `tickets_waiting` index.
    let rows = sqlx::query_as::<_, TicketRow>(&format!(
        "SELECT {TICKET_COLUMNS} FROM tickets \
         WHERE pool = ?1 AND status = '{QUEUED}' AND expires_at > ?2 \
         ORDER BY created_at, id LIMIT ?3"
    ))
    .bind(pool)
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await
    .map_err(map_error)?;
    whole_tickets(conn, rows).await
}

/// The tickets of `rows`, whole, in the order of `rows`.
pub(super) async fn whole_tickets(
    conn: &mut SqliteConnection,
    rows: Vec<TicketRow>,
) -> Result<Vec<Ticket>, StoreError> {
    let ids: Vec<String> = rows.iter().map(|row| row.id.clone()).collect();
    let mut numeric: HashMap<String, BTreeMap<String, f64>> = HashMap::new();
    let select = "SELECT ticket_id, name, value FROM ticket_numeric_attributes WHERE ticket_id IN ";
    for (ticket_id, name, value) in
        rows_for::<(String, String, f64)>(conn, select, &ids, "").await?
    {
        numeric.entry(ticket_id).or_default().insert(name, value);
    }
    let mut strings: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    let select = "SELECT ticket_id, name, value FROM ticket_string_attributes WHERE ticket_id IN ";
    for (ticket_id, name, value) in
        rows_for::<(String, String, String)>(conn, select, &ids, "").await?
    {
        strings.entry(ticket_id).or_default().insert(name, value);
    }
    let mut rooms: Vec<String> = rows.iter().filter_map(|row| row.room_id.clone()).collect();
    rooms.sort_unstable();
    rooms.dedup();
    let mut match_users: HashMap<String, Vec<Uuid>> = HashMap::new();
    let select = "SELECT room_id, user_id FROM tickets WHERE room_id IN ";
    let order = " ORDER BY created_at, id";
    for (room_id, user_id) in rows_for::<(String, String)>(conn, select, &rooms, order).await? {
        let user_id = parse_id(&user_id).map_err(corrupt)?;
        match_users.entry(room_id).or_default().push(user_id);
    }

    rows.into_iter()
        .map(|row| {
            let users = row
                .room_id
                .as_ref()
                .and_then(|room_id| match_users.get(room_id.as_str()).cloned());
            let numeric = numeric.remove(&row.id).unwrap_or_default();
            let strings = strings.remove(&row.id).unwrap_or_default();
            row.into_ticket(numeric, strings, users)
        })
        .collect()
}

/// The rows `select` (ending in `... IN `) finds for `ids`, a bounded number of ids per query,
/// each query ending in `order`.
async fn rows_for<O>(
    conn: &mut SqliteConnection,
    select: &str,
    ids: &[String],
    order: &str,
) -> Result<Vec<O>, StoreError>
where
    O: for<'r> FromRow<'r, SqliteRow> + Send + Unpin,
{
    let mut found = Vec::new();
    for chunk in ids.chunks(IDS_PER_QUERY) {
        let mut query = QueryBuilder::new(select);
        query.push("(");
        let mut list = query.separated(", ");
        for id in chunk {
            list.push_bind(id.as_str());
        }
        list.push_unseparated(")");
        query.push(order);
        let rows: Vec<O> = query
            .build_query_as()
            .fetch_all(&mut *conn)
            .await
            .map_err(map_error)?;
        found.extend(rows);
    }
    Ok(found)
}

impl TicketRow {
    /// The ticket, given its attributes and, when matched, its match's users.
    fn into_ticket(
        self,
        numeric: BTreeMap<String, f64>,
        strings: BTreeMap<String, String>,
        match_users: Option<Vec<Uuid>>,
    ) -> Result<Ticket, StoreError> {
        let status = codec::parse_status(&self.status).map_err(corrupt)?;
        let matched = match (status, self.room_id, self.matched_at) {
            (TicketStatus::Matched, Some(room_id), Some(matched_at)) => Some(MatchRecord {
                room_id: parse_id(&room_id).map_err(corrupt)?,
                user_ids: match_users.unwrap_or_default(),
                matched_at,
            }),
            (TicketStatus::Matched, _, _) => {
                return Err(corrupt("a matched ticket without its match"));
            }
            _ => None,
        };
        Ok(Ticket {
            id: parse_id(&self.id).map_err(corrupt)?,
            user_id: parse_id(&self.user_id).map_err(corrupt)?,
            pool: self.pool,
            numeric,
            strings,
            status,
            created_at: self.created_at,
            expires_at: self.expires_at,
            matched,
        })
    }
}

//! A match round inside one `BEGIN IMMEDIATE` transaction run by its caller: read the pool's
//! candidates, let the planner group them, and form each group as a match (its room, with the
//! room code's own changes, then its tickets marked matched).
//!
//! Holding SQLite's write lock from the first read on is what keeps a ticket in at most one match:
//! no other round, cancel or enqueue runs in between.

use rally_store::StoreError;
use rally_store::UnixMillis;
use rally_store::matchmaking::{
    FormedMatch, MatchRecord, MatchRoom, PlannedMatch, Ticket, TicketStatus,
};
use rally_store::rooms::RoomError;
use sqlx::SqliteConnection;
use uuid::Uuid;

use super::codec::{MATCHED, QUEUED};
use super::groups::formed_groups;
use super::reads;
use crate::error_mapping::map_error;
use crate::rooms::{Clock, NewMatchRoom, corrupt, create_match_rooms, id_text};

/// The planner a round asks for groups.
pub(super) type Planner<'a> = &'a (dyn Fn(&[Ticket]) -> Vec<PlannedMatch> + Send + Sync);

/// One round in `pool` at `now`; see [`rally_store::TicketStore::match_round`].
pub(super) async fn match_round(
    conn: &mut SqliteConnection,
    pool: &str,
    limit: u32,
    room: MatchRoom,
    plan: Planner<'_>,
    now: UnixMillis,
    clock: Clock,
) -> Result<Vec<FormedMatch>, RoomError> {
    let candidates = reads::candidates(conn, pool, now, limit).await?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let groups = formed_groups(&candidates, &plan(&candidates), room.capacity);
    let rooms: Vec<NewMatchRoom> = groups
        .iter()
        .map(|group| NewMatchRoom {
            id: Uuid::new_v4(),
            users: group
                .iter()
                .map(|&index| candidates[index].user_id)
                .collect(),
            capacity: room.capacity,
        })
        .collect();
    let changes = create_match_rooms(conn, &rooms, clock).await?;

    let mut formed = Vec::with_capacity(groups.len());
    for ((group, new_room), change) in groups.iter().zip(rooms).zip(changes) {
        let record = MatchRecord {
            room_id: new_room.id,
            user_ids: new_room.users,
            matched_at: now,
        };
        let mut tickets = Vec::with_capacity(group.len());
        for &index in group {
            let mut ticket = candidates[index].clone();
            mark_matched(conn, ticket.id, &record).await?;
            ticket.status = TicketStatus::Matched;
            ticket.matched = Some(record.clone());
            tickets.push(ticket);
        }
        formed.push(FormedMatch {
            tickets,
            room: change,
        });
    }
    Ok(formed)
}

/// Marks the queued ticket `ticket_id` as matched by `record`.
async fn mark_matched(
    conn: &mut SqliteConnection,
    ticket_id: Uuid,
    record: &MatchRecord,
) -> Result<(), StoreError> {
    let done = sqlx::query(&format!(
        "UPDATE tickets SET status = '{MATCHED}', room_id = ?1, matched_at = ?2 \
         WHERE id = ?3 AND status = '{QUEUED}'"
    ))
    .bind(id_text(record.room_id))
    .bind(record.matched_at)
    .bind(id_text(ticket_id))
    .execute(conn)
    .await
    .map_err(map_error)?;
    if done.rows_affected() != 1 {
        // The write lock keeps candidates queued until the round commits; this is a bug.
        return Err(corrupt(
            "a candidate ticket stopped being queued within its round",
        ));
    }
    Ok(())
}

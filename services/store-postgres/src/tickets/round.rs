//! A match round: one attempt is one READ COMMITTED transaction that locks the pool's candidates
//! no other transaction holds (`FOR UPDATE SKIP LOCKED`), lets the planner group them, and forms
//! each group as a match (its room, with the room code's own changes, then its tickets marked
//! matched).
//!
//! The candidates' row locks are what keep a ticket in at most one match, however many replicas
//! run rounds: a round never sees a ticket another round holds, and holds its own until it
//! commits. The rooms the matched users leave are locked like any room change's, all at once in
//! id order ([`create_match_rooms`]); an attempt that loses a race there (a user moved meanwhile,
//! a deadlock, a concurrent move into a room) is rolled back, releasing its tickets, and the whole
//! round is run again with fresh candidates and a fresh plan, a bounded number of times
//! ([`crate::retry`]).

use rally_store::matchmaking::{
    FormedMatch, MatchRecord, MatchRoom, PlannedMatch, Ticket, TicketStatus,
};
use rally_store::{StoreError, UnixMillis};
use sqlx::PgConnection;
use uuid::Uuid;

use super::codec::{MATCHED, QUEUED};
use super::groups::formed_groups;
use super::reads;
use crate::error_mapping::map_error;
use crate::retry::{Abort, Attempt, AttemptFuture};
use crate::rooms::{Clock, NewMatchRoom, corrupt, create_match_rooms, id_text};

/// The planner a round asks for groups.
pub(super) type Planner<'a> = &'a (dyn Fn(&[Ticket]) -> Vec<PlannedMatch> + Send + Sync);

/// One round in a pool; see [`rally_store::TicketStore::match_round`].
pub(super) struct Round<'a> {
    pub(super) pool: &'a str,
    pub(super) now: UnixMillis,
    pub(super) limit: u32,
    pub(super) room: MatchRoom,
    pub(super) plan: Planner<'a>,
    pub(super) clock: Clock,
}

impl Attempt<Vec<FormedMatch>> for Round<'_> {
    fn attempt<'c>(
        &'c mut self,
        conn: &'c mut PgConnection,
    ) -> AttemptFuture<'c, Vec<FormedMatch>> {
        Box::pin(match_round(conn, self))
    }
}

async fn match_round(
    conn: &mut PgConnection,
    round: &Round<'_>,
) -> Result<Vec<FormedMatch>, Abort> {
    let candidates = reads::lock_candidates(conn, round.pool, round.now, round.limit).await?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let capacity = round.room.capacity;
    let groups = formed_groups(&candidates, &(round.plan)(&candidates), capacity);
    let rooms: Vec<NewMatchRoom> = groups
        .iter()
        .map(|group| NewMatchRoom {
            id: Uuid::new_v4(),
            users: group
                .iter()
                .map(|&index| candidates[index].user_id)
                .collect(),
            capacity,
        })
        .collect();
    let changes = create_match_rooms(conn, &rooms, round.clock).await?;

    let mut formed = Vec::with_capacity(groups.len());
    for ((group, new_room), change) in groups.iter().zip(rooms).zip(changes) {
        let record = MatchRecord {
            room_id: new_room.id,
            user_ids: new_room.users,
            matched_at: round.now,
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
    conn: &mut PgConnection,
    ticket_id: Uuid,
    record: &MatchRecord,
) -> Result<(), StoreError> {
    let done = sqlx::query(&format!(
        "UPDATE tickets SET status = '{MATCHED}', room_id = $1, matched_at = $2 \
         WHERE id = $3 AND status = '{QUEUED}'"
    ))
    .bind(id_text(record.room_id))
    .bind(record.matched_at)
    .bind(id_text(ticket_id))
    .execute(conn)
    .await
    .map_err(map_error)?;
    if done.rows_affected() != 1 {
        // The round's row locks keep candidates queued until it commits; this is a bug.
        return Err(corrupt(
            "a candidate ticket stopped being queued within its round",
        ));
    }
    Ok(())
}

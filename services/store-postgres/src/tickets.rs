//! [`TicketStore`] on Postgres: matchmaking tickets, and match rounds that turn them into rooms,
//! safe with any number of replicas sharing the database.
//!
//! Every method is one READ COMMITTED transaction that locks the rows it decides on: an enqueue
//! its user (so one user's enqueues take turns), a cancel its ticket, a round the pool's
//! candidates no other round holds (`FOR UPDATE SKIP LOCKED`, [`round`]), so concurrent rounds
//! take disjoint tickets and a ticket is in at most one match. A match's room is made by the room
//! changes themselves ([`crate::rooms::create_match_rooms`]), under their lock order and retry
//! policy. Expiry skips tickets others hold ([`queue`]). Reads ([`reads`]) run in a REPEATABLE
//! READ, READ ONLY transaction. Stored words are defined in [`codec`].

use rally_store::backend::ticket_codec as codec;
use rally_store::backend::ticket_groups as groups;
mod queue;
mod reads;
mod round;

use async_trait::async_trait;
use rally_store::matchmaking::{
    Enqueued, FormedMatch, MatchRoom, NewTicket, PlannedMatch, Purged, Ticket, TicketError,
    TicketStore,
};
use rally_store::rooms::RoomError;
use rally_store::{StoreError, UnixMillis};
use uuid::Uuid;

use crate::PostgresStore;
use crate::error_mapping::map_error;
use crate::rooms::id_text;
use reads::Lock;
use round::Round;

#[async_trait]
impl TicketStore for PostgresStore {
    async fn enqueue(&self, ticket: NewTicket) -> Result<Enqueued, TicketError> {
        let mut tx = self.pool.begin().await.map_err(map_error)?;
        let enqueued = queue::enqueue(&mut tx, ticket).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(enqueued)
    }

    async fn cancel(
        &self,
        ticket: Uuid,
        user: Uuid,
        now: UnixMillis,
    ) -> Result<Ticket, TicketError> {
        let mut tx = self.pool.begin().await.map_err(map_error)?;
        let ticket = queue::cancel(&mut tx, ticket, user, now).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(ticket)
    }

    async fn ticket(&self, ticket: Uuid) -> Result<Option<Ticket>, StoreError> {
        let mut tx = self.begin_read().await?;
        let found = match reads::ticket_row(&mut tx, &id_text(ticket), Lock::None).await? {
            Some(row) => reads::whole_tickets(&mut tx, vec![row]).await?.pop(),
            None => None,
        };
        tx.commit().await.map_err(map_error)?;
        Ok(found)
    }

    async fn expire_tickets(&self, now: UnixMillis) -> Result<Vec<Ticket>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_error)?;
        let expired = queue::expire(&mut tx, now).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(expired)
    }

    async fn match_round(
        &self,
        pool: &str,
        now: UnixMillis,
        limit: u32,
        room: MatchRoom,
        plan: &(dyn for<'c> Fn(&'c [Ticket]) -> Vec<PlannedMatch> + Send + Sync),
    ) -> Result<Vec<FormedMatch>, RoomError> {
        let round = Round {
            pool,
            now,
            limit,
            room,
            plan,
            clock: self.clock(now),
        };
        self.retry(round).await
    }

    async fn purge_history(&self, before: UnixMillis) -> Result<Purged, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_error)?;
        let tickets = sqlx::query("DELETE FROM tickets WHERE status <> $1 AND created_at < $2")
            .bind(rally_store::backend::ticket_codec::QUEUED)
            .bind(before)
            .execute(&mut *tx)
            .await
            .map_err(map_error)?
            .rows_affected();
        let rooms = sqlx::query(
            "DELETE FROM rooms WHERE closed_at IS NOT NULL AND closed_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM tickets WHERE tickets.room_id = rooms.id)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await
        .map_err(map_error)?
        .rows_affected();
        tx.commit().await.map_err(map_error)?;
        Ok(Purged { tickets, rooms })
    }
}

//! [`TicketStore`] on SQLite: matchmaking tickets, and match rounds that turn them into rooms.
//!
//! Every method that writes runs in one `BEGIN IMMEDIATE` transaction, which takes SQLite's single
//! write lock before its first read, so it is serialised against every other write: an enqueue's
//! "cancel the queued ticket, store the new one", a cancel's decision, and a round's "read the
//! candidates, plan, form the matches" ([`round`]) each see a state nothing changes meanwhile. That
//! is what keeps a ticket in at most one match; SQLite serves a single replica, so there is nothing
//! to skip and nothing to retry. A match's room is made by the room changes themselves
//! ([`crate::rooms::create_match_rooms`]). Reads ([`reads`]) run in a deferred transaction, which
//! sees one consistent state. Stored words are defined in [`codec`].

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

use crate::SqliteStore;
use crate::error_mapping::map_error;
use crate::rooms::id_text;

#[async_trait]
impl TicketStore for SqliteStore {
    async fn enqueue(&self, ticket: NewTicket) -> Result<Enqueued, TicketError> {
        let mut tx = self.begin_write().await?;
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
        let mut tx = self.begin_write().await?;
        let ticket = queue::cancel(&mut tx, ticket, user, now).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(ticket)
    }

    async fn ticket(&self, ticket: Uuid) -> Result<Option<Ticket>, StoreError> {
        let mut tx = self.begin_read().await?;
        let found = match reads::ticket_row(&mut tx, &id_text(ticket)).await? {
            Some(row) => reads::whole_tickets(&mut tx, vec![row]).await?.pop(),
            None => None,
        };
        tx.commit().await.map_err(map_error)?;
        Ok(found)
    }

    async fn expire_tickets(&self, now: UnixMillis) -> Result<Vec<Ticket>, StoreError> {
        let mut tx = self.begin_write().await?;
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
        let mut tx = self.begin_write().await?;
        let formed =
            round::match_round(&mut tx, pool, limit, room, plan, now, self.clock(now)).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(formed)
    }

    async fn purge_history(&self, before: UnixMillis) -> Result<Purged, StoreError> {
        let mut tx = self.begin_write().await?;
        let tickets = sqlx::query("DELETE FROM tickets WHERE status <> ?1 AND created_at < ?2")
            .bind(rally_store::backend::ticket_codec::QUEUED)
            .bind(before)
            .execute(&mut *tx)
            .await
            .map_err(map_error)?
            .rows_affected();
        let rooms = sqlx::query(
            "DELETE FROM rooms WHERE closed_at IS NOT NULL AND closed_at < ?1 \
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

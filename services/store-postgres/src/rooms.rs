//! [`RoomStore`] on Postgres: rooms, members, data, invitations, kick bans and the event log.
//!
//! Every change is one READ COMMITTED transaction that locks the rooms it touches before it
//! decides anything ([`changes`]); an attempt that loses a race to a concurrent change of the same
//! user (it moved meanwhile, or the unique key on `room_members.user_id` stopped it), or that hits
//! a deadlock or serialisation failure, is rolled back and run again, a bounded number of times
//! ([`crate::retry`]). A match round creates its rooms with the same changes ([`match_room`]).
//! Reads ([`reads`]) run in a REPEATABLE READ, READ ONLY transaction, so a room is assembled from
//! one consistent snapshot. Stored words and JSON are defined in [`codec`].

mod changes;
use rally_store::backend::data_change;
use rally_store::backend::room_codec as codec;
mod match_room;
mod reads;

use async_trait::async_trait;
use rally_store::rooms::{
    DataUpdate, EventsAfter, LeaveReason, NewRoom, Room, RoomCensus, RoomChange, RoomError,
    RoomQuery, RoomStore,
};
use rally_store::{StoreError, UnixMillis};
use uuid::Uuid;

use crate::PostgresStore;
use crate::error_mapping::map_error;
pub(crate) use changes::Clock;
pub(crate) use codec::{id_text, parse_id};
pub(crate) use match_room::{NewMatchRoom, create_match_rooms};
pub(crate) use reads::corrupt;

impl PostgresStore {
    /// The clock of a change happening at `now`.
    pub(crate) fn clock(&self, now: UnixMillis) -> Clock {
        Clock {
            now,
            retained_events: self.retained_events,
            retained_event_bytes: self.retained_event_bytes,
        }
    }
}

#[async_trait]
impl RoomStore for PostgresStore {
    async fn create_room(&self, room: NewRoom, now: UnixMillis) -> Result<RoomChange, RoomError> {
        let clock = self.clock(now);
        self.change(|conn| Box::pin(changes::create_room(conn, room.clone(), clock)))
            .await
    }

    async fn join_room(
        &self,
        room_id: Uuid,
        user: Uuid,
        now: UnixMillis,
    ) -> Result<RoomChange, RoomError> {
        let clock = self.clock(now);
        self.change(|conn| Box::pin(changes::join_room(conn, room_id, user, clock)))
            .await
    }

    async fn leave_room(
        &self,
        room_id: Uuid,
        user: Uuid,
        reason: LeaveReason,
        now: UnixMillis,
    ) -> Result<RoomChange, RoomError> {
        let clock = self.clock(now);
        self.change(|conn| Box::pin(changes::leave_room(conn, room_id, user, reason, clock)))
            .await
    }

    async fn kick_member(
        &self,
        room_id: Uuid,
        by: Uuid,
        target: Uuid,
        now: UnixMillis,
    ) -> Result<RoomChange, RoomError> {
        let clock = self.clock(now);
        self.change(|conn| Box::pin(changes::kick_member(conn, room_id, by, target, clock)))
            .await
    }

    async fn update_room_data(
        &self,
        room_id: Uuid,
        by: Uuid,
        update: DataUpdate,
        now: UnixMillis,
    ) -> Result<RoomChange, RoomError> {
        let clock = self.clock(now);
        self.change(|conn| {
            Box::pin(changes::update_room_data(
                conn,
                room_id,
                by,
                update.clone(),
                clock,
            ))
        })
        .await
    }

    async fn room(&self, room_id: Uuid) -> Result<Option<Room>, StoreError> {
        let mut tx = self.begin_read().await?;
        let room = reads::load_room(&mut tx, &id_text(room_id)).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(room)
    }

    async fn current_room(&self, user: Uuid) -> Result<Option<Room>, StoreError> {
        let mut tx = self.begin_read().await?;
        let room = match reads::current_room_id(&mut tx, &id_text(user)).await? {
            Some(room_id) => reads::load_room(&mut tx, &room_id).await?,
            None => None,
        };
        tx.commit().await.map_err(map_error)?;
        Ok(room)
    }

    async fn list_rooms(&self, query: RoomQuery) -> Result<Vec<Room>, StoreError> {
        let mut tx = self.begin_read().await?;
        let ids = reads::listed_room_ids(&mut tx, &query).await?;
        let rooms = reads::load_rooms(&mut tx, &ids).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(rooms)
    }

    async fn events_after(
        &self,
        room_id: Uuid,
        after: u64,
        limit: u32,
    ) -> Result<Option<EventsAfter>, StoreError> {
        let mut tx = self.begin_read().await?;
        let found = reads::events_after_in(&mut tx, &id_text(room_id), after, limit).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(found)
    }

    async fn census(&self) -> Result<RoomCensus, StoreError> {
        let mut tx = self.begin_read().await?;
        let census = reads::census(&mut tx).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(census)
    }

    fn retained_events(&self) -> u64 {
        self.retained_events
    }

    fn retained_event_bytes(&self) -> u64 {
        self.retained_event_bytes
    }
}

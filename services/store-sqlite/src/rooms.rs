//! [`RoomStore`] on SQLite: rooms, members, data, invitations, kick bans and the event log.
//!
//! Every change runs in one `BEGIN IMMEDIATE` transaction ([`changes`]), which takes SQLite's
//! single write lock before its first read, so changes are serialised: capacity, the one-room
//! rule and ownership hand-over are decided on a state nothing else changes meanwhile. Reads
//! ([`reads`]) run in a deferred transaction, which sees one consistent state (WAL snapshot).
//! Stored words and JSON are defined in [`codec`]. A match round creates its rooms with the same
//! changes ([`match_room`]).

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

use crate::SqliteStore;
use crate::error_mapping::map_error;
pub(crate) use changes::Clock;
pub(crate) use codec::{id_text, parse_id};
pub(crate) use match_room::{NewMatchRoom, create_match_rooms};
pub(crate) use reads::corrupt;

impl SqliteStore {
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
impl RoomStore for SqliteStore {
    async fn create_room(&self, room: NewRoom, now: UnixMillis) -> Result<RoomChange, RoomError> {
        let mut tx = self.begin_write().await?;
        let change = changes::create_room(&mut tx, room, self.clock(now)).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(change)
    }

    async fn join_room(
        &self,
        room_id: Uuid,
        user: Uuid,
        now: UnixMillis,
    ) -> Result<RoomChange, RoomError> {
        let mut tx = self.begin_write().await?;
        let change = changes::join_room(&mut tx, room_id, user, self.clock(now)).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(change)
    }

    async fn leave_room(
        &self,
        room_id: Uuid,
        user: Uuid,
        reason: LeaveReason,
        now: UnixMillis,
    ) -> Result<RoomChange, RoomError> {
        let mut tx = self.begin_write().await?;
        let change = changes::leave_room(&mut tx, room_id, user, reason, self.clock(now)).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(change)
    }

    async fn kick_member(
        &self,
        room_id: Uuid,
        by: Uuid,
        target: Uuid,
        now: UnixMillis,
    ) -> Result<RoomChange, RoomError> {
        let mut tx = self.begin_write().await?;
        let change = changes::kick_member(&mut tx, room_id, by, target, self.clock(now)).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(change)
    }

    async fn update_room_data(
        &self,
        room_id: Uuid,
        by: Uuid,
        update: DataUpdate,
        now: UnixMillis,
    ) -> Result<RoomChange, RoomError> {
        let mut tx = self.begin_write().await?;
        let change =
            changes::update_room_data(&mut tx, room_id, by, update, self.clock(now)).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(change)
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

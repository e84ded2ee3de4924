//! The `rally.rooms.v1.Rooms` handlers: validate → one store transaction → announce → answer.

use std::sync::Arc;

use rally_auth::Caller;
use rally_proto::rooms::v1 as pb;
use rally_proto::rooms::v1::rooms_server::{Rooms, RoomsServer};
use rally_store::RoomStore;
use rally_store::rooms::{
    DataUpdate, MAX_DATA_KEYS, NewRoom, RoomChange, RoomCursor, RoomError, RoomQuery,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::clock::now;
use crate::watch::{WatchStream, watch_room};
use crate::{RoomHub, RoomsError, convert, rules};

/// Largest request the rooms service decodes: 64 keys of 64 bytes with 4 KiB values, plus
/// 256 invitations, fit in well under this.
const MAX_MESSAGE_BYTES: usize = 512 * 1024;

/// The rooms service.
pub struct RoomsService {
    store: Arc<dyn RoomStore>,
    hub: Arc<RoomHub>,
    shutdown: CancellationToken,
}

impl RoomsService {
    /// A service over `store`, announcing changes through `hub`; watch streams end (UNAVAILABLE)
    /// when `shutdown` is cancelled.
    pub fn new(store: Arc<dyn RoomStore>, hub: Arc<RoomHub>, shutdown: CancellationToken) -> Self {
        Self {
            store,
            hub,
            shutdown,
        }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> RoomsServer<Self> {
        RoomsServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Announces a committed change and returns the room as the client sees it.
    ///
    /// The announcement runs on its own task: a caller that hangs up right after the commit
    /// cancels this handler, but must not cancel the wake-up its change owes every watcher.
    fn committed(&self, change: &RoomChange) -> pb::Room {
        let (hub, events) = (self.hub.clone(), change.events.clone());
        tokio::spawn(async move { hub.announce_events(&events).await });
        convert::room(&change.room)
    }
}

fn left_room(change: &RoomChange) -> String {
    change
        .left_room
        .map(|id| id.to_string())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Rooms for RoomsService {
    async fn create_room(
        &self,
        request: Request<pb::CreateRoomRequest>,
    ) -> Result<Response<pb::CreateRoomResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let room = NewRoom {
            id: Uuid::new_v4(),
            owner: caller.user_id,
            capacity: rules::capacity(request.capacity)?,
            visibility: convert::visibility(request.visibility),
            join_policy: convert::join_policy(request.join_policy),
            data: rules::data("data", request.data, MAX_DATA_KEYS)?,
            invited: rules::users("invited_user_ids", &request.invited_user_ids)?,
        };
        let change = self
            .store
            .create_room(room, now())
            .await
            .map_err(RoomsError::from)?;
        Ok(Response::new(pb::CreateRoomResponse {
            room: Some(self.committed(&change)),
            left_room_id: left_room(&change),
        }))
    }

    async fn join_room(
        &self,
        request: Request<pb::JoinRoomRequest>,
    ) -> Result<Response<pb::JoinRoomResponse>, Status> {
        let caller = Caller::of(&request)?;
        let room_id = rules::parse_id("room_id", &request.get_ref().room_id)?;
        let change = self
            .store
            .join_room(room_id, caller.user_id, now())
            .await
            .map_err(RoomsError::from)?;
        Ok(Response::new(pb::JoinRoomResponse {
            room: Some(self.committed(&change)),
            left_room_id: left_room(&change),
        }))
    }

    async fn leave_room(
        &self,
        request: Request<pb::LeaveRoomRequest>,
    ) -> Result<Response<pb::LeaveRoomResponse>, Status> {
        let caller = Caller::of(&request)?;
        let room_id = rules::parse_id("room_id", &request.get_ref().room_id)?;
        let change = self
            .store
            .leave_room(
                room_id,
                caller.user_id,
                rally_store::rooms::LeaveReason::Left,
                now(),
            )
            .await
            .map_err(RoomsError::from)?;
        self.committed(&change);
        Ok(Response::new(pb::LeaveRoomResponse {
            room_closed: change.room.closed_at.is_some(),
        }))
    }

    async fn get_room(
        &self,
        request: Request<pb::GetRoomRequest>,
    ) -> Result<Response<pb::GetRoomResponse>, Status> {
        Caller::of(&request)?;
        let room_id = rules::parse_id("room_id", &request.get_ref().room_id)?;
        let room = self
            .store
            .room(room_id)
            .await
            .map_err(RoomsError::from)?
            .filter(|room| room.closed_at.is_none())
            .ok_or(RoomsError::Room(RoomError::NotFound))?;
        Ok(Response::new(pb::GetRoomResponse {
            room: Some(convert::room(&room)),
        }))
    }

    async fn list_rooms(
        &self,
        request: Request<pb::ListRoomsRequest>,
    ) -> Result<Response<pb::ListRoomsResponse>, Status> {
        Caller::of(&request)?;
        let request = request.into_inner();
        let data_equals = rules::data("data_equals", request.data_equals, rules::MAX_FILTERS)?;
        let after =
            convert::parse_page_token(&request.page_token, &data_equals, request.min_free_seats)?;
        let size = rules::page_size(request.page_size);
        let mut rooms = self
            .store
            .list_rooms(RoomQuery {
                data_equals: data_equals.clone(),
                min_free_seats: request.min_free_seats,
                limit: size + 1,
                after,
            })
            .await
            .map_err(RoomsError::from)?;
        let more = rooms.len() > size as usize;
        rooms.truncate(size as usize);
        let next_page_token = match (more, rooms.last()) {
            (true, Some(last)) => convert::page_token(
                RoomCursor {
                    created_at: last.created_at,
                    id: last.id,
                },
                &data_equals,
                request.min_free_seats,
            ),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListRoomsResponse {
            rooms: rooms.iter().map(convert::room).collect(),
            next_page_token,
        }))
    }

    async fn kick_member(
        &self,
        request: Request<pb::KickMemberRequest>,
    ) -> Result<Response<pb::KickMemberResponse>, Status> {
        let caller = Caller::of(&request)?;
        let room_id = rules::parse_id("room_id", &request.get_ref().room_id)?;
        let target = rules::parse_id("user_id", &request.get_ref().user_id)?;
        let change = self
            .store
            .kick_member(room_id, caller.user_id, target, now())
            .await
            .map_err(RoomsError::from)?;
        Ok(Response::new(pb::KickMemberResponse {
            room: Some(self.committed(&change)),
        }))
    }

    async fn update_room_data(
        &self,
        request: Request<pb::UpdateRoomDataRequest>,
    ) -> Result<Response<pb::UpdateRoomDataResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let room_id = rules::parse_id("room_id", &request.room_id)?;
        let update = DataUpdate {
            set: rules::data("set", request.set, MAX_DATA_KEYS)?,
            delete: rules::keys("delete_keys", request.delete_keys)?,
            invite: rules::users("invite_user_ids", &request.invite_user_ids)?,
            uninvite: rules::users("uninvite_user_ids", &request.uninvite_user_ids)?,
        };
        if let Some(key) = update.set.keys().find(|k| update.delete.contains(*k)) {
            return Err(RoomsError::invalid("delete_keys", format!("{key:?} is also set")).into());
        }
        if let Some(user) = update.invite.intersection(&update.uninvite).next() {
            return Err(RoomsError::invalid(
                "uninvite_user_ids",
                format!("{user} is also invited"),
            )
            .into());
        }
        let change = self
            .store
            .update_room_data(room_id, caller.user_id, update, now())
            .await
            .map_err(RoomsError::from)?;
        Ok(Response::new(pb::UpdateRoomDataResponse {
            room: Some(self.committed(&change)),
        }))
    }

    async fn get_current_room(
        &self,
        request: Request<pb::GetCurrentRoomRequest>,
    ) -> Result<Response<pb::GetCurrentRoomResponse>, Status> {
        let caller = Caller::of(&request)?;
        let room = self
            .store
            .current_room(caller.user_id)
            .await
            .map_err(RoomsError::from)?;
        Ok(Response::new(pb::GetCurrentRoomResponse {
            room: room.as_ref().map(convert::room),
        }))
    }

    async fn watch_room(
        &self,
        request: Request<pb::WatchRoomRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        Caller::of(&request)?;
        let room_id = rules::parse_id("room_id", &request.get_ref().room_id)?;
        let stream = watch_room(
            self.store.clone(),
            self.hub.clone(),
            self.shutdown.clone(),
            room_id,
            request.get_ref().after_sequence,
        )
        .await?;
        Ok(Response::new(stream))
    }
}

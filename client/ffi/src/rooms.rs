//! Room requests (`rally_Room_*`, the Meta `ovr_Room_*` that peer-to-peer games use) and the
//! `rally_Room` in their results.

use std::ffi::{CString, c_char};

use rally_client::proto::rooms::v1::{CreateRoomRequest, Room, UpdateRoomDataRequest};

use crate::args::{self, rally_KeyValuePair};
use crate::guard::{Failure, call};
use crate::handles::{self, Kind};
use crate::id::rally_ID;
use crate::instance;
use crate::message::{
    self, Payload, rally_MessageType, rally_MessageType_Room_Create, rally_MessageType_Room_Get,
    rally_MessageType_Room_GetCurrent, rally_MessageType_Room_Join,
    rally_MessageType_Room_KickUser, rally_MessageType_Room_Leave,
    rally_MessageType_Room_UpdateDataStore, rally_RequestID,
};

/// Whether a room is listed (`rally_Room_Create`).
pub type rally_RoomVisibility = u32;
/// Listed (the default).
pub const rally_RoomVisibility_Public: rally_RoomVisibility = 1;
/// Not listed; joined by id.
pub const rally_RoomVisibility_Private: rally_RoomVisibility = 2;

/// Who may join a room (`rally_Room_Create`; the Meta `ovrRoomJoinPolicy`, simplified).
pub type rally_RoomJoinPolicy = u32;
/// Anyone with the id (the default).
pub const rally_RoomJoinPolicy_Open: rally_RoomJoinPolicy = 1;
/// Only users the owner invited.
pub const rally_RoomJoinPolicy_InviteOnly: rally_RoomJoinPolicy = 2;

/// A member of a room.
#[derive(Debug)]
struct Member {
    id: rally_ID,
    display_name: CString,
}

/// A room (the Meta `ovrRoom`), owned by its message.
#[derive(Debug)]
pub struct rally_Room {
    id: rally_ID,
    owner: rally_ID,
    capacity: u32,
    members: Vec<Member>,
    /// Sorted by key.
    data: Vec<(CString, CString)>,
}

impl From<Room> for rally_Room {
    fn from(room: Room) -> Self {
        let mut data: Vec<(CString, CString)> = room
            .data
            .iter()
            .map(|(k, v)| (message::owned_text(k), message::owned_text(v)))
            .collect();
        data.sort();
        Self {
            id: message::id(&room.room_id),
            owner: message::id(&room.owner_user_id),
            capacity: room.capacity,
            members: room
                .members
                .iter()
                .map(|m| Member {
                    id: message::id(&m.user_id),
                    display_name: message::owned_text(&m.display_name),
                })
                .collect(),
            data,
        }
    }
}

fn room_payload(room: Room) -> Payload {
    Payload::Room(room.into())
}

/// Starts a rooms request with the signed-in user's session.
fn request<Fut>(
    kind: rally_MessageType,
    work: impl FnOnce(rally_client::Rooms) -> Fut,
) -> Result<rally_RequestID, Failure>
where
    Fut: Future<Output = rally_client::Result<Payload>> + Send + 'static,
{
    instance::with_user(|instance, user| {
        let work = work(user.session.rooms());
        Ok(instance.request(kind, |_, _| async move { Ok(work.await?) }))
    })
}

/// Creates a room owned by the user, who joins it (leaving its current room, if any): the Meta
/// `ovr_Room_CreateAndJoinPrivate2`. `capacity` is 2 to 256; `visibility` and `join_policy`
/// are the constants above, or 0 for the default.
///
/// Returns a request id answered by a `rally_MessageType_Room_Create` message with the room; 0
/// when refused at once (`rally_GetLastError`).
#[unsafe(no_mangle)]
pub extern "C" fn rally_Room_Create(
    capacity: u32,
    visibility: rally_RoomVisibility,
    join_policy: rally_RoomJoinPolicy,
) -> rally_RequestID {
    call(|| {
        if visibility > rally_RoomVisibility_Private {
            return Err(Failure::invalid(format!(
                "{visibility} is not a rally_RoomVisibility"
            )));
        }
        if join_policy > rally_RoomJoinPolicy_InviteOnly {
            return Err(Failure::invalid(format!(
                "{join_policy} is not a rally_RoomJoinPolicy"
            )));
        }
        let create = CreateRoomRequest {
            capacity,
            visibility: visibility as i32,
            join_policy: join_policy as i32,
            ..Default::default()
        };
        request(rally_MessageType_Room_Create, |rooms| async move {
            let created = rooms.create_room(create).await?;
            let room = created
                .room
                .ok_or_else(|| rally_client::Error::Protocol("no room".into()))?;
            Ok(room_payload(room))
        })
    })
    .unwrap_or(0)
}

/// Joins a room (leaving the current one): the Meta `ovr_Room_Join2`. Answered by a
/// `rally_MessageType_Room_Join` message with the room.
#[unsafe(no_mangle)]
pub extern "C" fn rally_Room_Join(room: rally_ID) -> rally_RequestID {
    call(|| {
        let room = room.require("room")?.to_string();
        request(rally_MessageType_Room_Join, |rooms| async move {
            let joined = rooms.join_room(&room).await?;
            let room = joined
                .room
                .ok_or_else(|| rally_client::Error::Protocol("no room".into()))?;
            Ok(room_payload(room))
        })
    })
    .unwrap_or(0)
}

/// Leaves a room (`ovr_Room_Leave`); call `rally_Net_CloseForCurrentRoom` first. Answered by a
/// `rally_MessageType_Room_Leave` message.
#[unsafe(no_mangle)]
pub extern "C" fn rally_Room_Leave(room: rally_ID) -> rally_RequestID {
    call(|| {
        let room = room.require("room")?.to_string();
        request(rally_MessageType_Room_Leave, |rooms| async move {
            rooms.leave_room(&room).await?;
            Ok(Payload::None)
        })
    })
    .unwrap_or(0)
}

/// A room's current state (`ovr_Room_Get`). Answered by a `rally_MessageType_Room_Get` message.
#[unsafe(no_mangle)]
pub extern "C" fn rally_Room_Get(room: rally_ID) -> rally_RequestID {
    call(|| {
        let room = room.require("room")?.to_string();
        request(rally_MessageType_Room_Get, |rooms| async move {
            Ok(room_payload(rooms.get_room(&room).await?))
        })
    })
    .unwrap_or(0)
}

/// The user's current room (`ovr_Room_GetCurrent`). Answered by a
/// `rally_MessageType_Room_GetCurrent` message whose room is `NULL` when the user is in none.
#[unsafe(no_mangle)]
pub extern "C" fn rally_Room_GetCurrent() -> rally_RequestID {
    call(|| {
        request(rally_MessageType_Room_GetCurrent, |rooms| async move {
            Ok(rooms
                .current_room()
                .await?
                .map_or(Payload::None, room_payload))
        })
    })
    .unwrap_or(0)
}

/// Removes `user` from the room (owner only; `ovr_Room_KickUser`). Answered by a
/// `rally_MessageType_Room_KickUser` message with the room after.
#[unsafe(no_mangle)]
pub extern "C" fn rally_Room_KickUser(room: rally_ID, user: rally_ID) -> rally_RequestID {
    call(|| {
        let room = room.require("room")?.to_string();
        let user = user.require("user")?;
        request(rally_MessageType_Room_KickUser, |rooms| async move {
            Ok(room_payload(rooms.kick_member(&room, user).await?))
        })
    })
    .unwrap_or(0)
}

/// Sets keys of the room's data (owner only; `ovr_Room_UpdateDataStore`): at most 64 keys of 1
/// to 64 bytes, values up to 4 KiB; an empty value removes the key. Answered by a
/// `rally_MessageType_Room_UpdateDataStore` message with the room after.
///
/// # Safety
/// `data` is `NULL` (only with `count` 0) or points to `count` pairs of NUL-terminated strings
/// (copied; the caller keeps ownership).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Room_UpdateDataStore(
    room: rally_ID,
    data: *const rally_KeyValuePair,
    count: usize,
) -> rally_RequestID {
    call(|| {
        let room_id = room.require("room")?.to_string();
        // SAFETY: forwarded from the caller.
        let pairs = unsafe { args::key_values(data, count, "data")? };
        let mut update = UpdateRoomDataRequest {
            room_id,
            ..Default::default()
        };
        for (key, value) in pairs {
            if value.is_empty() {
                update.delete_keys.push(key);
            } else {
                update.set.insert(key, value);
            }
        }
        request(rally_MessageType_Room_UpdateDataStore, |rooms| async move {
            Ok(room_payload(rooms.update_room_data(update).await?))
        })
    })
    .unwrap_or(0)
}

fn room<R>(room: *const rally_Room, read: impl FnOnce(&rally_Room) -> R) -> Result<R, i32> {
    call(|| handles::with(room, Kind::Room, "room", read))
}

/// The room's id (`ovr_Room_GetID`); the nil id for an invalid handle.
///
/// # Safety
/// `room` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Room_GetID(room: *const rally_Room) -> rally_ID {
    self::room(room, |r| r.id).unwrap_or_default()
}

/// The owner's user id (`ovr_Room_GetOwner`); the nil id for an invalid handle.
///
/// # Safety
/// `room` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Room_GetOwnerID(room: *const rally_Room) -> rally_ID {
    self::room(room, |r| r.owner).unwrap_or_default()
}

/// The most members the room takes (`ovr_Room_GetMaxUsers`); 0 for an invalid handle.
///
/// # Safety
/// `room` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Room_GetCapacity(room: *const rally_Room) -> u32 {
    self::room(room, |r| r.capacity).unwrap_or(0)
}

/// How many members the room has (`ovr_UserArray_GetSize` of `ovr_Room_GetUsers`).
///
/// # Safety
/// `room` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Room_GetMemberCount(room: *const rally_Room) -> usize {
    self::room(room, |r| r.members.len()).unwrap_or(0)
}

/// The user id of member `index` (0 to count - 1, longest present first); the nil id when out
/// of range.
///
/// # Safety
/// `room` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Room_GetMemberID(room: *const rally_Room, index: usize) -> rally_ID {
    self::room(room, |r| r.members.get(index).map(|m| m.id))
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The display name of member `index` (owned by the message); `NULL` when out of range.
///
/// # Safety
/// `room` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Room_GetMemberDisplayName(
    room: *const rally_Room,
    index: usize,
) -> *const c_char {
    self::room(room, |r| {
        r.members
            .get(index)
            .map_or(std::ptr::null(), |m| m.display_name.as_ptr())
    })
    .unwrap_or(std::ptr::null())
}

/// The value of `key` in the room's data (owned by the message), or `NULL` when the key is not
/// there (`ovr_DataStore_GetValue`).
///
/// # Safety
/// `room` is `NULL` or a pointer Rally returned; `key` is `NULL` or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Room_GetDataValue(
    room: *const rally_Room,
    key: *const c_char,
) -> *const c_char {
    call(|| {
        // SAFETY: forwarded from the caller.
        let key = unsafe { args::text(key, "key")? };
        handles::with(room, Kind::Room, "room", |r| {
            r.data
                .iter()
                .find(|(k, _)| k.as_bytes() == key.as_bytes())
                .map_or(std::ptr::null(), |(_, v)| v.as_ptr())
        })
    })
    .unwrap_or(std::ptr::null())
}

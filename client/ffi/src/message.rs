//! The message queue: request results and notifications, popped once a frame with
//! `rally_PopMessage` (the Meta `ovr_PopMessage` model).
//!
//! A message is an opaque `rally_Message*` with getters; it owns everything the getters return
//! (the error, the networking peer, the ping result, the user, room or ticket and their strings),
//! which stay valid until `rally_FreeMessage`.

use std::collections::VecDeque;
use std::ffi::{CString, c_char};
use std::sync::{Mutex, MutexGuard};

use crate::guard::{Failure, RALLY_ERROR_INVALID_HANDLE, call, rally_Result};
use crate::handles::{self, Kind};
use crate::id::rally_ID;
use crate::instance;
use crate::matchmaking::rally_MatchmakingTicket;
use crate::net::{rally_NetworkingPeer, rally_PingResult};
use crate::rooms::rally_Room;
use crate::user::rally_User;

/// A request's id: returned by every request call, and carried by the message with its result
/// (`rally_Message_GetRequestID`). 0 means the request was refused before it started (see
/// `rally_GetLastError`).
pub type rally_RequestID = u64;

/// What a message is (`rally_Message_GetType`).
pub type rally_MessageType = u32;
/// Not a known message (never sent; a getter's answer for an invalid handle).
pub const rally_MessageType_Unknown: rally_MessageType = 0;
/// The result of `rally_User_Login`, `rally_User_LoginWithDevice` or `rally_User_Register`:
/// a user (`rally_Message_GetUser`).
pub const rally_MessageType_User_Login: rally_MessageType = 1;
/// The result of `rally_User_Logout`.
pub const rally_MessageType_User_Logout: rally_MessageType = 2;
/// The result of `rally_Room_Create`: a room (`rally_Message_GetRoom`).
pub const rally_MessageType_Room_Create: rally_MessageType = 10;
/// The result of `rally_Room_Join`: a room.
pub const rally_MessageType_Room_Join: rally_MessageType = 11;
/// The result of `rally_Room_Leave`.
pub const rally_MessageType_Room_Leave: rally_MessageType = 12;
/// The result of `rally_Room_Get`: a room.
pub const rally_MessageType_Room_Get: rally_MessageType = 13;
/// The result of `rally_Room_GetCurrent`: a room, or none (`rally_Message_GetRoom` is `NULL`)
/// when the user is in no room.
pub const rally_MessageType_Room_GetCurrent: rally_MessageType = 14;
/// The result of `rally_Room_KickUser`: the room after.
pub const rally_MessageType_Room_KickUser: rally_MessageType = 15;
/// The result of `rally_Room_UpdateDataStore`: the room after.
pub const rally_MessageType_Room_UpdateDataStore: rally_MessageType = 16;
/// The result of `rally_Matchmaking_Enqueue`: a ticket (`rally_Message_GetMatchmakingTicket`).
pub const rally_MessageType_Matchmaking_Enqueue: rally_MessageType = 20;
/// The result of `rally_Matchmaking_Cancel`: the ticket after.
pub const rally_MessageType_Matchmaking_Cancel: rally_MessageType = 21;
/// A ticket was matched: the ticket, whose room the user is already a member of
/// (`rally_MatchmakingTicket_GetRoomID`). Its request id is the `rally_Matchmaking_Enqueue`'s.
pub const rally_MessageType_Notification_Matchmaking_MatchFound: rally_MessageType = 30;
/// A ticket expired unmatched (its pool's longest wait passed). Its request id is the
/// `rally_Matchmaking_Enqueue`'s.
pub const rally_MessageType_Notification_Matchmaking_TicketExpired: rally_MessageType = 31;
/// A connection changed state: a networking peer (`rally_Message_GetNetworkingPeer`) with its
/// id and new state.
pub const rally_MessageType_Notification_Networking_ConnectionStateChange: rally_MessageType = 40;
/// A user asks to connect: a networking peer; answer with `rally_Net_Accept` or `rally_Net_Close`.
pub const rally_MessageType_Notification_Networking_PeerConnectRequest: rally_MessageType = 41;
/// The answer to `rally_Net_Ping`: a ping result (`rally_Message_GetPingResult`); its request id
/// is the one `rally_Net_Ping` returned.
pub const rally_MessageType_Notification_Networking_PingResult: rally_MessageType = 42;
/// A connection attempt failed for a known reason (an error message says which); a networking
/// peer. A `ConnectionStateChange` to `rally_PeerState_Timeout` follows.
pub const rally_MessageType_Notification_Networking_ConnectionFailed: rally_MessageType = 43;

/// Why a message is an error (`rally_Message_GetError`): the Meta `ovrError`.
#[derive(Debug)]
pub struct rally_Error {
    code: rally_Result,
    rpc_status: i32,
    message: CString,
}

impl From<Failure> for rally_Error {
    fn from(failure: Failure) -> Self {
        Self {
            code: failure.code,
            rpc_status: failure.rpc_status,
            message: crate::guard::c_text(&failure.message),
        }
    }
}

/// What a message carries besides its type and error.
#[derive(Debug)]
pub(crate) enum Payload {
    None,
    Peer(rally_NetworkingPeer),
    Ping(rally_PingResult),
    User(rally_User),
    Room(rally_Room),
    Ticket(rally_MatchmakingTicket),
}

/// A request result or a notification, owned by the game from `rally_PopMessage` until
/// `rally_FreeMessage`.
#[derive(Debug)]
pub struct rally_Message {
    kind: rally_MessageType,
    request_id: rally_RequestID,
    error: Option<rally_Error>,
    payload: Payload,
}

impl rally_Message {
    pub(crate) fn new(
        kind: rally_MessageType,
        request_id: rally_RequestID,
        payload: Payload,
    ) -> Self {
        Self {
            kind,
            request_id,
            error: None,
            payload,
        }
    }

    pub(crate) fn error(
        kind: rally_MessageType,
        request_id: rally_RequestID,
        failure: Failure,
    ) -> Self {
        Self {
            kind,
            request_id,
            error: Some(failure.into()),
            payload: Payload::None,
        }
    }

    pub(crate) fn with_error(mut self, failure: Failure) -> Self {
        self.error = Some(failure.into());
        self
    }

    /// The objects inside the message that getters hand to C, with their kinds.
    fn inner(&self) -> Vec<(usize, Kind)> {
        let mut inner = Vec::new();
        if let Some(error) = &self.error {
            inner.push((error as *const rally_Error as usize, Kind::Error));
        }
        let payload = match &self.payload {
            Payload::None => None,
            Payload::Peer(peer) => Some((peer as *const _ as usize, Kind::NetworkingPeer)),
            Payload::Ping(ping) => Some((ping as *const _ as usize, Kind::PingResult)),
            Payload::User(user) => Some((user as *const _ as usize, Kind::User)),
            Payload::Room(room) => Some((room as *const _ as usize, Kind::Room)),
            Payload::Ticket(ticket) => Some((ticket as *const _ as usize, Kind::Ticket)),
        };
        inner.extend(payload);
        inner
    }
}

/// The messages waiting for the game, oldest first. Unbounded, as the Meta queue was: a game
/// pumps it every frame.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    messages: Mutex<VecDeque<rally_Message>>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<rally_Message>> {
        self.messages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn push(&self, message: rally_Message) {
        self.lock().push_back(message);
    }

    fn pop(&self) -> Option<rally_Message> {
        self.lock().pop_front()
    }
}

/// The next message, or `NULL` when none is waiting (or Rally is not initialised). Call it in a
/// loop once a frame until it returns `NULL`.
///
/// Ownership: the message is the caller's; free it with `rally_FreeMessage`. Thread safety: any
/// thread; each message goes to exactly one caller.
#[unsafe(no_mangle)]
pub extern "C" fn rally_PopMessage() -> *mut rally_Message {
    call(|| {
        let message = instance::with(|instance| Ok(instance.shared.queue.pop()))?;
        Ok(match message {
            Some(message) => handles::give(Box::new(message), Kind::Message, rally_Message::inner),
            None => std::ptr::null_mut(),
        })
    })
    .unwrap_or(std::ptr::null_mut())
}

/// Frees a message from `rally_PopMessage`, with everything its getters returned. `NULL` is
/// ignored; a pointer that is not a live message (freed already) is refused and left alone
/// (`rally_GetLastError` says so).
///
/// # Safety
/// `message` is `NULL` or a pointer Rally returned; after this call, nothing the message's
/// getters returned may be used.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_FreeMessage(message: *mut rally_Message) {
    let _ = call(|| {
        if message.is_null() || handles::free(message, Kind::Message, rally_Message::inner) {
            Ok(())
        } else {
            Err(Failure::new(
                RALLY_ERROR_INVALID_HANDLE,
                "message is not a live message (freed already, or not from Rally)",
            ))
        }
    });
}

fn message<R>(
    message: *const rally_Message,
    read: impl FnOnce(&rally_Message) -> R,
) -> Result<R, rally_Result> {
    call(|| handles::with(message, Kind::Message, "message", read))
}

/// What the message is (a `rally_MessageType_*`); `rally_MessageType_Unknown` for an invalid
/// handle.
///
/// # Safety
/// `message` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Message_GetType(message: *const rally_Message) -> rally_MessageType {
    self::message(message, |m| m.kind).unwrap_or(rally_MessageType_Unknown)
}

/// The id of the request this message answers; 0 for a notification no request asked for.
///
/// # Safety
/// `message` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Message_GetRequestID(
    message: *const rally_Message,
) -> rally_RequestID {
    self::message(message, |m| m.request_id).unwrap_or(0)
}

/// Whether the message reports a failure (then `rally_Message_GetError` says which).
///
/// # Safety
/// `message` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Message_IsError(message: *const rally_Message) -> bool {
    self::message(message, |m| m.error.is_some()).unwrap_or(false)
}

/// The message's error, or `NULL` when it is not one. Owned by the message.
///
/// # Safety
/// `message` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Message_GetError(
    message: *const rally_Message,
) -> *const rally_Error {
    self::message(message, |m| {
        m.error
            .as_ref()
            .map_or(std::ptr::null(), |e| e as *const rally_Error)
    })
    .unwrap_or(std::ptr::null())
}

/// The networking peer of a `Notification_Networking_*` message (connection state change, peer
/// connect request, connection failed), or `NULL`. Owned by the message.
///
/// # Safety
/// `message` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Message_GetNetworkingPeer(
    message: *const rally_Message,
) -> *const rally_NetworkingPeer {
    self::message(message, |m| match &m.payload {
        Payload::Peer(peer) => peer as *const _,
        _ => std::ptr::null(),
    })
    .unwrap_or(std::ptr::null())
}

/// The ping result of a `Notification_Networking_PingResult` message, or `NULL`. Owned by the
/// message.
///
/// # Safety
/// `message` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Message_GetPingResult(
    message: *const rally_Message,
) -> *const rally_PingResult {
    self::message(message, |m| match &m.payload {
        Payload::Ping(ping) => ping as *const _,
        _ => std::ptr::null(),
    })
    .unwrap_or(std::ptr::null())
}

/// The user of a `User_Login` message, or `NULL`. Owned by the message.
///
/// # Safety
/// `message` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Message_GetUser(message: *const rally_Message) -> *const rally_User {
    self::message(message, |m| match &m.payload {
        Payload::User(user) => user as *const _,
        _ => std::ptr::null(),
    })
    .unwrap_or(std::ptr::null())
}

/// The room of a `Room_*` result, or `NULL` (also for `Room_GetCurrent` when the user is in no
/// room). Owned by the message.
///
/// # Safety
/// `message` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Message_GetRoom(message: *const rally_Message) -> *const rally_Room {
    self::message(message, |m| match &m.payload {
        Payload::Room(room) => room as *const _,
        _ => std::ptr::null(),
    })
    .unwrap_or(std::ptr::null())
}

/// The ticket of a `Matchmaking_*` result or notification, or `NULL`. Owned by the message.
///
/// # Safety
/// `message` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Message_GetMatchmakingTicket(
    message: *const rally_Message,
) -> *const rally_MatchmakingTicket {
    self::message(message, |m| match &m.payload {
        Payload::Ticket(ticket) => ticket as *const _,
        _ => std::ptr::null(),
    })
    .unwrap_or(std::ptr::null())
}

fn error<R>(
    error: *const rally_Error,
    read: impl FnOnce(&rally_Error) -> R,
) -> Result<R, rally_Result> {
    call(|| handles::with(error, Kind::Error, "error", read))
}

/// The error's code (a negative `RALLY_ERROR_*`); `RALLY_ERROR_INVALID_HANDLE` for an invalid
/// handle.
///
/// # Safety
/// `error` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Error_GetCode(error: *const rally_Error) -> rally_Result {
    self::error(error, |e| e.code).unwrap_or_else(|code| code)
}

/// The gRPC status code when `rallyd` refused the call (`RALLY_ERROR_SERVER_REFUSED`: 5 is
/// NOT_FOUND, 7 PERMISSION_DENIED, ...), else 0. Meta's `ovr_Error_GetHttpCode` in spirit.
///
/// # Safety
/// `error` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Error_GetRpcStatus(error: *const rally_Error) -> i32 {
    self::error(error, |e| e.rpc_status).unwrap_or(0)
}

/// What went wrong, for people; owned by the message (valid until `rally_FreeMessage`). An
/// empty string for an invalid handle.
///
/// # Safety
/// `error` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Error_GetMessage(error: *const rally_Error) -> *const c_char {
    self::error(error, |e| e.message.as_ptr()).unwrap_or(c"".as_ptr())
}

/// The name of a message type, such as `"Notification_Networking_PingResult"` (static; never
/// freed); `"Unknown"` for a value that is not a message type.
#[unsafe(no_mangle)]
pub extern "C" fn rally_MessageType_ToString(kind: rally_MessageType) -> *const c_char {
    let name = match kind {
        rally_MessageType_User_Login => c"User_Login",
        rally_MessageType_User_Logout => c"User_Logout",
        rally_MessageType_Room_Create => c"Room_Create",
        rally_MessageType_Room_Join => c"Room_Join",
        rally_MessageType_Room_Leave => c"Room_Leave",
        rally_MessageType_Room_Get => c"Room_Get",
        rally_MessageType_Room_GetCurrent => c"Room_GetCurrent",
        rally_MessageType_Room_KickUser => c"Room_KickUser",
        rally_MessageType_Room_UpdateDataStore => c"Room_UpdateDataStore",
        rally_MessageType_Matchmaking_Enqueue => c"Matchmaking_Enqueue",
        rally_MessageType_Matchmaking_Cancel => c"Matchmaking_Cancel",
        rally_MessageType_Notification_Matchmaking_MatchFound => {
            c"Notification_Matchmaking_MatchFound"
        }
        rally_MessageType_Notification_Matchmaking_TicketExpired => {
            c"Notification_Matchmaking_TicketExpired"
        }
        rally_MessageType_Notification_Networking_ConnectionStateChange => {
            c"Notification_Networking_ConnectionStateChange"
        }
        rally_MessageType_Notification_Networking_PeerConnectRequest => {
            c"Notification_Networking_PeerConnectRequest"
        }
        rally_MessageType_Notification_Networking_PingResult => {
            c"Notification_Networking_PingResult"
        }
        rally_MessageType_Notification_Networking_ConnectionFailed => {
            c"Notification_Networking_ConnectionFailed"
        }
        _ => c"Unknown",
    };
    name.as_ptr()
}

/// Text for a message's strings.
pub(crate) fn owned_text(text: &str) -> CString {
    crate::guard::c_text(text)
}

/// An id as stored in messages.
pub(crate) fn id(text: &str) -> rally_ID {
    rally_ID::parse(text)
}

//! Matchmaking requests (`rally_Matchmaking_*`, the Meta `ovr_Matchmaking_Enqueue2` and
//! `ovr_Matchmaking_Cancel2`), the ticket in their results, and the `MatchFound` notification.

use std::ffi::{CString, c_char};
use std::sync::Arc;

use futures::StreamExt;
use rally_client::proto::rooms::v1::{EnqueueRequest, Ticket, TicketStatus};

use crate::args::{self, rally_KeyValuePair, rally_NumericAttribute};
use crate::guard::call;
use crate::handles::{self, Kind};
use crate::id::rally_ID;
use crate::instance::{self, Shared};
use crate::message::{
    self, Payload, rally_Message, rally_MessageType_Matchmaking_Cancel,
    rally_MessageType_Matchmaking_Enqueue, rally_MessageType_Notification_Matchmaking_MatchFound,
    rally_MessageType_Notification_Matchmaking_TicketExpired, rally_RequestID,
};

/// Where a ticket is (`rally_MatchmakingTicket_GetStatus`).
pub type rally_TicketStatus = u32;
/// Waiting for a match.
pub const rally_TicketStatus_Queued: rally_TicketStatus = 1;
/// Matched: the user is a member of the ticket's room.
pub const rally_TicketStatus_Matched: rally_TicketStatus = 2;
/// Cancelled (`rally_Matchmaking_Cancel`, or a newer ticket of the same user).
pub const rally_TicketStatus_Cancelled: rally_TicketStatus = 3;
/// Expired unmatched.
pub const rally_TicketStatus_Expired: rally_TicketStatus = 4;

/// A matchmaking ticket, owned by its message.
#[derive(Debug)]
pub struct rally_MatchmakingTicket {
    id: rally_ID,
    pool: CString,
    status: rally_TicketStatus,
    room: rally_ID,
}

impl From<&Ticket> for rally_MatchmakingTicket {
    fn from(ticket: &Ticket) -> Self {
        Self {
            id: message::id(&ticket.ticket_id),
            pool: message::owned_text(&ticket.pool),
            status: ticket.status.max(0) as rally_TicketStatus,
            room: ticket
                .match_result
                .as_ref()
                .map_or_else(rally_ID::default, |m| message::id(&m.room_id)),
        }
    }
}

/// Follows a queued ticket until it ends; a match or an expiry becomes a notification carrying
/// the enqueue's request id.
async fn follow(
    shared: Arc<Shared>,
    matchmaking: rally_client::Matchmaking,
    ticket_id: String,
    request: rally_RequestID,
) {
    let mut watch = match matchmaking.watch_ticket(&ticket_id).await {
        Ok(watch) => watch,
        Err(error) => {
            tracing::warn!(%error, ticket = %ticket_id, "cannot follow the ticket");
            return;
        }
    };
    while let Some(Ok(ticket)) = watch.next().await {
        let kind = match ticket.status() {
            TicketStatus::Matched => rally_MessageType_Notification_Matchmaking_MatchFound,
            TicketStatus::Expired => rally_MessageType_Notification_Matchmaking_TicketExpired,
            TicketStatus::Cancelled => return,
            TicketStatus::Queued | TicketStatus::Unspecified => continue,
        };
        let payload = Payload::Ticket((&ticket).into());
        shared
            .queue
            .push(rally_Message::new(kind, request, payload));
        return;
    }
}

/// Queues the user in matchmaking pool `pool` with attributes (the Meta
/// `ovr_Matchmaking_Enqueue2`): at most 16 string attributes (compared for equality, such as
/// `"region"`) and 16 numeric ones (such as `"skill"`), as the pool's rules use them.
///
/// Returns a request id answered by a `rally_MessageType_Matchmaking_Enqueue` message with the
/// ticket (queued). Later a `Notification_Matchmaking_MatchFound` with the same request id says
/// the ticket matched: the user is already a member of its room
/// (`rally_MatchmakingTicket_GetRoomID`), or `Notification_Matchmaking_TicketExpired` says it
/// did not. 0 when refused at once (`rally_GetLastError`).
///
/// # Safety
/// `pool` is `NULL` or a NUL-terminated string; each array is `NULL` (only with its count 0) or
/// points to that many items whose strings are NUL-terminated. Everything is copied.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_Matchmaking_Enqueue(
    pool: *const c_char,
    string_attributes: *const rally_KeyValuePair,
    string_attribute_count: usize,
    numeric_attributes: *const rally_NumericAttribute,
    numeric_attribute_count: usize,
) -> rally_RequestID {
    call(|| {
        // SAFETY: forwarded from the caller.
        let pool = unsafe { args::text(pool, "pool")? }.to_owned();
        // SAFETY: forwarded from the caller.
        let strings = unsafe {
            args::key_values(
                string_attributes,
                string_attribute_count,
                "string_attributes",
            )?
        };
        // SAFETY: forwarded from the caller.
        let numbers =
            unsafe { args::numeric_attributes(numeric_attributes, numeric_attribute_count)? };
        let enqueue = EnqueueRequest {
            pool,
            numeric_attributes: numbers.into_iter().collect(),
            string_attributes: strings.into_iter().collect(),
        };
        instance::with_user(|instance, user| {
            let matchmaking = user.session.matchmaking();
            Ok(instance.request(
                rally_MessageType_Matchmaking_Enqueue,
                |shared, id| async move {
                    let ticket = matchmaking.enqueue(enqueue).await?;
                    if ticket.status() == TicketStatus::Queued {
                        let ticket_id = ticket.ticket_id.clone();
                        tokio::spawn(follow(shared, matchmaking, ticket_id, id));
                    }
                    Ok(Payload::Ticket((&ticket).into()))
                },
            ))
        })
    })
    .unwrap_or(0)
}

/// Cancels a ticket (the Meta `ovr_Matchmaking_Cancel2`). Answered by a
/// `rally_MessageType_Matchmaking_Cancel` message with the ticket after (cancelled, or expired
/// or matched if that happened first).
#[unsafe(no_mangle)]
pub extern "C" fn rally_Matchmaking_Cancel(ticket: rally_ID) -> rally_RequestID {
    call(|| {
        let ticket = ticket.require("ticket")?.to_string();
        instance::with_user(|instance, user| {
            let matchmaking = user.session.matchmaking();
            Ok(
                instance.request(rally_MessageType_Matchmaking_Cancel, |_, _| async move {
                    let ticket = matchmaking.cancel(&ticket).await?;
                    Ok(Payload::Ticket((&ticket).into()))
                }),
            )
        })
    })
    .unwrap_or(0)
}

fn ticket<R>(
    ticket: *const rally_MatchmakingTicket,
    read: impl FnOnce(&rally_MatchmakingTicket) -> R,
) -> Result<R, i32> {
    call(|| handles::with(ticket, Kind::Ticket, "ticket", read))
}

/// The ticket's id; the nil id for an invalid handle.
///
/// # Safety
/// `ticket` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_MatchmakingTicket_GetID(
    ticket: *const rally_MatchmakingTicket,
) -> rally_ID {
    self::ticket(ticket, |t| t.id).unwrap_or_default()
}

/// The ticket's status (a `rally_TicketStatus_*`); 0 for an invalid handle.
///
/// # Safety
/// `ticket` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_MatchmakingTicket_GetStatus(
    ticket: *const rally_MatchmakingTicket,
) -> rally_TicketStatus {
    self::ticket(ticket, |t| t.status).unwrap_or(0)
}

/// The ticket's pool (owned by the message); an empty string for an invalid handle.
///
/// # Safety
/// `ticket` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_MatchmakingTicket_GetPool(
    ticket: *const rally_MatchmakingTicket,
) -> *const c_char {
    self::ticket(ticket, |t| t.pool.as_ptr()).unwrap_or(c"".as_ptr())
}

/// The room of a matched ticket (the user is already a member); the nil id otherwise.
///
/// # Safety
/// `ticket` is `NULL` or a pointer Rally returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_MatchmakingTicket_GetRoomID(
    ticket: *const rally_MatchmakingTicket,
) -> rally_ID {
    self::ticket(ticket, |t| t.room).unwrap_or_default()
}

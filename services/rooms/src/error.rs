//! The rooms service's errors, and their one mapping to gRPC statuses.

use rally_store::StoreError;
use rally_store::matchmaking::TicketError;
use rally_store::rooms::RoomError;

/// Why a rooms call failed.
#[derive(Debug, thiserror::Error)]
pub enum RoomsError {
    /// A field breaks its rule.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field.
        field: &'static str,
        /// The rule it breaks.
        reason: String,
    },
    /// WatchRoom asked to resume after a sequence the room has not reached.
    #[error("after_sequence {asked} is beyond the room's latest sequence {latest}")]
    AheadOfRoom {
        /// What the client asked for.
        asked: u64,
        /// The room's latest sequence.
        latest: u64,
    },
    /// The store refused the change.
    #[error(transparent)]
    Room(#[from] RoomError),
    /// The ticket store refused the change.
    #[error(transparent)]
    Ticket(#[from] TicketError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RoomsError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<RoomsError> for tonic::Status {
    fn from(error: RoomsError) -> Self {
        use tonic::Status;
        let message = error.to_string();
        match error {
            RoomsError::InvalidArgument { .. } => Status::invalid_argument(message),
            RoomsError::AheadOfRoom { .. } => Status::out_of_range(message),
            RoomsError::Room(room) => match room {
                RoomError::NotFound | RoomError::UserNotFound => Status::not_found(message),
                RoomError::NotInvited | RoomError::Banned | RoomError::NotOwner => {
                    Status::permission_denied(message)
                }
                RoomError::Full | RoomError::NotMember | RoomError::TargetNotMember => {
                    Status::failed_precondition(message)
                }
                RoomError::KickSelf | RoomError::TooManyKeys(_) | RoomError::TooManyInvited(_) => {
                    Status::invalid_argument(message)
                }
                RoomError::Store(store) => store_status(store),
            },
            RoomsError::Ticket(ticket) => match ticket {
                TicketError::NotFound | TicketError::UserNotFound => Status::not_found(message),
                TicketError::NotYours => Status::permission_denied(message),
                TicketError::AlreadyMatched => Status::failed_precondition(message),
                TicketError::Store(store) => store_status(store),
            },
            RoomsError::Store(store) => store_status(store),
        }
    }
}

fn store_status(error: StoreError) -> tonic::Status {
    match error {
        StoreError::Unavailable(_) => {
            tracing::warn!(%error, "database unavailable");
            tonic::Status::unavailable("the database is unavailable; retry later")
        }
        StoreError::NotFound(what) => tonic::Status::not_found(format!("{what} not found")),
        other => {
            tracing::error!(error = %other, "rooms call failed");
            tonic::Status::internal("internal error")
        }
    }
}

//! Matchmaking tickets, and match rounds that turn groups of tickets into rooms.
//!
//! A round ([`TicketStore::match_round`]) is one transaction: it takes the oldest queued,
//! unexpired tickets of a pool that no other transaction holds (Postgres: `FOR UPDATE SKIP
//! LOCKED`; SQLite: the write lock), lets the caller's planner choose groups, and for each group
//! creates a room with every matched user joined (leaving their current rooms) and marks the
//! tickets matched. So a ticket is in at most one match, whatever the number of replicas running
//! rounds at once.
//!
//! Rules every backend enforces (the conformance suite checks each):
//! - a user has at most one queued ticket: enqueueing cancels the previous one, in any pool;
//! - a final ticket (matched, cancelled, expired) never changes again;
//! - a match's room is what [`RoomStore::create_room`](crate::RoomStore::create_room) by the
//!   oldest ticket's user, then [`RoomStore::join_room`](crate::RoomStore::join_room) of each
//!   other user in ticket order, would make: private, invite-only with every matched user
//!   invited, capacity [`MatchRoom::capacity`], no data, owned by the oldest ticket's user, members
//!   in ticket order, a `MemberJoined` event per user after the first; users leave the rooms they
//!   were in as a join would take them out (`MemberLeft` with reason `Left`, then `OwnerChanged`
//!   or `RoomClosed` as needed);
//! - a ticket cancelled, replaced or expired is in no match, and a matched one cannot be
//!   cancelled, whatever the interleaving.

use std::collections::BTreeMap;

use async_trait::async_trait;
use uuid::Uuid;

use crate::rooms::{RoomChange, RoomError};
use crate::{StoreError, UnixMillis};

/// Where a ticket is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TicketStatus {
    /// Waiting for a match.
    Queued,
    /// Final: matched into a room.
    Matched,
    /// Final: cancelled, or replaced by a newer ticket of the same user.
    Cancelled,
    /// Final: waited past its expiry.
    Expired,
}

/// A formed match, as recorded on each of its tickets.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchRecord {
    /// The room created for the match.
    pub room_id: Uuid,
    /// The matched users, oldest ticket first.
    pub user_ids: Vec<Uuid>,
    /// When it formed.
    pub matched_at: UnixMillis,
}

/// A matchmaking ticket.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    /// The ticket id.
    pub id: Uuid,
    /// Its user.
    pub user_id: Uuid,
    /// The pool's name.
    pub pool: String,
    /// Numeric attributes (finite).
    pub numeric: BTreeMap<String, f64>,
    /// String attributes.
    pub strings: BTreeMap<String, String>,
    /// Status.
    pub status: TicketStatus,
    /// When it was created.
    pub created_at: UnixMillis,
    /// When it expires if still queued.
    pub expires_at: UnixMillis,
    /// The match, when matched.
    pub matched: Option<MatchRecord>,
}

/// A ticket to enqueue (status queued).
#[derive(Debug, Clone, PartialEq)]
pub struct NewTicket {
    /// The ticket id (chosen by the caller).
    pub id: Uuid,
    /// Its user.
    pub user_id: Uuid,
    /// The pool's name.
    pub pool: String,
    /// Numeric attributes.
    pub numeric: BTreeMap<String, f64>,
    /// String attributes.
    pub strings: BTreeMap<String, String>,
    /// Creation time.
    pub created_at: UnixMillis,
    /// Expiry time.
    pub expires_at: UnixMillis,
}

/// The result of an enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct Enqueued {
    /// The new ticket.
    pub ticket: Ticket,
    /// The user's previous queued ticket, now cancelled, if there was one.
    pub replaced: Option<Uuid>,
}

/// Why a ticket call was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    /// No such ticket.
    #[error("ticket not found")]
    NotFound,
    /// The ticket belongs to another user.
    #[error("that ticket belongs to another user")]
    NotYours,
    /// The ticket is already matched.
    #[error("the ticket is already matched; leave the room instead")]
    AlreadyMatched,
    /// The user does not exist.
    #[error("user not found")]
    UserNotFound,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A group the planner chose: ticket ids, oldest first; the first ticket's user owns the room.
/// (The store puts them in candidate order, oldest first, whatever the order given.)
pub type PlannedMatch = Vec<Uuid>;

/// What a round formed.
#[derive(Debug, Clone, PartialEq)]
pub struct FormedMatch {
    /// The matched tickets, now `Matched`, oldest first.
    pub tickets: Vec<Ticket>,
    /// The room change (the new room, with every event appended in every room touched). Its
    /// `left_room` is `None`: a match may take several users out of several rooms, and their
    /// `MemberLeft` events are among `events`.
    pub room: RoomChange,
}

/// The room settings of a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchRoom {
    /// Capacity (the pool's match size).
    pub capacity: u32,
}

/// Storage for tickets. Every method is one transaction.
#[async_trait]
pub trait TicketStore: Send + Sync + 'static {
    /// Stores a queued ticket, cancelling the user's previous queued ticket (in any pool).
    async fn enqueue(&self, ticket: NewTicket) -> Result<Enqueued, TicketError>;

    /// Cancels a ticket of `user`. Cancelling a cancelled or expired ticket changes nothing and
    /// returns it as it is; a queued ticket past its expiry becomes expired instead.
    async fn cancel(
        &self,
        ticket: Uuid,
        user: Uuid,
        now: UnixMillis,
    ) -> Result<Ticket, TicketError>;

    /// A ticket by id.
    async fn ticket(&self, ticket: Uuid) -> Result<Option<Ticket>, StoreError>;

    /// Marks queued tickets past their expiry (`expires_at <= now`) as expired and returns them.
    /// A ticket another transaction holds at that moment (a round, which takes only tickets
    /// unexpired at its own `now`, or a cancel, which expires an overdue ticket itself) may be left
    /// to the next call.
    async fn expire_tickets(&self, now: UnixMillis) -> Result<Vec<Ticket>, StoreError>;

    /// One match round in `pool`, as described in the module docs: takes up to `limit` of the
    /// oldest queued, unexpired (`expires_at > now`) tickets not locked by another round, asks
    /// `plan` for groups (ticket ids; the planner sees the candidates oldest first, then by id),
    /// and forms each group as a match, in the plan's order, at `now`. A group naming a ticket
    /// that is not among the candidates, naming one twice or one an earlier group took, with no
    /// ticket or with more than `room.capacity`, is skipped. With no candidates, a backend need
    /// not call `plan`.
    async fn match_round(
        &self,
        pool: &str,
        now: UnixMillis,
        limit: u32,
        room: MatchRoom,
        // The `for<'c>` is spelled out: `#[async_trait]` would give an elided `&[Ticket]` a
        // lifetime of the method's, and an implementation could then not lend the planner its own
        // candidates.
        plan: &(dyn for<'c> Fn(&'c [Ticket]) -> Vec<PlannedMatch> + Send + Sync),
    ) -> Result<Vec<FormedMatch>, RoomError>;

    /// Forgets old history so that the database stays bounded: deletes final (matched, cancelled,
    /// expired) tickets created before `before`, then closed rooms closed before `before` that no
    /// remaining ticket refers to (with their members, data and events). Queued tickets and open
    /// rooms are never deleted. Returns what was deleted.
    async fn purge_history(&self, before: UnixMillis) -> Result<Purged, StoreError>;
}

/// What [`TicketStore::purge_history`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Final tickets deleted.
    pub tickets: u64,
    /// Closed rooms deleted.
    pub rooms: u64,
}

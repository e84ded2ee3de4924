//! Rooms, their members, data, invitations and persisted event log.
//!
//! A room changes only through the methods of [`RoomStore`], each one transaction that applies the
//! change, appends its events with the room's next sequence numbers, and returns both
//! ([`RoomChange`]). Events are the room's history: a watcher that missed some reads them back
//! with [`RoomStore::events_after`], for as long as they are retained (the latest
//! [`RoomStore::retained_events`] per room, within [`RoomStore::retained_event_bytes`]).
//!
//! Rules every backend enforces (the conformance suite checks each):
//! - a user is in at most one room; creating or joining a room leaves the current one in the same
//!   transaction (with a `MemberLeft { reason: Left }` event there);
//! - a room never holds more than `capacity` members, whatever the concurrency;
//! - when the owner leaves (or is removed), the longest-present member becomes owner
//!   (`OwnerChanged` after `MemberLeft`); when the last member leaves, the room closes
//!   (`MemberLeft` then `RoomClosed`): in the same transaction its data is deleted and its events
//!   are cut to the latest [`CLOSED_ROOM_EVENT_BYTES`] (the closing ones always stay), and a
//!   closed room is never changed again;
//! - sequence numbers of one room start at 1 and have no gaps;
//! - a kicked user may not rejoin until invited again.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use uuid::Uuid;

use crate::{StoreError, UnixMillis};

/// How many bytes of event payload a room keeps, unless configured otherwise: a few of the
/// largest data changes (64 values of 4 KiB each), hundreds of ordinary events.
pub const DEFAULT_RETAINED_EVENT_BYTES: u64 = 1 << 20;

/// How many bytes of event payload a room keeps once it closed: its latest few membership
/// changes, so that a user's churn of rooms leaves little for the history retention.
pub const CLOSED_ROOM_EVENT_BYTES: u64 = 4096;

/// Whether ListRooms shows a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Visibility {
    /// Listed.
    Public,
    /// Not listed (but readable by id).
    Private,
}

/// Who may join a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JoinPolicy {
    /// Anyone who is not banned.
    Open,
    /// Only invited users.
    InviteOnly,
}

/// Why a member left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaveReason {
    /// It left (or moved to another room).
    Left,
    /// The owner kicked it.
    Kicked,
    /// Its client stayed disconnected past the grace period.
    Disconnected,
}

/// A member of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The user.
    pub user_id: Uuid,
    /// The user's display name (from its account).
    pub display_name: String,
    /// When it joined.
    pub joined_at: UnixMillis,
}

/// A room's state after its latest event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    /// The room id.
    pub id: Uuid,
    /// The owner; always a member while the room is open.
    pub owner: Uuid,
    /// Members, longest-present first.
    pub members: Vec<Member>,
    /// At most this many members.
    pub capacity: u32,
    /// Listed or not.
    pub visibility: Visibility,
    /// Who may join.
    pub join_policy: JoinPolicy,
    /// The owner's key/value data.
    pub data: BTreeMap<String, String>,
    /// Users the owner invited.
    pub invited: BTreeSet<Uuid>,
    /// When it was created.
    pub created_at: UnixMillis,
    /// The sequence of the latest event (0 before any).
    pub sequence: u64,
    /// When it closed, if it did.
    pub closed_at: Option<UnixMillis>,
}

/// A room to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoom {
    /// The new room's id (chosen by the caller).
    pub id: Uuid,
    /// The creator: owner and first member.
    pub owner: Uuid,
    /// Capacity (the service validates 2..=256).
    pub capacity: u32,
    /// Visibility.
    pub visibility: Visibility,
    /// Join policy.
    pub join_policy: JoinPolicy,
    /// Initial data (validated by the service).
    pub data: BTreeMap<String, String>,
    /// Initial invitations.
    pub invited: BTreeSet<Uuid>,
}

/// A change to a room's data and invitations, applied all at once by its owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataUpdate {
    /// Keys to set.
    pub set: BTreeMap<String, String>,
    /// Keys to delete (absent keys are ignored).
    pub delete: BTreeSet<String>,
    /// Users to invite (clears a kick ban).
    pub invite: BTreeSet<Uuid>,
    /// Users to uninvite.
    pub uninvite: BTreeSet<Uuid>,
}

/// What happened in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEventKind {
    /// A member joined.
    MemberJoined(Member),
    /// A member left.
    MemberLeft {
        /// Who.
        user_id: Uuid,
        /// Why.
        reason: LeaveReason,
    },
    /// Data or invitations changed; only what actually changed is listed.
    DataChanged {
        /// Keys set, with their new values.
        set: BTreeMap<String, String>,
        /// Keys deleted that existed.
        deleted: BTreeSet<String>,
        /// Users newly invited.
        invited: BTreeSet<Uuid>,
        /// Users no longer invited.
        uninvited: BTreeSet<Uuid>,
    },
    /// The owner changed.
    OwnerChanged {
        /// The previous owner.
        previous: Uuid,
        /// The new owner.
        new: Uuid,
    },
    /// The room closed; nothing follows.
    RoomClosed,
}

/// One event of a room's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEvent {
    /// The room.
    pub room_id: Uuid,
    /// Its sequence in the room: 1, 2, 3, ...
    pub sequence: u64,
    /// When it happened.
    pub occurred_at: UnixMillis,
    /// What happened.
    pub kind: RoomEventKind,
}

/// The result of a successful change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomChange {
    /// The room's state after the change (closed rooms included, with `closed_at` set).
    pub room: Room,
    /// Every event the change appended, in order, across all rooms it touched (a join that
    /// moves the user out of another room appends events there too).
    pub events: Vec<RoomEvent>,
    /// The room the user left to make this change, when it was in one.
    pub left_room: Option<Uuid>,
}

/// Why a room change was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    /// No such room, or it is closed.
    #[error("room not found")]
    NotFound,
    /// The room has `capacity` members.
    #[error("room is full")]
    Full,
    /// Invite-only and the user is not invited.
    #[error("room is invite-only and you are not invited")]
    NotInvited,
    /// The user was kicked and not invited again.
    #[error("you were kicked from this room")]
    Banned,
    /// The caller is not a member.
    #[error("you are not a member of this room")]
    NotMember,
    /// The target of a kick is not a member.
    #[error("that user is not a member of this room")]
    TargetNotMember,
    /// Only the owner may do this.
    #[error("only the room's owner may do this")]
    NotOwner,
    /// The owner tried to kick itself.
    #[error("the owner cannot kick itself; leave the room instead")]
    KickSelf,
    /// The data would have more than the allowed number of keys.
    #[error("room data would have {0} keys; at most {max} are allowed", max = MAX_DATA_KEYS)]
    TooManyKeys(usize),
    /// The room would have more than the allowed number of invitations.
    #[error("the room would have {0} invitations; at most {max} are allowed", max = MAX_INVITED)]
    TooManyInvited(usize),
    /// The user does not exist.
    #[error("user not found")]
    UserNotFound,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Most keys in a room's data.
pub const MAX_DATA_KEYS: usize = 64;
/// Most invited users per room.
pub const MAX_INVITED: usize = 256;

/// What `events_after` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventsAfter {
    /// The events after the given sequence, in order (at most the limit; empty when up to date).
    Events(Vec<RoomEvent>),
    /// Some events after the given sequence are no longer retained: start from this snapshot.
    Snapshot(Room),
    /// The given sequence is beyond the room's latest.
    Ahead {
        /// The room's latest sequence.
        latest: u64,
    },
}

/// A ListRooms query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomQuery {
    /// Only rooms whose data has each of these key/value pairs.
    pub data_equals: BTreeMap<String, String>,
    /// Only rooms with at least this many free seats.
    pub min_free_seats: u32,
    /// At most this many rooms.
    pub limit: u32,
    /// Continue after this position (from a previous page).
    pub after: Option<RoomCursor>,
}

/// A position in the ListRooms order (newest first, then by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomCursor {
    /// The last listed room's creation time.
    pub created_at: UnixMillis,
    /// The last listed room's id.
    pub id: Uuid,
}

/// How many rooms are open and how many users are in them, at one moment (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomCensus {
    /// Open rooms, public and private.
    pub open_rooms: u64,
    /// Users in an open room (each is in at most one).
    pub members: u64,
}

/// Storage for rooms. Every method is one transaction.
#[async_trait]
pub trait RoomStore: Send + Sync + 'static {
    /// Creates a room with its owner as only member (sequence 0), moving the owner out of its
    /// current room. Fails with [`RoomError::UserNotFound`] for an unknown owner.
    async fn create_room(&self, room: NewRoom, now: UnixMillis) -> Result<RoomChange, RoomError>;

    /// Puts `user` into the room, moving it out of its current room. Joining the room it is
    /// already in changes nothing and returns no events.
    async fn join_room(
        &self,
        room_id: Uuid,
        user: Uuid,
        now: UnixMillis,
    ) -> Result<RoomChange, RoomError>;

    /// Takes `user` out of the room (reason `Left` or `Disconnected`), handing ownership on or
    /// closing the room as needed.
    async fn leave_room(
        &self,
        room_id: Uuid,
        user: Uuid,
        reason: LeaveReason,
        now: UnixMillis,
    ) -> Result<RoomChange, RoomError>;

    /// The owner `by` removes `target` (reason `Kicked`), withdraws its invitation and bans it
    /// until invited again.
    async fn kick_member(
        &self,
        room_id: Uuid,
        by: Uuid,
        target: Uuid,
        now: UnixMillis,
    ) -> Result<RoomChange, RoomError>;

    /// The owner `by` changes data and invitations, as one `DataChanged` event (none when
    /// nothing actually changes). Enforces [`MAX_DATA_KEYS`] and [`MAX_INVITED`] on the result.
    async fn update_room_data(
        &self,
        room_id: Uuid,
        by: Uuid,
        update: DataUpdate,
        now: UnixMillis,
    ) -> Result<RoomChange, RoomError>;

    /// A room by id, open or closed.
    async fn room(&self, room_id: Uuid) -> Result<Option<Room>, StoreError>;

    /// The room `user` is in.
    async fn current_room(&self, user: Uuid) -> Result<Option<Room>, StoreError>;

    /// Open public rooms, newest first, filtered.
    async fn list_rooms(&self, query: RoomQuery) -> Result<Vec<Room>, StoreError>;

    /// The room's events after sequence `after`, at most `limit` of them; see [`EventsAfter`].
    /// `None` when the room does not exist.
    async fn events_after(
        &self,
        room_id: Uuid,
        after: u64,
        limit: u32,
    ) -> Result<Option<EventsAfter>, StoreError>;

    /// How many rooms are open and how many members they have, read in one snapshot.
    async fn census(&self) -> Result<RoomCensus, StoreError>;

    /// How many of its latest events each room keeps.
    fn retained_events(&self) -> u64;

    /// How many bytes of payload (as stored) the events a room keeps may hold at most: the
    /// oldest go first, so a room's history never exceeds this however large its events.
    fn retained_event_bytes(&self) -> u64;
}

//! The broker's shared state: who is attached to which replica, and the pairs of users that asked
//! for, or agreed to, a peer-to-peer connection.
//!
//! Every broker replica reads and writes this state, so a user attached to one replica can reach a
//! user attached to another: the store says where the addressee is and what the pair allows; the
//! cross-replica [`Bus`](crate::Bus) carries the signal there.
//!
//! - **Presence** is one row per user that has attached at least once and not been forgotten: its
//!   current attachment (id, replica, what it announced) and, once the attachment ends, when. A
//!   newer attachment replaces the row ([`BrokerStore::attach`] returns the one it superseded). A
//!   replica that dies leaves rows that look attached; replicas record heartbeats, and
//!   [`BrokerStore::detach_silent_replicas`] marks the rows of a silent replica detached as of its
//!   last heartbeat. A row detached for longer than the grace period is
//!   [forgotten](BrokerStore::forget) with all the user's pairs.
//! - **Pairs** are keyed by the two users, unordered. A pair is either a pending request (from one
//!   side to the other) or agreed. Two requests that cross make the pair agreed. An agreed pair may
//!   hold a relay allocation.
//!
//! The announcement (the client's certificate fingerprint, candidates, relay policy and NAT type)
//! is opaque here: the broker encodes it, the store keeps at most [`MAX_ANNOUNCEMENT_BYTES`] of it.
//!
//! Every method is one transaction.

use async_trait::async_trait;
use uuid::Uuid;

use crate::{StoreError, UnixMillis};

/// Longest announcement a presence row holds.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 4096;

/// Checks an announcement's size (every backend calls this before writing one).
pub fn check_announcement(announcement: &[u8]) -> Result<(), StoreError> {
    if announcement.len() > MAX_ANNOUNCEMENT_BYTES {
        return Err(StoreError::Backend(
            format!(
                "announcement of {} bytes exceeds {MAX_ANNOUNCEMENT_BYTES}",
                announcement.len()
            )
            .into(),
        ));
    }
    Ok(())
}

/// A user's current (or last) attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The user.
    pub user: Uuid,
    /// The attachment.
    pub attachment_id: Uuid,
    /// The replica holding (or that held) the attachment.
    pub replica_id: Uuid,
    /// What the client announced (opaque, at most [`MAX_ANNOUNCEMENT_BYTES`]).
    pub announcement: Vec<u8>,
    /// When the attachment started.
    pub attached_at: UnixMillis,
    /// When it ended; `None` while it is live.
    pub detached_at: Option<UnixMillis>,
}

impl Presence {
    /// True while the attachment is live.
    pub fn online(&self) -> bool {
        self.detached_at.is_none()
    }
}

/// A new attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAttachment {
    /// The user (must exist).
    pub user: Uuid,
    /// The new attachment's id.
    pub attachment_id: Uuid,
    /// The replica holding it.
    pub replica_id: Uuid,
    /// What the client announced (at most [`MAX_ANNOUNCEMENT_BYTES`]).
    pub announcement: Vec<u8>,
    /// The SHA-256 of the client's certificate, as announced: no other live attachment may
    /// announce it.
    pub fingerprint: [u8; 32],
}

/// Where a pair is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairState {
    /// `requester` asked the other user for a connection; it has not answered.
    Pending {
        /// Who asked.
        requester: Uuid,
    },
    /// Both sides agreed.
    Agreed,
}

/// A relay allocation held by an agreed pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayAllocation {
    /// The allocation id (random, chosen by the broker).
    pub id: [u8; 16],
    /// When its current grant expires.
    pub expires_at: UnixMillis,
}

/// Two users that asked for, or agreed to, a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    /// One user (the one whose id sorts first).
    pub low: Uuid,
    /// The other user.
    pub high: Uuid,
    /// Pending or agreed.
    pub state: PairState,
    /// The pair's relay allocation, if it holds one (only agreed pairs do).
    pub relay: Option<RelayAllocation>,
    /// When the pair (its first request) was created.
    pub created_at: UnixMillis,
}

impl Pair {
    /// The user of the pair that is not `user` (`user` must be one of the two).
    pub fn other(&self, user: Uuid) -> Uuid {
        if self.low == user {
            self.high
        } else {
            self.low
        }
    }
}

/// Bounds on how many pairs a user may be part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairLimits {
    /// Most pending requests a user may have sent and not seen answered.
    pub max_outgoing_pending: u32,
    /// Most pending requests waiting for one user's answer: what others can put on a user is
    /// this small cap, which never keeps the user from making or agreeing pairs of its own.
    pub max_incoming_pending: u32,
    /// Most pairs a user may be part of, agreed or requested by itself (requests waiting for its
    /// answer count against `max_incoming_pending` instead).
    pub max_pairs: u32,
}

impl Default for PairLimits {
    fn default() -> Self {
        Self {
            max_outgoing_pending: 64,
            max_incoming_pending: 32,
            max_pairs: 1024,
        }
    }
}

/// What [`BrokerStore::connect`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// A new pending request from the caller to the user.
    Requested,
    /// The caller's request to the user was already pending; nothing changed.
    AlreadyPending,
    /// The user had asked the caller: the requests crossed and the pair is now agreed.
    Crossed,
    /// The pair was already agreed; nothing changed.
    AlreadyAgreed,
    /// The caller already has [`PairLimits::max_outgoing_pending`] unanswered requests, or is in
    /// [`PairLimits::max_pairs`] pairs of its own; nothing changed.
    CallerAtLimit,
    /// The user already has [`PairLimits::max_incoming_pending`] requests waiting for its
    /// answer, or is in [`PairLimits::max_pairs`] pairs of its own; nothing changed.
    PeerAtLimit,
}

/// What [`BrokerStore::forget`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forgotten {
    /// The forgotten presence row.
    pub presence: Presence,
    /// Every pair the user was part of, now deleted.
    pub pairs: Vec<Pair>,
}

/// Storage for the broker; see the module docs.
#[async_trait]
pub trait BrokerStore: Send + Sync + 'static {
    /// Makes `attachment` the user's current one (live), returning the row it replaced, if any
    /// (live or detached). Fails with [`StoreError::NotFound`] for an unknown user, with
    /// [`StoreError::FingerprintTaken`] when another user's live attachment announced the same
    /// fingerprint (changing nothing), and with [`StoreError::Backend`] for an announcement
    /// longer than [`MAX_ANNOUNCEMENT_BYTES`].
    async fn attach(
        &self,
        attachment: NewAttachment,
        now: UnixMillis,
    ) -> Result<Option<Presence>, StoreError>;

    /// Replaces the announcement of the user's attachment, if `attachment_id` is still its current
    /// one (returns false otherwise, changing nothing). Fails with [`StoreError::Backend`] for an
    /// announcement longer than [`MAX_ANNOUNCEMENT_BYTES`].
    async fn announce(
        &self,
        user: Uuid,
        attachment_id: Uuid,
        announcement: Vec<u8>,
    ) -> Result<bool, StoreError>;

    /// Marks the user's attachment detached at `now`, if `attachment_id` is still its current one
    /// and live (returns false otherwise, changing nothing).
    async fn detach(
        &self,
        user: Uuid,
        attachment_id: Uuid,
        now: UnixMillis,
    ) -> Result<bool, StoreError>;

    /// Marks every live attachment of `replica_id` detached at `now` (a replica shutting down);
    /// returns how many.
    async fn detach_replica(&self, replica_id: Uuid, now: UnixMillis) -> Result<u64, StoreError>;

    /// Records that `replica_id` is alive at `now`.
    async fn replica_heartbeat(&self, replica_id: Uuid, now: UnixMillis) -> Result<(), StoreError>;

    /// For every replica whose latest heartbeat is before `silent_before`: marks its live
    /// attachments detached as of that heartbeat, and forgets the replica. Live attachments of a
    /// replica that never recorded a heartbeat are left alone. Returns how many attachments it
    /// marked.
    async fn detach_silent_replicas(&self, silent_before: UnixMillis) -> Result<u64, StoreError>;

    /// The presence rows of `users` (at most 1024; unknown users and users never attached are
    /// simply absent), in no particular order.
    async fn presence(&self, users: &[Uuid]) -> Result<Vec<Presence>, StoreError>;

    /// Up to `limit` presence rows detached before `cutoff`, longest detached first.
    async fn detached_before(
        &self,
        cutoff: UnixMillis,
        limit: u32,
    ) -> Result<Vec<Presence>, StoreError>;

    /// Deletes the user's presence row and every pair it is part of, if its current attachment is
    /// still `attachment_id` and detached before `cutoff` (returns `None` otherwise, changing
    /// nothing: the user re-attached meanwhile).
    async fn forget(
        &self,
        user: Uuid,
        attachment_id: Uuid,
        cutoff: UnixMillis,
    ) -> Result<Option<Forgotten>, StoreError>;

    /// `from` asks `to` for a connection (`from != to`; both must exist, else
    /// [`StoreError::NotFound`]). See [`ConnectOutcome`] for what it does.
    async fn connect(
        &self,
        from: Uuid,
        to: Uuid,
        limits: PairLimits,
        now: UnixMillis,
    ) -> Result<ConnectOutcome, StoreError>;

    /// `by` accepts the pending request of `requester`: the pair becomes agreed. Returns false
    /// (changing nothing) when `requester` has no pending request to `by`.
    async fn accept(&self, by: Uuid, requester: Uuid) -> Result<bool, StoreError>;

    /// `by` refuses the pending request of `requester`: the pair is deleted. Returns false
    /// (changing nothing) when `requester` has no pending request to `by`.
    async fn reject(&self, by: Uuid, requester: Uuid) -> Result<bool, StoreError>;

    /// Deletes the pair of `a` and `b`, whatever its state; returns it, or `None` if there was
    /// none.
    async fn close(&self, a: Uuid, b: Uuid) -> Result<Option<Pair>, StoreError>;

    /// The pair of `a` and `b`, if any.
    async fn pair(&self, a: Uuid, b: Uuid) -> Result<Option<Pair>, StoreError>;

    /// Every pair `user` is part of (at most [`PairLimits::max_pairs`] of the limits it was
    /// created under), oldest first.
    async fn pairs_of(&self, user: Uuid) -> Result<Vec<Pair>, StoreError>;

    /// Records the relay allocation of the agreed pair of `a` and `b` (replacing any). Returns
    /// false (changing nothing) when the pair is not agreed.
    async fn set_relay(
        &self,
        a: Uuid,
        b: Uuid,
        allocation: RelayAllocation,
    ) -> Result<bool, StoreError>;
}

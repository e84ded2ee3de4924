//! What [`BrokerStore::connect`](crate::BrokerStore::connect) does, given what its transaction
//! read: the pair of the two users if there is one, and otherwise how many pairs each is in.
//! Pure: no database.
//!
//! An existing pair decides alone: the limits bound how many pairs a user is in, and answering
//! or repeating a request adds none, so a crossing request is agreed even for a user at its
//! limits. A new request must fit the caller's limits, then the peer's.

use uuid::Uuid;

use crate::broker::{ConnectOutcome, PairLimits, PairState};

/// How many pairs the two users of a new request are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairCounts {
    /// Requests the caller sent that are still pending.
    pub caller_outgoing_pending: u64,
    /// Requests waiting for the caller's answer.
    pub caller_incoming_pending: u64,
    /// Pairs the caller is part of, pending either way or agreed.
    pub caller_pairs: u64,
    /// Requests waiting for the peer's answer.
    pub peer_incoming_pending: u64,
    /// Pairs the peer is part of, pending either way or agreed.
    pub peer_pairs: u64,
}

/// What a request from `from` does to the existing pair in `state`: nothing
/// ([`ConnectOutcome::AlreadyPending`], [`ConnectOutcome::AlreadyAgreed`]), or agree it
/// ([`ConnectOutcome::Crossed`]).
pub fn connect_existing(from: Uuid, state: PairState) -> ConnectOutcome {
    match state {
        PairState::Agreed => ConnectOutcome::AlreadyAgreed,
        PairState::Pending { requester } if requester == from => ConnectOutcome::AlreadyPending,
        PairState::Pending { .. } => ConnectOutcome::Crossed,
    }
}

/// Whether a new request fits the limits: [`ConnectOutcome::Requested`] when it does (the caller
/// then stores it), else which side is at its limit. A user's own pairs are those it agreed or
/// asked for; requests waiting for its answer count against their own cap only.
pub fn connect_new(counts: PairCounts, limits: PairLimits) -> ConnectOutcome {
    let max_pairs = u64::from(limits.max_pairs);
    let caller_own = counts
        .caller_pairs
        .saturating_sub(counts.caller_incoming_pending);
    let peer_own = counts
        .peer_pairs
        .saturating_sub(counts.peer_incoming_pending);
    if counts.caller_outgoing_pending >= u64::from(limits.max_outgoing_pending)
        || caller_own >= max_pairs
    {
        ConnectOutcome::CallerAtLimit
    } else if counts.peer_incoming_pending >= u64::from(limits.max_incoming_pending)
        || peer_own >= max_pairs
    {
        ConnectOutcome::PeerAtLimit
    } else {
        ConnectOutcome::Requested
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PairLimits = PairLimits {
        max_outgoing_pending: 2,
        max_incoming_pending: 2,
        max_pairs: 3,
    };

    /// Counts with no incoming requests.
    fn counts(caller_outgoing_pending: u64, caller_pairs: u64, peer_pairs: u64) -> PairCounts {
        PairCounts {
            caller_outgoing_pending,
            caller_incoming_pending: 0,
            caller_pairs,
            peer_incoming_pending: 0,
            peer_pairs,
        }
    }

    #[test]
    fn incoming_requests_have_their_own_cap_and_never_fill_the_pair_limit() {
        let with_incoming = |caller_incoming, caller_pairs, peer_incoming, peer_pairs| PairCounts {
            caller_outgoing_pending: 0,
            caller_incoming_pending: caller_incoming,
            caller_pairs,
            peer_incoming_pending: peer_incoming,
            peer_pairs,
        };
        assert_eq!(
            connect_new(with_incoming(2, 4, 0, 0), LIMITS),
            ConnectOutcome::Requested,
            "a caller asked by others still asks"
        );
        assert_eq!(
            connect_new(with_incoming(0, 0, 1, 3), LIMITS),
            ConnectOutcome::Requested,
            "a peer with one request waiting and two pairs of its own"
        );
        assert_eq!(
            connect_new(with_incoming(0, 0, 2, 2), LIMITS),
            ConnectOutcome::PeerAtLimit,
            "a peer whose incoming cap is full"
        );
        assert_eq!(
            connect_new(with_incoming(0, 0, 1, 4), LIMITS),
            ConnectOutcome::PeerAtLimit,
            "a peer with three pairs of its own"
        );
    }

    #[test]
    fn an_existing_pair_decides_by_its_state_and_requester() {
        let (from, to) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(
            connect_existing(from, PairState::Agreed),
            ConnectOutcome::AlreadyAgreed
        );
        assert_eq!(
            connect_existing(from, PairState::Pending { requester: from }),
            ConnectOutcome::AlreadyPending
        );
        assert_eq!(
            connect_existing(from, PairState::Pending { requester: to }),
            ConnectOutcome::Crossed
        );
    }

    #[test]
    fn a_new_request_fits_the_callers_limits_then_the_peers() {
        assert_eq!(
            connect_new(counts(1, 2, 2), LIMITS),
            ConnectOutcome::Requested
        );
        assert_eq!(
            connect_new(counts(2, 2, 0), LIMITS),
            ConnectOutcome::CallerAtLimit
        );
        assert_eq!(
            connect_new(counts(0, 3, 0), LIMITS),
            ConnectOutcome::CallerAtLimit
        );
        assert_eq!(
            connect_new(counts(0, 0, 3), LIMITS),
            ConnectOutcome::PeerAtLimit
        );
        assert_eq!(
            connect_new(counts(2, 3, 3), LIMITS),
            ConnectOutcome::CallerAtLimit
        );
    }

    #[test]
    fn zero_limits_refuse_every_new_request() {
        let none = PairLimits {
            max_outgoing_pending: 0,
            max_incoming_pending: 0,
            max_pairs: 0,
        };
        assert_eq!(
            connect_new(counts(0, 0, 0), none),
            ConnectOutcome::CallerAtLimit
        );
    }
}

//! The requests on the Attach stream that wait for their answer, by `request_id`.
//!
//! Bounded: a caller that gave up (its timeout fired) leaves a closed reply channel behind,
//! which is purged before the map counts as full.

use std::collections::HashMap;

use rally_proto::broker::v1::{Candidate, NatType, RelayGrant, RoomPresence};
use tokio::sync::oneshot;

use crate::{Error, Result};

/// Most requests in flight on one link.
pub(crate) const MAX_PENDING: usize = 1024;

/// A successful immediate answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// Accepted.
    Ack,
    /// The answer to QueryRoomPresence.
    RoomPresence(RoomPresence),
    /// The answer to RequestRelayGrant.
    RelayGrant(RelayGrant),
}

/// Where an answer goes.
pub(crate) type Reply = oneshot::Sender<Result<Answer>>;

/// A request waiting for its answer.
#[derive(Debug)]
pub(crate) struct Waiting {
    /// The caller.
    pub(crate) reply: Reply,
    /// Candidates to remember for re-attaching once the server accepts them (UpdateCandidates).
    pub(crate) on_ack: Option<(Vec<Candidate>, NatType)>,
}

/// The waiting requests of one attachment.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    waiting: HashMap<u64, Waiting>,
}

impl Pending {
    /// Adds a request; gives it back when [`MAX_PENDING`] callers are still waiting.
    pub(crate) fn insert(&mut self, request_id: u64, waiting: Waiting) -> Result<(), Waiting> {
        if self.waiting.len() >= MAX_PENDING {
            self.purge_abandoned();
        }
        if self.waiting.len() >= MAX_PENDING {
            return Err(waiting);
        }
        self.waiting.insert(request_id, waiting);
        Ok(())
    }

    /// The request `request_id`, which is no longer waiting.
    pub(crate) fn take(&mut self, request_id: u64) -> Option<Waiting> {
        self.waiting.remove(&request_id)
    }

    /// Forgets requests whose caller stopped waiting.
    pub(crate) fn purge_abandoned(&mut self) {
        self.waiting.retain(|_, w| !w.reply.is_closed());
    }

    /// Answers every waiting request with `error`.
    pub(crate) fn fail_all(&mut self, error: &Error) {
        for (_, waiting) in self.waiting.drain() {
            // A caller that stopped waiting does not care.
            let _ = waiting.reply.send(Err(error.clone()));
        }
    }

    /// How many requests wait.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting() -> (Waiting, oneshot::Receiver<Result<Answer>>) {
        let (reply, rx) = oneshot::channel();
        (
            Waiting {
                reply,
                on_ack: None,
            },
            rx,
        )
    }

    #[test]
    fn a_full_map_refuses_until_callers_give_up() {
        let mut pending = Pending::default();
        let mut receivers = Vec::new();
        for id in 0..MAX_PENDING as u64 {
            let (w, rx) = waiting();
            assert!(pending.insert(id, w).is_ok());
            receivers.push(rx);
        }
        let (w, _rx) = waiting();
        let refused = pending.insert(9999, w).expect_err("full");
        // One caller gives up: its slot is reclaimed.
        receivers.pop();
        assert!(pending.insert(9999, refused).is_ok());
        assert_eq!(pending.len(), MAX_PENDING);
    }

    #[test]
    fn failing_all_answers_every_caller() {
        let mut pending = Pending::default();
        let (w, mut rx) = waiting();
        pending.insert(7, w).expect("room");
        pending.fail_all(&Error::BrokerUnavailable);
        assert_eq!(
            rx.try_recv().expect("answered"),
            Err(Error::BrokerUnavailable)
        );
        assert!(pending.take(7).is_none());
    }
}

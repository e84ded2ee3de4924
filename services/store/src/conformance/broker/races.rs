//! Conformance cases for concurrent broker changes: crossing requests end in one agreed pair,
//! concurrent requests stay within the limits, and concurrent attaches of one user each
//! supersede the one before, whatever the interleaving.

use std::collections::BTreeSet;

use futures::future::join_all;
use uuid::Uuid;

use super::super::RACE_ROUNDS;
use super::super::must;
use super::super::rooms::{at, user, users};
use super::{UsersAndBroker, attachment, expected_pair, pair, presence_of};
use crate::StoreError;
use crate::broker::{ConnectOutcome, PairLimits, PairState};

/// How many pairs of users cross their requests at once in each round.
const CROSSING_PAIRS: usize = 8;
/// How many requests race against one user's limit.
const RACERS: usize = 20;
/// The limit they race against.
const LIMIT: u32 = 5;

/// Pairs of users asking each other at the same moment: in every pair, one request is stored and
/// the other crosses it, and the pair ends agreed: never two pending requests, never an error.
pub async fn crossing_connects_end_in_one_agreed_pair(store: &dyn UsersAndBroker) {
    let limits = PairLimits::default();
    for round in 0..RACE_ROUNDS {
        let left = users(store, "Left", CROSSING_PAIRS).await;
        let right = users(store, "Right", CROSSING_PAIRS).await;
        let requests = left
            .iter()
            .zip(&right)
            .flat_map(|(a, b)| [(*a, *b), (*b, *a)]);
        let outcomes =
            join_all(requests.map(|(from, to)| store.connect(from, to, limits, at(1)))).await;
        let outcomes: Vec<ConnectOutcome> = outcomes
            .into_iter()
            .map(|outcome| must("a racing connect", outcome))
            .collect();
        for (index, (a, b)) in left.iter().zip(&right).enumerate() {
            let mut both = [outcomes[2 * index], outcomes[2 * index + 1]];
            both.sort_by_key(|outcome| *outcome == ConnectOutcome::Crossed);
            assert_eq!(
                both,
                [ConnectOutcome::Requested, ConnectOutcome::Crossed],
                "round {round}: one request is stored and the other crosses it"
            );
            assert_eq!(
                pair(store, *a, *b).await,
                Some(expected_pair(*a, *b, PairState::Agreed, at(1))),
                "round {round}: the pair ends agreed"
            );
        }
    }
}

/// One user sending twenty requests at once with room for five unanswered ones: exactly five
/// are stored, the others are refused, and the user is in exactly five pairs.
pub async fn concurrent_connects_of_one_user_respect_max_outgoing_pending(
    store: &dyn UsersAndBroker,
) {
    let limits = PairLimits {
        max_outgoing_pending: LIMIT,
        max_incoming_pending: 1024,
        max_pairs: 1024,
    };
    for round in 0..RACE_ROUNDS {
        let caller = user(store, "Caller").await;
        let peers = users(store, "Peer", RACERS).await;
        let outcomes = join_all(
            peers
                .iter()
                .map(|peer| store.connect(caller, *peer, limits, at(1))),
        )
        .await;
        let stored = tally(round, outcomes, ConnectOutcome::CallerAtLimit);
        let pairs = must("pairs_of", store.pairs_of(caller).await);
        let paired: BTreeSet<Uuid> = pairs.iter().map(|pair| pair.other(caller)).collect();
        assert_eq!(paired.len(), pairs.len());
        assert_eq!(
            pairs.len(),
            stored,
            "round {round}: the caller's pairs are the stored requests"
        );
    }
}

/// Twenty users asking one user at once, which has room for five requests waiting for its
/// answer: exactly five requests are stored, the others are refused, and the user is in exactly
/// five pairs.
pub async fn concurrent_connects_to_one_user_respect_its_max_incoming_pending(
    store: &dyn UsersAndBroker,
) {
    let limits = PairLimits {
        max_outgoing_pending: 64,
        max_incoming_pending: LIMIT,
        max_pairs: 1024,
    };
    for round in 0..RACE_ROUNDS {
        let popular = user(store, "Popular").await;
        let fans = users(store, "Fan", RACERS).await;
        let outcomes = join_all(
            fans.iter()
                .map(|fan| store.connect(*fan, popular, limits, at(1))),
        )
        .await;
        let stored = tally(round, outcomes, ConnectOutcome::PeerAtLimit);
        assert_eq!(
            must("pairs_of", store.pairs_of(popular).await).len(),
            stored,
            "round {round}: the peer's pairs are the stored requests"
        );
    }
}

/// Checks that exactly [`LIMIT`] of `outcomes` are `Requested` and the rest `refused`; how many
/// were stored.
fn tally(
    round: usize,
    outcomes: Vec<Result<ConnectOutcome, crate::StoreError>>,
    refused: ConnectOutcome,
) -> usize {
    let mut stored = 0;
    for outcome in outcomes {
        match must("a racing connect", outcome) {
            ConnectOutcome::Requested => stored += 1,
            other => assert_eq!(other, refused, "round {round}: an unexpected outcome"),
        }
    }
    assert_eq!(
        stored,
        usize::try_from(LIMIT).unwrap_or(usize::MAX),
        "round {round}: exactly the limit's worth of requests is stored"
    );
    stored
}

/// Two users attaching at once with one fingerprint: exactly one is admitted, the other is
/// `FingerprintTaken`.
pub async fn concurrent_attaches_of_two_users_with_one_fingerprint_admit_one(
    store: &dyn UsersAndBroker,
) {
    for round in 0..RACE_ROUNDS {
        let (alice, bob) = (user(store, "Alice").await, user(store, "Bob").await);
        let first = attachment(alice, Uuid::new_v4(), b"a");
        let mut second = attachment(bob, Uuid::new_v4(), b"b");
        second.fingerprint = first.fingerprint;
        let outcomes = join_all([
            store.attach(first.clone(), at(1)),
            store.attach(second.clone(), at(1)),
        ])
        .await;
        let admitted = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        let taken = outcomes
            .iter()
            .filter(|outcome| matches!(outcome, Err(StoreError::FingerprintTaken)))
            .count();
        assert_eq!((admitted, taken), (1, 1), "round {round}: {outcomes:?}");
    }
}

/// Ten attaches of one user at once: each supersedes a different one (the first none), so every
/// attachment but the last is superseded exactly once, and the last is the current one.
pub async fn concurrent_attaches_of_one_user_supersede_each_attachment_once(
    store: &dyn UsersAndBroker,
) {
    const ATTACHES: usize = 10;
    for round in 0..RACE_ROUNDS {
        let alice = user(store, "Alice").await;
        let attachments: Vec<_> = (0..ATTACHES)
            .map(|_| attachment(alice, Uuid::new_v4(), b"race"))
            .collect();
        let outcomes = join_all(
            attachments
                .iter()
                .map(|attachment| store.attach(attachment.clone(), at(1))),
        )
        .await;
        let superseded: Vec<Option<Uuid>> = outcomes
            .into_iter()
            .map(|outcome| must("a racing attach", outcome).map(|row| row.attachment_id))
            .collect();
        assert_eq!(
            superseded.iter().filter(|row| row.is_none()).count(),
            1,
            "round {round}: exactly one attach came first"
        );
        let superseded: BTreeSet<Uuid> = superseded.into_iter().flatten().collect();
        assert_eq!(
            superseded.len(),
            ATTACHES - 1,
            "round {round}: an attachment was superseded twice"
        );
        let current = presence_of(store, alice)
            .await
            .map(|presence| presence.attachment_id)
            .unwrap_or_else(|| panic!("round {round}: no presence after the attaches"));
        assert!(
            !superseded.contains(&current),
            "round {round}: the current attachment was superseded"
        );
        let all: BTreeSet<Uuid> = attachments.iter().map(|new| new.attachment_id).collect();
        assert!(all.contains(&current) && superseded.is_subset(&all));
    }
}

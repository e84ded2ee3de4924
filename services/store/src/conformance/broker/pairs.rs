//! Conformance cases for pairs: requests, crossing requests, the limits, answers, closing, relay
//! allocations and listing.

use uuid::Uuid;

use super::super::must;
use super::super::rooms::{at, user, users};
use super::{ROOMY, UsersAndBroker, agree, connect, expected_pair, key, pair, pair_users};
use crate::StoreError;
use crate::broker::{ConnectOutcome, PairLimits, PairState, RelayAllocation};

/// A request is stored pending, under its users in order (the id sorting first is `low`), and
/// reads the same whichever user is named; asking again changes nothing.
pub async fn connect_stores_a_pending_request_once(store: &dyn UsersAndBroker) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    assert_eq!(
        connect(store, alice, bob, ROOMY, at(1)).await,
        ConnectOutcome::Requested
    );
    let expected = expected_pair(alice, bob, PairState::Pending { requester: alice }, at(1));
    let stored = pair(store, alice, bob).await;
    assert_eq!(stored, Some(expected));
    assert!(stored.is_some_and(|pair| pair.low < pair.high && pair.other(alice) == bob));
    assert_eq!(
        connect(store, alice, bob, ROOMY, at(2)).await,
        ConnectOutcome::AlreadyPending
    );
    assert_eq!(
        pair(store, alice, bob).await,
        Some(expected),
        "a repeat changed the pair"
    );
}

/// A request to a user who asked the caller agrees the pair (kept from the first request's time);
/// any later request finds it agreed.
pub async fn crossing_requests_make_the_pair_agreed(store: &dyn UsersAndBroker) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    assert_eq!(
        connect(store, alice, bob, ROOMY, at(1)).await,
        ConnectOutcome::Requested
    );
    assert_eq!(
        connect(store, bob, alice, ROOMY, at(2)).await,
        ConnectOutcome::Crossed
    );
    let agreed = Some(expected_pair(alice, bob, PairState::Agreed, at(1)));
    assert_eq!(pair(store, alice, bob).await, agreed);
    for (from, to) in [(alice, bob), (bob, alice)] {
        assert_eq!(
            connect(store, from, to, ROOMY, at(3)).await,
            ConnectOutcome::AlreadyAgreed
        );
    }
    assert_eq!(pair(store, alice, bob).await, agreed);
}

/// A caller with `max_outgoing_pending` unanswered requests may not send another (requests it
/// received do not count); once one is answered, it may.
pub async fn a_caller_at_its_outgoing_pending_limit_is_refused(store: &dyn UsersAndBroker) {
    let limits = PairLimits {
        max_outgoing_pending: 2,
        max_incoming_pending: 10,
        max_pairs: 10,
    };
    let alice = user(store, "Alice").await;
    let peers = users(store, "Peer", 4).await;
    for peer in &peers[..2] {
        assert_eq!(
            connect(store, alice, *peer, limits, at(1)).await,
            ConnectOutcome::Requested
        );
    }
    assert_eq!(
        connect(store, peers[3], alice, limits, at(2)).await,
        ConnectOutcome::Requested,
        "a request to the caller is refused"
    );
    assert_eq!(
        connect(store, alice, peers[2], limits, at(3)).await,
        ConnectOutcome::CallerAtLimit
    );
    assert_eq!(
        pair(store, alice, peers[2]).await,
        None,
        "a refused request was stored"
    );

    assert!(must("accept", store.accept(peers[0], alice).await));
    assert_eq!(
        connect(store, alice, peers[2], limits, at(4)).await,
        ConnectOutcome::Requested,
        "an answered request still counts"
    );
}

/// A caller in `max_pairs` pairs of its own (agreed, or requested by it) may not start another;
/// requests waiting for its answer do not count; once one of its pairs is closed, it may.
pub async fn a_caller_in_max_pairs_pairs_is_refused(store: &dyn UsersAndBroker) {
    let limits = PairLimits {
        max_outgoing_pending: 10,
        max_incoming_pending: 10,
        max_pairs: 3,
    };
    let alice = user(store, "Alice").await;
    let others = users(store, "Other", 5).await;
    assert_eq!(
        connect(store, alice, others[0], limits, at(1)).await,
        ConnectOutcome::Requested
    );
    assert_eq!(
        connect(store, alice, others[1], limits, at(1)).await,
        ConnectOutcome::Requested
    );
    assert_eq!(
        connect(store, others[4], alice, limits, at(1)).await,
        ConnectOutcome::Requested,
        "a request to Alice"
    );
    agree(store, alice, others[2], at(1)).await;

    assert_eq!(
        connect(store, alice, others[3], limits, at(2)).await,
        ConnectOutcome::CallerAtLimit,
        "two requests of her own and an agreed pair fill her three; the one to her does not count"
    );
    assert_eq!(
        pair(store, alice, others[3]).await,
        None,
        "a refused request was stored"
    );
    assert!(must("close", store.close(alice, others[2]).await).is_some());
    assert_eq!(
        connect(store, alice, others[3], limits, at(3)).await,
        ConnectOutcome::Requested
    );
}

/// A request to a user in `max_pairs` pairs of its own is refused and stored nowhere; once one
/// of them is closed, it goes through.
pub async fn a_peer_in_max_pairs_pairs_is_refused(store: &dyn UsersAndBroker) {
    let limits = PairLimits {
        max_outgoing_pending: 10,
        max_incoming_pending: 10,
        max_pairs: 2,
    };
    let popular = user(store, "Popular").await;
    let fans = users(store, "Fan", 3).await;
    agree(store, fans[0], popular, at(1)).await;
    assert_eq!(
        connect(store, popular, fans[1], limits, at(1)).await,
        ConnectOutcome::Requested
    );

    assert_eq!(
        connect(store, fans[2], popular, limits, at(2)).await,
        ConnectOutcome::PeerAtLimit
    );
    assert_eq!(
        pair(store, fans[2], popular).await,
        None,
        "a refused request was stored"
    );
    assert!(must("pairs_of", store.pairs_of(fans[2]).await).is_empty());

    assert!(must("close", store.close(popular, fans[0]).await).is_some());
    assert_eq!(
        connect(store, fans[2], popular, limits, at(3)).await,
        ConnectOutcome::Requested
    );
}

/// A user with `max_incoming_pending` requests waiting for its answer gets no more; it still
/// asks others itself, and once it rejects one, a new request goes through.
pub async fn a_peer_with_max_incoming_pending_requests_is_refused(store: &dyn UsersAndBroker) {
    let limits = PairLimits {
        max_outgoing_pending: 10,
        max_incoming_pending: 2,
        max_pairs: 10,
    };
    let victim = user(store, "Victim").await;
    let others = users(store, "Other", 4).await;
    for other in &others[..2] {
        assert_eq!(
            connect(store, *other, victim, limits, at(1)).await,
            ConnectOutcome::Requested
        );
    }
    assert_eq!(
        connect(store, others[2], victim, limits, at(2)).await,
        ConnectOutcome::PeerAtLimit
    );
    assert_eq!(pair(store, others[2], victim).await, None);
    assert_eq!(
        connect(store, victim, others[3], limits, at(2)).await,
        ConnectOutcome::Requested,
        "requests waiting for the victim never stop it asking"
    );
    assert!(must("reject", store.reject(victim, others[0]).await));
    assert_eq!(
        connect(store, others[2], victim, limits, at(3)).await,
        ConnectOutcome::Requested
    );
}

/// The limits bound new pairs only: at its limits, a user repeating its request gets
/// `AlreadyPending`, a user asking back gets `Crossed`, and then `AlreadyAgreed`.
pub async fn repeated_and_crossing_requests_are_answered_at_the_limits(store: &dyn UsersAndBroker) {
    let tight = PairLimits {
        max_outgoing_pending: 1,
        max_incoming_pending: 1,
        max_pairs: 1,
    };
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    assert_eq!(
        connect(store, alice, bob, tight, at(1)).await,
        ConnectOutcome::Requested
    );
    assert_eq!(
        connect(store, alice, bob, tight, at(2)).await,
        ConnectOutcome::AlreadyPending
    );
    assert_eq!(
        connect(store, bob, alice, tight, at(3)).await,
        ConnectOutcome::Crossed
    );
    assert_eq!(
        connect(store, alice, bob, tight, at(4)).await,
        ConnectOutcome::AlreadyAgreed
    );
    assert_eq!(
        pair(store, alice, bob).await,
        Some(expected_pair(alice, bob, PairState::Agreed, at(1)))
    );
}

/// A request from or to an unknown user fails as `NotFound` and stores nothing.
pub async fn connecting_with_an_unknown_user_is_not_found_and_stores_nothing(
    store: &dyn UsersAndBroker,
) {
    let alice = user(store, "Alice").await;
    let ghost = Uuid::new_v4();
    for (from, to) in [(alice, ghost), (ghost, alice)] {
        let outcome = store.connect(from, to, ROOMY, at(1)).await;
        assert!(
            matches!(outcome, Err(StoreError::NotFound(_))),
            "{from} to {to}: expected NotFound, got {outcome:?}"
        );
    }
    assert_eq!(pair(store, alice, ghost).await, None);
    assert!(must("pairs_of", store.pairs_of(alice).await).is_empty());
}

/// Only the user asked may accept, only a pending request, and only once; accepting keeps the
/// pair's creation time.
pub async fn accept_agrees_only_a_pending_request_in_the_right_direction(
    store: &dyn UsersAndBroker,
) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let carol = user(store, "Carol").await;
    assert_eq!(
        connect(store, alice, bob, ROOMY, at(1)).await,
        ConnectOutcome::Requested
    );
    assert!(
        !must("accept", store.accept(alice, bob).await),
        "the requester accepted its own request"
    );
    assert!(
        !must("accept", store.accept(bob, carol).await),
        "no request at all"
    );
    assert!(
        !must("accept", store.accept(carol, alice).await),
        "no request to carol"
    );
    assert_eq!(
        pair(store, alice, bob).await,
        Some(expected_pair(
            alice,
            bob,
            PairState::Pending { requester: alice },
            at(1)
        ))
    );

    assert!(must("accept", store.accept(bob, alice).await));
    assert_eq!(
        pair(store, alice, bob).await,
        Some(expected_pair(alice, bob, PairState::Agreed, at(1)))
    );
    assert!(
        !must("accept", store.accept(bob, alice).await),
        "accepted twice"
    );
}

/// Only the user asked may reject, only a pending request; rejecting deletes the pair, and an
/// agreed pair cannot be rejected.
pub async fn reject_deletes_only_a_pending_request_in_the_right_direction(
    store: &dyn UsersAndBroker,
) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let carol = user(store, "Carol").await;
    assert_eq!(
        connect(store, alice, bob, ROOMY, at(1)).await,
        ConnectOutcome::Requested
    );
    assert!(
        !must("reject", store.reject(alice, bob).await),
        "the requester rejected its own request"
    );
    assert!(
        !must("reject", store.reject(carol, alice).await),
        "no request to carol"
    );
    assert!(pair(store, alice, bob).await.is_some());
    assert!(must("reject", store.reject(bob, alice).await));
    assert_eq!(pair(store, alice, bob).await, None);
    assert!(
        !must("reject", store.reject(bob, alice).await),
        "rejected twice"
    );

    agree(store, alice, carol, at(2)).await;
    assert!(
        !must("reject", store.reject(carol, alice).await),
        "an agreed pair was rejected"
    );
    assert_eq!(
        pair(store, alice, carol).await,
        Some(expected_pair(alice, carol, PairState::Agreed, at(2)))
    );
}

/// Close deletes the pair whatever its state, naming its users in either order, returns it as it
/// was (relay allocation included), and then finds nothing.
pub async fn close_returns_the_pair_and_is_idempotent(store: &dyn UsersAndBroker) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let carol = user(store, "Carol").await;
    assert_eq!(
        connect(store, alice, bob, ROOMY, at(1)).await,
        ConnectOutcome::Requested
    );
    assert_eq!(
        must("close", store.close(bob, alice).await),
        Some(expected_pair(
            alice,
            bob,
            PairState::Pending { requester: alice },
            at(1)
        ))
    );
    assert_eq!(pair(store, alice, bob).await, None);
    assert_eq!(
        must("close", store.close(alice, bob).await),
        None,
        "closed twice"
    );

    agree(store, alice, carol, at(2)).await;
    let relay = RelayAllocation {
        id: [9; 16],
        expires_at: at(60),
    };
    assert!(must(
        "set_relay",
        store.set_relay(alice, carol, relay).await
    ));
    let mut expected = expected_pair(alice, carol, PairState::Agreed, at(2));
    expected.relay = Some(relay);
    assert_eq!(
        must("close", store.close(alice, carol).await),
        Some(expected)
    );
    assert_eq!(
        must("close", store.close(carol, alice).await),
        None,
        "closed twice"
    );
    assert!(must("pairs_of", store.pairs_of(alice).await).is_empty());
}

/// A relay allocation is recorded only on an agreed pair (not on a pending one, nor on users
/// with no pair), and a later one replaces it.
pub async fn set_relay_records_only_on_agreed_pairs_and_replaces(store: &dyn UsersAndBroker) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    let first = RelayAllocation {
        id: [1; 16],
        expires_at: at(60),
    };
    let second = RelayAllocation {
        id: [2; 16],
        expires_at: at(120),
    };
    assert!(
        !must("set_relay", store.set_relay(alice, bob, first).await),
        "a relay without a pair"
    );
    assert_eq!(
        connect(store, alice, bob, ROOMY, at(1)).await,
        ConnectOutcome::Requested
    );
    assert!(
        !must("set_relay", store.set_relay(alice, bob, first).await),
        "a relay on a pending pair"
    );
    assert_eq!(
        pair(store, alice, bob).await.and_then(|pair| pair.relay),
        None
    );

    assert!(must("accept", store.accept(bob, alice).await));
    assert!(must("set_relay", store.set_relay(alice, bob, first).await));
    assert_eq!(
        pair(store, alice, bob).await.and_then(|pair| pair.relay),
        Some(first)
    );
    assert!(must("set_relay", store.set_relay(bob, alice, second).await));
    let mut expected = expected_pair(alice, bob, PairState::Agreed, at(1));
    expected.relay = Some(second);
    assert_eq!(pair(store, alice, bob).await, Some(expected));
    assert_eq!(must("pairs_of", store.pairs_of(bob).await), vec![expected]);
}

/// A user's pairs (requests it sent or received, agreed pairs) are listed oldest first, and no
/// one else's; an unknown user has none.
pub async fn pairs_of_lists_every_pair_of_the_user_oldest_first(store: &dyn UsersAndBroker) {
    let alice = user(store, "Alice").await;
    let others = users(store, "Other", 5).await;
    assert_eq!(
        connect(store, others[3], others[4], ROOMY, at(0)).await,
        ConnectOutcome::Requested
    );
    assert_eq!(
        connect(store, others[1], alice, ROOMY, at(1)).await,
        ConnectOutcome::Requested
    );
    agree(store, alice, others[2], at(2)).await;
    assert_eq!(
        connect(store, alice, others[0], ROOMY, at(3)).await,
        ConnectOutcome::Requested
    );

    let listed = must("pairs_of", store.pairs_of(alice).await);
    assert_eq!(
        listed,
        vec![
            expected_pair(
                others[1],
                alice,
                PairState::Pending {
                    requester: others[1]
                },
                at(1)
            ),
            expected_pair(alice, others[2], PairState::Agreed, at(2)),
            expected_pair(
                alice,
                others[0],
                PairState::Pending { requester: alice },
                at(3)
            ),
        ]
    );
    assert_eq!(
        pair_users(&must("pairs_of", store.pairs_of(others[4]).await)),
        vec![key(others[3], others[4])]
    );
    assert!(must("pairs_of", store.pairs_of(Uuid::new_v4()).await).is_empty());
}

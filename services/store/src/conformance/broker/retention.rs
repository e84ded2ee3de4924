//! Conformance cases for users detached for long: finding them, longest detached first, and
//! forgetting them with their pairs, unless they came back.

use uuid::Uuid;

use super::super::must;
use super::super::rooms::{at, user, users};
use super::{
    ROOMY, UsersAndBroker, agree, attach, attachment, connect, detached, key, live, pair,
    pair_users, presence_of,
};
use crate::broker::{ConnectOutcome, RelayAllocation};

/// Rows detached before the cutoff are listed longest detached first, at most `limit` of them;
/// live rows and rows detached at or after the cutoff are not.
pub async fn detached_before_lists_the_longest_detached_first_up_to_the_limit(
    store: &dyn UsersAndBroker,
) {
    let people = users(store, "Player", 5).await;
    let mut rows = Vec::new();
    for person in &people {
        let attached = attachment(*person, Uuid::new_v4(), b"p");
        attach(store, &attached, at(1)).await;
        rows.push(live(&attached, at(1)));
    }
    // people[3] stays live.
    for (index, seconds) in [(0, 30), (1, 10), (2, 20), (4, 40)] {
        must(
            "detach",
            store
                .detach(people[index], rows[index].attachment_id, at(seconds))
                .await,
        );
        rows[index].detached_at = Some(at(seconds));
    }

    let listed = must("detached_before", store.detached_before(at(40), 10).await);
    assert_eq!(
        listed,
        vec![rows[1].clone(), rows[2].clone(), rows[0].clone()]
    );
    let limited = must("detached_before", store.detached_before(at(40), 2).await);
    assert_eq!(limited, vec![rows[1].clone(), rows[2].clone()]);
    let strict = must("detached_before", store.detached_before(at(20), 10).await);
    assert_eq!(
        strict,
        vec![rows[1].clone()],
        "detached at the cutoff is not before it"
    );
    assert!(must("detached_before", store.detached_before(at(40), 0).await).is_empty());
}

/// Forgetting a user detached before the cutoff deletes its presence row and every pair it is
/// part of (pending either way or agreed), returns them, and leaves other users' pairs alone.
pub async fn forget_deletes_the_presence_and_every_pair_of_the_user_and_returns_them(
    store: &dyn UsersAndBroker,
) {
    let gone = user(store, "Gone").await;
    let people = users(store, "Player", 3).await;
    assert_eq!(
        connect(store, gone, people[0], ROOMY, at(1)).await,
        ConnectOutcome::Requested
    );
    assert_eq!(
        connect(store, people[1], gone, ROOMY, at(2)).await,
        ConnectOutcome::Requested
    );
    agree(store, gone, people[2], at(3)).await;
    let relay = RelayAllocation {
        id: [7; 16],
        expires_at: at(100),
    };
    assert!(must(
        "set_relay",
        store.set_relay(gone, people[2], relay).await
    ));
    agree(store, people[0], people[1], at(4)).await;
    let mut expected_pairs = Vec::new();
    for other in &people {
        expected_pairs.push(pair(store, gone, *other).await.expect("the pair was made"));
    }
    let attached = attachment(gone, Uuid::new_v4(), b"bye");
    attach(store, &attached, at(5)).await;
    must(
        "detach",
        store.detach(gone, attached.attachment_id, at(6)).await,
    );

    let forgotten = must(
        "forget",
        store.forget(gone, attached.attachment_id, at(10)).await,
    )
    .expect("a user detached before the cutoff is forgotten");
    assert_eq!(forgotten.presence, detached(live(&attached, at(5)), at(6)));
    let mut returned = forgotten.pairs;
    returned.sort_by_key(|pair| pair.created_at);
    assert_eq!(returned, expected_pairs, "the pairs deleted, relay and all");

    assert_eq!(presence_of(store, gone).await, None);
    assert!(must("pairs_of", store.pairs_of(gone).await).is_empty());
    for other in &people {
        assert_eq!(pair(store, gone, *other).await, None);
    }
    assert_eq!(
        pair_users(&must("pairs_of", store.pairs_of(people[0]).await)),
        vec![key(people[0], people[1])],
        "another user's pairs stay"
    );
    assert_eq!(
        must(
            "forget",
            store.forget(gone, attached.attachment_id, at(10)).await
        ),
        None,
        "forgotten twice"
    );
}

/// Forget changes nothing while the attachment is live, when it detached at or after the cutoff,
/// or once the user re-attached (even if it detached again).
pub async fn forget_does_nothing_after_a_re_attach_or_before_the_cutoff(
    store: &dyn UsersAndBroker,
) {
    let alice = user(store, "Alice").await;
    let bob = user(store, "Bob").await;
    assert_eq!(
        connect(store, alice, bob, ROOMY, at(1)).await,
        ConnectOutcome::Requested
    );
    let first = attachment(alice, Uuid::new_v4(), b"one");
    attach(store, &first, at(1)).await;
    let forget = |attachment_id, cutoff| store.forget(alice, attachment_id, cutoff);
    assert_eq!(
        must("forget", forget(first.attachment_id, at(100)).await),
        None,
        "a live attachment was forgotten"
    );
    must(
        "detach",
        store.detach(alice, first.attachment_id, at(10)).await,
    );
    assert_eq!(
        must("forget", forget(first.attachment_id, at(10)).await),
        None,
        "detached at the cutoff is not before it"
    );

    let second = attachment(alice, Uuid::new_v4(), b"two");
    attach(store, &second, at(20)).await;
    assert_eq!(
        must("forget", forget(first.attachment_id, at(100)).await),
        None,
        "forgotten after a re-attach"
    );
    must(
        "detach",
        store.detach(alice, second.attachment_id, at(30)).await,
    );
    assert_eq!(
        must("forget", forget(first.attachment_id, at(100)).await),
        None,
        "forgotten by a superseded attachment"
    );
    assert_eq!(
        presence_of(store, alice).await,
        Some(detached(live(&second, at(20)), at(30)))
    );
    assert!(
        pair(store, alice, bob).await.is_some(),
        "the pair was deleted"
    );

    assert!(
        must("forget", forget(second.attachment_id, at(100)).await).is_some(),
        "the current detached attachment is forgotten"
    );
}

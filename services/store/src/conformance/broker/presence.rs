//! Conformance cases for presence: attaching, announcing, detaching (one attachment, a replica
//! shutting down, silent replicas) and reading.

use uuid::Uuid;

use super::super::must;
use super::super::rooms::{at, user, users};
use super::{UsersAndBroker, attach, attachment, detached, live, presence_of};
use crate::StoreError;
use crate::broker::{MAX_ANNOUNCEMENT_BYTES, Presence};

/// A first attachment supersedes nothing and reads back exactly, live.
pub async fn attach_stores_a_live_presence_and_supersedes_nothing_the_first_time(
    store: &dyn UsersAndBroker,
) {
    let alice = user(store, "Alice").await;
    let first = attachment(alice, Uuid::new_v4(), b"fingerprint, candidates");
    assert_eq!(attach(store, &first, at(1)).await, None);
    let stored = presence_of(store, alice).await;
    assert_eq!(stored, Some(live(&first, at(1))));
    assert!(stored.is_some_and(|presence| presence.online()));
}

/// Each attach returns the row it replaced, whether that attachment was still live or had
/// detached, and the new one is live.
pub async fn attach_returns_the_superseded_attachment_live_or_detached(store: &dyn UsersAndBroker) {
    let alice = user(store, "Alice").await;
    let first = attachment(alice, Uuid::new_v4(), b"one");
    let second = attachment(alice, Uuid::new_v4(), b"two");
    let third = attachment(alice, Uuid::new_v4(), b"three");
    assert_eq!(attach(store, &first, at(1)).await, None);
    assert_eq!(
        attach(store, &second, at(2)).await,
        Some(live(&first, at(1))),
        "a live attachment superseded"
    );
    assert!(must(
        "detach",
        store.detach(alice, second.attachment_id, at(3)).await
    ));
    assert_eq!(
        attach(store, &third, at(4)).await,
        Some(detached(live(&second, at(2)), at(3))),
        "a detached attachment superseded"
    );
    assert_eq!(presence_of(store, alice).await, Some(live(&third, at(4))));
}

/// A fingerprint another user's live attachment announced is refused (`FingerprintTaken`,
/// nothing stored); the same user may re-announce its own, and once that user detached, the
/// fingerprint is free.
pub async fn a_fingerprint_belongs_to_one_online_user(store: &dyn UsersAndBroker) {
    let alice = user(store, "Alice").await;
    let mallory = user(store, "Mallory").await;
    let alices = attachment(alice, Uuid::new_v4(), b"alice");
    attach(store, &alices, at(1)).await;
    let mut copied = attachment(mallory, Uuid::new_v4(), b"mallory");
    copied.fingerprint = alices.fingerprint;
    let outcome = store.attach(copied.clone(), at(2)).await;
    assert!(
        matches!(outcome, Err(StoreError::FingerprintTaken)),
        "expected FingerprintTaken, got {outcome:?}"
    );
    assert_eq!(
        presence_of(store, mallory).await,
        None,
        "nothing was stored"
    );
    let again = attachment(alice, Uuid::new_v4(), b"alice again");
    assert_eq!(
        attach(store, &again, at(3)).await,
        Some(live(&alices, at(1))),
        "a user re-announces its own fingerprint"
    );
    assert!(must(
        "detach",
        store.detach(alice, again.attachment_id, at(4)).await
    ));
    assert_eq!(attach(store, &copied, at(5)).await, None);
    let outcome = store
        .attach(attachment(alice, Uuid::new_v4(), b"alice back"), at(6))
        .await;
    assert!(
        matches!(outcome, Err(StoreError::FingerprintTaken)),
        "now Mallory's live attachment holds it: {outcome:?}"
    );
}

/// Attaching an unknown user fails as `NotFound` and stores nothing.
pub async fn attach_for_an_unknown_user_is_not_found_and_stores_nothing(
    store: &dyn UsersAndBroker,
) {
    let ghost = Uuid::new_v4();
    let outcome = store
        .attach(attachment(ghost, Uuid::new_v4(), b"boo"), at(1))
        .await;
    assert!(
        matches!(outcome, Err(StoreError::NotFound(_))),
        "expected NotFound, got {outcome:?}"
    );
    assert_eq!(presence_of(store, ghost).await, None);
}

/// An announcement replaces the current attachment's and nothing else; one for a superseded
/// attachment or an unknown user changes nothing.
pub async fn announce_changes_only_the_current_attachment(store: &dyn UsersAndBroker) {
    let alice = user(store, "Alice").await;
    let first = attachment(alice, Uuid::new_v4(), b"old");
    attach(store, &first, at(1)).await;
    assert!(must(
        "announce",
        store
            .announce(alice, first.attachment_id, b"new".to_vec())
            .await
    ));
    let mut expected = live(&first, at(1));
    expected.announcement = b"new".to_vec();
    assert_eq!(presence_of(store, alice).await, Some(expected));

    let second = attachment(alice, Uuid::new_v4(), b"second");
    attach(store, &second, at(2)).await;
    assert!(
        !must(
            "announce",
            store
                .announce(alice, first.attachment_id, b"stale".to_vec())
                .await
        ),
        "a superseded attachment announced"
    );
    assert!(!must(
        "announce",
        store
            .announce(Uuid::new_v4(), first.attachment_id, b"who".to_vec())
            .await
    ));
    assert_eq!(presence_of(store, alice).await, Some(live(&second, at(2))));
}

/// Detach marks the current live attachment once; a superseded or unknown attachment, an
/// attachment already detached and an unknown user change nothing.
pub async fn detach_marks_only_the_current_live_attachment(store: &dyn UsersAndBroker) {
    let alice = user(store, "Alice").await;
    let first = attachment(alice, Uuid::new_v4(), b"one");
    attach(store, &first, at(1)).await;
    assert!(!must(
        "detach",
        store.detach(alice, Uuid::new_v4(), at(2)).await
    ));
    assert!(!must(
        "detach",
        store
            .detach(Uuid::new_v4(), first.attachment_id, at(2))
            .await
    ));
    assert_eq!(presence_of(store, alice).await, Some(live(&first, at(1))));

    assert!(must(
        "detach",
        store.detach(alice, first.attachment_id, at(3)).await
    ));
    assert!(
        !must(
            "detach",
            store.detach(alice, first.attachment_id, at(4)).await
        ),
        "detached twice"
    );
    assert_eq!(
        presence_of(store, alice).await,
        Some(detached(live(&first, at(1)), at(3))),
        "the first detach's time stays"
    );

    let second = attachment(alice, Uuid::new_v4(), b"two");
    attach(store, &second, at(5)).await;
    assert!(
        !must(
            "detach",
            store.detach(alice, first.attachment_id, at(6)).await
        ),
        "a superseded attachment detached the current one"
    );
    assert_eq!(presence_of(store, alice).await, Some(live(&second, at(5))));
}

/// A replica shutting down detaches its live attachments, and only those: others' and its
/// already detached ones stay as they are.
pub async fn detach_replica_detaches_only_that_replicas_live_attachments(
    store: &dyn UsersAndBroker,
) {
    let (closing, other) = (Uuid::new_v4(), Uuid::new_v4());
    let people = users(store, "Player", 4).await;
    let on_closing: Vec<_> = people[..3]
        .iter()
        .map(|person| attachment(*person, closing, b"x"))
        .collect();
    for attachment in &on_closing {
        attach(store, attachment, at(1)).await;
    }
    let elsewhere = attachment(people[3], other, b"y");
    attach(store, &elsewhere, at(1)).await;
    assert!(must(
        "detach",
        store
            .detach(people[2], on_closing[2].attachment_id, at(2))
            .await
    ));

    assert_eq!(
        must(
            "detach_replica",
            store.detach_replica(closing, at(10)).await
        ),
        2
    );
    assert_eq!(
        presence_of(store, people[0]).await,
        Some(detached(live(&on_closing[0], at(1)), at(10)))
    );
    assert_eq!(
        presence_of(store, people[1]).await,
        Some(detached(live(&on_closing[1], at(1)), at(10)))
    );
    assert_eq!(
        presence_of(store, people[2]).await,
        Some(detached(live(&on_closing[2], at(1)), at(2))),
        "an attachment detached earlier keeps its time"
    );
    assert_eq!(
        presence_of(store, people[3]).await,
        Some(live(&elsewhere, at(1))),
        "another replica's attachment was detached"
    );
    assert_eq!(
        must(
            "detach_replica",
            store.detach_replica(closing, at(11)).await
        ),
        0
    );
}

/// A replica silent since before the cutoff has its live attachments detached as of its latest
/// heartbeat and is forgotten (so its later attachments are left alone, as a replica's that never
/// heartbeated); a replica that heartbeated since is left alone, whatever its earlier heartbeats.
pub async fn silent_replicas_are_detached_as_of_their_last_heartbeat_and_forgotten(
    store: &dyn UsersAndBroker,
) {
    let (dead, alive) = (Uuid::new_v4(), Uuid::new_v4());
    let people = users(store, "Player", 5).await;
    let on_dead: Vec<_> = people[..3]
        .iter()
        .map(|person| attachment(*person, dead, b"d"))
        .collect();
    for attachment in &on_dead {
        attach(store, attachment, at(1)).await;
    }
    assert!(must(
        "detach",
        store
            .detach(people[2], on_dead[2].attachment_id, at(3))
            .await
    ));
    let on_alive = attachment(people[3], alive, b"a");
    attach(store, &on_alive, at(1)).await;
    for (replica, seconds) in [(dead, 5), (dead, 10), (alive, 5), (alive, 30)] {
        must(
            "replica_heartbeat",
            store.replica_heartbeat(replica, at(seconds)).await,
        );
    }

    assert_eq!(
        must(
            "detach_silent_replicas",
            store.detach_silent_replicas(at(20)).await
        ),
        2,
        "the dead replica's two live attachments"
    );
    for (person, attachment) in people.iter().zip(&on_dead).take(2) {
        assert_eq!(
            presence_of(store, *person).await,
            Some(detached(live(attachment, at(1)), at(10))),
            "detached as of the latest heartbeat"
        );
    }
    assert_eq!(
        presence_of(store, people[2]).await,
        Some(detached(live(&on_dead[2], at(1)), at(3))),
        "an attachment detached earlier keeps its time"
    );
    assert_eq!(
        presence_of(store, people[3]).await,
        Some(live(&on_alive, at(1))),
        "a replica that heartbeated since the cutoff is left alone"
    );

    // The dead replica is forgotten: an attachment it holds now is left alone.
    let late = attachment(people[4], dead, b"late");
    attach(store, &late, at(40)).await;
    assert_eq!(
        must(
            "detach_silent_replicas",
            store.detach_silent_replicas(at(100)).await
        ),
        1,
        "only the replica silent since 30"
    );
    assert_eq!(
        presence_of(store, people[4]).await,
        Some(live(&late, at(40)))
    );
    assert_eq!(
        presence_of(store, people[3]).await,
        Some(detached(live(&on_alive, at(1)), at(30)))
    );
}

/// Live attachments of a replica that never recorded a heartbeat are never found silent.
pub async fn a_replica_that_never_heartbeated_is_left_alone(store: &dyn UsersAndBroker) {
    let alice = user(store, "Alice").await;
    let quiet = attachment(alice, Uuid::new_v4(), b"q");
    attach(store, &quiet, at(1)).await;
    must(
        "replica_heartbeat",
        store.replica_heartbeat(Uuid::new_v4(), at(1)).await,
    );
    assert_eq!(
        must(
            "detach_silent_replicas",
            store.detach_silent_replicas(at(1_000)).await
        ),
        0
    );
    assert_eq!(presence_of(store, alice).await, Some(live(&quiet, at(1))));
}

/// Presence lists the rows of the users named that have one, live or detached; users never
/// attached and unknown users are absent, and naming nobody finds nothing.
pub async fn presence_omits_unknown_and_never_attached_users(store: &dyn UsersAndBroker) {
    let people = users(store, "Player", 3).await;
    let online = attachment(people[0], Uuid::new_v4(), b"on");
    let gone = attachment(people[1], Uuid::new_v4(), b"off");
    attach(store, &online, at(1)).await;
    attach(store, &gone, at(1)).await;
    must(
        "detach",
        store.detach(people[1], gone.attachment_id, at(2)).await,
    );

    let asked = [people[0], people[1], people[2], Uuid::new_v4()];
    let mut found = must("presence", store.presence(&asked).await);
    found.sort_by_key(|presence| presence.user);
    let mut expected = vec![live(&online, at(1)), detached(live(&gone, at(1)), at(2))];
    expected.sort_by_key(|presence| presence.user);
    assert_eq!(found, expected);
    assert_eq!(
        must("presence", store.presence(&[]).await),
        Vec::<Presence>::new()
    );
}

/// A presence read may name 1024 users, not more.
pub async fn presence_refuses_more_than_1024_users(store: &dyn UsersAndBroker) {
    let alice = user(store, "Alice").await;
    let attached = attachment(alice, Uuid::new_v4(), b"a");
    attach(store, &attached, at(1)).await;
    let mut asked: Vec<Uuid> = (1..1024).map(|_| Uuid::new_v4()).collect();
    asked.push(alice);
    assert_eq!(
        must("presence", store.presence(&asked).await),
        vec![live(&attached, at(1))]
    );
    asked.push(Uuid::new_v4());
    let outcome = store.presence(&asked).await;
    assert!(
        matches!(outcome, Err(StoreError::Backend(_))),
        "1025 users: expected a Backend error, got {outcome:?}"
    );
}

/// An announcement of 4096 bytes is stored; a longer one is refused, by attach and by announce,
/// and changes nothing.
pub async fn announcements_longer_than_4096_bytes_are_refused_and_change_nothing(
    store: &dyn UsersAndBroker,
) {
    let alice = user(store, "Alice").await;
    let longest = vec![0xa5; MAX_ANNOUNCEMENT_BYTES];
    let too_long = vec![0x5a; MAX_ANNOUNCEMENT_BYTES + 1];

    let refused = store
        .attach(attachment(alice, Uuid::new_v4(), &too_long), at(1))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Backend(_))),
        "attach with 4097 bytes: expected a Backend error, got {refused:?}"
    );
    assert_eq!(presence_of(store, alice).await, None);

    let attached = attachment(alice, Uuid::new_v4(), &longest);
    assert_eq!(attach(store, &attached, at(2)).await, None);
    let refused = store
        .announce(alice, attached.attachment_id, too_long.clone())
        .await;
    assert!(
        matches!(refused, Err(StoreError::Backend(_))),
        "announce with 4097 bytes: expected a Backend error, got {refused:?}"
    );
    assert_eq!(
        presence_of(store, alice).await,
        Some(live(&attached, at(2)))
    );
    assert!(must(
        "announce",
        store
            .announce(
                alice,
                attached.attachment_id,
                vec![1; MAX_ANNOUNCEMENT_BYTES]
            )
            .await
    ));
    let mut expected = live(&attached, at(2));
    expected.announcement = vec![1; MAX_ANNOUNCEMENT_BYTES];
    assert_eq!(presence_of(store, alice).await, Some(expected));
}

//! Conformance cases for sessions and refresh-token rotation.

use futures::future::join_all;
use uuid::Uuid;

use super::{DAY, RACE_ROUNDS, T0, active, create, must, open_session, random_hash, rotate};
use crate::{IdentityStore, NewSession, RefreshRotation, StoreError, TokenHash, User};

/// A session for a user that does not exist fails with `NotFound`, and its token is not stored.
pub async fn create_session_for_an_unknown_user_is_not_found_and_stores_nothing(
    store: &dyn IdentityStore,
) {
    let session = NewSession {
        id: Uuid::new_v4(),
        user_id: Uuid::new_v4(),
        refresh_token: random_hash(),
        created_at: T0,
        refresh_expires_at: T0 + DAY,
    };
    let token = session.refresh_token;
    let outcome = store.create_session(session).await;
    assert!(
        matches!(outcome, Err(StoreError::NotFound(_))),
        "a session for an unknown user should be NotFound, got {outcome:?}"
    );
    let (rotation, _) = rotate(store, token).await;
    assert_eq!(
        rotation,
        RefreshRotation::Unknown,
        "the failed session's token was stored"
    );
}

/// Rotating the current token answers with the session and user, and the next token rotates too.
pub async fn rotating_the_current_token_keeps_the_session_and_its_user(store: &dyn IdentityStore) {
    let alice = create(store, "Alice").await;
    let (session_id, first) = open_session(store, alice.id).await;

    let (outcome, second) = rotate(store, first).await;
    let expected = RefreshRotation::Rotated {
        user: alice.clone(),
        session_id,
    };
    assert_eq!(outcome, expected, "the current token should rotate");
    assert!(
        active(store, alice.id, session_id).await,
        "rotation must keep the session active"
    );

    let (outcome, _) = rotate(store, second).await;
    assert_eq!(
        outcome, expected,
        "the token issued by a rotation should rotate in turn"
    );
}

/// Presenting an already rotated token is reuse: the session is revoked, its tokens stop working.
pub async fn replaying_a_rotated_token_revokes_the_session(store: &dyn IdentityStore) {
    let alice = create(store, "Alice").await;
    let (session_id, first) = open_session(store, alice.id).await;
    let (outcome, second) = rotate(store, first).await;
    assert!(
        matches!(outcome, RefreshRotation::Rotated { .. }),
        "got {outcome:?}"
    );

    let (outcome, never_stored) = rotate(store, first).await;
    assert_eq!(
        outcome,
        RefreshRotation::Reused { session_id },
        "a replayed token is reuse"
    );
    assert!(
        !active(store, alice.id, session_id).await,
        "reuse must revoke the session"
    );

    let (outcome, _) = rotate(store, second).await;
    assert_eq!(
        outcome,
        RefreshRotation::Revoked,
        "the current token of a revoked session"
    );
    let (outcome, _) = rotate(store, never_stored).await;
    assert_eq!(
        outcome,
        RefreshRotation::Unknown,
        "reuse must not store the offered next token"
    );
    let (outcome, _) = rotate(store, first).await;
    assert_eq!(
        outcome,
        RefreshRotation::Revoked,
        "replaying into a revoked session"
    );
}

/// A token that was never issued is unknown.
pub async fn an_unknown_token_is_unknown(store: &dyn IdentityStore) {
    let alice = create(store, "Alice").await;
    open_session(store, alice.id).await;
    let (outcome, _) = rotate(store, random_hash()).await;
    assert_eq!(outcome, RefreshRotation::Unknown);
}

/// A current token past its expiry is expired every time it is presented; nothing changes.
pub async fn an_expired_token_is_expired_and_changes_nothing(store: &dyn IdentityStore) {
    let alice = create(store, "Alice").await;
    let (session_id, token) = open_session(store, alice.id).await;
    let late = T0 + DAY + 1;
    for attempt in ["first", "second"] {
        let next = random_hash();
        let outcome = must(
            "rotate_refresh_token",
            store
                .rotate_refresh_token(token, next, late, late + DAY)
                .await,
        );
        assert_eq!(
            outcome,
            RefreshRotation::Expired,
            "{attempt} presentation after expiry"
        );
        let (outcome, _) = rotate(store, next).await;
        assert_eq!(
            outcome,
            RefreshRotation::Unknown,
            "an expired token's next token was stored"
        );
    }
    assert!(
        active(store, alice.id, session_id).await,
        "expiry must not revoke the session"
    );

    let (_, fresh) = open_session(store, alice.id).await;
    let just_before = T0 + DAY - 1;
    let outcome = must(
        "rotate_refresh_token",
        store
            .rotate_refresh_token(fresh, random_hash(), just_before, just_before + DAY)
            .await,
    );
    assert!(
        matches!(outcome, RefreshRotation::Rotated { .. }),
        "a token presented just before its expiry should rotate, got {outcome:?}"
    );
}

/// Ten presentations of one token racing: one rotates it, the others are reuse (or, once that
/// reuse has revoked the session, a revoked session), and the session ends revoked.
pub async fn concurrent_presentations_of_one_token_rotate_it_exactly_once(
    store: &dyn IdentityStore,
) {
    let alice = create(store, "Alice").await;
    // Races are won by timing: several rounds make a missing lock show up reliably.
    for round in 0..RACE_ROUNDS {
        race_one_token(store, &alice, round).await;
    }
}

/// Ten presentations of a fresh session's token at once, and what must come of them.
async fn race_one_token(store: &dyn IdentityStore, alice: &User, round: usize) {
    let (session_id, token) = open_session(store, alice.id).await;
    let outcomes = join_all((0..10).map(|_| rotate(store, token))).await;

    let rotated: Vec<TokenHash> = outcomes
        .iter()
        .filter(|(outcome, _)| matches!(outcome, RefreshRotation::Rotated { .. }))
        .map(|(_, next)| *next)
        .collect();
    assert_eq!(
        rotated.len(),
        1,
        "round {round}: exactly one racer must rotate: {outcomes:?}"
    );
    // The first loser sees reuse and revokes the session; later ones find it already revoked.
    let reused = outcomes
        .iter()
        .filter(|(outcome, _)| *outcome == RefreshRotation::Reused { session_id })
        .count();
    let revoked = outcomes
        .iter()
        .filter(|(outcome, _)| *outcome == RefreshRotation::Revoked)
        .count();
    assert!(
        reused >= 1,
        "round {round}: at least one racer must see reuse: {outcomes:?}"
    );
    assert_eq!(
        reused + revoked,
        9,
        "round {round}: every loser must see reuse or a revoked session: {outcomes:?}"
    );
    assert!(
        !active(store, alice.id, session_id).await,
        "round {round}: the race must revoke the session"
    );
    let (outcome, _) = rotate(store, rotated[0]).await;
    assert_eq!(
        outcome,
        RefreshRotation::Revoked,
        "round {round}: the winner's token dies with the session"
    );
}

/// Revoking a session revokes it once; afterwards it is inactive and its token is revoked.
pub async fn revoke_session_revokes_once_and_stops_refreshes(store: &dyn IdentityStore) {
    let alice = create(store, "Alice").await;
    let (session_id, token) = open_session(store, alice.id).await;
    let revoked = must(
        "revoke_session",
        store.revoke_session(alice.id, session_id, T0 + 5).await,
    );
    assert_eq!(revoked, 1, "the first revocation revokes the session");
    let revoked = must(
        "revoke_session",
        store.revoke_session(alice.id, session_id, T0 + 6).await,
    );
    assert_eq!(revoked, 0, "a revoked session is not revoked again");
    assert!(
        !active(store, alice.id, session_id).await,
        "a revoked session is inactive"
    );
    let (outcome, _) = rotate(store, token).await;
    assert_eq!(
        outcome,
        RefreshRotation::Revoked,
        "refreshing a revoked session"
    );
}

/// A user cannot revoke someone else's session.
pub async fn revoking_another_users_session_revokes_nothing(store: &dyn IdentityStore) {
    let alice = create(store, "Alice").await;
    let mallory = create(store, "Mallory").await;
    let (session_id, _) = open_session(store, alice.id).await;
    let revoked = must(
        "revoke_session",
        store.revoke_session(mallory.id, session_id, T0 + 5).await,
    );
    assert_eq!(revoked, 0, "another user's session must not be revoked");
    assert!(
        active(store, alice.id, session_id).await,
        "Alice's session must stay active"
    );
}

/// `revoke_all_sessions` revokes the user's live sessions only, and names them.
pub async fn revoke_all_sessions_counts_only_what_it_revoked(store: &dyn IdentityStore) {
    let alice = create(store, "Alice").await;
    let bob = create(store, "Bob").await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(open_session(store, alice.id).await.0);
    }
    let (bobs_session, _) = open_session(store, bob.id).await;

    let revoked = must(
        "revoke_session",
        store.revoke_session(alice.id, sessions[0], T0 + 5).await,
    );
    assert_eq!(revoked, 1);
    let mut revoked = must(
        "revoke_all_sessions",
        store.revoke_all_sessions(alice.id, T0 + 6).await,
    );
    revoked.sort();
    let mut still_active = sessions[1..].to_vec();
    still_active.sort();
    assert_eq!(
        revoked, still_active,
        "only the two still active sessions are revoked now"
    );
    let revoked = must(
        "revoke_all_sessions",
        store.revoke_all_sessions(alice.id, T0 + 7).await,
    );
    assert!(revoked.is_empty(), "nothing is left to revoke");
    for session_id in sessions {
        assert!(
            !active(store, alice.id, session_id).await,
            "an Alice session stayed active"
        );
    }
    assert!(
        active(store, bob.id, bobs_session).await,
        "Bob's session must stay active"
    );
    let revoked = must(
        "revoke_all_sessions",
        store.revoke_all_sessions(Uuid::new_v4(), T0 + 8).await,
    );
    assert!(revoked.is_empty(), "an unknown user has no sessions");
}

/// `session_active` is false for a session that does not exist or belongs to someone else.
pub async fn session_active_is_false_for_unknown_or_foreign_sessions(store: &dyn IdentityStore) {
    let alice = create(store, "Alice").await;
    let bob = create(store, "Bob").await;
    let (session_id, _) = open_session(store, alice.id).await;
    assert!(
        active(store, alice.id, session_id).await,
        "a new session is active"
    );
    assert!(
        !active(store, bob.id, session_id).await,
        "Alice's session is not Bob's"
    );
    assert!(
        !active(store, alice.id, Uuid::new_v4()).await,
        "an unknown session is not active"
    );
}

/// `refresh_token_session` names the session of every stored token, current or rotated, and
/// nothing for a token never stored.
pub async fn refresh_token_session_finds_current_and_rotated_tokens(store: &dyn IdentityStore) {
    let alice = create(store, "Alice").await;
    let (session_id, first) = open_session(store, alice.id).await;
    let session_of = |token| async move {
        must(
            "refresh_token_session",
            store.refresh_token_session(token).await,
        )
    };
    assert_eq!(session_of(first).await, Some(session_id), "the first token");
    let (outcome, second) = rotate(store, first).await;
    assert!(matches!(outcome, RefreshRotation::Rotated { .. }));
    assert_eq!(session_of(first).await, Some(session_id), "a rotated token");
    assert_eq!(session_of(second).await, Some(session_id), "the next token");
    assert_eq!(
        session_of(random_hash()).await,
        None,
        "a token never issued"
    );
}

/// `purge_sessions` deletes revoked sessions, sessions whose tokens all expired and stale tokens
/// as of its cut-off, and keeps every session still usable with its current token.
pub async fn purge_sessions_deletes_only_what_can_no_longer_be_used(store: &dyn IdentityStore) {
    let alice = create(store, "Alice").await;
    // Live: its current token expires at T0 + DAY, after the cut-off.
    let (live, first) = open_session(store, alice.id).await;
    let (outcome, current) = rotate(store, first).await;
    assert!(matches!(outcome, RefreshRotation::Rotated { .. }));
    // Revoked at T0 + 2.
    let (revoked, revoked_token) = open_session(store, alice.id).await;
    must(
        "revoke_session",
        store.revoke_session(alice.id, revoked, T0 + 2).await,
    );
    let cut = T0 + 10;
    let purged = must("purge_sessions", store.purge_sessions(cut).await);
    assert_eq!(
        purged.sessions, 1,
        "only the revoked session goes: {purged:?}"
    );
    assert_eq!(
        purged.refresh_tokens, 2,
        "the revoked session's token and the token rotated at T0 + 1: {purged:?}"
    );
    assert!(
        active(store, alice.id, live).await,
        "the live session stays"
    );
    assert_eq!(
        must(
            "refresh_token_session",
            store.refresh_token_session(current).await
        ),
        Some(live),
        "the live session's current token stays"
    );
    assert_eq!(
        must(
            "refresh_token_session",
            store.refresh_token_session(first).await
        ),
        None,
        "the long-rotated token is gone"
    );
    assert_eq!(
        must(
            "refresh_token_session",
            store.refresh_token_session(revoked_token).await
        ),
        None,
        "the revoked session's token is gone"
    );
    let (outcome, _) = rotate(store, current).await;
    assert!(
        matches!(outcome, RefreshRotation::Rotated { session_id, .. } if session_id == live),
        "the live session still refreshes: {outcome:?}"
    );

    // Past every expiry: the live session's tokens (expiring T0 + 1 + DAY) all lapse.
    let purged = must(
        "purge_sessions",
        store.purge_sessions(T0 + 2 * DAY + 2).await,
    );
    assert_eq!(purged.sessions, 1, "the expired session goes: {purged:?}");
    assert!(!active(store, alice.id, live).await);
    let again = must(
        "purge_sessions",
        store.purge_sessions(T0 + 2 * DAY + 2).await,
    );
    assert_eq!(
        again,
        crate::PurgedSessions::default(),
        "a second purge finds nothing"
    );
}

/// `trim_sessions` keeps a user's newest sessions, deletes the others with their tokens, and
/// names the deleted ones that were still active; another user's sessions are untouched.
pub async fn trim_sessions_keeps_the_newest_and_names_the_active_ones_deleted(
    store: &dyn IdentityStore,
) {
    let alice = create(store, "Alice").await;
    let bob = create(store, "Bob").await;
    let (bobs, _) = open_session(store, bob.id).await;
    let mut sessions = Vec::new();
    for i in 0..5 {
        let session = NewSession {
            id: Uuid::new_v4(),
            user_id: alice.id,
            refresh_token: random_hash(),
            created_at: T0 + i,
            refresh_expires_at: T0 + DAY,
        };
        sessions.push((session.id, session.refresh_token));
        must("create_session", store.create_session(session).await);
    }
    must(
        "revoke_session",
        store.revoke_session(alice.id, sessions[0].0, T0 + 10).await,
    );
    let mut deleted = must("trim_sessions", store.trim_sessions(alice.id, 2).await);
    deleted.sort();
    let mut expected = vec![sessions[1].0, sessions[2].0];
    expected.sort();
    assert_eq!(
        deleted, expected,
        "the active sessions beyond the newest two"
    );
    for (id, token) in &sessions[..3] {
        assert!(!active(store, alice.id, *id).await);
        assert_eq!(
            must(
                "refresh_token_session",
                store.refresh_token_session(*token).await
            ),
            None,
            "a trimmed session's token is gone"
        );
    }
    for (id, _) in &sessions[3..] {
        assert!(active(store, alice.id, *id).await, "the newest two stay");
    }
    assert!(
        active(store, bob.id, bobs).await,
        "Bob's session is not Alice's to trim"
    );
    assert!(
        must("trim_sessions", store.trim_sessions(alice.id, 2).await).is_empty(),
        "nothing more to trim"
    );
}

/// A session keeps its `KEPT_ROTATED_TOKENS` most recently rotated tokens and no more.
pub async fn a_session_keeps_only_its_latest_rotated_tokens(store: &dyn IdentityStore) {
    let alice = create(store, "Alice").await;
    let (session_id, first) = open_session(store, alice.id).await;
    let kept = usize::try_from(crate::KEPT_ROTATED_TOKENS).expect("small");
    let mut tokens = vec![first];
    for i in 0..kept + 4 {
        let next = random_hash();
        let at = T0 + 1 + i64::try_from(i).expect("small");
        let outcome = must(
            "rotate_refresh_token",
            store
                .rotate_refresh_token(*tokens.last().expect("one"), next, at, at + DAY)
                .await,
        );
        assert!(
            matches!(outcome, RefreshRotation::Rotated { .. }),
            "{outcome:?}"
        );
        tokens.push(next);
    }
    let session_of = |token| async move {
        must(
            "refresh_token_session",
            store.refresh_token_session(token).await,
        )
    };
    let rotated = &tokens[..tokens.len() - 1];
    let (forgotten, remembered) = rotated.split_at(rotated.len() - kept);
    for token in forgotten {
        assert_eq!(
            session_of(*token).await,
            None,
            "an old rotated token is gone"
        );
    }
    for token in remembered {
        assert_eq!(
            session_of(*token).await,
            Some(session_id),
            "a recent rotated token stays"
        );
    }
    assert_eq!(
        session_of(*tokens.last().expect("current")).await,
        Some(session_id)
    );
}

//! The behaviour every [`IdentityStore`] backend must show, as executable cases; the
//! [`rooms`] module holds those of [`RoomStore`](crate::RoomStore), the [`tickets`] module those
//! of [`TicketStore`](crate::TicketStore), and the [`broker`] module those of
//! [`BrokerStore`](crate::BrokerStore).
//!
//! Each case is a public async function taking a fresh, empty store and panicking with a message
//! naming the broken promise. A backend runs them all with
//! [`identity_conformance_tests!`](crate::identity_conformance_tests), which writes one
//! `#[tokio::test]` per case so that every case gets its own store and failures are reported by
//! name. This module is for backends' tests only: it is not a test harness for the
//! services built on the store, and it never looks at a backend's tables.
//!
//! Times are fixed constants, never the clock, so expiry cases are exact.

use std::future::Future;
use std::time::Duration;

use uuid::Uuid;

use crate::{
    IdentityStore, NewSession, NewUser, RefreshRotation, StoreError, TokenHash, UnixMillis, User,
};

mod accounts;
pub mod broker;
pub mod rooms;
mod sessions;
pub mod tickets;

pub use accounts::*;
pub use sessions::*;

/// How long one case may take before it fails as hung (a lost wake-up or a deadlock).
pub const CASE_DEADLINE: Duration = Duration::from_secs(60);

/// How many times the racing cases race: a race is won by timing, so a missing lock or arbiter
/// can go unnoticed in one round but not in several.
const RACE_ROUNDS: usize = 5;

/// A fixed "now" for the cases: 2023-11-14T22:13:20Z.
const T0: UnixMillis = 1_700_000_000_000;
/// One day in milliseconds.
const DAY: UnixMillis = 86_400_000;
/// A syntactically valid argon2id PHC string; the store never checks it.
const PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

/// Writes one `#[tokio::test]` per conformance case, each on its own fresh store.
///
/// `$factory` is an expression evaluated once per case, whose `.await` gives
/// `Option<(store, guard)>`: the store to test (anything implementing [`IdentityStore`]) and a
/// guard that owns its database and cleans it up when dropped (a temporary directory, a
/// temporary Postgres database). `None` skips the case (the factory says why, e.g. no Postgres
/// server outside CI). The calling crate needs `tokio` (with `macros` and `rt-multi-thread`) as a
/// dev-dependency.
///
/// ```ignore
/// async fn fresh_store() -> Option<(SqliteStore, tempfile::TempDir)> { /* ... */ }
///
/// rally_store::identity_conformance_tests!(fresh_store());
/// ```
#[macro_export]
macro_rules! identity_conformance_tests {
    ($factory:expr) => {
        $crate::identity_conformance_tests!(@cases $factory;
            create_user_returns_what_it_stored,
            create_user_rejects_a_username_differing_only_in_case_and_writes_nothing,
            username_case_folding_is_ascii_only,
            credentials_lookup_ignores_username_case_and_returns_the_password_hash,
            unknown_user_ids_have_no_user_and_no_account,
            account_reports_password_and_bound_devices,
            device_user_returns_one_user_per_device,
            concurrent_first_sign_ins_of_one_device_create_exactly_one_user,
            create_session_for_an_unknown_user_is_not_found_and_stores_nothing,
            rotating_the_current_token_keeps_the_session_and_its_user,
            replaying_a_rotated_token_revokes_the_session,
            an_unknown_token_is_unknown,
            an_expired_token_is_expired_and_changes_nothing,
            concurrent_presentations_of_one_token_rotate_it_exactly_once,
            revoke_session_revokes_once_and_stops_refreshes,
            revoking_another_users_session_revokes_nothing,
            revoke_all_sessions_counts_only_what_it_revoked,
            session_active_is_false_for_unknown_or_foreign_sessions,
            refresh_token_session_finds_current_and_rotated_tokens,
            purge_sessions_deletes_only_what_can_no_longer_be_used,
            trim_sessions_keeps_the_newest_and_names_the_active_ones_deleted,
            a_session_keeps_only_its_latest_rotated_tokens,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let Some((store, guard)) = $factory.await else {
                    return;
                };
                $crate::conformance::within_deadline(
                    stringify!($case),
                    $crate::conformance::$case(&store),
                )
                .await;
                // The store goes before the database it uses.
                drop(store);
                drop(guard);
            }
        )*
    };
}

/// Runs one case, failing it when it takes longer than [`CASE_DEADLINE`].
pub async fn within_deadline(case: &str, run: impl Future<Output = ()>) {
    if tokio::time::timeout(CASE_DEADLINE, run).await.is_err() {
        panic!(
            "conformance case `{case}` did not finish within {CASE_DEADLINE:?}: is a call hung?"
        );
    }
}

/// The value of `result`, or a panic naming the call that failed.
fn must<T>(call: &str, result: Result<T, StoreError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{call} failed: {error} ({error:?})"),
    }
}

/// A fresh random 32-byte hash, standing in for SHA-256(secret).
fn random_hash() -> TokenHash {
    let mut hash = [0; 32];
    hash[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    hash[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    hash
}

/// An account with a username and password.
fn password_user(username: &str) -> NewUser {
    NewUser {
        id: Uuid::new_v4(),
        username: Some(username.to_owned()),
        display_name: format!("{username} the player"),
        password_hash: Some(PASSWORD_HASH.to_owned()),
        created_at: T0,
    }
}

/// A device-only account.
fn device_only_user() -> NewUser {
    NewUser {
        id: Uuid::new_v4(),
        username: None,
        display_name: "Guest".to_owned(),
        password_hash: None,
        created_at: T0,
    }
}

/// The user that `new_user` describes, as a store must return it.
fn expected_user(new_user: &NewUser) -> User {
    User {
        id: new_user.id,
        username: new_user.username.clone(),
        display_name: new_user.display_name.clone(),
        created_at: new_user.created_at,
    }
}

/// Creates a password account.
async fn create(store: &dyn IdentityStore, username: &str) -> User {
    must(
        "create_user",
        store.create_user(password_user(username)).await,
    )
}

/// Opens a session for `user_id` whose first refresh token expires a day after [`T0`].
async fn open_session(store: &dyn IdentityStore, user_id: Uuid) -> (Uuid, TokenHash) {
    let session = NewSession {
        id: Uuid::new_v4(),
        user_id,
        refresh_token: random_hash(),
        created_at: T0,
        refresh_expires_at: T0 + DAY,
    };
    let opened = (session.id, session.refresh_token);
    must("create_session", store.create_session(session).await);
    opened
}

/// Presents `presented` at `T0 + 1` with a fresh next token; returns the outcome and that token.
async fn rotate(store: &dyn IdentityStore, presented: TokenHash) -> (RefreshRotation, TokenHash) {
    let next = random_hash();
    let outcome = must(
        "rotate_refresh_token",
        store
            .rotate_refresh_token(presented, next, T0 + 1, T0 + 1 + DAY)
            .await,
    );
    (outcome, next)
}

async fn active(store: &dyn IdentityStore, user_id: Uuid, session_id: Uuid) -> bool {
    must(
        "session_active",
        store.session_active(user_id, session_id).await,
    )
}

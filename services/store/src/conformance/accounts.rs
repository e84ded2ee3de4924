//! Conformance cases for accounts and device bindings.

use futures::future::join_all;
use uuid::Uuid;

use super::{
    PASSWORD_HASH, RACE_ROUNDS, create, device_only_user, expected_user, must, password_user,
    random_hash,
};
use crate::{IdentityStore, NewUser, StoreError, User};

/// `create_user` returns the user as given, and `user_by_id` finds it.
pub async fn create_user_returns_what_it_stored(store: &dyn IdentityStore) {
    let new_user = password_user("Alice");
    let created = must("create_user", store.create_user(new_user.clone()).await);
    assert_eq!(
        created,
        expected_user(&new_user),
        "create_user returned a different user"
    );
    let found = must("user_by_id", store.user_by_id(new_user.id).await);
    assert_eq!(
        found,
        Some(created),
        "user_by_id did not find the created user as created"
    );
}

/// A username equal to an existing one up to case is taken, and the failed call writes nothing.
pub async fn create_user_rejects_a_username_differing_only_in_case_and_writes_nothing(
    store: &dyn IdentityStore,
) {
    let alice = create(store, "Alice").await;
    for clash in ["Alice", "aLICE", "alice"] {
        let second = password_user(clash);
        let outcome = store.create_user(second.clone()).await;
        assert!(
            matches!(outcome, Err(StoreError::UsernameTaken)),
            "creating {clash:?} after \"Alice\" should fail with UsernameTaken, got {outcome:?}"
        );
        let written = must("user_by_id", store.user_by_id(second.id).await);
        assert_eq!(
            written, None,
            "the rejected user {clash:?} was written anyway"
        );
    }
    let owner = must(
        "credentials_by_username",
        store.credentials_by_username("alice").await,
    )
    .map(|credentials| credentials.user.id);
    assert_eq!(
        owner,
        Some(alice.id),
        "the username no longer belongs to its first owner"
    );
}

/// Case-insensitivity is ASCII only: non-ASCII letters that differ in case are different names.
pub async fn username_case_folding_is_ascii_only(store: &dyn IdentityStore) {
    let upper = create(store, "Élodie").await;
    let lower = create(store, "élodie").await;
    assert_ne!(upper.id, lower.id);
    let found = must(
        "credentials_by_username",
        store.credentials_by_username("ÉLODIE").await,
    )
    .map(|credentials| credentials.user.id);
    assert_eq!(
        found,
        Some(upper.id),
        "\"ÉLODIE\" should find \"Élodie\" (ASCII letters fold)"
    );
}

/// `credentials_by_username` finds the account whatever the case, with its password hash.
pub async fn credentials_lookup_ignores_username_case_and_returns_the_password_hash(
    store: &dyn IdentityStore,
) {
    let alice = create(store, "Alice").await;
    for query in ["Alice", "alice", "ALICE", "aLiCe"] {
        let credentials = must(
            "credentials_by_username",
            store.credentials_by_username(query).await,
        )
        .unwrap_or_else(|| panic!("credentials_by_username({query:?}) found nothing"));
        assert_eq!(
            credentials.user, alice,
            "credentials_by_username({query:?}) found another user"
        );
        assert_eq!(
            credentials.password_hash.as_deref(),
            Some(PASSWORD_HASH),
            "wrong password hash"
        );
    }
    let nobody = must(
        "credentials_by_username",
        store.credentials_by_username("bob").await,
    );
    assert_eq!(
        nobody, None,
        "an unknown username should have no credentials"
    );
}

/// An id that was never created has no user and no account.
pub async fn unknown_user_ids_have_no_user_and_no_account(store: &dyn IdentityStore) {
    create(store, "Alice").await;
    let unknown = Uuid::new_v4();
    assert_eq!(must("user_by_id", store.user_by_id(unknown).await), None);
    assert_eq!(must("account", store.account(unknown).await), None);
}

/// `account` says whether the user has a password and how many devices are bound.
pub async fn account_reports_password_and_bound_devices(store: &dyn IdentityStore) {
    let alice = create(store, "Alice").await;
    let account = must("account", store.account(alice.id).await).expect("Alice has an account");
    assert_eq!(account.user, alice);
    assert!(
        account.has_password,
        "a user created with a password has a password"
    );
    assert_eq!(account.device_count, 0, "no device was bound to Alice");

    let (guest, _) = must(
        "device_user",
        store.device_user(random_hash(), device_only_user()).await,
    );
    let account = must("account", store.account(guest.id).await).expect("the guest has an account");
    assert_eq!(account.user, guest);
    assert!(!account.has_password, "a device-only user has no password");
    assert_eq!(account.device_count, 1, "one device is bound to the guest");
}

/// One device is one user: the first call creates it, later calls return it and create nothing.
pub async fn device_user_returns_one_user_per_device(store: &dyn IdentityStore) {
    let device = random_hash();
    let first = device_only_user();
    let (user, created) = must(
        "device_user",
        store.device_user(device, first.clone()).await,
    );
    assert!(created, "the first call for a device creates its user");
    assert_eq!(
        user,
        expected_user(&first),
        "device_user created a different user than given"
    );
    assert_eq!(
        must("user_by_id", store.user_by_id(user.id).await),
        Some(user.clone())
    );

    let unused = device_only_user();
    let (again, created) = must(
        "device_user",
        store.device_user(device, unused.clone()).await,
    );
    assert!(
        !created,
        "a second call for the same device must not create a user"
    );
    assert_eq!(again, user, "the same device must give the same user");
    assert_eq!(
        must("user_by_id", store.user_by_id(unused.id).await),
        None,
        "the unused new user was written anyway"
    );

    let (other, created) = must(
        "device_user",
        store.device_user(random_hash(), device_only_user()).await,
    );
    assert!(created, "another device gets its own new user");
    assert_ne!(other.id, user.id, "two devices must not share a user");
}

/// Twenty first sign-ins of one device racing create one user, and all of them get it.
pub async fn concurrent_first_sign_ins_of_one_device_create_exactly_one_user(
    store: &dyn IdentityStore,
) {
    // Races are won by timing: several rounds make a missing arbiter show up reliably.
    for round in 0..RACE_ROUNDS {
        race_one_device(store, round).await;
    }
}

/// Twenty first sign-ins of a fresh device at once, and what must come of them.
async fn race_one_device(store: &dyn IdentityStore, round: usize) {
    let device = random_hash();
    let candidates: Vec<NewUser> = (0..20).map(|_| device_only_user()).collect();
    let outcomes = join_all(
        candidates
            .iter()
            .map(|candidate| store.device_user(device, candidate.clone())),
    )
    .await;
    let outcomes: Vec<(User, bool)> = outcomes
        .into_iter()
        .map(|outcome| must("concurrent device_user", outcome))
        .collect();

    let creations = outcomes.iter().filter(|(_, created)| *created).count();
    assert_eq!(
        creations, 1,
        "round {round}: exactly one racing call must create the user"
    );
    let winner = &outcomes[0].0;
    assert!(
        outcomes.iter().all(|(user, _)| user == winner),
        "round {round}: all racing calls must return the same user: {outcomes:?}"
    );
    for candidate in candidates
        .iter()
        .filter(|candidate| candidate.id != winner.id)
    {
        let written = must("user_by_id", store.user_by_id(candidate.id).await);
        assert_eq!(
            written, None,
            "round {round}: a losing racer's user was written anyway"
        );
    }
}

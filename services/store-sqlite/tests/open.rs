//! Opening, reopening and closing a SQLite store, and errors that are not domain outcomes.

use rally_store::{IdentityStore, NewUser, StoreError};
use rally_store_sqlite::SqliteStore;
use uuid::Uuid;

fn new_user(username: &str) -> NewUser {
    NewUser {
        id: Uuid::new_v4(),
        username: Some(username.to_owned()),
        display_name: username.to_owned(),
        password_hash: None,
        created_at: 1_700_000_000_000,
    }
}

#[tokio::test]
async fn open_creates_missing_parent_directories_and_the_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("nested").join("deeper").join("rally.db");
    let store = SqliteStore::open(&path)
        .await
        .expect("open creates what is missing");
    store.close().await;
    assert!(
        path.is_file(),
        "the database file should exist at {}",
        path.display()
    );
}

#[tokio::test]
async fn reopening_keeps_the_data_and_reapplies_no_migration() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("rally.db");
    let store = SqliteStore::open(&path).await.expect("first open");
    let alice = store
        .create_user(new_user("Alice"))
        .await
        .expect("create Alice");
    store.close().await;

    let store = SqliteStore::open(&path)
        .await
        .expect("second open of a migrated file");
    let found = store.user_by_id(alice.id).await.expect("user_by_id");
    assert_eq!(found, Some(alice), "the user survives a reopen");
    store.close().await;
}

#[tokio::test]
async fn open_url_accepts_an_in_memory_database() {
    let store = SqliteStore::open_url("sqlite::memory:")
        .await
        .expect("open in memory");
    let alice = store
        .create_user(new_user("Alice"))
        .await
        .expect("create Alice");
    let found = store.user_by_id(alice.id).await.expect("user_by_id");
    assert_eq!(found, Some(alice));
    store.close().await;
}

#[tokio::test]
async fn open_url_rejects_a_url_of_another_database() {
    let outcome = SqliteStore::open_url("postgres://localhost/rally").await;
    assert!(
        matches!(outcome, Err(StoreError::Backend(_))),
        "got {outcome:?}"
    );
}

#[tokio::test]
async fn calls_after_close_are_unavailable() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(&dir.path().join("rally.db"))
        .await
        .expect("open");
    store.close().await;
    let outcome = store.user_by_id(Uuid::new_v4()).await;
    assert!(
        matches!(outcome, Err(StoreError::Unavailable(_))),
        "got {outcome:?}"
    );
}

#[tokio::test]
async fn a_duplicate_user_id_is_a_backend_error_not_a_taken_username() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(&dir.path().join("rally.db"))
        .await
        .expect("open");
    let first = new_user("Alice");
    store
        .create_user(first.clone())
        .await
        .expect("create Alice");
    let clash = NewUser {
        username: Some("Bob".to_owned()),
        ..first
    };
    let outcome = store.create_user(clash).await;
    assert!(
        matches!(outcome, Err(StoreError::Backend(_))),
        "got {outcome:?}"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_can_be_opened_and_used_from_spawned_tasks() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("rally.db");
    let store = tokio::spawn(async move { SqliteStore::open(&path).await })
        .await
        .expect("the opening task completes")
        .expect("open");
    let user = tokio::spawn({
        let store = store.clone();
        async move { store.create_user(new_user("Alice")).await }
    })
    .await
    .expect("the task completes")
    .expect("create Alice");
    assert_eq!(
        store.user_by_id(user.id).await.expect("user_by_id"),
        Some(user)
    );
    store.close().await;
}

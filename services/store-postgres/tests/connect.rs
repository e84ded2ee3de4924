//! Connecting and migrating (including replicas starting at once), closing, errors that are not
//! domain outcomes, and the temporary databases the tests rely on.

use rally_store::{IdentityStore, NewUser, StoreError};
use rally_store_postgres::PostgresStore;
use rally_store_postgres::testing::{DEFAULT_SERVER_URL, SERVER_URL_ENV, TempDatabase};
use sqlx::{Connection, PgConnection};
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

fn server_url() -> String {
    std::env::var(SERVER_URL_ENV).unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned())
}

/// Whether a database of this name exists on the test server.
async fn database_exists(name: &str) -> bool {
    let mut admin = PgConnection::connect(&server_url())
        .await
        .expect("connect to the server");
    let exists = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
    )
    .bind(name)
    .fetch_one(&mut admin)
    .await
    .expect("query pg_database");
    let _ = admin.close().await;
    exists
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_at_once_all_connect_and_migrate_once() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let replicas: Vec<_> = (0..4)
        .map(|_| {
            let url = database.url().to_owned();
            tokio::spawn(async move { PostgresStore::connect(&url, 2).await })
        })
        .collect();
    let mut stores = Vec::new();
    for replica in replicas {
        let store = replica.await.expect("the replica task completes");
        stores.push(store.expect("every replica connects and migrates"));
    }

    let mut check = PgConnection::connect(database.url())
        .await
        .expect("connect to the database");
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut check)
            .await
            .expect("read the migration history");
    let versions: Vec<i64> = applied.iter().map(|(version, _)| *version).collect();
    let expected: Vec<i64> = (1..).take(applied.len()).collect();
    assert!(
        versions.len() >= 2 && versions == expected,
        "each migration is applied once, in order: {applied:?}"
    );
    assert!(
        applied.iter().all(|(_, success)| *success),
        "every migration succeeded: {applied:?}"
    );
    let _ = check.close().await;
    for store in &stores {
        store.close().await;
    }
}

#[tokio::test]
async fn reconnecting_to_a_migrated_database_keeps_the_data() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let store = PostgresStore::connect(database.url(), 2)
        .await
        .expect("first connect");
    let alice = store
        .create_user(new_user("Alice"))
        .await
        .expect("create Alice");
    store.close().await;
    let store = PostgresStore::connect(database.url(), 2)
        .await
        .expect("second connect");
    let found = store.user_by_id(alice.id).await.expect("user_by_id");
    assert_eq!(found, Some(alice), "the user survives a reconnect");
    store.close().await;
}

#[tokio::test]
async fn connecting_to_a_closed_port_is_unavailable() {
    let outcome = PostgresStore::connect("postgres://postgres@127.0.0.1:1/rally", 2).await;
    assert!(
        matches!(outcome, Err(StoreError::Unavailable(_))),
        "got {outcome:?}"
    );
}

#[tokio::test]
async fn zero_max_connections_is_refused() {
    let outcome = PostgresStore::connect("postgres://postgres@127.0.0.1:1/rally", 0).await;
    assert!(
        matches!(outcome, Err(StoreError::Backend(_))),
        "got {outcome:?}"
    );
}

#[tokio::test]
async fn calls_after_close_are_unavailable() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let store = PostgresStore::connect(database.url(), 2)
        .await
        .expect("connect");
    store.close().await;
    let outcome = store.user_by_id(Uuid::new_v4()).await;
    assert!(
        matches!(outcome, Err(StoreError::Unavailable(_))),
        "got {outcome:?}"
    );
}

#[tokio::test]
async fn a_duplicate_user_id_is_a_backend_error_not_a_taken_username() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let store = PostgresStore::connect(database.url(), 2)
        .await
        .expect("connect");
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

#[tokio::test]
async fn a_temp_database_exists_until_its_guard_drops() {
    let Some(database) = TempDatabase::create().await else {
        return;
    };
    let name = database.name().to_owned();
    assert!(
        database_exists(&name).await,
        "{name} should exist while its guard lives"
    );
    let store = PostgresStore::connect(database.url(), 2)
        .await
        .expect("connect");
    // Dropped while the store still holds connections: WITH (FORCE) disconnects them.
    drop(database);
    assert!(
        !database_exists(&name).await,
        "{name} should be gone after its guard drops"
    );
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temp_database_is_dropped_when_its_test_panics() {
    if TempDatabase::create().await.is_none() {
        return;
    }
    let (name_sender, name_receiver) = tokio::sync::oneshot::channel();
    let failing_test = tokio::spawn(async move {
        let database = TempDatabase::create()
            .await
            .expect("the server answered a moment ago");
        let _ = name_sender.send(database.name().to_owned());
        panic!("a test failing while it owns {}", database.name());
    });
    let outcome = failing_test.await;
    assert!(
        outcome.is_err_and(|error| error.is_panic()),
        "the task should have panicked"
    );
    let name = name_receiver
        .await
        .expect("the failing test sent its database name");
    assert!(
        !database_exists(&name).await,
        "{name} should be dropped during unwinding"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_skips_outside_ci_and_fails_under_ci() {
    let under_ci = std::env::var("CI").as_deref() == Ok("true");
    let attempt = tokio::spawn(TempDatabase::create_on(
        "postgres://postgres@127.0.0.1:1/postgres",
    ))
    .await;
    if under_ci {
        assert!(
            attempt.is_err_and(|error| error.is_panic()),
            "under CI=true it must panic"
        );
    } else {
        let database = attempt.expect("outside CI it must not panic");
        assert!(database.is_none(), "without a server there is no database");
    }
}

//! The `rally-store` conformance suite on SQLite, each case on a fresh database file.

use rally_store_sqlite::SqliteStore;
use tempfile::TempDir;

/// The room cases' retention: small, so that the pruning case stays quick.
const RETAINED_EVENTS: u64 = 16;

/// A fresh store in its own temporary directory, deleted when the guard drops.
async fn fresh_store() -> Option<(SqliteStore, TempDir)> {
    let dir = tempfile::tempdir().expect("a temporary directory for the database");
    let store = SqliteStore::open(&dir.path().join("rally.db"))
        .await
        .expect("a fresh SQLite store opens");
    Some((store, dir))
}

/// A fresh store keeping only [`RETAINED_EVENTS`] events per room.
async fn fresh_room_store() -> Option<(SqliteStore, TempDir)> {
    let (store, dir) = fresh_store().await?;
    Some((store.with_retained_events(RETAINED_EVENTS), dir))
}

rally_store::identity_conformance_tests!(fresh_store());
rally_store::room_conformance_tests!(fresh_room_store());
rally_store::ticket_conformance_tests!(fresh_room_store());
rally_store::broker_conformance_tests!(fresh_store());

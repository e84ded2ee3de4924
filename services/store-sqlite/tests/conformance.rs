//! The `rally-store` conformance suite on SQLite, each case on a fresh database file.

use rally_store_sqlite::SqliteStore;
use tempfile::TempDir;

/// A fresh store in its own temporary directory, deleted when the guard drops.
async fn fresh_store() -> Option<(SqliteStore, TempDir)> {
    let dir = tempfile::tempdir().expect("a temporary directory for the database");
    let store = SqliteStore::open(&dir.path().join("rally.db"))
        .await
        .expect("a fresh SQLite store opens");
    Some((store, dir))
}

rally_store::identity_conformance_tests!(fresh_store());

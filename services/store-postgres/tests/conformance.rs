//! The `rally-store` conformance suite on Postgres, each case on a fresh temporary database.
//!
//! Skipped (with a message) when no server answers, except under `CI=true`, where that fails.

use rally_store_postgres::PostgresStore;
use rally_store_postgres::testing::TempDatabase;

/// Connections per store: enough for the racing cases to race, few enough that parallel tests
/// stay within the server's connection limit.
const MAX_CONNECTIONS: u32 = 8;

/// The room cases' retention: small, so that the pruning case stays quick.
const RETAINED_EVENTS: u64 = 16;

/// A fresh store on its own database, dropped when the guard drops.
async fn fresh_store() -> Option<(PostgresStore, TempDatabase)> {
    let database = TempDatabase::create().await?;
    let store = PostgresStore::connect(database.url(), MAX_CONNECTIONS)
        .await
        .expect("a fresh Postgres store connects and migrates");
    Some((store, database))
}

/// A fresh store keeping only [`RETAINED_EVENTS`] events per room.
async fn fresh_room_store() -> Option<(PostgresStore, TempDatabase)> {
    let (store, database) = fresh_store().await?;
    Some((store.with_retained_events(RETAINED_EVENTS), database))
}

rally_store::identity_conformance_tests!(fresh_store());
rally_store::room_conformance_tests!(fresh_room_store());
rally_store::ticket_conformance_tests!(fresh_room_store());
rally_store::broker_conformance_tests!(fresh_store());

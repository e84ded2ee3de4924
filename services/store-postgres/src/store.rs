//! Connecting to Postgres, migrating the schema, and closing.

use std::time::Duration;

use rally_store::StoreError;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Transaction};

use crate::error_mapping::{map_error, map_migrate_error};

/// The schema, embedded at compile time.
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// How long a call waits for a free pooled connection before giving up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many of its latest events each room keeps, unless configured otherwise.
pub const DEFAULT_RETAINED_EVENTS: u64 = 1000;

/// The `rally-store` traits on a Postgres database.
///
/// Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pub(crate) pool: PgPool,
    /// How many of its latest events each room keeps.
    pub(crate) retained_events: u64,
    /// How many bytes of payload those events may hold at most.
    pub(crate) retained_event_bytes: u64,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`) with
    /// at most `max_connections` pooled connections, and brings its schema up to date.
    ///
    /// Safe when several replicas start at once: the migrator holds a Postgres advisory lock
    /// (keyed by database name) while it checks and applies migrations, so one applies them and
    /// the others wait, then find nothing left to do. It runs on a connection of its own that is
    /// closed afterwards, so the lock never outlives the migration, even when one fails.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), rally_store::StoreError> {
    /// let url = "postgres://rally@db.internal/rally";
    /// let store = rally_store_postgres::PostgresStore::connect(url, 16).await?;
    /// store.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        if max_connections == 0 {
            return Err(map_error(sqlx::Error::Configuration(
                "max_connections must be at least 1".into(),
            )));
        }
        // A one-connection pool of its own: `Migrator::run` on a bare `&mut PgConnection` makes
        // this future fail `Send` checks ("Acquire is not general enough") in spawned tasks.
        let migrating = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(map_error)?;
        let migrated = MIGRATOR.run(&migrating).await;
        // Closing ends the session, and with it the advisory lock, whatever the outcome.
        migrating.close().await;
        migrated.map_err(map_migrate_error)?;

        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(map_error)?;
        Ok(Self {
            pool,
            retained_events: DEFAULT_RETAINED_EVENTS,
            retained_event_bytes: rally_store::rooms::DEFAULT_RETAINED_EVENT_BYTES,
        })
    }

    /// This store, keeping the latest `retained_events` events of each room (default
    /// [`DEFAULT_RETAINED_EVENTS`]) instead; older ones are deleted as newer ones are appended.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), rally_store::StoreError> {
    /// let url = "postgres://rally@db.internal/rally";
    /// let store = rally_store_postgres::PostgresStore::connect(url, 16)
    ///     .await?
    ///     .with_retained_events(200);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn with_retained_events(self, retained_events: u64) -> Self {
        Self {
            retained_events,
            ..self
        }
    }

    /// This store, keeping at most `bytes` of event payload per room (default
    /// [`rally_store::rooms::DEFAULT_RETAINED_EVENT_BYTES`]); the oldest events go first.
    #[must_use]
    pub fn with_retained_event_bytes(self, bytes: u64) -> Self {
        Self {
            retained_event_bytes: bytes,
            ..self
        }
    }

    /// Starts a read-only transaction whose reads all see one snapshot of the database.
    pub(crate) async fn begin_read(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(map_error)
    }

    /// Closes every pooled connection, waiting for calls in flight. Later calls fail with
    /// [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

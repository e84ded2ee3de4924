//! Opening, migrating and closing the SQLite database.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use rally_store::StoreError;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use crate::error_mapping::{map_error, map_migrate_error};

/// The schema, embedded at compile time.
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How long a call waits for another connection's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a call waits for a free pooled connection before giving up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the write-ahead log is cut back to after a checkpoint.
pub const WAL_SIZE_LIMIT_BYTES: u64 = 8 << 20;

/// How many of its latest events each room keeps, unless configured otherwise.
pub const DEFAULT_RETAINED_EVENTS: u64 = 1000;

/// The `rally-store` traits on a SQLite database.
///
/// Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    /// How many of its latest events each room keeps.
    pub(crate) retained_events: u64,
    /// How many bytes of payload those events may hold at most.
    pub(crate) retained_event_bytes: u64,
}

impl SqliteStore {
    /// Opens (creating it and its parent directory when missing) the database file at `path`
    /// and brings its schema up to date.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), rally_store::StoreError> {
    /// let store = rally_store_sqlite::SqliteStore::open("rally-data/rally.db".as_ref()).await?;
    /// store.close().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            tokio::fs::create_dir_all(parent).await.map_err(|error| {
                StoreError::Unavailable(format!("cannot create {}: {error}", parent.display()))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        Self::open_with(options).await
    }

    /// Opens the database named by a `sqlite:` URL (for example `sqlite://rally.db?mode=rwc`, or
    /// `sqlite::memory:`) and brings its schema up to date.
    ///
    /// The URL decides whether a missing file is created (`mode=rwc`); the journal, foreign-key
    /// and busy-timeout settings are always Rally's.
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        // sqlx parses any URL as a SQLite one (`postgres://host/db` becomes a file path), so the
        // scheme is checked here.
        if !url.starts_with("sqlite:") {
            let scheme = url.split(':').next().unwrap_or_default();
            return Err(map_error(sqlx::Error::Configuration(
                format!("expected a sqlite: URL, got a {scheme}: URL").into(),
            )));
        }
        let options = SqliteConnectOptions::from_str(url).map_err(map_error)?;
        Self::open_with(options).await
    }

    /// This store, keeping the latest `retained_events` events of each room (default
    /// [`DEFAULT_RETAINED_EVENTS`]) instead; older ones are deleted as newer ones are appended.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), rally_store::StoreError> {
    /// let store = rally_store_sqlite::SqliteStore::open("rally.db".as_ref())
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

    /// Starts a transaction holding the database's write lock.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_error)
    }

    /// Starts a read-only transaction: its reads see one consistent state of the database.
    pub(crate) async fn begin_read(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool.begin().await.map_err(map_error)
    }

    /// Closes every pooled connection, waiting for calls in flight. Later calls fail with
    /// [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn open_with(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // After a checkpoint the write-ahead log is cut back to this size, so that one burst
            // of writes does not leave a large file behind.
            .pragma("journal_size_limit", WAL_SIZE_LIMIT_BYTES.to_string());
        let pool = SqlitePoolOptions::new()
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(map_error)?;
        MIGRATOR.run(&pool).await.map_err(map_migrate_error)?;
        Ok(Self {
            pool,
            retained_events: DEFAULT_RETAINED_EVENTS,
            retained_event_bytes: rally_store::rooms::DEFAULT_RETAINED_EVENT_BYTES,
        })
    }
}

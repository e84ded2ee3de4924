//! Choosing and opening the database: SQLite (embedded default) or Postgres.

use std::sync::Arc;

use rally_store::{BrokerStore, Bus, IdentityStore, LocalBus, RoomStore, TicketStore};
use rally_store_postgres::{PgBus, PostgresStore};
use rally_store_sqlite::SqliteStore;

use crate::config::is_postgres_url;
use crate::{Config, RallydError};

/// The open database, whichever backend it is.
#[derive(Clone)]
pub enum Database {
    /// The embedded SQLite database (single replica), with the one in-process bus every
    /// service of the process shares.
    Sqlite(Arc<SqliteStore>, Arc<LocalBus>),
    /// A Postgres database (any number of replicas).
    Postgres(Arc<PostgresStore>),
}

impl Database {
    /// Opens (creating and migrating as needed) the database the config names.
    pub async fn open(config: &Config) -> Result<Self, RallydError> {
        match config.database_url.as_deref() {
            Some(url) if is_postgres_url(url) => {
                let store = PostgresStore::connect(url, config.database_max_connections).await?;
                Ok(Self::Postgres(Arc::new(store)))
            }
            Some(url) => Ok(Self::Sqlite(
                Arc::new(SqliteStore::open_url(url).await?),
                Arc::default(),
            )),
            None => {
                let path = config.data_dir.join("rally.db");
                Ok(Self::Sqlite(
                    Arc::new(SqliteStore::open(&path).await?),
                    Arc::default(),
                ))
            }
        }
    }

    /// The backend's name, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(..) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// The identity store.
    pub fn identity(&self) -> Arc<dyn IdentityStore> {
        match self {
            Self::Sqlite(store, _) => store.clone(),
            Self::Postgres(store) => store.clone(),
        }
    }

    /// The room store.
    pub fn rooms(&self) -> Arc<dyn RoomStore> {
        match self {
            Self::Sqlite(store, _) => store.clone(),
            Self::Postgres(store) => store.clone(),
        }
    }

    /// The ticket store.
    pub fn tickets(&self) -> Arc<dyn TicketStore> {
        match self {
            Self::Sqlite(store, _) => store.clone(),
            Self::Postgres(store) => store.clone(),
        }
    }

    /// The broker store.
    pub fn broker(&self) -> Arc<dyn BrokerStore> {
        match self {
            Self::Sqlite(store, _) => store.clone(),
            Self::Postgres(store) => store.clone(),
        }
    }

    /// The cross-replica bus: LISTEN/NOTIFY on Postgres; in-process on SQLite, which is
    /// single-replica by design.
    pub fn bus(&self) -> Arc<dyn Bus> {
        match self {
            Self::Sqlite(_, bus) => bus.clone(),
            Self::Postgres(store) => Arc::new(PgBus::new(store.as_ref().clone())),
        }
    }

    /// Closes the connection pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(store, _) => store.close().await,
            Self::Postgres(store) => store.close().await,
        }
    }
}

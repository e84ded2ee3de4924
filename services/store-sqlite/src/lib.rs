//! Rally's embedded storage backend: the `rally-store` traits on one SQLite file.
//!
//! This is the default for a single `rallyd` (no database server to run). It owns the SQLite
//! schema (`migrations/sqlite`, applied at [`SqliteStore::open`]) and nothing else: no service
//! logic, no clock (times come from the caller). For several `rallyd` replicas sharing one
//! database, use `rally-store-postgres`.
//!
//! SQLite allows one writer at a time: every method that may write takes the write lock up front
//! (`BEGIN IMMEDIATE`), so read-then-write decisions (device binding, token rotation, room
//! capacity and membership, one queued ticket per user, which tickets a match round takes, a
//! connection request against the pair limits) cannot race, and waits for the lock up to a busy
//! timeout before failing as [`StoreError::Unavailable`](rally_store::StoreError::Unavailable). A
//! match round creates its rooms with the room changes' own code, in its one transaction.

mod broker;
mod error_mapping;
mod identity;
mod rooms;
mod store;
mod tickets;

pub use store::{DEFAULT_RETAINED_EVENTS, SqliteStore};

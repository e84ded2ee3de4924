//! Rally's production storage backend: the `rally-store` traits on PostgreSQL.
//!
//! Use it when several `rallyd` replicas share one database. It owns the Postgres schema
//! (`migrations/postgres`, applied at [`PostgresStore::connect`] under an advisory lock, so
//! replicas starting together migrate once) and nothing else: no service logic, no clock (times
//! come from the caller). For a single process without a database server, use
//! `rally-store-sqlite`.
//!
//! Transactions run at Postgres's default READ COMMITTED isolation; decisions that read before
//! they write lock the rows they decide on (`FOR NO KEY UPDATE`) or let a unique key arbitrate
//! (`ON CONFLICT DO NOTHING`), so concurrent calls serialise where the contract says they must.
//!
//! With the `testing` feature, [`testing::TempDatabase`] gives each test a throwaway database.

mod error_mapping;
mod identity;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use store::PostgresStore;

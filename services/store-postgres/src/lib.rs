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
//! Room changes lock the rows of the rooms they touch (`FOR UPDATE`, in id order) and are retried,
//! a bounded number of times, when a concurrent change of the same user gets in their way. A match
//! round locks the pool's queued tickets no other round holds (`FOR UPDATE SKIP LOCKED`), so
//! rounds on several replicas take disjoint tickets; it creates its rooms with the room changes'
//! own code, under their lock order and retry policy (a lost race reruns the whole round). Broker
//! changes lock the users they decide on (a connection request both of its users, in id order),
//! so crossing requests end in one agreed pair and the pair limits hold under concurrency.
//!
//! With the `testing` feature, [`testing::TempDatabase`] gives each test a throwaway database.

mod broker;
pub mod bus;
mod error_mapping;
mod identity;
mod retry;
mod rooms;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod tickets;

pub use bus::PgBus;
pub use store::{DEFAULT_RETAINED_EVENTS, PostgresStore};

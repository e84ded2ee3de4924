//! What every storage backend shares beyond the traits: the stored text forms of enumerations,
//! events, statuses and broker rows, and the pure decisions (what a data update really changes,
//! which planned match groups are acceptable, what a connection request does) that must come out
//! the same whatever the database.
//!
//! For backend crates only; the services never use it.

pub mod broker_codec;
pub mod connect_decision;
pub mod data_change;
pub mod room_codec;
pub mod ticket_codec;
pub mod ticket_groups;

/// The error of a failed decode: what sqlx calls `BoxDynError`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

//! Rally's storage contract.
//!
//! This crate defines what the services need from a database, as narrow traits over plain data
//! types ([`IdentityStore`], [`RoomStore`], [`TicketStore`], [`BrokerStore`], together [`Store`]), and nothing
//! about how it is stored: it depends on no database driver. Each backend
//! (`rally-store-sqlite`, the embedded default; `rally-store-postgres`, for production) implements
//! the traits and owns its migrations. The `conformance` module (behind the feature of that
//! name) is the one set of behavioural tests every backend must pass.
//!
//! Time is passed in by the caller as [`UnixMillis`], never read from a clock here, so behaviour
//! around expiry is deterministic in tests.

pub mod backend;
pub mod broker;
pub mod bus;
pub mod error;
pub mod identity;
pub mod matchmaking;
pub mod rooms;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use broker::BrokerStore;
pub use bus::{Bus, BusEvent, LocalBus};
pub use error::StoreError;
pub use identity::{
    Account, Credentials, IdentityStore, KEPT_ROTATED_TOKENS, NewSession, NewUser, PurgedSessions,
    RefreshRotation, TokenHash, User,
};
pub use matchmaking::TicketStore;
pub use rooms::RoomStore;

/// Milliseconds since the Unix epoch (UTC).
pub type UnixMillis = i64;

/// Everything a `rallyd` process needs from its database, as one object.
///
pub trait Store: IdentityStore + RoomStore + TicketStore + BrokerStore {}

impl<T: IdentityStore + RoomStore + TicketStore + BrokerStore> Store for T {}

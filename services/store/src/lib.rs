//! Rally's storage contract.
//!
//! This crate defines what the services need from a database, as narrow traits over plain data
//! types, and nothing about how it is stored: it depends on no database driver. Each backend
//! (`rally-store-sqlite`, the embedded default; `rally-store-postgres`, for production) implements
//! the traits and owns its migrations. The `conformance` module (behind the feature of that
//! name) is the one set of behavioural tests every backend must pass.
//!
//! Time is passed in by the caller as [`UnixMillis`], never read from a clock here, so behaviour
//! around expiry is deterministic in tests.

pub mod error;
pub mod identity;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::StoreError;
pub use identity::{
    Account, Credentials, IdentityStore, NewSession, NewUser, RefreshRotation, TokenHash, User,
};

/// Milliseconds since the Unix epoch (UTC).
pub type UnixMillis = i64;

/// Everything a `rallyd` process needs from its database, as one object.
///
/// Grows a supertrait per service (rooms, broker) as they are built.
pub trait Store: IdentityStore {}

impl<T: IdentityStore> Store for T {}

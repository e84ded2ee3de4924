//! Rally's identity service (`rally.identity.v1.Identity`).
//!
//! Accounts with a username and password (argon2id), anonymous accounts bound to a device id,
//! sessions with rotating refresh tokens (reuse of a rotated token revokes the session), and the
//! access tokens every other service verifies on its own. Sign-in attempts are rate-limited per
//! username and per peer address in bounded memory.
//!
//! This crate is a constructor and a tonic service; it does not authenticate calls (the
//! `rally-auth` layer in front of every service does) and it knows no database (it is handed an
//! [`rally_store::IdentityStore`]).

mod error;
pub mod janitor;
mod password;
mod refresh_token;
mod rules;
mod service;
mod throttle;

pub use error::IdentityError;
pub use password::PasswordParams;
pub use rules::{
    DEVICE_ID_BYTES, DISPLAY_NAME_CHARS, PASSWORD_BYTES, USERNAME_BYTES, validate_username,
};
pub use service::{IdentityConfig, IdentityService};
pub use throttle::ThrottleConfig;

/// The identity calls that need no access token: everything that signs in.
pub const PUBLIC_METHODS: [&str; 4] = [
    "/rally.identity.v1.Identity/Register",
    "/rally.identity.v1.Identity/Login",
    "/rally.identity.v1.Identity/DeviceLogin",
    "/rally.identity.v1.Identity/Refresh",
];

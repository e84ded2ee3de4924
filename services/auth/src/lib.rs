//! Authentication shared by every Rally service.
//!
//! Identity issues access tokens ([`TokenIssuer`]); every service verifies them locally with a
//! [`TokenVerifier`], without a database round trip, through one tower layer ([`AuthLayer`]) in
//! front of all gRPC services. Handlers then read the authenticated [`Caller`] from the request.
//!
//! Tokens are compact JWS (JWT) signed with Ed25519 (`alg: EdDSA`) and carry a key id (`kid`) so
//! that signing keys can rotate: a verifier accepts every key in its [`KeyRing`], an issuer signs
//! with exactly one. A session's end (Logout, a revoked refresh-token family) reaches every
//! replica's [`SessionEnds`]; [`SessionLayer`] then refuses its tokens and ends its open streams.
//! This crate knows nothing about accounts or storage.

mod caller;
mod client_address;
mod ending_body;
mod keys;
mod layer;
pub mod rate;
pub mod revocation;
mod token;

pub use caller::Caller;
pub use client_address::limit_key;
pub use ending_body::EndingBody;
pub use keys::{KeyError, KeyRing, SigningKey, check_private_file, write_private};
pub use layer::{AuthLayer, AuthService, PublicMethods};
pub use rate::{KeyedRate, Rate, RateLayer, RateLimits};
pub use revocation::{SessionEnds, SessionLayer, StreamLife};
pub use token::{AccessToken, Claims, TokenError, TokenIssuer, TokenVerifier};

/// The gRPC metadata key that carries the access token, as `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";

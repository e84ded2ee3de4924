//! Accounts, device bindings, sessions and refresh tokens.
//!
//! Refresh tokens are never stored, only their SHA-256 ([`TokenHash`]). A session is one sign-in;
//! its refresh token rotates on every refresh, and the rotated tokens are kept (marked rotated) so
//! that presenting one again is recognised as reuse and revokes the whole session.

use async_trait::async_trait;
use uuid::Uuid;

use crate::{StoreError, UnixMillis};

/// The SHA-256 of a secret (a refresh token or a device id), as stored.
pub type TokenHash = [u8; 32];

/// A user's profile as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user's id.
    pub id: Uuid,
    /// The login name as the user typed it at registration; `None` for device-only accounts.
    pub username: Option<String>,
    /// The name shown to others.
    pub display_name: String,
    /// When the account was created.
    pub created_at: UnixMillis,
}

/// A user with what is needed to check a password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub user: User,
    /// The argon2id hash in PHC string format; `None` for accounts without a password.
    pub password_hash: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A user's own view of the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The user.
    pub user: User,
    /// True when the account has a password (it can sign in by username).
    pub has_password: bool,
    /// How many device ids are bound to the account.
    pub device_count: u32,
}

/// A user to create.
#[derive(Clone, PartialEq, Eq)]
pub struct NewUser {
    /// The new id (chosen by the caller).
    pub id: Uuid,
    /// The username as typed; `None` for a device-only account.
    pub username: Option<String>,
    /// The display name.
    pub display_name: String,
    /// The argon2id PHC hash of the password; `None` for a device-only account.
    pub password_hash: Option<String>,
    /// The creation time.
    pub created_at: UnixMillis,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("display_name", &self.display_name)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<redacted>"),
            )
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A session to open, with its first refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// The session id (chosen by the caller).
    pub id: Uuid,
    /// The signed-in user.
    pub user_id: Uuid,
    /// The hash of the session's first refresh token.
    pub refresh_token: TokenHash,
    /// When the session was opened.
    pub created_at: UnixMillis,
    /// When the first refresh token expires.
    pub refresh_expires_at: UnixMillis,
}

/// The outcome of presenting a refresh token, see [`IdentityStore::rotate_refresh_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshRotation {
    /// The token was current: it is now rotated and the next token is stored in its place.
    Rotated {
        /// The session's user.
        user: User,
        /// The session, unchanged across rotations.
        session_id: Uuid,
    },
    /// No such token was ever issued.
    Unknown,
    /// The token was current but past its expiry; nothing changed.
    Expired,
    /// The token's session was already revoked (logout or earlier reuse); nothing changed.
    Revoked,
    /// The token had already been rotated: someone replayed it. The whole session is now revoked.
    Reused {
        /// The session that was revoked.
        session_id: Uuid,
    },
}

/// How many rotated refresh tokens a session keeps for reuse detection.
pub const KEPT_ROTATED_TOKENS: u32 = 16;

/// What [`IdentityStore::purge_sessions`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgedSessions {
    /// Sessions deleted (with their refresh tokens).
    pub sessions: u64,
    /// Refresh tokens deleted (those of the deleted sessions, expired ones, ones rotated long
    /// ago).
    pub refresh_tokens: u64,
}

/// Storage for accounts and sessions.
///
/// Every method is one transaction: it either happens completely or not at all.
#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    /// Creates an account with a username and password.
    ///
    /// Usernames are unique case-insensitively (ASCII): fails with
    /// [`StoreError::UsernameTaken`] when `user.username` differs only in case from an existing
    /// one, and then writes nothing.
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError>;

    /// The account with this username (compared case-insensitively), with its password hash.
    async fn credentials_by_username(
        &self,
        username: &str,
    ) -> Result<Option<Credentials>, StoreError>;

    /// The user with this id.
    async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, StoreError>;

    /// The user's own account view.
    async fn account(&self, id: Uuid) -> Result<Option<Account>, StoreError>;

    /// The user bound to this device id hash; when there is none, creates `new_user` bound to it.
    ///
    /// Returns the user and whether it was created now. Concurrent calls with the same device
    /// create exactly one account and all return it.
    async fn device_user(
        &self,
        device: TokenHash,
        new_user: NewUser,
    ) -> Result<(User, bool), StoreError>;

    /// Opens a session with its first refresh token.
    ///
    /// Fails with [`StoreError::NotFound`] when the user does not exist.
    async fn create_session(&self, session: NewSession) -> Result<(), StoreError>;

    /// Presents refresh token `presented` at time `now`; when it is current and unexpired,
    /// rotates it and stores `next` (expiring at `next_expires_at`) in its place. A session keeps
    /// its [`KEPT_ROTATED_TOKENS`] most recently rotated tokens (presenting one is reuse); older
    /// ones are deleted (presenting one is then unknown).
    ///
    /// Exactly one of several concurrent presentations of one token can rotate it. The first
    /// loser sees [`RefreshRotation::Reused`], which revokes the session (that is what a stolen
    /// token being raced looks like, and failing closed is the safe answer); later ones see
    /// `Reused` or [`RefreshRotation::Revoked`].
    async fn rotate_refresh_token(
        &self,
        presented: TokenHash,
        next: TokenHash,
        now: UnixMillis,
        next_expires_at: UnixMillis,
    ) -> Result<RefreshRotation, StoreError>;

    /// The session refresh token `presented` belongs to, whatever its state (current, rotated,
    /// expired, revoked), or `None` when no such token is stored. A read: it takes no write lock,
    /// so that refusing unknown tokens and limiting one session's refreshes cost no write.
    async fn refresh_token_session(&self, presented: TokenHash)
    -> Result<Option<Uuid>, StoreError>;

    /// Keeps the user's `keep` newest sessions (by creation) and deletes the others with their
    /// refresh tokens, so that however often a user signs in it holds a bounded number of
    /// sessions. Returns the ids of the deleted sessions that were still active (their access
    /// tokens must stop working everywhere).
    async fn trim_sessions(&self, user_id: Uuid, keep: u32) -> Result<Vec<Uuid>, StoreError>;

    /// Deletes what can no longer be used, as of `before` (now minus the retention): sessions
    /// revoked at or before it, sessions whose every refresh token expired at or before it, and
    /// refresh tokens that expired or were rotated at or before it (a rotated token presented
    /// after that is unknown rather than reused). Returns what was deleted.
    async fn purge_sessions(&self, before: UnixMillis) -> Result<PurgedSessions, StoreError>;

    /// Whether the session exists, belongs to `user_id` and is not revoked.
    async fn session_active(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, StoreError>;

    /// Revokes one session of a user. Returns how many sessions this call revoked (0 or 1).
    async fn revoke_session(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        now: UnixMillis,
    ) -> Result<u32, StoreError>;

    /// Revokes every session of a user. Returns the ids of those this call revoked (so that
    /// their open streams can be ended everywhere).
    async fn revoke_all_sessions(
        &self,
        user_id: Uuid,
        now: UnixMillis,
    ) -> Result<Vec<Uuid>, StoreError>;
}

//! The errors a store reports, independent of the database behind it.

/// What went wrong in a store call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The username (compared case-insensitively) already belongs to another account.
    #[error("username is already taken")]
    UsernameTaken,
    /// The certificate fingerprint is announced by another user's live attachment.
    #[error("the certificate fingerprint belongs to another online user")]
    FingerprintTaken,
    /// A row the caller referred to does not exist (for example a session of an unknown user).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The database could not be reached or did not answer in time; the call may be retried.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error that is not a domain outcome (a bug or a broken schema).
    #[error("database error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

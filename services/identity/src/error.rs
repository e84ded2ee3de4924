//! The identity service's errors, and their one mapping to gRPC statuses.

use std::time::Duration;

use rally_store::StoreError;

/// Why an identity call failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A field breaks its rule.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field.
        field: &'static str,
        /// The rule it breaks.
        reason: String,
    },
    /// The username belongs to another account.
    #[error("username is already taken")]
    UsernameTaken,
    /// Unknown username or wrong password: deliberately the same error.
    #[error("invalid username or password")]
    BadCredentials,
    /// The refresh token was refused.
    #[error("{0}")]
    RefreshRefused(&'static str),
    /// Too many sign-in attempts or refreshes.
    #[error("too many {scope}; retry in {} ms", retry_after.as_millis())]
    Throttled {
        /// What was counted where: "sign-in attempts for this username", "refreshes of this
        /// session", ...
        scope: &'static str,
        /// How long to wait.
        retry_after: Duration,
    },
    /// No such user.
    #[error("no user with id {0}")]
    UserNotFound(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something inside the service broke (a task panicked, signing failed).
    #[error("internal error: {0}")]
    Internal(String),
}

impl IdentityError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<IdentityError> for tonic::Status {
    fn from(error: IdentityError) -> Self {
        use tonic::Status;
        match &error {
            IdentityError::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            IdentityError::UsernameTaken => Status::already_exists(error.to_string()),
            IdentityError::BadCredentials | IdentityError::RefreshRefused(_) => {
                Status::unauthenticated(error.to_string())
            }
            IdentityError::Throttled { retry_after, .. } => {
                let mut status = Status::resource_exhausted(error.to_string());
                if let Ok(value) = retry_after.as_millis().to_string().parse() {
                    status.metadata_mut().insert("retry-after-ms", value);
                }
                status
            }
            IdentityError::UserNotFound(_) => Status::not_found(error.to_string()),
            IdentityError::Store(StoreError::UsernameTaken) => {
                Status::already_exists("username is already taken")
            }
            IdentityError::Store(StoreError::NotFound(what)) => {
                Status::not_found(format!("{what} not found"))
            }
            IdentityError::Store(StoreError::Unavailable(_)) => {
                tracing::warn!(%error, "database unavailable");
                Status::unavailable("the database is unavailable; retry later")
            }
            // Identity writes no presence: a fingerprint conflict here would be a bug.
            IdentityError::Store(StoreError::Backend(_) | StoreError::FingerprintTaken)
            | IdentityError::Internal(_) => {
                tracing::error!(%error, "identity call failed");
                Status::internal("internal error")
            }
        }
    }
}

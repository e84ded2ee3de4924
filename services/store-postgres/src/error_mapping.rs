//! The one place where Postgres's errors become [`StoreError`]s.
//!
//! Domain outcomes the schema enforces (a taken username, a missing user) become their
//! [`StoreError`] variants; an unreachable, overloaded or shutting-down server and transient
//! concurrency failures become [`StoreError::Unavailable`]; everything else is a bug or a broken
//! schema ([`StoreError::Backend`]).

use rally_store::StoreError;
use sqlx::error::{DatabaseError, ErrorKind};
use sqlx::migrate::MigrateError;

/// The unique constraint on `users.username_key` (named in `migrations/postgres`).
const USERNAME_KEY_CONSTRAINT: &str = "users_username_key_unique";
/// The partial unique index on live presence rows' certificate fingerprints (migration 0005).
const FINGERPRINT_KEY_CONSTRAINT: &str = "broker_presence_fingerprint";

/// The unique constraint on `room_members.user_id` (named in `migrations/postgres`): one room per
/// user. Two concurrent moves of one user that lock no room in common meet here.
const ROOM_MEMBER_USER_CONSTRAINT: &str = "room_members_user_unique";

/// Maps an error from a store call.
pub(crate) fn map_error(error: sqlx::Error) -> StoreError {
    let meaning = match &error {
        sqlx::Error::Database(database_error) => classify(database_error.as_ref()),
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => Some(StoreError::Unavailable(error.to_string())),
        _ => None,
    };
    meaning.unwrap_or_else(|| StoreError::Backend(error.into()))
}

/// Whether a failed room change lost a race to a concurrent one, so that running it again, in a
/// new transaction, may succeed: a deadlock, a serialisation failure, or a second room for one
/// user. (When retrying stops, [`map_error`] still decides what the error means.)
pub(crate) fn is_lost_race(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(database_error) = error else {
        return false;
    };
    match database_error.kind() {
        ErrorKind::UniqueViolation => {
            database_error.constraint() == Some(ROOM_MEMBER_USER_CONSTRAINT)
        }
        _ => matches!(database_error.code().as_deref(), Some("40001" | "40P01")),
    }
}

/// Maps an error from bringing the schema up to date.
pub(crate) fn map_migrate_error(error: MigrateError) -> StoreError {
    match error {
        MigrateError::Execute(error) => match map_error(error) {
            StoreError::Unavailable(reason) => {
                StoreError::Unavailable(format!("while migrating: {reason}"))
            }
            StoreError::Backend(error) => StoreError::Backend(error),
            other => StoreError::Backend(Box::new(other)),
        },
        other => StoreError::Backend(other.into()),
    }
}

/// The domain meaning of an error Postgres reported, if it has one.
fn classify(error: &dyn DatabaseError) -> Option<StoreError> {
    match error.kind() {
        ErrorKind::UniqueViolation if error.constraint() == Some(USERNAME_KEY_CONSTRAINT) => {
            Some(StoreError::UsernameTaken)
        }
        ErrorKind::UniqueViolation if error.constraint() == Some(FINGERPRINT_KEY_CONSTRAINT) => {
            Some(StoreError::FingerprintTaken)
        }
        ErrorKind::ForeignKeyViolation => Some(StoreError::NotFound("user")),
        _ => {
            let code = error.code()?;
            is_retryable(&code).then(|| StoreError::Unavailable(error.to_string()))
        }
    }
}

/// Whether a SQLSTATE means "the server cannot answer now; the same call may succeed later".
fn is_retryable(sqlstate: &str) -> bool {
    const RETRYABLE_CLASSES: [&str; 3] = [
        "08", // connection exception
        "53", // insufficient resources (too many connections, out of memory or disk)
        "57", // operator intervention (shutdown, statement cancelled)
    ];
    const RETRYABLE_CODES: [&str; 3] = [
        "40001", // serialization_failure
        "40P01", // deadlock_detected
        "55P03", // lock_not_available
    ];
    RETRYABLE_CLASSES
        .iter()
        .any(|class| sqlstate.starts_with(class))
        || RETRYABLE_CODES.contains(&sqlstate)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::error::Error as StdError;

    use super::*;

    /// A database error as Postgres would report it: a SQLSTATE and maybe a constraint name.
    #[derive(Debug)]
    struct FakePgError {
        sqlstate: &'static str,
        constraint: Option<&'static str>,
    }

    impl std::fmt::Display for FakePgError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error with SQLSTATE {}", self.sqlstate)
        }
    }

    impl StdError for FakePgError {}

    impl DatabaseError for FakePgError {
        fn message(&self) -> &str {
            "fake"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(self.sqlstate.into())
        }
        fn constraint(&self) -> Option<&str> {
            self.constraint
        }
        fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
            self
        }
        // As sqlx-postgres derives it from the SQLSTATE.
        fn kind(&self) -> ErrorKind {
            match self.sqlstate {
                "23505" => ErrorKind::UniqueViolation,
                "23503" => ErrorKind::ForeignKeyViolation,
                "23502" => ErrorKind::NotNullViolation,
                "23514" => ErrorKind::CheckViolation,
                _ => ErrorKind::Other,
            }
        }
    }

    fn database_error(sqlstate: &'static str, constraint: Option<&'static str>) -> sqlx::Error {
        sqlx::Error::Database(Box::new(FakePgError {
            sqlstate,
            constraint,
        }))
    }

    #[test]
    fn a_unique_violation_of_the_username_key_is_username_taken() {
        let error = database_error("23505", Some(USERNAME_KEY_CONSTRAINT));
        assert!(matches!(map_error(error), StoreError::UsernameTaken));
    }

    #[test]
    fn a_unique_violation_of_another_key_is_a_backend_error() {
        let error = database_error("23505", Some("users_pkey"));
        assert!(matches!(map_error(error), StoreError::Backend(_)));
    }

    #[test]
    fn deadlocks_serialisation_failures_and_a_second_room_for_a_user_are_lost_races() {
        for (sqlstate, constraint) in [
            ("40P01", None),
            ("40001", None),
            ("23505", Some(ROOM_MEMBER_USER_CONSTRAINT)),
        ] {
            assert!(
                is_lost_race(&database_error(sqlstate, constraint)),
                "{sqlstate} {constraint:?} is a lost race"
            );
        }
    }

    #[test]
    fn other_failures_are_not_lost_races() {
        for (sqlstate, constraint) in [
            ("23505", Some("rooms_pkey")),
            ("23505", Some(USERNAME_KEY_CONSTRAINT)),
            ("55P03", None),
            ("08006", None),
            ("42601", None),
        ] {
            assert!(
                !is_lost_race(&database_error(sqlstate, constraint)),
                "{sqlstate} {constraint:?} is not a lost race"
            );
        }
        assert!(!is_lost_race(&sqlx::Error::PoolTimedOut));
    }

    #[test]
    fn a_foreign_key_violation_is_a_missing_user() {
        let error = database_error("23503", Some("sessions_user_id_fkey"));
        assert!(matches!(map_error(error), StoreError::NotFound("user")));
    }

    #[test]
    fn connection_resource_shutdown_and_concurrency_failures_are_unavailable() {
        for sqlstate in [
            "08006", "53300", "57P01", "57014", "40001", "40P01", "55P03",
        ] {
            assert!(
                matches!(
                    map_error(database_error(sqlstate, None)),
                    StoreError::Unavailable(_)
                ),
                "SQLSTATE {sqlstate} should be Unavailable"
            );
        }
    }

    #[test]
    fn syntax_and_check_errors_are_backend_errors() {
        for sqlstate in ["42601", "42P01", "23514", "22P02"] {
            assert!(
                matches!(
                    map_error(database_error(sqlstate, None)),
                    StoreError::Backend(_)
                ),
                "SQLSTATE {sqlstate} should be a backend error"
            );
        }
    }

    #[test]
    fn pool_exhaustion_closure_and_io_are_unavailable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        for error in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(io),
        ] {
            assert!(matches!(map_error(error), StoreError::Unavailable(_)));
        }
    }

    #[test]
    fn a_decoding_failure_is_a_backend_error() {
        let error = sqlx::Error::ColumnNotFound("id".to_owned());
        assert!(matches!(map_error(error), StoreError::Backend(_)));
    }
}

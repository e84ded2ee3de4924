//! The one place where SQLite's errors become [`StoreError`]s.
//!
//! Domain outcomes the schema enforces (a taken username, a missing user) become their
//! [`StoreError`] variants; a locked or unreachable database becomes
//! [`StoreError::Unavailable`]; everything else is a bug or a broken schema
//! ([`StoreError::Backend`]).

use rally_store::StoreError;
use sqlx::error::{DatabaseError, ErrorKind};
use sqlx::migrate::MigrateError;

/// SQLite's primary result codes (the low byte of an extended code) meaning "try again later":
/// BUSY, LOCKED, IOERR, FULL, CANTOPEN.
const RETRYABLE_PRIMARY_CODES: [i32; 5] = [5, 6, 10, 13, 14];

/// Maps an error from a store call.
pub(crate) fn map_error(error: sqlx::Error) -> StoreError {
    let meaning = match &error {
        sqlx::Error::Database(database_error) => classify(database_error.as_ref()),
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_) => Some(StoreError::Unavailable(error.to_string())),
        _ => None,
    };
    meaning.unwrap_or_else(|| StoreError::Backend(error.into()))
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

/// The domain meaning of an error SQLite reported, if it has one.
fn classify(error: &dyn DatabaseError) -> Option<StoreError> {
    match error.kind() {
        // SQLite names no constraint, only "UNIQUE constraint failed: users.username_key".
        ErrorKind::UniqueViolation if error.message().contains("users.username_key") => {
            Some(StoreError::UsernameTaken)
        }
        ErrorKind::ForeignKeyViolation => Some(StoreError::NotFound("user")),
        _ => {
            let code = error.code()?.parse::<i32>().ok()?;
            RETRYABLE_PRIMARY_CODES
                .contains(&(code & 0xff))
                .then(|| StoreError::Unavailable(error.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::error::Error as StdError;

    use super::*;

    /// The kinds of constraint failure the mapping tells apart (sqlx's `ErrorKind` is not `Copy`).
    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Unique,
        ForeignKey,
        Check,
        Other,
    }

    /// A database error as SQLite would report it: an extended result code and a message.
    #[derive(Debug)]
    struct FakeSqliteError {
        code: i32,
        kind: Kind,
        message: &'static str,
    }

    impl std::fmt::Display for FakeSqliteError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "(code: {}) {}", self.code, self.message)
        }
    }

    impl StdError for FakeSqliteError {}

    impl DatabaseError for FakeSqliteError {
        fn message(&self) -> &str {
            self.message
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(self.code.to_string().into())
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
        fn kind(&self) -> ErrorKind {
            match self.kind {
                Kind::Unique => ErrorKind::UniqueViolation,
                Kind::ForeignKey => ErrorKind::ForeignKeyViolation,
                Kind::Check => ErrorKind::CheckViolation,
                Kind::Other => ErrorKind::Other,
            }
        }
    }

    fn database_error(code: i32, kind: Kind, message: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(FakeSqliteError {
            code,
            kind,
            message,
        }))
    }

    #[test]
    fn a_unique_violation_on_the_username_key_is_username_taken() {
        let error = database_error(
            2067,
            Kind::Unique,
            "UNIQUE constraint failed: users.username_key",
        );
        assert!(matches!(map_error(error), StoreError::UsernameTaken));
    }

    #[test]
    fn a_unique_violation_on_another_column_is_a_backend_error() {
        let error = database_error(1555, Kind::Unique, "UNIQUE constraint failed: users.id");
        assert!(matches!(map_error(error), StoreError::Backend(_)));
    }

    #[test]
    fn a_foreign_key_violation_is_a_missing_user() {
        let error = database_error(787, Kind::ForeignKey, "FOREIGN KEY constraint failed");
        assert!(matches!(map_error(error), StoreError::NotFound("user")));
    }

    #[test]
    fn a_busy_or_locked_database_is_unavailable() {
        for code in [5, 6, 261, 517] {
            let error = database_error(code, Kind::Other, "database is locked");
            assert!(
                matches!(map_error(error), StoreError::Unavailable(_)),
                "code {code} should be Unavailable"
            );
        }
    }

    #[test]
    fn a_check_violation_is_a_backend_error() {
        let error = database_error(275, Kind::Check, "CHECK constraint failed");
        assert!(matches!(map_error(error), StoreError::Backend(_)));
    }

    #[test]
    fn pool_exhaustion_closure_and_io_are_unavailable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
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

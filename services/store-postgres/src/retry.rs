//! The retry policy of changes that lock rooms (room changes and match rounds): each attempt is
//! one READ COMMITTED transaction; an attempt that loses a race to a concurrent change (a user
//! moved between being read and being locked, the unique key on `room_members.user_id` stopped
//! it, or Postgres reported a deadlock or serialisation failure) is rolled back and run again, a
//! bounded number of times.

use std::future::Future;
use std::pin::Pin;

use rally_store::StoreError;
use rally_store::rooms::RoomError;
use sqlx::PgConnection;

use crate::PostgresStore;
use crate::error_mapping::{is_lost_race, map_error};

/// How many times a change is attempted while concurrent changes keep getting in its way.
const ATTEMPTS: usize = 8;

/// Why one attempt at a change stopped; its transaction is rolled back.
#[derive(Debug)]
pub(crate) enum Abort {
    /// The change is refused, or failed for good.
    Refused(RoomError),
    /// A user moved to another room between reading its room and locking it: try again.
    Moved,
    /// The database failed; a lost race (see `error_mapping::is_lost_race`) is worth retrying.
    Database(sqlx::Error),
}

impl From<RoomError> for Abort {
    fn from(error: RoomError) -> Self {
        Self::Refused(error)
    }
}

impl From<StoreError> for Abort {
    fn from(error: StoreError) -> Self {
        Self::Refused(RoomError::Store(error))
    }
}

impl From<sqlx::Error> for Abort {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

/// One attempt's future, borrowing the connection of its transaction.
pub(crate) type AttemptFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, Abort>> + Send + 'c>>;

/// A change that can be attempted again: a closure (see [`PostgresStore::change`]), or a value
/// whose attempts borrow what it holds (a match round borrows its planner).
pub(crate) trait Attempt<T>: Send {
    /// Runs one attempt on the connection of a fresh transaction.
    fn attempt<'c>(&'c mut self, conn: &'c mut PgConnection) -> AttemptFuture<'c, T>;
}

impl<T, F> Attempt<T> for F
where
    F: for<'c> FnMut(&'c mut PgConnection) -> AttemptFuture<'c, T> + Send,
{
    fn attempt<'c>(&'c mut self, conn: &'c mut PgConnection) -> AttemptFuture<'c, T> {
        self(conn)
    }
}

impl PostgresStore {
    /// Runs `attempt` in a transaction and commits it, running it again in a new transaction
    /// when it lost a race (see the module docs).
    ///
    /// Takes the closure itself (rather than any [`Attempt`]) so that its signature is inferred
    /// as the higher-ranked one an attempt needs.
    pub(crate) async fn change<T, F>(&self, attempt: F) -> Result<T, RoomError>
    where
        T: Send,
        F: for<'c> FnMut(&'c mut PgConnection) -> AttemptFuture<'c, T> + Send,
    {
        self.retry(attempt).await
    }

    /// Like [`PostgresStore::change`], for any [`Attempt`].
    pub(crate) async fn retry<T: Send>(
        &self,
        mut attempt: impl Attempt<T>,
    ) -> Result<T, RoomError> {
        let mut lost_to = String::new();
        for _ in 0..ATTEMPTS {
            let mut tx = self.pool.begin().await.map_err(map_error)?;
            let outcome = match attempt.attempt(&mut tx).await {
                Ok(done) => tx.commit().await.map(|()| done).map_err(Abort::from),
                Err(abort) => {
                    // Releases the locks before another attempt waits for them. Should the
                    // rollback fail, the connection is broken and the server rolls back anyway.
                    let _ = tx.rollback().await;
                    Err(abort)
                }
            };
            match outcome {
                Ok(done) => return Ok(done),
                Err(Abort::Refused(error)) => return Err(error),
                Err(Abort::Moved) => lost_to = "a user moved to another room".to_owned(),
                Err(Abort::Database(error)) if is_lost_race(&error) => lost_to = error.to_string(),
                Err(Abort::Database(error)) => return Err(map_error(error).into()),
            }
        }
        Err(StoreError::Unavailable(format!(
            "concurrent changes got in the way {ATTEMPTS} times (last: {lost_to})"
        ))
        .into())
    }
}

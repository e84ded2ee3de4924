//! Throwaway Postgres databases for tests (feature `testing`).
//!
//! Each test creates its own [`TempDatabase`] on the server named by `RALLY_TEST_DATABASE_URL`
//! (default [`DEFAULT_SERVER_URL`]), so tests run in parallel and leave nothing behind: the
//! database is dropped when the guard is, also when the test panics. Without a reachable server,
//! tests skip with a message on stderr, except under `CI=true`, where they fail: CI must never
//! pass by skipping. Not for production use.

use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

/// The environment variable naming the server (any database on it) to create test databases on.
pub const SERVER_URL_ENV: &str = "RALLY_TEST_DATABASE_URL";

/// The server used when [`SERVER_URL_ENV`] is unset: a local trust-auth Postgres.
pub const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long to wait for the server before deciding it is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh, uniquely named database, dropped (with `WITH (FORCE)`) when this guard is dropped.
///
/// ```no_run
/// # async fn run() {
/// use rally_store_postgres::{PostgresStore, testing::TempDatabase};
///
/// let Some(database) = TempDatabase::create().await else {
///     return; // skipped: no Postgres, and not under CI
/// };
/// let store = PostgresStore::connect(database.url(), 4).await.expect("connect");
/// # }
/// ```
#[derive(Debug)]
pub struct TempDatabase {
    server_url: String,
    name: String,
    url: String,
}

impl TempDatabase {
    /// Creates a database on the server at `RALLY_TEST_DATABASE_URL` (or
    /// [`DEFAULT_SERVER_URL`]).
    ///
    /// Returns `None`, after printing why the test is skipped, when the server cannot be reached;
    /// under `CI=true` it panics instead. Panics when the server is reachable but refuses to
    /// create the database.
    pub async fn create() -> Option<Self> {
        let server_url =
            std::env::var(SERVER_URL_ENV).unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned());
        Self::create_on(&server_url).await
    }

    /// Like [`TempDatabase::create`], on the server at `server_url`.
    pub async fn create_on(server_url: &str) -> Option<Self> {
        let mut admin = match connect(server_url).await {
            Ok(admin) => admin,
            Err(reason) => {
                let server = describe(server_url);
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!(
                        "Postgres is required under CI=true: cannot connect to {server}: {reason} \
                         (set {SERVER_URL_ENV} to the server to use)"
                    );
                }
                let test = std::thread::current()
                    .name()
                    .unwrap_or("this test")
                    .to_owned();
                // Straight to stderr: the test harness captures `eprintln!` of passing tests.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test}: it needs Postgres, and none answers at {server}: {reason}. \
                     Start one or set {SERVER_URL_ENV}; under CI=true this is a failure."
                );
                return None;
            }
        };
        let name = format!("rally_test_{}", Uuid::new_v4().simple());
        let create = format!("CREATE DATABASE \"{name}\"");
        if let Err(error) = admin.execute(create.as_str()).await {
            panic!(
                "cannot create test database {name} on {}: {error}",
                describe(server_url)
            );
        }
        // The database exists either way; a failed goodbye on this connection does not matter.
        let _ = admin.close().await;
        Some(Self {
            url: with_database(server_url, &name),
            server_url: server_url.to_owned(),
            name,
        })
    }

    /// The URL of the new database, for `PostgresStore::connect`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The new database's name (`rally_test_` and 32 hex digits).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TempDatabase {
    /// Drops the database, disconnecting whoever still uses it.
    ///
    /// Runs on a thread of its own with its own runtime, joined before returning, so it works
    /// from synchronous code and from inside a Tokio runtime (where blocking on the test's own
    /// runtime would deadlock). Failures are reported on stderr, never as a panic: this may run
    /// while a failed test unwinds.
    fn drop(&mut self) {
        let server_url = self.server_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| format!("cannot start a runtime: {error}"))?;
            runtime.block_on(drop_database(&server_url, &name))
        })
        .join();
        let failure = match dropped {
            Ok(Ok(())) => return,
            Ok(Err(reason)) => reason,
            Err(_) => "the dropping thread panicked".to_owned(),
        };
        let _ = writeln!(
            std::io::stderr(),
            "warning: test database {} was not dropped: {failure}",
            self.name
        );
    }
}

async fn drop_database(server_url: &str, name: &str) -> Result<(), String> {
    let mut admin = connect(server_url).await?;
    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    admin
        .execute(drop.as_str())
        .await
        .map_err(|error| error.to_string())?;
    let _ = admin.close().await;
    Ok(())
}

/// One connection to the server, or why there is none.
async fn connect(server_url: &str) -> Result<PgConnection, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(server_url)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

/// The server of a URL as `user@host:port`, without its password, for messages.
fn describe(server_url: &str) -> String {
    match PgConnectOptions::from_str(server_url) {
        Ok(options) => format!(
            "{}@{}:{}",
            options.get_username(),
            options.get_host(),
            options.get_port()
        ),
        Err(_) => format!("the unparsable URL in {SERVER_URL_ENV}"),
    }
}

/// `server_url` with its database (the URL path) replaced by `database`; the query is kept.
fn with_database(server_url: &str, database: &str) -> String {
    let (location, query) = match server_url.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (server_url, None),
    };
    let authority_start = location.find("://").map_or(0, |scheme_end| scheme_end + 3);
    let base = match location[authority_start..].find('/') {
        Some(path_start) => &location[..authority_start + path_start],
        None => location,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_the_path() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
    }

    #[test]
    fn with_database_adds_a_missing_path() {
        assert_eq!(
            with_database("postgres://u:p@db", "t1"),
            "postgres://u:p@db/t1"
        );
    }

    #[test]
    fn with_database_keeps_the_query() {
        assert_eq!(
            with_database(
                "postgres://u@db/postgres?sslmode=disable&application_name=x",
                "t1"
            ),
            "postgres://u@db/t1?sslmode=disable&application_name=x"
        );
    }

    #[test]
    fn with_database_handles_socket_urls_without_a_host() {
        assert_eq!(
            with_database("postgres:///postgres?host=/run/postgresql", "t1"),
            "postgres:///t1?host=/run/postgresql"
        );
    }

    #[test]
    fn describe_hides_the_password() {
        let described = describe("postgres://rally:s3cret@db.internal:6543/rally");
        assert_eq!(described, "rally@db.internal:6543");
    }
}

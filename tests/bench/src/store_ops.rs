//! Room join/leave and matchmaking through rallyd's gRPC services, on SQLite and on Postgres,
//! each next to a pgbench-style transaction run straight through sqlx on the same kind of
//! database with the same concurrency, measured in the same run.
//!
//! - Rooms: [`TASKS`] tasks, each with its own room (created by its own owner, who stays in it)
//!   and [`USERS_PER_TASK`] users who take turns joining it and leaving it again. The figure is
//!   completed join+leave pairs per second (two RPCs, two transactions).
//! - Matchmaking: [`TASKS`] users, each enqueueing in the default two-player pool, following its
//!   ticket until it is matched, and enqueueing again. The figure is tickets matched per second.
//! - The baseline: pgbench's "simple update" transaction (`UPDATE accounts`, `SELECT` the
//!   balance, `INSERT INTO history`, in one transaction) on 100 000 accounts, [`TASKS`] tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use rally_client::proto::rooms::v1::{CreateRoomRequest, EnqueueRequest, TicketStatus};
use rally_client::{Rally, Session};
use rally_e2e::{Backend, TestServer};
use sqlx::Connection;
use tokio::task::JoinHandle;

use crate::Budget;
use crate::report::{Report, Row};
use crate::signalling::CALL_TIMEOUT;

/// The server `rally-e2e` creates its throwaway Postgres databases on (any database on it).
const SERVER_URL_ENV: &str = "RALLY_TEST_DATABASE_URL";
/// Its default: a local trust-auth Postgres.
const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Concurrent tasks, for Rally and for the baseline alike.
const TASKS: usize = 16;
/// Users per rooms task, taking turns.
const USERS_PER_TASK: usize = 4;
/// Accounts in the baseline's table (pgbench at scale 1).
const ACCOUNTS: i32 = 100_000;

/// rallyd flags of this scenario: a short matchmaking tick (default 1000 ms; rounds also run on
/// every enqueue), the sign-in limit per address raised for the bench's logins, and each user's
/// budgets of writes, creations and streams lifted: a few users repeat the operations being
/// measured far faster than any player would.
const FLAGS: [&str; 16] = [
    "--matchmaking-tick-ms",
    "100",
    "--signin-per-address-per-minute",
    "1000000",
    "--writes-per-user-per-minute",
    "1000000",
    "--write-burst",
    "1000000",
    "--creates-per-user-per-minute",
    "1000000",
    "--create-burst",
    "1000000",
    "--streams-per-user-per-minute",
    "1000000",
    "--stream-burst",
    "1000000",
];

fn rooms_scenario(backend: &str) -> String {
    format!("room join+leave, {backend}")
}

fn matchmaking_scenario(backend: &str) -> String {
    format!("matchmaking, two-player pool, {backend}")
}

/// The Postgres server URL the scenarios use.
pub(crate) fn postgres_server_url() -> String {
    std::env::var(SERVER_URL_ENV).unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned())
}

/// Whether Postgres answers. When it does not: an error under `CI=true`, otherwise `false`
/// after saying on stderr that the Postgres rows of `what` are skipped and why.
pub(crate) async fn postgres_ready(what: &str) -> anyhow::Result<bool> {
    let url = postgres_server_url();
    let reason =
        match tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url)).await
        {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                return Ok(true);
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => "no answer within 5 s".to_owned(),
        };
    let server = url
        .rsplit_once('@')
        .map_or("the configured server", |(_, host)| host);
    if std::env::var("CI").as_deref() == Ok("true") {
        bail!("{what} needs Postgres under CI=true, and {server} does not answer: {reason}");
    }
    eprintln!(
        "rally-bench: SKIPPED the Postgres rows of {what}: Postgres at {server} does not answer \
         ({reason}); start one or set {SERVER_URL_ENV}. Under CI=true this is an error."
    );
    Ok(false)
}

/// Runs the scenario on SQLite, then on Postgres where it answers.
pub(crate) async fn run(budget: Budget, report: &mut Report) -> anyhow::Result<()> {
    let mut backends = vec![Backend::Sqlite];
    if postgres_ready("room join/leave and matchmaking").await? {
        backends.push(Backend::Postgres);
    }
    for backend in backends {
        let name = match backend {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "Postgres",
        };
        let (baseline, baseline_settings) = match backend {
            Backend::Sqlite => sqlite_pgbench(budget)
                .await
                .context("the SQLite pgbench-style baseline")?,
            Backend::Postgres => postgres_pgbench(budget)
                .await
                .context("the Postgres pgbench-style baseline")?,
        };
        let server = TestServer::start_with(backend, &FLAGS)
            .await
            .with_context(|| format!("rallyd on {name} did not start"))?;
        let url = format!("http://{}", server.addr());
        let rooms = rooms(&url, budget)
            .await
            .with_context(|| format!("room join+leave on {name}"))?;
        let matched = matchmaking(&url, budget)
            .await
            .with_context(|| format!("matchmaking on {name}"))?;
        drop(server);
        let baseline_row = |scenario: String| {
            Row::rate(scenario, "pgbench-style tx via sqlx", baseline, "tx/s")
                .baseline()
                .settings(baseline_settings.clone())
        };
        report.push(baseline_row(rooms_scenario(name)));
        report.push(
            Row::rate(rooms_scenario(name), "Rally Rooms", rooms, "join+leave/s").settings(
                format!(
                    "{TASKS} tasks, each with its own room (owner stays in) and \
                     {USERS_PER_TASK} users taking turns: JoinRoom then LeaveRoom via the SDK, \
                     one connection per task; rallyd's default {}",
                    match backend {
                        Backend::Sqlite => "SQLite settings",
                        Backend::Postgres => "pool of 16 Postgres connections",
                    }
                ),
            ),
        );
        report.push(baseline_row(matchmaking_scenario(name)));
        report.push(
            Row::rate(
                matchmaking_scenario(name),
                "Rally Matchmaking",
                matched,
                "tickets matched/s",
            )
            .settings(format!(
                "{TASKS} users, each: Enqueue in the default pool (2 players), WatchTicket until \
                 MATCHED, again; --matchmaking-tick-ms 100 for the bench (default 1000; a round \
                 also runs on every enqueue)"
            )),
        );
    }
    Ok(())
}

/// A warm-up before each window.
fn warm_up(budget: Budget) -> Duration {
    (budget.window / 4).min(Duration::from_secs(1))
}

/// Runs the tasks for the warm-up and the window, counting what `done` counts; then stops them
/// (waiting a little for them to finish, then aborting) and returns the rate in the window.
/// An error of any task that finished is the run's error.
async fn measure(
    budget: Budget,
    done: &AtomicU64,
    stop: &AtomicBool,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<f64> {
    tokio::time::sleep(warm_up(budget)).await;
    let (before, start) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(budget.window).await;
    let (after, elapsed) = (done.load(Ordering::Relaxed), start.elapsed());
    stop.store(true, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    for task in tasks {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => return Err(error),
            Ok(Err(error)) if error.is_cancelled() => {}
            Ok(Err(panic)) => bail!("a task panicked: {panic}"),
            // Still waiting for a match whose partner stopped: not an error.
            Err(_) => abort.abort(),
        }
    }
    Ok(after.saturating_sub(before) as f64 / elapsed.as_secs_f64())
}

/// A new device user on `rally`.
async fn login(rally: &Rally, name: &str) -> anyhow::Result<Session> {
    let device = format!("bench-{name}-{}", uuid::Uuid::new_v4().simple());
    tokio::time::timeout(CALL_TIMEOUT, rally.device_login(&device, name))
        .await
        .context("device login: no answer in time")?
        .context("device login")
}

/// Room join+leave pairs per second.
async fn rooms(url: &str, budget: Budget) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut setups = Vec::with_capacity(TASKS);
    for task in 0..TASKS {
        let url = url.to_owned();
        setups.push(tokio::spawn(async move {
            let rally = tokio::time::timeout(CALL_TIMEOUT, Rally::connect(&url))
                .await
                .context("connecting: no answer in time")??;
            let owner = login(&rally, &format!("owner{task}")).await?;
            let room = tokio::time::timeout(
                CALL_TIMEOUT,
                owner.rooms().create_room(CreateRoomRequest {
                    capacity: 8,
                    ..CreateRoomRequest::default()
                }),
            )
            .await
            .context("CreateRoom: no answer in time")??
            .room
            .context("CreateRoom answered no room")?
            .room_id;
            let mut users = Vec::with_capacity(USERS_PER_TASK);
            for user in 0..USERS_PER_TASK {
                users.push(login(&rally, &format!("joiner{task}-{user}")).await?);
            }
            anyhow::Ok((owner, room, users))
        }));
    }
    let mut tasks = Vec::with_capacity(TASKS);
    let mut owners = Vec::with_capacity(TASKS);
    for setup in setups {
        let (owner, room, users) = setup.await.context("a setup task panicked")??;
        owners.push(owner);
        let (done, stop) = (done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            // Bounded by `stop`, and every call by CALL_TIMEOUT.
            for user in users.iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let rooms = user.rooms();
                tokio::time::timeout(CALL_TIMEOUT, rooms.join_room(&room))
                    .await
                    .context("JoinRoom: no answer in time")?
                    .context("JoinRoom")?;
                tokio::time::timeout(CALL_TIMEOUT, rooms.leave_room(&room))
                    .await
                    .context("LeaveRoom: no answer in time")?
                    .context("LeaveRoom")?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    let rate = measure(budget, &done, &stop, tasks).await;
    drop(owners);
    rate
}

/// Tickets matched per second.
async fn matchmaking(url: &str, budget: Budget) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let rally = tokio::time::timeout(CALL_TIMEOUT, Rally::connect(url))
        .await
        .context("connecting: no answer in time")??;
    let mut users = Vec::with_capacity(TASKS);
    for user in 0..TASKS {
        users.push(login(&rally, &format!("player{user}")).await?);
    }
    let tasks = users
        .into_iter()
        .map(|user| {
            let (done, stop) = (done.clone(), stop.clone());
            tokio::spawn(async move {
                let matchmaking = user.matchmaking();
                // Bounded by `stop`; every wait by CALL_TIMEOUT.
                while !stop.load(Ordering::Relaxed) {
                    let ticket = tokio::time::timeout(
                        CALL_TIMEOUT,
                        matchmaking.enqueue(EnqueueRequest {
                            pool: "default".into(),
                            ..EnqueueRequest::default()
                        }),
                    )
                    .await
                    .context("Enqueue: no answer in time")?
                    .context("Enqueue")?;
                    let mut watch = tokio::time::timeout(
                        CALL_TIMEOUT,
                        matchmaking.watch_ticket(&ticket.ticket_id),
                    )
                    .await
                    .context("WatchTicket: no answer in time")?
                    .context("WatchTicket")?;
                    loop {
                        let state = tokio::time::timeout(CALL_TIMEOUT, watch.next())
                            .await
                            .context("the ticket was not matched in time")?
                            .context("the ticket's watch ended before a final status")?
                            .context("WatchTicket")?;
                        match TicketStatus::try_from(state.status) {
                            Ok(TicketStatus::Queued) => {}
                            Ok(TicketStatus::Matched) => {
                                done.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            other => bail!("a ticket ended {other:?}, not matched"),
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    measure(budget, &done, &stop, tasks).await
}

/// A small xorshift generator: the baseline's account ids and deltas.
struct Draws(u64);

impl Draws {
    fn next(&mut self, below: i32) -> i32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        i32::try_from(self.0 % u64::try_from(below.max(1)).unwrap_or(1)).unwrap_or(0)
    }
}

/// The baseline on a throwaway Postgres database: (transactions per second, settings).
async fn postgres_pgbench(budget: Budget) -> anyhow::Result<(f64, String)> {
    let database = rally_store_postgres::testing::TempDatabase::create_on(&postgres_server_url())
        .await
        .context("no Postgres for the baseline's database")?;
    postgres_pgbench_on(database.url(), budget).await
}

async fn postgres_pgbench_on(url: &str, budget: Budget) -> anyhow::Result<(f64, String)> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(TASKS).unwrap_or(16))
        .acquire_timeout(CALL_TIMEOUT)
        .connect(url)
        .await
        .context("connecting to the baseline's database")?;
    for statement in [
        "CREATE TABLE accounts (aid integer PRIMARY KEY, bid integer NOT NULL, \
         balance integer NOT NULL, filler char(84))",
        "CREATE TABLE history (tid integer, bid integer, aid integer, delta integer, \
         mtime timestamp, filler char(22))",
    ] {
        sqlx::query(statement).execute(&pool).await?;
    }
    sqlx::query("INSERT INTO accounts SELECT g, 1, 0, '' FROM generate_series(1, $1) g")
        .bind(ACCOUNTS)
        .execute(&pool)
        .await?;
    sqlx::query("VACUUM ANALYZE accounts")
        .execute(&pool)
        .await?;
    let synchronous_commit: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&pool)
        .await?;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = (0..TASKS)
        .map(|task| {
            let (pool, done, stop) = (pool.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                let mut draws = Draws(0x9E37_79B9_7F4A_7C15 ^ (task as u64 + 1));
                while !stop.load(Ordering::Relaxed) {
                    let (aid, delta) = (draws.next(ACCOUNTS) + 1, draws.next(10_001) - 5000);
                    let transaction = async {
                        let mut tx = pool.begin().await?;
                        sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE aid = $2")
                            .bind(delta)
                            .bind(aid)
                            .execute(&mut *tx)
                            .await?;
                        let _: i32 =
                            sqlx::query_scalar("SELECT balance FROM accounts WHERE aid = $1")
                                .bind(aid)
                                .fetch_one(&mut *tx)
                                .await?;
                        sqlx::query(
                            "INSERT INTO history (tid, bid, aid, delta, mtime) \
                             VALUES (1, 1, $1, $2, CURRENT_TIMESTAMP)",
                        )
                        .bind(aid)
                        .bind(delta)
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await
                    };
                    tokio::time::timeout(CALL_TIMEOUT, transaction)
                        .await
                        .context("a baseline transaction took too long")?
                        .context("a baseline transaction")?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let rate = measure(budget, &done, &stop, tasks).await;
    pool.close().await;
    Ok((
        rate?,
        format!(
            "BEGIN; UPDATE accounts; SELECT balance; INSERT INTO history; COMMIT: {TASKS} \
             tasks, pool of {TASKS}, {ACCOUNTS} accounts, a throwaway database on the same \
             server (logged tables, synchronous_commit {synchronous_commit})"
        ),
    ))
}

/// The baseline on a throwaway SQLite file, with Rally's settings (WAL, synchronous NORMAL,
/// write transactions `BEGIN IMMEDIATE`, sqlx's default pool).
async fn sqlite_pgbench(budget: Budget) -> anyhow::Result<(f64, String)> {
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("pgbench.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .acquire_timeout(CALL_TIMEOUT)
        .connect_with(options)
        .await
        .context("opening the baseline's SQLite file")?;
    for statement in [
        "CREATE TABLE accounts (aid INTEGER PRIMARY KEY, bid INTEGER NOT NULL, \
         balance INTEGER NOT NULL, filler TEXT)",
        "CREATE TABLE history (tid INTEGER, bid INTEGER, aid INTEGER, delta INTEGER, \
         mtime TEXT, filler TEXT)",
    ] {
        sqlx::query(statement).execute(&pool).await?;
    }
    sqlx::query(
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?) \
         INSERT INTO accounts SELECT n, 1, 0, '' FROM g",
    )
    .bind(ACCOUNTS)
    .execute(&pool)
    .await?;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = (0..TASKS)
        .map(|task| {
            let (pool, done, stop) = (pool.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                let mut draws = Draws(0x9E37_79B9_7F4A_7C15 ^ (task as u64 + 1));
                while !stop.load(Ordering::Relaxed) {
                    let (aid, delta) = (draws.next(ACCOUNTS) + 1, draws.next(10_001) - 5000);
                    let transaction = async {
                        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                        sqlx::query("UPDATE accounts SET balance = balance + ? WHERE aid = ?")
                            .bind(delta)
                            .bind(aid)
                            .execute(&mut *tx)
                            .await?;
                        let _: i64 =
                            sqlx::query_scalar("SELECT balance FROM accounts WHERE aid = ?")
                                .bind(aid)
                                .fetch_one(&mut *tx)
                                .await?;
                        sqlx::query(
                            "INSERT INTO history (tid, bid, aid, delta, mtime) \
                             VALUES (1, 1, ?, ?, CURRENT_TIMESTAMP)",
                        )
                        .bind(aid)
                        .bind(delta)
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await
                    };
                    tokio::time::timeout(CALL_TIMEOUT, transaction)
                        .await
                        .context("a baseline transaction took too long")?
                        .context("a baseline transaction")?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let rate = measure(budget, &done, &stop, tasks).await;
    pool.close().await;
    drop(dir);
    Ok((
        rate?,
        format!(
            "BEGIN IMMEDIATE; UPDATE accounts; SELECT balance; INSERT INTO history; COMMIT: \
             {TASKS} tasks, sqlx's default pool (as rallyd), {ACCOUNTS} accounts, a temporary \
             file in WAL mode with synchronous NORMAL (as rallyd)"
        ),
    ))
}

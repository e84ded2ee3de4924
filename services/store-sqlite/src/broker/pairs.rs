//! Pairs: connection requests, their answers, relay allocations. Each change runs inside one
//! `BEGIN IMMEDIATE` transaction run by its caller, which holds SQLite's write lock from its first
//! read on, so a connect decides on pair counts nothing changes before it writes.

use rally_store::backend::connect_decision::{PairCounts, connect_existing, connect_new};
use rally_store::broker::{ConnectOutcome, Pair, PairLimits, RelayAllocation};
use rally_store::{StoreError, UnixMillis};
use sqlx::SqliteConnection;
use uuid::Uuid;

use super::codec::{self, AGREED, PAIR_COLUMNS, PENDING, PairColumns};
use crate::error_mapping::map_error;
use crate::rooms::{corrupt, id_text};

fn decode(columns: PairColumns) -> Result<Pair, StoreError> {
    codec::decode_pair(columns).map_err(corrupt)
}

/// The stored key of the pair of `a` and `b`: its low and high user ids.
fn key(a: Uuid, b: Uuid) -> (String, String) {
    let (low, high) = codec::ordered(a, b);
    (id_text(low), id_text(high))
}

/// `from` asks `to` (distinct, checked by the caller); see [`ConnectOutcome`].
pub(super) async fn connect(
    conn: &mut SqliteConnection,
    from: Uuid,
    to: Uuid,
    limits: PairLimits,
    now: UnixMillis,
) -> Result<ConnectOutcome, StoreError> {
    let (from_text, to_text) = (id_text(from), id_text(to));
    let known = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM users WHERE id IN (?1, ?2)")
        .bind(&from_text)
        .bind(&to_text)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_error)?;
    if known != 2 {
        return Err(StoreError::NotFound("user"));
    }
    let (low, high) = key(from, to);
    if let Some(existing) = pair_row(conn, &low, &high).await? {
        let outcome = connect_existing(from, existing.state);
        if outcome == ConnectOutcome::Crossed {
            sqlx::query(&format!(
                "UPDATE broker_pairs SET state = '{AGREED}', requester = NULL \
                 WHERE user_low = ?1 AND user_high = ?2"
            ))
            .bind(&low)
            .bind(&high)
            .execute(&mut *conn)
            .await
            .map_err(map_error)?;
        }
        return Ok(outcome);
    }
    let outcome = connect_new(counts(conn, &from_text, &to_text).await?, limits);
    if outcome == ConnectOutcome::Requested {
        sqlx::query(&format!(
            "INSERT INTO broker_pairs (user_low, user_high, state, requester, created_at) \
             VALUES (?1, ?2, '{PENDING}', ?3, ?4)"
        ))
        .bind(&low)
        .bind(&high)
        .bind(&from_text)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(map_error)?;
    }
    Ok(outcome)
}

/// How many pairs the caller and the peer are in.
async fn counts(
    conn: &mut SqliteConnection,
    caller: &str,
    peer: &str,
) -> Result<PairCounts, StoreError> {
    // Each count by one index: the outgoing one, the primary key (as low), by_high (as high).
    let (
        caller_outgoing_pending,
        caller_incoming_pending,
        caller_pairs,
        peer_incoming_pending,
        peer_pairs,
    ) = sqlx::query_as::<_, (i64, i64, i64, i64, i64)>(
        "SELECT (SELECT count(*) FROM broker_pairs WHERE requester = ?1), \
                 (SELECT count(*) FROM broker_pairs WHERE user_low = ?1 AND requester <> ?1) \
                 + (SELECT count(*) FROM broker_pairs WHERE user_high = ?1 AND requester <> ?1), \
                 (SELECT count(*) FROM broker_pairs WHERE user_low = ?1) \
                 + (SELECT count(*) FROM broker_pairs WHERE user_high = ?1), \
                 (SELECT count(*) FROM broker_pairs WHERE user_low = ?2 AND requester <> ?2) \
                 + (SELECT count(*) FROM broker_pairs WHERE user_high = ?2 AND requester <> ?2), \
                 (SELECT count(*) FROM broker_pairs WHERE user_low = ?2) \
                 + (SELECT count(*) FROM broker_pairs WHERE user_high = ?2)",
    )
    .bind(caller)
    .bind(peer)
    .fetch_one(conn)
    .await
    .map_err(map_error)?;
    let count = |value: i64| u64::try_from(value).map_err(corrupt);
    Ok(PairCounts {
        caller_outgoing_pending: count(caller_outgoing_pending)?,
        caller_incoming_pending: count(caller_incoming_pending)?,
        caller_pairs: count(caller_pairs)?,
        peer_incoming_pending: count(peer_incoming_pending)?,
        peer_pairs: count(peer_pairs)?,
    })
}

/// `by` accepts the pending request of `requester`.
pub(super) async fn accept(
    conn: &mut SqliteConnection,
    by: Uuid,
    requester: Uuid,
) -> Result<bool, StoreError> {
    let (low, high) = key(by, requester);
    let done = sqlx::query(&format!(
        "UPDATE broker_pairs SET state = '{AGREED}', requester = NULL \
         WHERE user_low = ?1 AND user_high = ?2 AND state = '{PENDING}' AND requester = ?3"
    ))
    .bind(low)
    .bind(high)
    .bind(id_text(requester))
    .execute(conn)
    .await
    .map_err(map_error)?;
    Ok(done.rows_affected() == 1)
}

/// `by` refuses the pending request of `requester`.
pub(super) async fn reject(
    conn: &mut SqliteConnection,
    by: Uuid,
    requester: Uuid,
) -> Result<bool, StoreError> {
    let (low, high) = key(by, requester);
    let done = sqlx::query(&format!(
        "DELETE FROM broker_pairs \
         WHERE user_low = ?1 AND user_high = ?2 AND state = '{PENDING}' AND requester = ?3"
    ))
    .bind(low)
    .bind(high)
    .bind(id_text(requester))
    .execute(conn)
    .await
    .map_err(map_error)?;
    Ok(done.rows_affected() == 1)
}

/// Deletes the pair of `a` and `b`; it, if there was one.
pub(super) async fn close(
    conn: &mut SqliteConnection,
    a: Uuid,
    b: Uuid,
) -> Result<Option<Pair>, StoreError> {
    let (low, high) = key(a, b);
    sqlx::query_as::<_, PairColumns>(&format!(
        "DELETE FROM broker_pairs WHERE user_low = ?1 AND user_high = ?2 RETURNING {PAIR_COLUMNS}"
    ))
    .bind(low)
    .bind(high)
    .fetch_optional(conn)
    .await
    .map_err(map_error)?
    .map(decode)
    .transpose()
}

/// The pair of `a` and `b`.
pub(super) async fn pair(
    conn: &mut SqliteConnection,
    a: Uuid,
    b: Uuid,
) -> Result<Option<Pair>, StoreError> {
    let (low, high) = key(a, b);
    pair_row(conn, &low, &high).await
}

async fn pair_row(
    conn: &mut SqliteConnection,
    low: &str,
    high: &str,
) -> Result<Option<Pair>, StoreError> {
    sqlx::query_as::<_, PairColumns>(&format!(
        "SELECT {PAIR_COLUMNS} FROM broker_pairs WHERE user_low = ?1 AND user_high = ?2"
    ))
    .bind(low)
    .bind(high)
    .fetch_optional(conn)
    .await
    .map_err(map_error)?
    .map(decode)
    .transpose()
}

/// Every pair of `user`, oldest first (then by its users).
pub(super) async fn pairs_of(
    conn: &mut SqliteConnection,
    user: Uuid,
) -> Result<Vec<Pair>, StoreError> {
    let rows = sqlx::query_as::<_, PairColumns>(&format!(
        "SELECT {PAIR_COLUMNS} FROM broker_pairs WHERE user_low = ?1 \
         UNION ALL SELECT {PAIR_COLUMNS} FROM broker_pairs WHERE user_high = ?1 \
         ORDER BY created_at, user_low, user_high"
    ))
    .bind(id_text(user))
    .fetch_all(conn)
    .await
    .map_err(map_error)?;
    rows.into_iter().map(decode).collect()
}

/// Deletes every pair of `user`; them, oldest first (then by their users).
pub(super) async fn delete_pairs_of(
    conn: &mut SqliteConnection,
    user: Uuid,
) -> Result<Vec<Pair>, StoreError> {
    let rows = sqlx::query_as::<_, PairColumns>(&format!(
        "DELETE FROM broker_pairs WHERE user_low = ?1 OR user_high = ?1 RETURNING {PAIR_COLUMNS}"
    ))
    .bind(id_text(user))
    .fetch_all(conn)
    .await
    .map_err(map_error)?;
    let mut pairs = rows
        .into_iter()
        .map(decode)
        .collect::<Result<Vec<_>, _>>()?;
    pairs.sort_unstable_by_key(|pair| (pair.created_at, pair.low, pair.high));
    Ok(pairs)
}

/// Records the relay allocation of the agreed pair of `a` and `b`.
pub(super) async fn set_relay(
    conn: &mut SqliteConnection,
    a: Uuid,
    b: Uuid,
    allocation: RelayAllocation,
) -> Result<bool, StoreError> {
    let (low, high) = key(a, b);
    let done = sqlx::query(&format!(
        "UPDATE broker_pairs SET relay_allocation = ?3, relay_expires_at = ?4 \
         WHERE user_low = ?1 AND user_high = ?2 AND state = '{AGREED}'"
    ))
    .bind(low)
    .bind(high)
    .bind(allocation.id.as_slice())
    .bind(allocation.expires_at)
    .execute(conn)
    .await
    .map_err(map_error)?;
    Ok(done.rows_affected() == 1)
}

//! Presence rows and replica heartbeats, each change one attempt inside one READ COMMITTED
//! transaction run by its caller: an attach locks its user's row, then reads and replaces the
//! presence row; a bulk detach locks the rows it marks in user order; the other changes are one
//! conditional statement each.

use rally_store::broker::{NewAttachment, Presence};
use rally_store::{StoreError, UnixMillis};
use sqlx::PgConnection;
use uuid::Uuid;

use super::codec::{self, PRESENCE_COLUMNS, PresenceColumns};
use crate::error_mapping::map_error;
use crate::retry::Abort;
use crate::rooms::{corrupt, id_text};

fn decode(columns: PresenceColumns) -> Result<Presence, StoreError> {
    codec::decode_presence(columns).map_err(corrupt)
}

/// Locks the rows of `users` (`FOR NO KEY UPDATE`, which foreign-key checks do not wait for), in
/// id order; whether they all exist.
pub(super) async fn lock_users(conn: &mut PgConnection, users: &[Uuid]) -> Result<bool, Abort> {
    let mut ids: Vec<String> = users.iter().map(|user| id_text(*user)).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut all = true;
    for id in ids {
        let found = sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        all &= found.is_some();
    }
    Ok(all)
}

/// Makes `attachment` the user's live one; the row it replaced.
pub(super) async fn attach(
    conn: &mut PgConnection,
    attachment: NewAttachment,
    now: UnixMillis,
) -> Result<Option<Presence>, Abort> {
    if !lock_users(conn, &[attachment.user]).await? {
        return Err(StoreError::NotFound("user").into());
    }
    let user = id_text(attachment.user);
    let superseded = sqlx::query_as::<_, PresenceColumns>(&format!(
        "SELECT {PRESENCE_COLUMNS} FROM broker_presence WHERE user_id = $1 FOR UPDATE"
    ))
    .bind(&user)
    .fetch_optional(&mut *conn)
    .await?
    .map(decode)
    .transpose()?;
    // A concurrent attach of another user with the same fingerprint is settled by the unique
    // index (broker_presence_fingerprint), which the error mapping turns into the same error.
    let taken = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM broker_presence \
         WHERE fingerprint = $1 AND detached_at IS NULL AND user_id <> $2)",
    )
    .bind(attachment.fingerprint.as_slice())
    .bind(&user)
    .fetch_one(&mut *conn)
    .await?;
    if taken {
        return Err(StoreError::FingerprintTaken.into());
    }
    sqlx::query(
        "INSERT INTO broker_presence \
         (user_id, attachment_id, replica_id, announcement, attached_at, detached_at, \
          fingerprint) \
         VALUES ($1, $2, $3, $4, $5, NULL, $6) \
         ON CONFLICT (user_id) DO UPDATE SET attachment_id = EXCLUDED.attachment_id, \
         replica_id = EXCLUDED.replica_id, announcement = EXCLUDED.announcement, \
         attached_at = EXCLUDED.attached_at, detached_at = NULL, \
         fingerprint = EXCLUDED.fingerprint",
    )
    .bind(&user)
    .bind(id_text(attachment.attachment_id))
    .bind(id_text(attachment.replica_id))
    .bind(attachment.announcement)
    .bind(now)
    .bind(attachment.fingerprint.as_slice())
    .execute(&mut *conn)
    .await?;
    Ok(superseded)
}

/// Replaces the announcement of the user's attachment if it is still `attachment_id`.
pub(super) async fn announce(
    conn: &mut PgConnection,
    user: Uuid,
    attachment_id: Uuid,
    announcement: Vec<u8>,
) -> Result<bool, Abort> {
    let done = sqlx::query(
        "UPDATE broker_presence SET announcement = $3 WHERE user_id = $1 AND attachment_id = $2",
    )
    .bind(id_text(user))
    .bind(id_text(attachment_id))
    .bind(announcement)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks the user's attachment detached at `now` if it is still `attachment_id` and live.
pub(super) async fn detach(
    conn: &mut PgConnection,
    user: Uuid,
    attachment_id: Uuid,
    now: UnixMillis,
) -> Result<bool, Abort> {
    let done = sqlx::query(
        "UPDATE broker_presence SET detached_at = $3 \
         WHERE user_id = $1 AND attachment_id = $2 AND detached_at IS NULL",
    )
    .bind(id_text(user))
    .bind(id_text(attachment_id))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks every live attachment of `replica_id` detached at `now`; how many.
pub(super) async fn detach_replica(
    conn: &mut PgConnection,
    replica_id: Uuid,
    now: UnixMillis,
) -> Result<u64, Abort> {
    detach_live(conn, &id_text(replica_id), now).await
}

/// Marks the live attachments of `replica_id` detached at `at`, locking them in user order first
/// so that two bulk detaches meeting on the same rows cannot deadlock; how many.
async fn detach_live(
    conn: &mut PgConnection,
    replica_id: &str,
    at: UnixMillis,
) -> Result<u64, Abort> {
    let done = sqlx::query(
        "WITH live AS ( \
             SELECT user_id FROM broker_presence \
             WHERE replica_id = $1 AND detached_at IS NULL \
             ORDER BY user_id FOR UPDATE \
         ) \
         UPDATE broker_presence AS p SET detached_at = $2 FROM live \
         WHERE p.user_id = live.user_id AND p.replica_id = $1 AND p.detached_at IS NULL",
    )
    .bind(replica_id)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Records `now` as the replica's latest heartbeat (an earlier time never replaces a later one).
pub(super) async fn replica_heartbeat(
    conn: &mut PgConnection,
    replica_id: Uuid,
    now: UnixMillis,
) -> Result<(), Abort> {
    sqlx::query(
        "INSERT INTO broker_replicas (replica_id, heartbeat_at) VALUES ($1, $2) \
         ON CONFLICT (replica_id) DO UPDATE \
         SET heartbeat_at = GREATEST(broker_replicas.heartbeat_at, EXCLUDED.heartbeat_at)",
    )
    .bind(id_text(replica_id))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Detaches the live attachments of the replicas silent since before `silent_before` as of their
/// last heartbeat, and forgets those replicas; how many attachments it detached.
///
/// Locks the silent replicas' rows first (in id order), so a heartbeat arriving meanwhile either
/// comes first (and the replica is no longer silent) or waits and records the replica anew.
pub(super) async fn detach_silent_replicas(
    conn: &mut PgConnection,
    silent_before: UnixMillis,
) -> Result<u64, Abort> {
    let silent = sqlx::query_as::<_, (String, i64)>(
        "SELECT replica_id, heartbeat_at FROM broker_replicas WHERE heartbeat_at < $1 \
         ORDER BY replica_id FOR UPDATE",
    )
    .bind(silent_before)
    .fetch_all(&mut *conn)
    .await?;
    let mut detached = 0;
    for (replica_id, heartbeat_at) in &silent {
        detached += detach_live(conn, replica_id, *heartbeat_at).await?;
    }
    let replica_ids: Vec<String> = silent
        .into_iter()
        .map(|(replica_id, _)| replica_id)
        .collect();
    sqlx::query("DELETE FROM broker_replicas WHERE replica_id = ANY($1)")
        .bind(replica_ids)
        .execute(&mut *conn)
        .await?;
    Ok(detached)
}

/// The presence rows of `users` (at most [`codec::MAX_PRESENCE_USERS`], checked by the caller).
pub(super) async fn presence(
    conn: &mut PgConnection,
    users: &[Uuid],
) -> Result<Vec<Presence>, StoreError> {
    let ids: Vec<String> = users.iter().map(|user| id_text(*user)).collect();
    let rows = sqlx::query_as::<_, PresenceColumns>(&format!(
        "SELECT {PRESENCE_COLUMNS} FROM broker_presence WHERE user_id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await
    .map_err(map_error)?;
    rows.into_iter().map(decode).collect()
}

/// Up to `limit` rows detached before `cutoff`, longest detached first.
pub(super) async fn detached_before(
    conn: &mut PgConnection,
    cutoff: UnixMillis,
    limit: u32,
) -> Result<Vec<Presence>, StoreError> {
    let rows = sqlx::query_as::<_, PresenceColumns>(&format!(
        "SELECT {PRESENCE_COLUMNS} FROM broker_presence \
         WHERE detached_at IS NOT NULL AND detached_at < $1 \
         ORDER BY detached_at, user_id LIMIT $2"
    ))
    .bind(cutoff)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await
    .map_err(map_error)?;
    rows.into_iter().map(decode).collect()
}

/// Deletes the user's presence row if its attachment is still `attachment_id` and was detached
/// before `cutoff`; the deleted row.
pub(super) async fn delete_detached(
    conn: &mut PgConnection,
    user: Uuid,
    attachment_id: Uuid,
    cutoff: UnixMillis,
) -> Result<Option<Presence>, Abort> {
    let deleted = sqlx::query_as::<_, PresenceColumns>(&format!(
        "DELETE FROM broker_presence \
         WHERE user_id = $1 AND attachment_id = $2 AND detached_at IS NOT NULL \
         AND detached_at < $3 RETURNING {PRESENCE_COLUMNS}"
    ))
    .bind(id_text(user))
    .bind(id_text(attachment_id))
    .bind(cutoff)
    .fetch_optional(conn)
    .await?;
    Ok(deleted.map(decode).transpose()?)
}

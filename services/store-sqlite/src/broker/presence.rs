//! Presence rows and replica heartbeats, each change inside one `BEGIN IMMEDIATE` transaction run
//! by its caller, which holds SQLite's write lock from its first read on.

use rally_store::{StoreError, UnixMillis};
use sqlx::{QueryBuilder, SqliteConnection};
use uuid::Uuid;

use super::codec::{self, PRESENCE_COLUMNS, PresenceColumns};
use crate::error_mapping::map_error;
use crate::rooms::{corrupt, id_text};
use rally_store::broker::{NewAttachment, Presence};

fn decode(columns: PresenceColumns) -> Result<Presence, StoreError> {
    codec::decode_presence(columns).map_err(corrupt)
}

/// Makes `attachment` the user's live one; the row it replaced.
pub(super) async fn attach(
    conn: &mut SqliteConnection,
    attachment: &NewAttachment,
    now: UnixMillis,
) -> Result<Option<Presence>, StoreError> {
    let user = id_text(attachment.user);
    let user_exists =
        sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1)")
            .bind(&user)
            .fetch_one(&mut *conn)
            .await
            .map_err(map_error)?;
    if !user_exists {
        return Err(StoreError::NotFound("user"));
    }
    // The write lock is held: nobody can claim the fingerprint between this and the write.
    let taken = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM broker_presence \
         WHERE fingerprint = ?1 AND detached_at IS NULL AND user_id <> ?2)",
    )
    .bind(attachment.fingerprint.as_slice())
    .bind(&user)
    .fetch_one(&mut *conn)
    .await
    .map_err(map_error)?;
    if taken {
        return Err(StoreError::FingerprintTaken);
    }
    let superseded = sqlx::query_as::<_, PresenceColumns>(&format!(
        "SELECT {PRESENCE_COLUMNS} FROM broker_presence WHERE user_id = ?1"
    ))
    .bind(&user)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_error)?
    .map(decode)
    .transpose()?;
    sqlx::query(
        "INSERT INTO broker_presence \
         (user_id, attachment_id, replica_id, announcement, attached_at, detached_at, \
          fingerprint) \
         VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6) \
         ON CONFLICT (user_id) DO UPDATE SET attachment_id = excluded.attachment_id, \
         replica_id = excluded.replica_id, announcement = excluded.announcement, \
         attached_at = excluded.attached_at, detached_at = NULL, \
         fingerprint = excluded.fingerprint",
    )
    .bind(&user)
    .bind(id_text(attachment.attachment_id))
    .bind(id_text(attachment.replica_id))
    .bind(attachment.announcement.as_slice())
    .bind(now)
    .bind(attachment.fingerprint.as_slice())
    .execute(&mut *conn)
    .await
    .map_err(map_error)?;
    Ok(superseded)
}

/// Replaces the announcement of the user's attachment if it is still `attachment_id`.
pub(super) async fn announce(
    conn: &mut SqliteConnection,
    user: Uuid,
    attachment_id: Uuid,
    announcement: &[u8],
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE broker_presence SET announcement = ?3 WHERE user_id = ?1 AND attachment_id = ?2",
    )
    .bind(id_text(user))
    .bind(id_text(attachment_id))
    .bind(announcement)
    .execute(conn)
    .await
    .map_err(map_error)?;
    Ok(done.rows_affected() == 1)
}

/// Marks the user's attachment detached at `now` if it is still `attachment_id` and live.
pub(super) async fn detach(
    conn: &mut SqliteConnection,
    user: Uuid,
    attachment_id: Uuid,
    now: UnixMillis,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE broker_presence SET detached_at = ?3 \
         WHERE user_id = ?1 AND attachment_id = ?2 AND detached_at IS NULL",
    )
    .bind(id_text(user))
    .bind(id_text(attachment_id))
    .bind(now)
    .execute(conn)
    .await
    .map_err(map_error)?;
    Ok(done.rows_affected() == 1)
}

/// Marks every live attachment of `replica_id` detached at `now`; how many.
pub(super) async fn detach_replica(
    conn: &mut SqliteConnection,
    replica_id: Uuid,
    now: UnixMillis,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE broker_presence SET detached_at = ?2 \
         WHERE replica_id = ?1 AND detached_at IS NULL",
    )
    .bind(id_text(replica_id))
    .bind(now)
    .execute(conn)
    .await
    .map_err(map_error)?;
    Ok(done.rows_affected())
}

/// Records `now` as the replica's latest heartbeat (an earlier time never replaces a later one).
pub(super) async fn replica_heartbeat(
    conn: &mut SqliteConnection,
    replica_id: Uuid,
    now: UnixMillis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO broker_replicas (replica_id, heartbeat_at) VALUES (?1, ?2) \
         ON CONFLICT (replica_id) \
         DO UPDATE SET heartbeat_at = max(heartbeat_at, excluded.heartbeat_at)",
    )
    .bind(id_text(replica_id))
    .bind(now)
    .execute(conn)
    .await
    .map_err(map_error)?;
    Ok(())
}

/// Detaches the live attachments of the replicas silent since before `silent_before` as of their
/// last heartbeat, and forgets those replicas; how many attachments it detached.
pub(super) async fn detach_silent_replicas(
    conn: &mut SqliteConnection,
    silent_before: UnixMillis,
) -> Result<u64, StoreError> {
    let detached = sqlx::query(
        "UPDATE broker_presence SET detached_at = silent.heartbeat_at \
         FROM (SELECT replica_id, heartbeat_at FROM broker_replicas WHERE heartbeat_at < ?1) \
         AS silent \
         WHERE broker_presence.replica_id = silent.replica_id \
         AND broker_presence.detached_at IS NULL",
    )
    .bind(silent_before)
    .execute(&mut *conn)
    .await
    .map_err(map_error)?
    .rows_affected();
    sqlx::query("DELETE FROM broker_replicas WHERE heartbeat_at < ?1")
        .bind(silent_before)
        .execute(&mut *conn)
        .await
        .map_err(map_error)?;
    Ok(detached)
}

/// The presence rows of `users` (at most [`codec::MAX_PRESENCE_USERS`], checked by the caller).
pub(super) async fn presence(
    conn: &mut SqliteConnection,
    users: &[Uuid],
) -> Result<Vec<Presence>, StoreError> {
    let mut query = QueryBuilder::new(format!(
        "SELECT {PRESENCE_COLUMNS} FROM broker_presence WHERE user_id IN ("
    ));
    let mut list = query.separated(", ");
    for user in users {
        list.push_bind(id_text(*user));
    }
    list.push_unseparated(")");
    let rows: Vec<PresenceColumns> = query
        .build_query_as()
        .fetch_all(conn)
        .await
        .map_err(map_error)?;
    rows.into_iter().map(decode).collect()
}

/// Up to `limit` rows detached before `cutoff`, longest detached first.
pub(super) async fn detached_before(
    conn: &mut SqliteConnection,
    cutoff: UnixMillis,
    limit: u32,
) -> Result<Vec<Presence>, StoreError> {
    let rows = sqlx::query_as::<_, PresenceColumns>(&format!(
        "SELECT {PRESENCE_COLUMNS} FROM broker_presence \
         WHERE detached_at IS NOT NULL AND detached_at < ?1 \
         ORDER BY detached_at, user_id LIMIT ?2"
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
    conn: &mut SqliteConnection,
    user: Uuid,
    attachment_id: Uuid,
    cutoff: UnixMillis,
) -> Result<Option<Presence>, StoreError> {
    sqlx::query_as::<_, PresenceColumns>(&format!(
        "DELETE FROM broker_presence \
         WHERE user_id = ?1 AND attachment_id = ?2 AND detached_at IS NOT NULL \
         AND detached_at < ?3 RETURNING {PRESENCE_COLUMNS}"
    ))
    .bind(id_text(user))
    .bind(id_text(attachment_id))
    .bind(cutoff)
    .fetch_optional(conn)
    .await
    .map_err(map_error)?
    .map(decode)
    .transpose()
}

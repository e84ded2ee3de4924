//! [`IdentityStore`] on SQLite: accounts, device bindings, sessions and refresh tokens.
//!
//! Writes that depend on what they read run in `BEGIN IMMEDIATE` transactions, which take
//! SQLite's single write lock before reading, so they are serialised against each other.

use async_trait::async_trait;
use rally_store::{
    Account, Credentials, IdentityStore, KEPT_ROTATED_TOKENS, NewSession, NewUser, PurgedSessions,
    RefreshRotation, StoreError, TokenHash, UnixMillis, User,
};
use sqlx::{SqliteConnection, SqliteExecutor};
use uuid::Uuid;

use crate::SqliteStore;
use crate::error_mapping::map_error;

/// Why a session was revoked, as stored in `sessions.revoke_reason`.
const SIGNED_OUT: &str = "signed_out";
const SIGNED_OUT_EVERYWHERE: &str = "signed_out_everywhere";
const REFRESH_TOKEN_REUSED: &str = "refresh_token_reused";

/// A `users` row as selected by the queries below.
#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    username: Option<String>,
    display_name: String,
    created_at: i64,
}

impl UserRow {
    fn into_user(self) -> Result<User, StoreError> {
        Ok(User {
            id: parse_id(&self.id)?,
            username: self.username,
            display_name: self.display_name,
            created_at: self.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct CredentialsRow {
    #[sqlx(flatten)]
    user: UserRow,
    password_hash: Option<String>,
}

#[derive(sqlx::FromRow)]
struct AccountRow {
    #[sqlx(flatten)]
    user: UserRow,
    has_password: bool,
    device_count: i64,
}

/// A presented refresh token with its session and user.
#[derive(sqlx::FromRow)]
struct PresentedTokenRow {
    session_id: String,
    expires_at: i64,
    rotated_at: Option<i64>,
    revoked_at: Option<i64>,
    #[sqlx(flatten)]
    user: UserRow,
}

/// The stored form of an id: canonical hyphenated lowercase text.
fn id_text(id: Uuid) -> String {
    id.hyphenated().to_string()
}

fn parse_id(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|error| StoreError::Backend(Box::new(error)))
}

/// What uniqueness and look-up compare: the username with ASCII letters lowercased.
fn username_key(username: &str) -> String {
    username.to_ascii_lowercase()
}

/// A count from the database as the trait's `u32`.
fn count(rows: impl TryInto<u32>) -> u32 {
    rows.try_into().unwrap_or(u32::MAX)
}

async fn insert_user(executor: impl SqliteExecutor<'_>, user: &NewUser) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO users (id, username, username_key, display_name, password_hash, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(id_text(user.id))
    .bind(user.username.as_deref())
    .bind(user.username.as_deref().map(username_key))
    .bind(&user.display_name)
    .bind(user.password_hash.as_deref())
    .bind(user.created_at)
    .execute(executor)
    .await
    .map_err(map_error)?;
    Ok(())
}

async fn user_by_device(
    executor: impl SqliteExecutor<'_>,
    device: &TokenHash,
) -> Result<Option<User>, StoreError> {
    sqlx::query_as::<_, UserRow>(
        "SELECT u.id, u.username, u.display_name, u.created_at \
         FROM devices d JOIN users u ON u.id = d.user_id WHERE d.device_hash = ?1",
    )
    .bind(device.as_slice())
    .fetch_optional(executor)
    .await
    .map_err(map_error)?
    .map(UserRow::into_user)
    .transpose()
}

fn new_user_as_user(user: NewUser) -> User {
    User {
        id: user.id,
        username: user.username,
        display_name: user.display_name,
        created_at: user.created_at,
    }
}

#[async_trait]
impl IdentityStore for SqliteStore {
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        insert_user(&self.pool, &user).await?;
        Ok(new_user_as_user(user))
    }

    async fn credentials_by_username(
        &self,
        username: &str,
    ) -> Result<Option<Credentials>, StoreError> {
        let row = sqlx::query_as::<_, CredentialsRow>(
            "SELECT id, username, display_name, created_at, password_hash \
             FROM users WHERE username_key = ?1",
        )
        .bind(username_key(username))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_error)?;
        row.map(|row| {
            Ok(Credentials {
                user: row.user.into_user()?,
                password_hash: row.password_hash,
            })
        })
        .transpose()
    }

    async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        sqlx::query_as::<_, UserRow>(
            "SELECT id, username, display_name, created_at FROM users WHERE id = ?1",
        )
        .bind(id_text(id))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_error)?
        .map(UserRow::into_user)
        .transpose()
    }

    async fn account(&self, id: Uuid) -> Result<Option<Account>, StoreError> {
        let row = sqlx::query_as::<_, AccountRow>(
            "SELECT u.id, u.username, u.display_name, u.created_at, \
                    u.password_hash IS NOT NULL AS has_password, \
                    (SELECT count(*) FROM devices d WHERE d.user_id = u.id) AS device_count \
             FROM users u WHERE u.id = ?1",
        )
        .bind(id_text(id))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_error)?;
        row.map(|row| {
            Ok(Account {
                user: row.user.into_user()?,
                has_password: row.has_password,
                device_count: count(row.device_count),
            })
        })
        .transpose()
    }

    async fn device_user(
        &self,
        device: TokenHash,
        new_user: NewUser,
    ) -> Result<(User, bool), StoreError> {
        // Known devices are the common case: answer them without taking the write lock.
        if let Some(user) = user_by_device(&self.pool, &device).await? {
            return Ok((user, false));
        }
        let mut tx = self.begin_write().await?;
        if let Some(user) = user_by_device(&mut *tx, &device).await? {
            tx.commit().await.map_err(map_error)?;
            return Ok((user, false));
        }
        insert_user(&mut *tx, &new_user).await?;
        sqlx::query("INSERT INTO devices (device_hash, user_id, created_at) VALUES (?1, ?2, ?3)")
            .bind(device.as_slice())
            .bind(id_text(new_user.id))
            .bind(new_user.created_at)
            .execute(&mut *tx)
            .await
            .map_err(map_error)?;
        tx.commit().await.map_err(map_error)?;
        Ok((new_user_as_user(new_user), true))
    }

    async fn create_session(&self, session: NewSession) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO sessions (id, user_id, created_at) VALUES (?1, ?2, ?3)")
            .bind(id_text(session.id))
            .bind(id_text(session.user_id))
            .bind(session.created_at)
            .execute(&mut *tx)
            .await
            .map_err(map_error)?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(session.refresh_token.as_slice())
        .bind(id_text(session.id))
        .bind(session.created_at)
        .bind(session.refresh_expires_at)
        .execute(&mut *tx)
        .await
        .map_err(map_error)?;
        tx.commit().await.map_err(map_error)
    }

    async fn rotate_refresh_token(
        &self,
        presented: TokenHash,
        next: TokenHash,
        now: UnixMillis,
        next_expires_at: UnixMillis,
    ) -> Result<RefreshRotation, StoreError> {
        let mut tx = self.begin_write().await?;
        let outcome = rotate_in(&mut tx, presented, next, now, next_expires_at).await?;
        // Committing also ends the read-only outcomes' transactions, releasing the write lock.
        tx.commit().await.map_err(map_error)?;
        Ok(outcome)
    }

    async fn refresh_token_session(
        &self,
        presented: TokenHash,
    ) -> Result<Option<Uuid>, StoreError> {
        let session: Option<String> =
            sqlx::query_scalar("SELECT session_id FROM refresh_tokens WHERE token_hash = ?1")
                .bind(presented.as_slice())
                .fetch_optional(&self.pool)
                .await
                .map_err(map_error)?;
        session.as_deref().map(parse_id).transpose()
    }

    async fn trim_sessions(&self, user_id: Uuid, keep: u32) -> Result<Vec<Uuid>, StoreError> {
        let mut tx = self.begin_write().await?;
        let user = id_text(user_id);
        let beyond = "SELECT id FROM sessions WHERE user_id = ?1 \
                      ORDER BY created_at DESC, id DESC LIMIT -1 OFFSET ?2";
        sqlx::query(&format!(
            "DELETE FROM refresh_tokens WHERE session_id IN ({beyond})"
        ))
        .bind(&user)
        .bind(i64::from(keep))
        .execute(&mut *tx)
        .await
        .map_err(map_error)?;
        let deleted: Vec<(String, Option<i64>)> = sqlx::query_as(&format!(
            "DELETE FROM sessions WHERE id IN ({beyond}) RETURNING id, revoked_at"
        ))
        .bind(&user)
        .bind(i64::from(keep))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_error)?;
        tx.commit().await.map_err(map_error)?;
        deleted
            .into_iter()
            .filter(|(_, revoked_at)| revoked_at.is_none())
            .map(|(id, _)| parse_id(&id))
            .collect()
    }

    async fn purge_sessions(&self, before: UnixMillis) -> Result<PurgedSessions, StoreError> {
        let mut tx = self.begin_write().await?;
        // The tokens of the sessions deleted next, then those sessions, then stale tokens.
        let revoked = sqlx::query(
            "DELETE FROM refresh_tokens WHERE session_id IN \
             (SELECT id FROM sessions WHERE revoked_at <= ?1 \
              OR (revoked_at IS NULL AND NOT EXISTS \
                  (SELECT 1 FROM refresh_tokens t \
                   WHERE t.session_id = sessions.id AND t.expires_at > ?1)))",
        )
        .bind(before)
        .execute(&mut *tx)
        .await
        .map_err(map_error)?;
        let sessions = sqlx::query(
            "DELETE FROM sessions WHERE revoked_at <= ?1 \
             OR (revoked_at IS NULL AND NOT EXISTS \
                 (SELECT 1 FROM refresh_tokens t WHERE t.session_id = sessions.id))",
        )
        .bind(before)
        .execute(&mut *tx)
        .await
        .map_err(map_error)?;
        let tokens =
            sqlx::query("DELETE FROM refresh_tokens WHERE expires_at <= ?1 OR rotated_at <= ?1")
                .bind(before)
                .execute(&mut *tx)
                .await
                .map_err(map_error)?;
        tx.commit().await.map_err(map_error)?;
        Ok(PurgedSessions {
            sessions: sessions.rows_affected(),
            refresh_tokens: revoked.rows_affected() + tokens.rows_affected(),
        })
    }

    async fn session_active(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, StoreError> {
        let active = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM sessions \
                            WHERE id = ?1 AND user_id = ?2 AND revoked_at IS NULL)",
        )
        .bind(id_text(session_id))
        .bind(id_text(user_id))
        .fetch_one(&self.pool)
        .await
        .map_err(map_error)?;
        Ok(active)
    }

    async fn revoke_session(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        now: UnixMillis,
    ) -> Result<u32, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET revoked_at = ?1, revoke_reason = ?2 \
             WHERE id = ?3 AND user_id = ?4 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(SIGNED_OUT)
        .bind(id_text(session_id))
        .bind(id_text(user_id))
        .execute(&self.pool)
        .await
        .map_err(map_error)?;
        Ok(count(done.rows_affected()))
    }

    async fn revoke_all_sessions(
        &self,
        user_id: Uuid,
        now: UnixMillis,
    ) -> Result<Vec<Uuid>, StoreError> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "UPDATE sessions SET revoked_at = ?1, revoke_reason = ?2 \
             WHERE user_id = ?3 AND revoked_at IS NULL RETURNING id",
        )
        .bind(now)
        .bind(SIGNED_OUT_EVERYWHERE)
        .bind(id_text(user_id))
        .fetch_all(&self.pool)
        .await
        .map_err(map_error)?;
        ids.into_iter()
            .map(|(id,)| {
                Uuid::try_parse(&id)
                    .map_err(|e| StoreError::Backend(format!("session id {id:?}: {e}").into()))
            })
            .collect()
    }
}

/// Decides and applies the outcome of presenting a refresh token, inside a write transaction.
async fn rotate_in(
    tx: &mut SqliteConnection,
    presented: TokenHash,
    next: TokenHash,
    now: UnixMillis,
    next_expires_at: UnixMillis,
) -> Result<RefreshRotation, StoreError> {
    let row = sqlx::query_as::<_, PresentedTokenRow>(
        "SELECT t.session_id, t.expires_at, t.rotated_at, s.revoked_at, \
                u.id, u.username, u.display_name, u.created_at \
         FROM refresh_tokens t \
         JOIN sessions s ON s.id = t.session_id \
         JOIN users u ON u.id = s.user_id \
         WHERE t.token_hash = ?1",
    )
    .bind(presented.as_slice())
    .fetch_optional(&mut *tx)
    .await
    .map_err(map_error)?;

    let Some(row) = row else {
        return Ok(RefreshRotation::Unknown);
    };
    if row.revoked_at.is_some() {
        return Ok(RefreshRotation::Revoked);
    }
    let session_id = parse_id(&row.session_id)?;
    if row.rotated_at.is_some() {
        sqlx::query(
            "UPDATE sessions SET revoked_at = ?1, revoke_reason = ?2 \
             WHERE id = ?3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(REFRESH_TOKEN_REUSED)
        .bind(&row.session_id)
        .execute(&mut *tx)
        .await
        .map_err(map_error)?;
        return Ok(RefreshRotation::Reused { session_id });
    }
    if row.expires_at <= now {
        return Ok(RefreshRotation::Expired);
    }
    sqlx::query("UPDATE refresh_tokens SET rotated_at = ?1 WHERE token_hash = ?2")
        .bind(now)
        .bind(presented.as_slice())
        .execute(&mut *tx)
        .await
        .map_err(map_error)?;
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4)",
    )
    .bind(next.as_slice())
    .bind(&row.session_id)
    .bind(now)
    .bind(next_expires_at)
    .execute(&mut *tx)
    .await
    .map_err(map_error)?;
    // Reuse detection keeps the most recently rotated tokens only: a session's rows stay few.
    sqlx::query(
        "DELETE FROM refresh_tokens WHERE session_id = ?1 AND rotated_at IS NOT NULL \
         AND token_hash NOT IN (SELECT token_hash FROM refresh_tokens \
                                WHERE session_id = ?1 AND rotated_at IS NOT NULL \
                                ORDER BY rotated_at DESC, token_hash LIMIT ?2)",
    )
    .bind(&row.session_id)
    .bind(i64::from(KEPT_ROTATED_TOKENS))
    .execute(&mut *tx)
    .await
    .map_err(map_error)?;
    Ok(RefreshRotation::Rotated {
        user: row.user.into_user()?,
        session_id,
    })
}

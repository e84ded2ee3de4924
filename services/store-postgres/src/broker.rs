//! [`BrokerStore`] on Postgres: presence, replica heartbeats and pairs, safe with any number of
//! replicas sharing the database.
//!
//! Every change is one READ COMMITTED transaction that locks what it decides on before deciding,
//! always in one order, so concurrent changes take turns without deadlocking: first the users'
//! rows (`FOR NO KEY UPDATE`, which foreign-key checks do not wait for; two users in id order),
//! then presence rows, then pairs (several in key order). An attach locks its user, so concurrent
//! attaches of one user each supersede the one before; a connect locks both users, so of two
//! crossing requests the second sees the first and agrees the pair, and a user's concurrent
//! requests are counted against its limits one after the other ([`pairs`]); a forget locks its
//! user, so it cannot interleave with a re-attach. Changes that touch one row decide in a single
//! conditional statement. A bulk detach locks the rows it marks in user order ([`presence`]).
//! Should a deadlock or serialisation failure happen anyway, the attempt is rolled back and run
//! again, a bounded number of times ([`crate::retry`]). Reads run in a REPEATABLE READ, READ ONLY
//! transaction. Stored columns and words, and what a connect decides, are shared with the SQLite
//! backend ([`codec`], [`connect_decision`](rally_store::backend::connect_decision)).

use rally_store::backend::broker_codec as codec;
mod pairs;
mod presence;

use async_trait::async_trait;
use rally_store::broker::{
    BrokerStore, ConnectOutcome, Forgotten, NewAttachment, Pair, PairLimits, Presence,
    RelayAllocation, check_announcement,
};
use rally_store::rooms::RoomError;
use rally_store::{StoreError, UnixMillis};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::PostgresStore;
use crate::error_mapping::map_error;
use crate::retry::Abort;

/// The store error of a change run by [`PostgresStore::change`], whose errors are room errors:
/// the broker's changes only ever fail with [`RoomError::Store`].
fn store_error(error: RoomError) -> StoreError {
    match error {
        RoomError::Store(error) => error,
        other => StoreError::Backend(Box::new(other)),
    }
}

#[async_trait]
impl BrokerStore for PostgresStore {
    async fn attach(
        &self,
        attachment: NewAttachment,
        now: UnixMillis,
    ) -> Result<Option<Presence>, StoreError> {
        check_announcement(&attachment.announcement)?;
        self.change(|conn| Box::pin(presence::attach(conn, attachment.clone(), now)))
            .await
            .map_err(store_error)
    }

    async fn announce(
        &self,
        user: Uuid,
        attachment_id: Uuid,
        announcement: Vec<u8>,
    ) -> Result<bool, StoreError> {
        check_announcement(&announcement)?;
        self.change(|conn| {
            Box::pin(presence::announce(
                conn,
                user,
                attachment_id,
                announcement.clone(),
            ))
        })
        .await
        .map_err(store_error)
    }

    async fn detach(
        &self,
        user: Uuid,
        attachment_id: Uuid,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.change(|conn| Box::pin(presence::detach(conn, user, attachment_id, now)))
            .await
            .map_err(store_error)
    }

    async fn detach_replica(&self, replica_id: Uuid, now: UnixMillis) -> Result<u64, StoreError> {
        self.change(|conn| Box::pin(presence::detach_replica(conn, replica_id, now)))
            .await
            .map_err(store_error)
    }

    async fn replica_heartbeat(&self, replica_id: Uuid, now: UnixMillis) -> Result<(), StoreError> {
        self.change(|conn| Box::pin(presence::replica_heartbeat(conn, replica_id, now)))
            .await
            .map_err(store_error)
    }

    async fn detach_silent_replicas(&self, silent_before: UnixMillis) -> Result<u64, StoreError> {
        self.change(|conn| Box::pin(presence::detach_silent_replicas(conn, silent_before)))
            .await
            .map_err(store_error)
    }

    async fn presence(&self, users: &[Uuid]) -> Result<Vec<Presence>, StoreError> {
        codec::check_presence_users(users)?;
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_read().await?;
        let found = presence::presence(&mut tx, users).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(found)
    }

    async fn detached_before(
        &self,
        cutoff: UnixMillis,
        limit: u32,
    ) -> Result<Vec<Presence>, StoreError> {
        let mut tx = self.begin_read().await?;
        let found = presence::detached_before(&mut tx, cutoff, limit).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(found)
    }

    async fn forget(
        &self,
        user: Uuid,
        attachment_id: Uuid,
        cutoff: UnixMillis,
    ) -> Result<Option<Forgotten>, StoreError> {
        self.change(|conn| Box::pin(forget(conn, user, attachment_id, cutoff)))
            .await
            .map_err(store_error)
    }

    async fn connect(
        &self,
        from: Uuid,
        to: Uuid,
        limits: PairLimits,
        now: UnixMillis,
    ) -> Result<ConnectOutcome, StoreError> {
        codec::check_distinct(from, to)?;
        self.change(|conn| Box::pin(pairs::connect(conn, from, to, limits, now)))
            .await
            .map_err(store_error)
    }

    async fn accept(&self, by: Uuid, requester: Uuid) -> Result<bool, StoreError> {
        self.change(|conn| Box::pin(pairs::accept(conn, by, requester)))
            .await
            .map_err(store_error)
    }

    async fn reject(&self, by: Uuid, requester: Uuid) -> Result<bool, StoreError> {
        self.change(|conn| Box::pin(pairs::reject(conn, by, requester)))
            .await
            .map_err(store_error)
    }

    async fn close(&self, a: Uuid, b: Uuid) -> Result<Option<Pair>, StoreError> {
        self.change(|conn| Box::pin(pairs::close(conn, a, b)))
            .await
            .map_err(store_error)
    }

    async fn pair(&self, a: Uuid, b: Uuid) -> Result<Option<Pair>, StoreError> {
        let mut tx = self.begin_read().await?;
        let pair = pairs::pair(&mut tx, a, b).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(pair)
    }

    async fn pairs_of(&self, user: Uuid) -> Result<Vec<Pair>, StoreError> {
        let mut tx = self.begin_read().await?;
        let pairs = pairs::pairs_of(&mut tx, user).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(pairs)
    }

    async fn set_relay(
        &self,
        a: Uuid,
        b: Uuid,
        allocation: RelayAllocation,
    ) -> Result<bool, StoreError> {
        self.change(|conn| Box::pin(pairs::set_relay(conn, a, b, allocation)))
            .await
            .map_err(store_error)
    }
}

/// Deletes the user's presence row, if it is still the detached attachment `attachment_id`, and
/// every pair of the user; under the user's lock, so no re-attach or request of the user
/// interleaves.
async fn forget(
    conn: &mut PgConnection,
    user: Uuid,
    attachment_id: Uuid,
    cutoff: UnixMillis,
) -> Result<Option<Forgotten>, Abort> {
    if !presence::lock_users(conn, &[user]).await? {
        return Ok(None);
    }
    let Some(presence) = presence::delete_detached(conn, user, attachment_id, cutoff).await? else {
        return Ok(None);
    };
    let pairs = pairs::delete_pairs_of(conn, user).await?;
    Ok(Some(Forgotten { presence, pairs }))
}

//! [`BrokerStore`] on SQLite: presence, replica heartbeats and pairs.
//!
//! Every method that writes runs in one `BEGIN IMMEDIATE` transaction, which takes SQLite's single
//! write lock before its first read, so it is serialised against every other write: an attach's
//! "read the row it supersedes, replace it", a forget's "is it still that detached attachment",
//! and a connect's "is there a pair, how many pairs has each user, store the request" ([`pairs`])
//! each see a state nothing changes meanwhile. That is what makes crossing requests end in one
//! agreed pair and keeps every user within its limits; SQLite serves a single replica, so there
//! is nothing to retry. Reads run in a deferred transaction, which sees one consistent state.
//! Stored columns and words, and what a connect decides, are shared with the Postgres backend
//! ([`codec`], [`connect_decision`](rally_store::backend::connect_decision)).

use rally_store::backend::broker_codec as codec;
mod pairs;
mod presence;

use async_trait::async_trait;
use rally_store::broker::{
    BrokerStore, ConnectOutcome, Forgotten, NewAttachment, Pair, PairLimits, Presence,
    RelayAllocation, check_announcement,
};
use rally_store::{StoreError, UnixMillis};
use uuid::Uuid;

use crate::SqliteStore;
use crate::error_mapping::map_error;

#[async_trait]
impl BrokerStore for SqliteStore {
    async fn attach(
        &self,
        attachment: NewAttachment,
        now: UnixMillis,
    ) -> Result<Option<Presence>, StoreError> {
        check_announcement(&attachment.announcement)?;
        let mut tx = self.begin_write().await?;
        let superseded = presence::attach(&mut tx, &attachment, now).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(superseded)
    }

    async fn announce(
        &self,
        user: Uuid,
        attachment_id: Uuid,
        announcement: Vec<u8>,
    ) -> Result<bool, StoreError> {
        check_announcement(&announcement)?;
        let mut tx = self.begin_write().await?;
        let announced = presence::announce(&mut tx, user, attachment_id, &announcement).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(announced)
    }

    async fn detach(
        &self,
        user: Uuid,
        attachment_id: Uuid,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let detached = presence::detach(&mut tx, user, attachment_id, now).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(detached)
    }

    async fn detach_replica(&self, replica_id: Uuid, now: UnixMillis) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let detached = presence::detach_replica(&mut tx, replica_id, now).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(detached)
    }

    async fn replica_heartbeat(&self, replica_id: Uuid, now: UnixMillis) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        presence::replica_heartbeat(&mut tx, replica_id, now).await?;
        tx.commit().await.map_err(map_error)
    }

    async fn detach_silent_replicas(&self, silent_before: UnixMillis) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let detached = presence::detach_silent_replicas(&mut tx, silent_before).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(detached)
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
        let mut tx = self.begin_write().await?;
        let Some(presence) =
            presence::delete_detached(&mut tx, user, attachment_id, cutoff).await?
        else {
            return Ok(None);
        };
        let pairs = pairs::delete_pairs_of(&mut tx, user).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(Some(Forgotten { presence, pairs }))
    }

    async fn connect(
        &self,
        from: Uuid,
        to: Uuid,
        limits: PairLimits,
        now: UnixMillis,
    ) -> Result<ConnectOutcome, StoreError> {
        codec::check_distinct(from, to)?;
        let mut tx = self.begin_write().await?;
        let outcome = pairs::connect(&mut tx, from, to, limits, now).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(outcome)
    }

    async fn accept(&self, by: Uuid, requester: Uuid) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let accepted = pairs::accept(&mut tx, by, requester).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(accepted)
    }

    async fn reject(&self, by: Uuid, requester: Uuid) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let rejected = pairs::reject(&mut tx, by, requester).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(rejected)
    }

    async fn close(&self, a: Uuid, b: Uuid) -> Result<Option<Pair>, StoreError> {
        let mut tx = self.begin_write().await?;
        let closed = pairs::close(&mut tx, a, b).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(closed)
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
        let mut tx = self.begin_write().await?;
        let set = pairs::set_relay(&mut tx, a, b, allocation).await?;
        tx.commit().await.map_err(map_error)?;
        Ok(set)
    }
}

//! Forgetting old history: final tickets and closed rooms past the retention period, so the
//! database stays bounded (see [`rally_store::TicketStore::purge_history`]).

use std::sync::Arc;
use std::time::Duration;

use rally_store::TicketStore;
use rally_store::matchmaking::Purged;
use tokio_util::sync::CancellationToken;

/// Purges, every `every`, the history older than `retention`, until `shutdown`.
pub fn spawn_history_janitor(
    store: Arc<dyn TicketStore>,
    retention: Duration,
    every: Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            match purge_once(store.as_ref(), retention, crate::clock::now()).await {
                Ok(purged) if purged != Purged::default() => {
                    tracing::info!(
                        tickets = purged.tickets,
                        rooms = purged.rooms,
                        "old history purged"
                    );
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "purging old history failed"),
            }
        }
    });
}

/// Purges what is older than `retention` at `now` (milliseconds since the epoch).
pub async fn purge_once(
    store: &dyn TicketStore,
    retention: Duration,
    now: i64,
) -> Result<Purged, rally_store::StoreError> {
    let retention = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    store.purge_history(now.saturating_sub(retention)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rally_store::rooms::{JoinPolicy, LeaveReason, NewRoom, Visibility};
    use rally_store::{IdentityStore, NewUser, RoomStore};
    use rally_store_sqlite::SqliteStore;
    use uuid::Uuid;

    const HOUR: i64 = 3_600_000;

    #[tokio::test]
    async fn only_history_older_than_the_retention_is_purged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("rally.db"))
            .await
            .expect("open");
        let t0 = 1_700_000_000_000;
        let user = store
            .create_user(NewUser {
                id: Uuid::new_v4(),
                username: Some("ann".into()),
                display_name: "Ann".into(),
                password_hash: None,
                created_at: t0,
            })
            .await
            .expect("user");
        let room = NewRoom {
            id: Uuid::new_v4(),
            owner: user.id,
            capacity: 2,
            visibility: Visibility::Public,
            join_policy: JoinPolicy::Open,
            data: Default::default(),
            invited: Default::default(),
        };
        let room_id = room.id;
        store.create_room(room, t0).await.expect("create");
        store
            .leave_room(room_id, user.id, LeaveReason::Left, t0 + 1)
            .await
            .expect("close");

        let retention = Duration::from_secs(24 * 3600);
        let purged = purge_once(&store, retention, t0 + 23 * HOUR)
            .await
            .expect("purge");
        assert_eq!(purged, Purged::default(), "closed 23 hours ago: kept");
        assert!(store.room(room_id).await.expect("read").is_some());
        let purged = purge_once(&store, retention, t0 + 25 * HOUR)
            .await
            .expect("purge");
        assert_eq!(purged.rooms, 1, "closed 25 hours ago: purged");
        assert!(store.room(room_id).await.expect("read").is_none());
    }
}

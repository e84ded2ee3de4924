//! Forgetting sessions and refresh tokens that can no longer be used, so the identity tables stay
//! bounded by the live sessions (see [`rally_store::IdentityStore::purge_sessions`]).

use std::sync::Arc;
use std::time::Duration;

use rally_store::{IdentityStore, PurgedSessions, StoreError};
use tokio_util::sync::CancellationToken;

/// Purges, every `every`, what could no longer be used `retention` ago, until `shutdown`.
/// `retention` must be at least the access tokens' lifetime, so that a session is never deleted
/// while one of its tokens still verifies (a deleted session is no longer active).
pub fn spawn_session_janitor(
    store: Arc<dyn IdentityStore>,
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
            match purge_once(store.as_ref(), retention, crate::service::now_millis()).await {
                Ok(purged) if purged != PurgedSessions::default() => tracing::info!(
                    sessions = purged.sessions,
                    refresh_tokens = purged.refresh_tokens,
                    "unusable sessions purged"
                ),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "purging sessions failed"),
            }
        }
    });
}

/// Purges what could no longer be used `retention` before `now` (Unix milliseconds).
pub async fn purge_once(
    store: &dyn IdentityStore,
    retention: Duration,
    now: i64,
) -> Result<PurgedSessions, StoreError> {
    let retention = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    store.purge_sessions(now.saturating_sub(retention)).await
}

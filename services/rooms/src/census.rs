//! The room census: every period, how many rooms are open and how many users are in them, read
//! from the store ([`rally_store::RoomStore::census`]) and reported as the gauges
//! `rally.rooms.open` and `rally.rooms.members`.
//!
//! The numbers are the deployment's, not this replica's: every replica reads the same database,
//! so several replicas report the same values (aggregate them with `max`, not `sum`). `rallyd`
//! runs the census only when metrics are exported, once per export interval.

use std::sync::Arc;
use std::time::Duration;

use rally_store::RoomStore;
use tokio_util::sync::CancellationToken;

use crate::metrics::RoomGauges;

/// Reads the census every `every` and records it, until `shutdown`.
pub fn spawn_census(store: Arc<dyn RoomStore>, every: Duration, shutdown: CancellationToken) {
    let gauges = RoomGauges::new();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            match store.census().await {
                Ok(census) => gauges.record(census.open_rooms, census.members),
                Err(error) => tracing::warn!(%error, "reading the room census failed"),
            }
        }
    });
}

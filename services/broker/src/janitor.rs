//! The broker's background duties on each replica: heartbeats, silent replicas, users detached
//! past the grace period, and on shutdown, the detach of every attachment here.
//!
//! Several replicas run this at once; each step is conditional in the store (a user is forgotten
//! only if it is still detached with the same attachment), so they never double an effect.

use std::sync::Arc;
use std::time::Duration;

use rally_proto::broker::v1::attach_response::Body;
use rally_proto::broker::v1::{PeerClosed, PeerClosedReason};
use rally_rooms::clock::now;
use rally_store::broker::Presence;
use rally_store::rooms::{LeaveReason, RoomError};

use crate::Broker;
use crate::signals::millis;

/// Most detached users handled per sweep (the next sweep takes the rest).
const SWEEP_LIMIT: u32 = 256;

/// A replica whose heartbeat is this many intervals old counts as dead.
const SILENT_INTERVALS: u32 = 3;

pub(crate) fn spawn(broker: Arc<Broker>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let sweep_every = (broker.config.detach_grace / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(broker.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = broker.shutdown.cancelled() => break,
                _ = heartbeat.tick() => broker.beat().await,
                _ = sweep.tick() => broker.sweep().await,
            }
        }
        // Attachments end on their own (each records its detach); this catches any whose task
        // could not, so the grace period starts now rather than when the heartbeat lapses.
        if let Err(error) = broker
            .stores
            .broker
            .detach_replica(broker.replica_id, now())
            .await
        {
            tracing::warn!(%error, "could not record this replica's attachments as detached");
        }
    })
}

impl Broker {
    async fn beat(&self) {
        let now = now();
        if let Err(error) = self
            .stores
            .broker
            .replica_heartbeat(self.replica_id, now)
            .await
        {
            tracing::warn!(%error, "could not record the broker heartbeat");
        }
        let silent_for = self.config.heartbeat_interval * SILENT_INTERVALS;
        let silent_before = now.saturating_sub(millis(silent_for));
        match self
            .stores
            .broker
            .detach_silent_replicas(silent_before)
            .await
        {
            Ok(0) => {}
            Ok(count) => {
                tracing::info!(count, "detached the attachments of silent broker replicas");
            }
            Err(error) => tracing::warn!(%error, "could not check for silent replicas"),
        }
        // Keyed rate-limiter state for users that are back to a full bucket is dropped.
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Forgets users detached past the grace period.
    async fn sweep(&self) {
        let cutoff = now().saturating_sub(millis(self.config.detach_grace));
        let expired = match self
            .stores
            .broker
            .detached_before(cutoff, SWEEP_LIMIT)
            .await
        {
            Ok(expired) => expired,
            Err(error) => {
                tracing::warn!(%error, "could not look for detached users");
                return;
            }
        };
        for presence in expired {
            self.expire(presence, cutoff).await;
        }
    }

    /// The user stayed detached past the grace period: it leaves its room (reason DISCONNECTED),
    /// then its presence and pairs are deleted and its peers told.
    async fn expire(&self, presence: Presence, cutoff: i64) {
        let user = presence.user;
        // Leave the room first: if this replica dies in between, the next sweep (here or on
        // another replica) finds the row again and finishes.
        match self.stores.rooms.current_room(user).await {
            Ok(Some(room)) => {
                match self
                    .stores
                    .rooms
                    .leave_room(room.id, user, LeaveReason::Disconnected, now())
                    .await
                {
                    Ok(change) => self.room_hub.announce_events(&change.events).await,
                    // Another replica's sweep (or the user) got there first.
                    Err(RoomError::NotMember | RoomError::NotFound) => {}
                    Err(error) => {
                        tracing::warn!(%error, %user, "could not take a detached user out of its room");
                        return;
                    }
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, %user, "could not read a detached user's room");
                return;
            }
        }
        let forgotten = match self
            .stores
            .broker
            .forget(user, presence.attachment_id, cutoff)
            .await
        {
            Ok(Some(forgotten)) => forgotten,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, %user, "could not forget a detached user");
                return;
            }
        };
        tracing::debug!(%user, pairs = forgotten.pairs.len(), "forgot a user detached past the grace period");
        for pair in forgotten.pairs {
            self.release(&pair).await;
            self.notify(
                pair.other(user),
                Body::PeerClosed(PeerClosed {
                    user_id: user.to_string(),
                    reason: PeerClosedReason::Detached as i32,
                }),
            )
            .await;
        }
    }
}

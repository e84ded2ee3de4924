//! Wake-ups for watch streams (rooms, tickets), on this replica and across replicas.
//!
//! A hub keeps, per watched key (a room id, a ticket id), the latest version it has heard of, in
//! a `tokio::sync::watch` channel. A handler that committed a change calls [`Hub::announce`]: the
//! local channels move at once, and the bus carries `"<key> <version>"` to the other replicas'
//! hubs on the same topic. Watchers react by reading the store. A bus resync (lost messages)
//! wakes every watcher, which then finds in the store whatever it missed. Version 0 means "changed,
//! no version" and always wakes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rally_store::rooms::RoomEvent;
use rally_store::{Bus, BusEvent, StoreError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The bus topic of room sequence announcements.
pub const ROOMS_TOPIC: &str = "rally_rooms";
/// The bus topic of ticket change announcements.
pub const TICKETS_TOPIC: &str = "rally_tickets";

/// Announces and awaits changes of keyed things; see the module docs.
pub struct Hub {
    topic: &'static str,
    keys: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
    bus: Arc<dyn Bus>,
}

/// The hub of room sequences (topic [`ROOMS_TOPIC`]).
pub type RoomHub = Hub;

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let watched = self.keys.lock().map(|keys| keys.len()).unwrap_or(0);
        f.debug_struct("Hub")
            .field("topic", &self.topic)
            .field("watched", &watched)
            .finish()
    }
}

impl Hub {
    /// A hub on `bus` and `topic`, listening until `shutdown` is cancelled.
    pub async fn start(
        bus: Arc<dyn Bus>,
        topic: &'static str,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        let mut messages = bus.subscribe(topic).await?;
        let hub = Arc::new(Self {
            topic,
            keys: Mutex::new(HashMap::new()),
            bus,
        });
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => break,
                    event = messages.recv() => event,
                };
                let Some(hub) = weak.upgrade() else { break };
                match event {
                    Some(BusEvent::Message(payload)) => match parse(&payload) {
                        Some((key, version)) => hub.advance(key, version),
                        None => tracing::warn!(payload, "ignoring a malformed hub announcement"),
                    },
                    Some(BusEvent::Resync) => hub.wake_all(),
                    None => {
                        tracing::error!(
                            topic = hub.topic,
                            "the bus subscription ended; cross-replica wake-ups stop"
                        );
                        break;
                    }
                }
            }
        });
        Ok(hub)
    }

    /// Follows `key`: the receiver changes whenever a newer version is announced (or on resync).
    pub fn subscribe(&self, key: Uuid) -> watch::Receiver<u64> {
        let Ok(mut rooms) = self.keys.lock() else {
            // A poisoned lock only means a panic elsewhere; a detached receiver still works for
            // the caller's first read, and the watcher's own timeout path ends it.
            return watch::channel(0).1;
        };
        if rooms.len() >= 1024 && rooms.len().is_power_of_two() {
            rooms.retain(|_, tx| tx.receiver_count() > 0);
        }
        rooms
            .entry(key)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Announces committed room events: per room, its latest sequence.
    pub async fn announce_events(&self, events: &[RoomEvent]) {
        let mut latest: HashMap<Uuid, u64> = HashMap::new();
        for event in events {
            let entry = latest.entry(event.room_id).or_default();
            *entry = (*entry).max(event.sequence);
        }
        for (room, sequence) in latest {
            self.announce(room, sequence).await;
        }
    }

    /// Announces that `key` reached `version` (0: changed, unversioned): wakes local watchers now
    /// and other replicas over the bus.
    pub async fn announce(&self, key: Uuid, version: u64) {
        self.advance(key, version);
        let payload = format!("{key} {version}");
        if let Err(error) = self.bus.publish(self.topic, &payload).await {
            // Watchers on other replicas catch up at their next wake-up or reconnect.
            tracing::warn!(%error, %key, version, topic = self.topic, "could not announce a change on the bus");
        }
    }

    fn advance(&self, key: Uuid, version: u64) {
        if let Ok(rooms) = self.keys.lock()
            && let Some(tx) = rooms.get(&key)
        {
            tx.send_if_modified(|latest| {
                let newer = version == 0 || version > *latest;
                *latest = (*latest).max(version);
                newer
            });
        }
    }

    fn wake_all(&self) {
        if let Ok(rooms) = self.keys.lock() {
            for tx in rooms.values() {
                tx.send_modify(|_| {});
            }
        }
    }
}

fn parse(payload: &str) -> Option<(Uuid, u64)> {
    let (room, sequence) = payload.split_once(' ')?;
    Some((Uuid::parse_str(room).ok()?, sequence.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rally_store::LocalBus;
    use rally_store::rooms::RoomEventKind;

    fn event(room: Uuid, sequence: u64) -> RoomEvent {
        RoomEvent {
            room_id: room,
            sequence,
            occurred_at: 0,
            kind: RoomEventKind::RoomClosed,
        }
    }

    #[tokio::test]
    async fn an_announcement_on_one_hub_wakes_watchers_on_another_sharing_the_bus() {
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
        let shutdown = CancellationToken::new();
        let a = Hub::start(bus.clone(), ROOMS_TOPIC, shutdown.clone())
            .await
            .expect("hub a");
        let b = Hub::start(bus, ROOMS_TOPIC, shutdown.clone())
            .await
            .expect("hub b");
        let room = Uuid::new_v4();
        let mut on_b = b.subscribe(room);
        a.announce_events(&[event(room, 1), event(room, 3)]).await;
        tokio::time::timeout(std::time::Duration::from_secs(10), on_b.changed())
            .await
            .expect("woken within 10 s")
            .expect("hub alive");
        assert_eq!(*on_b.borrow(), 3);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn older_announcements_do_not_move_a_room_back() {
        let hub = Hub::start(
            Arc::new(LocalBus::default()),
            ROOMS_TOPIC,
            CancellationToken::new(),
        )
        .await
        .expect("hub");
        let room = Uuid::new_v4();
        let rx = hub.subscribe(room);
        hub.advance(room, 5);
        hub.advance(room, 2);
        assert_eq!(*rx.borrow(), 5);
    }

    #[tokio::test]
    async fn unversioned_announcements_always_wake() {
        let hub = Hub::start(
            Arc::new(LocalBus::default()),
            TICKETS_TOPIC,
            CancellationToken::new(),
        )
        .await
        .expect("hub");
        let ticket = Uuid::new_v4();
        let mut rx = hub.subscribe(ticket);
        rx.borrow_and_update();
        hub.advance(ticket, 0);
        assert!(rx.has_changed().expect("alive"));
        rx.borrow_and_update();
        hub.advance(ticket, 0);
        assert!(rx.has_changed().expect("alive"));
    }

    #[test]
    fn announcements_parse_strictly() {
        let room = Uuid::new_v4();
        assert_eq!(parse(&format!("{room} 7")), Some((room, 7)));
        assert_eq!(parse("nonsense"), None);
        assert_eq!(parse(&format!("{room} -1")), None);
    }
}

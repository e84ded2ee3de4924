//! The cross-replica bus: how one `rallyd` replica tells the others that something changed.
//!
//! Deliberately small: a topic and a short text payload, at-most-once, with an explicit
//! [`BusEvent::Resync`] whenever a subscriber may have missed messages (its connection dropped,
//! or it fell behind). Receivers therefore never trust the bus for data: a message says *where*
//! to look again ("room R is at sequence S"), and the database says *what* changed.
//!
//! Backends: [`LocalBus`] (one process; what SQLite mode uses) and Postgres LISTEN/NOTIFY in
//! `rally-store-postgres`. NOTIFY serialises committing transactions across the whole Postgres
//! instance, so publishing happens after the data transaction commits, never inside it; a large
//! deployment can put a message bus (NATS, say) behind this same trait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::StoreError;

/// Longest payload a bus carries (Postgres NOTIFY's limit is 8000 bytes).
pub const MAX_PAYLOAD_BYTES: usize = 7900;

/// How many undelivered messages a subscriber may have queued before it is told to resync.
pub const SUBSCRIBER_QUEUE: usize = 1024;

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// A published payload.
    Message(String),
    /// Messages may have been lost: re-read whatever state this subscriber follows.
    Resync,
}

/// A cross-replica publish/subscribe channel; see the module docs.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `payload` (at most [`MAX_PAYLOAD_BYTES`]) on `topic` to every subscriber of
    /// every replica, including this one's.
    async fn publish(&self, topic: &str, payload: &str) -> Result<(), StoreError>;

    /// Subscribes to `topic`. The subscription ends when the receiver is dropped.
    async fn subscribe(&self, topic: &str) -> Result<mpsc::Receiver<BusEvent>, StoreError>;
}

/// Checks a topic (a short lowercase identifier) and a payload's size.
pub fn check_message(topic: &str, payload: &str) -> Result<(), StoreError> {
    let topic_ok = !topic.is_empty()
        && topic.len() <= 63
        && topic
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !topic_ok {
        return Err(StoreError::Backend(
            format!("bus topic {topic:?} must be 1 to 63 of [a-z0-9_]").into(),
        ));
    }
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(StoreError::Backend(
            format!(
                "bus payload of {} bytes exceeds {MAX_PAYLOAD_BYTES}",
                payload.len()
            )
            .into(),
        ));
    }
    Ok(())
}

/// Sends `event` without waiting; a full queue turns into one pending resync instead.
///
/// Returns false when the subscriber is gone.
pub fn deliver(tx: &mpsc::Sender<BusEvent>, event: BusEvent, lagged: &mut bool) -> bool {
    if *lagged {
        match tx.try_send(BusEvent::Resync) {
            Ok(()) => *lagged = false,
            Err(mpsc::error::TrySendError::Full(_)) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
        }
    }
    match tx.try_send(event) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            *lagged = true;
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// A bus inside one process.
#[derive(Debug, Clone, Default)]
pub struct LocalBus {
    subscribers: Arc<Mutex<HashMap<String, Vec<Subscriber>>>>,
}

#[derive(Debug)]
struct Subscriber {
    tx: mpsc::Sender<BusEvent>,
    lagged: bool,
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, topic: &str, payload: &str) -> Result<(), StoreError> {
        check_message(topic, payload)?;
        let mut topics = self
            .subscribers
            .lock()
            .map_err(|_| StoreError::Backend("local bus lock poisoned".into()))?;
        if let Some(subscribers) = topics.get_mut(topic) {
            subscribers.retain_mut(|s| {
                deliver(&s.tx, BusEvent::Message(payload.to_owned()), &mut s.lagged)
            });
        }
        Ok(())
    }

    async fn subscribe(&self, topic: &str) -> Result<mpsc::Receiver<BusEvent>, StoreError> {
        check_message(topic, "")?;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        self.subscribers
            .lock()
            .map_err(|_| StoreError::Backend("local bus lock poisoned".into()))?
            .entry(topic.to_owned())
            .or_default()
            .push(Subscriber { tx, lagged: false });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_subscribers_get_what_is_published_on_their_topic_only() {
        let bus = LocalBus::default();
        let mut a = bus.subscribe("rooms").await.expect("subscribe");
        let mut b = bus.subscribe("broker").await.expect("subscribe");
        bus.publish("rooms", "r1:1").await.expect("publish");
        assert_eq!(a.recv().await, Some(BusEvent::Message("r1:1".into())));
        assert!(b.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_a_resync_not_unbounded_memory() {
        let bus = LocalBus::default();
        let mut rx = bus.subscribe("rooms").await.expect("subscribe");
        for i in 0..SUBSCRIBER_QUEUE + 10 {
            bus.publish("rooms", &i.to_string()).await.expect("publish");
        }
        let mut received = Vec::new();
        while let Ok(event) = rx.try_recv() {
            received.push(event);
        }
        assert_eq!(received.len(), SUBSCRIBER_QUEUE);
        // The next publish first delivers the pending resync.
        bus.publish("rooms", "next").await.expect("publish");
        assert_eq!(rx.try_recv().ok(), Some(BusEvent::Resync));
        assert_eq!(rx.try_recv().ok(), Some(BusEvent::Message("next".into())));
    }

    #[tokio::test]
    async fn bad_topics_and_oversized_payloads_are_refused() {
        let bus = LocalBus::default();
        assert!(bus.publish("Rooms!", "x").await.is_err());
        assert!(
            bus.publish("rooms", &"x".repeat(MAX_PAYLOAD_BYTES + 1))
                .await
                .is_err()
        );
        assert!(
            bus.publish("rooms", &"x".repeat(MAX_PAYLOAD_BYTES))
                .await
                .is_ok()
        );
    }
}

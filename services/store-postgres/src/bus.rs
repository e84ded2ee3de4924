//! The cross-replica [`Bus`] on Postgres LISTEN/NOTIFY.
//!
//! Publishing is one `pg_notify` statement on a pooled connection, outside any data transaction
//! (NOTIFY takes an instance-wide lock at commit, so it must never sit inside a busy one). Each
//! subscription holds one dedicated listening connection; when that connection drops, sqlx
//! reconnects and the subscriber is sent [`BusEvent::Resync`], because notifications sent
//! meanwhile are lost.

use async_trait::async_trait;
use rally_store::bus::{SUBSCRIBER_QUEUE, check_message, deliver};
use rally_store::{Bus, BusEvent, StoreError};
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;

use crate::PostgresStore;
use crate::error_mapping::map_error;

/// LISTEN/NOTIFY on the store's database.
#[derive(Debug, Clone)]
pub struct PgBus {
    store: PostgresStore,
}

impl PgBus {
    /// A bus on `store`'s database.
    pub fn new(store: PostgresStore) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Bus for PgBus {
    async fn publish(&self, topic: &str, payload: &str) -> Result<(), StoreError> {
        check_message(topic, payload)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(topic)
            .bind(payload)
            .execute(&self.store.pool)
            .await
            .map_err(map_error)?;
        Ok(())
    }

    async fn subscribe(&self, topic: &str) -> Result<mpsc::Receiver<BusEvent>, StoreError> {
        check_message(topic, "")?;
        let mut listener = PgListener::connect_with(&self.store.pool)
            .await
            .map_err(map_error)?;
        listener.listen(topic).await.map_err(map_error)?;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let topic = topic.to_owned();
        tokio::spawn(async move {
            let mut lagged = false;
            loop {
                let event = tokio::select! {
                    () = tx.closed() => break,
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) => BusEvent::Message(notification.payload().to_owned()),
                        // The connection was lost; sqlx reconnects (and re-listens) on the next call.
                        Ok(None) => BusEvent::Resync,
                        Err(error) => {
                            tracing::warn!(%error, topic, "bus listener failed; retrying");
                            // Wait before retrying so a dead server does not spin this task; the
                            // subscriber may be gone meanwhile.
                            tokio::select! {
                                () = tx.closed() => break,
                                () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                            }
                            BusEvent::Resync
                        }
                    },
                };
                if !deliver(&tx, event, &mut lagged) {
                    break;
                }
            }
        });
        Ok(rx)
    }
}

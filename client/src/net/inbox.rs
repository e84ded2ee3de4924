//! The game's inbox: received packets waiting for [`super::Net::read_packet`] or
//! [`super::Net::recv`], bounded in count and in bytes.
//!
//! A packet holds its share of the byte budget from the moment it is queued until the game takes
//! it. An unreliable packet that does not fit is dropped (the caller counts it); a reliable one
//! waits for room, and while it waits its QUIC stream is not read, so flow control slows the
//! sender down: a peer cannot make a stalled game hold more than the budget.

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc};

use super::Packet;

/// A queued packet and the bytes it holds.
struct Queued {
    packet: Packet,
    _bytes: OwnedSemaphorePermit,
}

/// See the module docs.
pub(crate) struct Inbox {
    tx: mpsc::Sender<Queued>,
    rx: Mutex<mpsc::Receiver<Queued>>,
    bytes: Arc<Semaphore>,
    /// The byte budget (what one packet may hold at most).
    budget: u32,
}

impl Inbox {
    /// An inbox of at most `packets` packets and `bytes` bytes (each at least 1).
    pub(crate) fn new(packets: usize, bytes: usize) -> Self {
        let budget = u32::try_from(bytes.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        let (tx, rx) = mpsc::channel(packets.max(1));
        Self {
            tx,
            rx: Mutex::new(rx),
            bytes: Arc::new(Semaphore::new(budget as usize)),
            budget,
        }
    }

    /// What a packet of `len` bytes holds of the budget: its size, at least 1, at most the whole
    /// budget (so that a packet larger than the budget still gets through, alone).
    fn cost(&self, len: usize) -> u32 {
        u32::try_from(len).unwrap_or(u32::MAX).clamp(1, self.budget)
    }

    /// Queues an unreliable packet if it fits now; false when it was dropped (inbox full, or the
    /// game is gone).
    pub(crate) fn offer(&self, packet: Packet) -> bool {
        let Ok(permit) = self
            .bytes
            .clone()
            .try_acquire_many_owned(self.cost(packet.data.len()))
        else {
            return false;
        };
        self.tx
            .try_send(Queued {
                packet,
                _bytes: permit,
            })
            .is_ok()
    }

    /// Queues a reliable packet, waiting for room; false when the game is gone.
    pub(crate) async fn push(&self, packet: Packet) -> bool {
        let Ok(permit) = self
            .bytes
            .clone()
            .acquire_many_owned(self.cost(packet.data.len()))
            .await
        else {
            return false;
        };
        self.tx
            .send(Queued {
                packet,
                _bytes: permit,
            })
            .await
            .is_ok()
    }

    /// The next packet if one is waiting (and no one else is reading).
    pub(crate) fn try_take(&self) -> Option<Packet> {
        let queued = self.rx.try_lock().ok()?.try_recv().ok()?;
        Some(queued.packet)
    }

    /// The next packet, waiting for one; `None` when the inbox is closed.
    pub(crate) async fn take(&self) -> Option<Packet> {
        let queued = self.rx.lock().await.recv().await?;
        Some(queued.packet)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use uuid::Uuid;

    use super::*;
    use crate::net::SendPolicy;

    fn packet(len: usize, policy: SendPolicy) -> Packet {
        Packet {
            sender: Uuid::nil(),
            data: Bytes::from(vec![7; len]),
            policy,
        }
    }

    #[test]
    fn unreliable_packets_past_the_byte_budget_are_dropped_until_the_game_reads() {
        let inbox = Inbox::new(1000, 3000);
        for _ in 0..3 {
            assert!(inbox.offer(packet(1000, SendPolicy::Unreliable)));
        }
        assert!(
            !inbox.offer(packet(1000, SendPolicy::Unreliable)),
            "3000 bytes are waiting"
        );
        assert!(inbox.try_take().is_some());
        assert!(
            inbox.offer(packet(1000, SendPolicy::Unreliable)),
            "reading one freed its bytes"
        );
    }

    #[test]
    fn the_packet_count_still_bounds_small_packets() {
        let inbox = Inbox::new(2, 1 << 20);
        assert!(inbox.offer(packet(1, SendPolicy::Unreliable)));
        assert!(inbox.offer(packet(1, SendPolicy::Unreliable)));
        assert!(!inbox.offer(packet(1, SendPolicy::Unreliable)));
    }

    #[tokio::test]
    async fn a_reliable_packet_waits_for_room_and_one_larger_than_the_budget_still_passes() {
        let inbox = Inbox::new(1000, 2000);
        assert!(inbox.push(packet(1500, SendPolicy::Reliable)).await);
        let mut second = std::pin::pin!(inbox.push(packet(1500, SendPolicy::Reliable)));
        assert!(
            futures::poll!(second.as_mut()).is_pending(),
            "the second waits while the first holds 1500 of the 2000 bytes"
        );
        assert_eq!(inbox.try_take().map(|p| p.data.len()), Some(1500));
        assert!(second.await, "then it is queued");
        assert_eq!(inbox.take().await.map(|p| p.data.len()), Some(1500));

        assert!(
            inbox.push(packet(10_000, SendPolicy::Reliable)).await,
            "a packet larger than the whole budget goes through alone"
        );
        assert_eq!(inbox.take().await.map(|p| p.data.len()), Some(10_000));
    }
}

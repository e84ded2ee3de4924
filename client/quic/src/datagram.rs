//! Our datagram provider for s2n-quic: the queues of `send_queue.rs` and `recv_queue.rs` shared
//! between a connection's s2n-quic task and the application.
//!
//! The application queues without touching the connection's lock and wakes the connection
//! only when it has something new to look at (the queue was empty, or its head is stuck), so a
//! busy sender never spins. A sender that found the queue full can wait for room: it is woken
//! when the queue has drained to half. Arrivals wake one waiting reader; closing wakes everyone.
//!
//! Not for: deciding what goes into a packet (see `send_queue.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;
use s2n_quic::provider::datagram::{
    ConnectionInfo, Endpoint, Packet, PreConnectionInfo, ReceiveContext, Receiver, Sender,
};
use tokio::sync::Notify;

use crate::error::DatagramError;
use crate::recv_queue::{RecvCounters, RecvQueue};
use crate::send_queue::{Outgoing, PushError, STUCK_BOUND, SendCounters, SendQueue};

/// Bytes of a packet that are not datagram payload, at worst: IPv6 and UDP headers (48), a
/// short header with a 20-byte connection id and a 4-byte packet number (25), the AEAD tag
/// (16), and the DATAGRAM frame's type and length (3).
const PACKET_OVERHEAD: usize = 48 + 25 + 16 + 3;

/// The largest datagram payload a packet of `mtu` bytes always holds.
pub(crate) fn max_payload_for_mtu(mtu: u16) -> usize {
    usize::from(mtu).saturating_sub(PACKET_OVERHEAD)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One connection's datagram queues, shared by its s2n-quic task and the application.
#[derive(Debug)]
pub(crate) struct DatagramChannel {
    send: Mutex<SendQueue>,
    recv: Mutex<RecvQueue>,
    arrived: Notify,
    /// Wakes senders waiting for room in the send queue; `room_wanted` says one is waiting.
    room: Notify,
    room_wanted: AtomicBool,
    closed: AtomicBool,
    closed_notify: Notify,
    connection: Waker,
    max_payload: usize,
}

impl DatagramChannel {
    fn new(endpoint: &DatagramEndpoint, info: &ConnectionInfo) -> Self {
        let peer_limit = usize::try_from(info.max_datagram_payload).unwrap_or(usize::MAX);
        let max_payload = endpoint.max_payload.min(peer_limit);
        Self {
            send: Mutex::new(SendQueue::new(endpoint.send_capacity, max_payload)),
            recv: Mutex::new(RecvQueue::new(endpoint.recv_capacity)),
            arrived: Notify::new(),
            room: Notify::new(),
            room_wanted: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            closed_notify: Notify::new(),
            connection: info.waker.clone(),
            max_payload,
        }
    }

    /// Queues a datagram for sending, without waiting.
    pub(crate) fn send(&self, datagram: Outgoing) -> Result<(), DatagramError> {
        let pushed = lock(&self.send).push(datagram);
        match pushed {
            Ok(wake) => {
                if wake {
                    self.connection.wake_by_ref();
                }
                Ok(())
            }
            Err(PushError::QueueFull) => Err(DatagramError::QueueFull),
            Err(PushError::TooLarge { size, max }) => Err(DatagramError::TooLarge { size, max }),
            Err(PushError::Closed) => Err(DatagramError::Closed),
        }
    }

    /// The next received datagram; `None` once the connection is closed and nothing is left.
    pub(crate) async fn recv(&self) -> Option<Bytes> {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(datagram) = lock(&self.recv).pop() {
                return Some(datagram);
            }
            if self.is_closed() {
                return None;
            }
            arrived.await;
        }
    }

    /// Resolves once the send queue has room for a datagram (or the connection is closed, when
    /// `send` refuses for good).
    pub(crate) async fn room(&self) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            self.room_wanted.store(true, Ordering::Release);
            if lock(&self.send).has_room() {
                return;
            }
            // A head that fits no packet (the path's MTU fell) is given up on only when the
            // connection looks at the queue again after STUCK_BOUND; a push wakes it, but a
            // waiting sender pushes nothing, and nothing else may wake an idle connection for
            // seconds. So while waiting, wake it at least that often.
            if tokio::time::timeout(STUCK_BOUND, room).await.is_err() {
                self.connection.wake_by_ref();
            }
        }
    }

    /// Called by the connection after it took datagrams from the send queue, with whether the
    /// queue is now half empty.
    fn on_drained(&self, half_empty: bool) {
        if half_empty && self.room_wanted.load(Ordering::Acquire) {
            self.room_wanted.store(false, Ordering::Release);
            self.room.notify_waiters();
        }
    }

    /// Resolves once the connection is closed.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.closed_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The largest payload `send` accepts.
    pub(crate) fn max_payload(&self) -> usize {
        self.max_payload
    }

    pub(crate) fn counters(&self) -> (SendCounters, RecvCounters) {
        let send = lock(&self.send).counters();
        let recv = lock(&self.recv).counters();
        (send, recv)
    }

    fn close(&self) {
        lock(&self.send).close();
        self.closed.store(true, Ordering::Release);
        self.arrived.notify_waiters();
        self.room.notify_waiters();
        self.closed_notify.notify_waiters();
    }
}

/// Creates each connection's [`DatagramChannel`].
#[derive(Debug, Clone)]
pub(crate) struct DatagramEndpoint {
    send_capacity: usize,
    recv_capacity: usize,
    max_payload: usize,
    max_frame: u64,
}

impl DatagramEndpoint {
    pub(crate) fn new(send_capacity: usize, recv_capacity: usize, max_mtu: u16) -> Self {
        Self {
            send_capacity,
            recv_capacity,
            max_payload: max_payload_for_mtu(max_mtu),
            max_frame: u64::from(max_mtu),
        }
    }
}

impl Endpoint for DatagramEndpoint {
    type Sender = DatagramSender;
    type Receiver = DatagramReceiver;

    fn create_connection(&mut self, info: &ConnectionInfo) -> (DatagramSender, DatagramReceiver) {
        let channel = Arc::new(DatagramChannel::new(self, info));
        (DatagramSender(channel.clone()), DatagramReceiver(channel))
    }

    fn max_datagram_frame_size(&self, _info: &PreConnectionInfo) -> u64 {
        self.max_frame
    }
}

/// The sending half s2n-quic drives.
#[derive(Debug)]
pub(crate) struct DatagramSender(Arc<DatagramChannel>);

impl DatagramSender {
    /// The channel, for the application's handle (read through `datagram_mut`).
    pub(crate) fn channel(&self) -> Arc<DatagramChannel> {
        self.0.clone()
    }
}

impl Sender for DatagramSender {
    fn on_transmit<P: Packet>(&mut self, packet: &mut P) {
        let half_empty = {
            let mut queue = lock(&self.0.send);
            queue.on_transmit(packet, Instant::now);
            queue.half_empty()
        };
        self.0.on_drained(half_empty);
    }

    fn has_transmission_interest(&self) -> bool {
        lock(&self.0.send).has_interest()
    }

    fn on_connection_error(&mut self, _error: s2n_quic::connection::Error) {
        self.0.close();
    }
}

impl Drop for DatagramSender {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The receiving half s2n-quic drives.
#[derive(Debug)]
pub(crate) struct DatagramReceiver(Arc<DatagramChannel>);

impl Receiver for DatagramReceiver {
    fn on_datagram(&mut self, _context: &ReceiveContext<'_>, datagram: &[u8]) {
        lock(&self.0.recv).push(datagram);
        self.0.arrived.notify_one();
    }

    fn on_connection_error(&mut self, _error: s2n_quic::connection::Error) {
        self.0.close();
    }
}

impl Drop for DatagramReceiver {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_1500_byte_mtu_carries_a_game_packet_with_rally_header() {
        assert!(max_payload_for_mtu(1500) >= 1216);
        assert_eq!(max_payload_for_mtu(1500), 1408);
    }
}

//! The incoming datagram queue of one connection, with no IO.
//!
//! Bounded: when the application does not keep up and the queue is full, the oldest datagram
//! makes room for the newest (a game wants the freshest state) and is counted as dropped.
//!
//! Not for: waking the application (see `datagram.rs`).

use std::collections::VecDeque;

use bytes::Bytes;

/// What the queue has seen since the connection started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RecvCounters {
    /// Datagrams that arrived from the peer (each is delivered, dropped for overflow, or still
    /// queued).
    pub received: u64,
    /// Datagrams dropped because the queue was full.
    pub dropped_overflow: u64,
}

/// The datagrams waiting for the application.
#[derive(Debug)]
pub(crate) struct RecvQueue {
    queue: VecDeque<Bytes>,
    capacity: usize,
    counters: RecvCounters,
}

impl RecvQueue {
    /// A queue of at most `capacity` datagrams (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            queue: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            counters: RecvCounters::default(),
        }
    }

    /// A datagram arrived.
    pub(crate) fn push(&mut self, datagram: &[u8]) {
        self.counters.received += 1;
        if self.queue.len() >= self.capacity {
            self.queue.pop_front();
            self.counters.dropped_overflow += 1;
        }
        self.queue.push_back(Bytes::copy_from_slice(datagram));
    }

    /// The oldest datagram waiting, if any.
    pub(crate) fn pop(&mut self) -> Option<Bytes> {
        self.queue.pop_front()
    }

    /// The counters so far.
    pub(crate) fn counters(&self) -> RecvCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_come_out_in_arrival_order() {
        let mut queue = RecvQueue::new(4);
        queue.push(b"a");
        queue.push(b"b");
        assert_eq!(queue.pop().as_deref(), Some(&b"a"[..]));
        assert_eq!(queue.pop().as_deref(), Some(&b"b"[..]));
        assert_eq!(queue.pop(), None);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let mut queue = RecvQueue::new(2);
        queue.push(b"a");
        queue.push(b"b");
        queue.push(b"c");
        assert_eq!(
            queue.counters(),
            RecvCounters {
                received: 3,
                dropped_overflow: 1
            }
        );
        assert_eq!(queue.pop().as_deref(), Some(&b"b"[..]));
        assert_eq!(queue.pop().as_deref(), Some(&b"c"[..]));
    }
}

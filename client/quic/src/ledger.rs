//! Which sent packets carry datagrams, so datagrams lost on the wire are counted, with no IO.
//!
//! QUIC never retransmits a DATAGRAM frame. The connection's events say which frames each packet
//! carried, which packets were acknowledged and which were declared lost; this ledger turns them
//! into the number of datagrams lost. A packet declared lost and acknowledged later (a spurious
//! loss) is taken back. Bounded: it tracks at most [`MAX_TRACKED`] packets in flight and as many
//! recently lost ones, forgetting the oldest beyond that.
//!
//! Not for: deciding anything about retransmission (QUIC's recovery does that).

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

/// The most packets tracked in flight (and, separately, recently lost).
pub(crate) const MAX_TRACKED: usize = 1 << 16;

/// Datagrams per packet number, for packets in flight and packets recently declared lost.
#[derive(Debug, Default)]
pub(crate) struct DatagramLedger {
    in_flight: BTreeMap<u64, u32>,
    lost: BTreeMap<u64, u32>,
    datagrams_lost: u64,
}

impl DatagramLedger {
    /// A DATAGRAM frame went out in packet `packet_number`.
    pub(crate) fn on_datagram_sent(&mut self, packet_number: u64) {
        *self.in_flight.entry(packet_number).or_insert(0) += 1;
        if self.in_flight.len() > MAX_TRACKED {
            self.in_flight.pop_first();
        }
    }

    /// Packet `packet_number` was declared lost.
    pub(crate) fn on_packet_lost(&mut self, packet_number: u64) {
        let Some(count) = self.in_flight.remove(&packet_number) else {
            return;
        };
        self.datagrams_lost += u64::from(count);
        self.lost.insert(packet_number, count);
        if self.lost.len() > MAX_TRACKED {
            self.lost.pop_first();
        }
    }

    /// The peer acknowledged the packets in `range`.
    pub(crate) fn on_acked(&mut self, range: RangeInclusive<u64>) {
        while let Some(number) = self.in_flight.range(range.clone()).next().map(|(n, _)| *n) {
            self.in_flight.remove(&number);
        }
        while let Some((number, count)) =
            self.lost.range(range.clone()).next().map(|(n, c)| (*n, *c))
        {
            self.lost.remove(&number);
            self.datagrams_lost = self.datagrams_lost.saturating_sub(u64::from(count));
        }
    }

    /// Datagrams lost on the wire so far.
    pub(crate) fn datagrams_lost(&self) -> u64 {
        self.datagrams_lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_datagrams_are_not_lost() {
        let mut ledger = DatagramLedger::default();
        ledger.on_datagram_sent(1);
        ledger.on_datagram_sent(2);
        ledger.on_acked(1..=2);
        ledger.on_packet_lost(1);
        assert_eq!(ledger.datagrams_lost(), 0);
    }

    #[test]
    fn a_lost_packet_counts_each_datagram_it_carried() {
        let mut ledger = DatagramLedger::default();
        ledger.on_datagram_sent(5);
        ledger.on_datagram_sent(5);
        ledger.on_datagram_sent(6);
        ledger.on_packet_lost(5);
        assert_eq!(ledger.datagrams_lost(), 2);
        ledger.on_acked(6..=6);
        assert_eq!(ledger.datagrams_lost(), 2);
    }

    #[test]
    fn a_spurious_loss_is_taken_back() {
        let mut ledger = DatagramLedger::default();
        ledger.on_datagram_sent(3);
        ledger.on_packet_lost(3);
        assert_eq!(ledger.datagrams_lost(), 1);
        ledger.on_acked(0..=10);
        assert_eq!(ledger.datagrams_lost(), 0);
    }

    #[test]
    fn packets_without_datagrams_are_ignored() {
        let mut ledger = DatagramLedger::default();
        ledger.on_packet_lost(9);
        ledger.on_acked(0..=100);
        assert_eq!(ledger.datagrams_lost(), 0);
    }

    #[test]
    fn the_ledger_stays_bounded() {
        let mut ledger = DatagramLedger::default();
        for number in 0..(MAX_TRACKED as u64 + 10) {
            ledger.on_datagram_sent(number);
        }
        assert_eq!(ledger.in_flight.len(), MAX_TRACKED);
    }
}

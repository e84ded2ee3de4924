//! What each connection's s2n-quic events tell us: the peer's certificate, path measurements and
//! datagrams lost on the wire.
//!
//! The peer's fingerprint is taken from the certificate chain the TLS session verified, never
//! from anything the peer sends afterwards. Counters live in the connection's event context
//! (updated under the connection's own lock, no atomics) and are read with
//! `query_event_context`; the last values are kept when the connection closes.
//!
//! Not for: datagram queue counters (see `datagram.rs`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use s2n_quic::provider::event::{ConnectionInfo, ConnectionMeta, Subscriber, events};

use crate::identity::{Fingerprint, fingerprint};
use crate::ledger::DatagramLedger;

/// Path measurements and packet counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PathCounters {
    pub rtt: Duration,
    pub min_rtt: Duration,
    pub mtu: u16,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_lost: u64,
    pub datagrams_lost: u64,
}

/// The event context of one connection.
#[derive(Debug, Default)]
pub(crate) struct ConnectionEvents {
    peer: Option<Fingerprint>,
    path: PathCounters,
    ledger: DatagramLedger,
    last: Arc<Mutex<PathCounters>>,
}

impl ConnectionEvents {
    /// The fingerprint of the certificate the peer presented and TLS verified.
    pub(crate) fn peer(&self) -> Option<Fingerprint> {
        self.peer
    }

    /// The counters now.
    pub(crate) fn counters(&self) -> PathCounters {
        PathCounters {
            datagrams_lost: self.ledger.datagrams_lost(),
            ..self.path
        }
    }

    /// Where the last counters are kept once the connection is gone.
    pub(crate) fn last(&self) -> Arc<Mutex<PathCounters>> {
        self.last.clone()
    }
}

/// The event subscriber given to every endpoint.
#[derive(Debug, Default)]
pub(crate) struct EventRecorder;

fn one_rtt(header: &events::PacketHeader) -> Option<u64> {
    match header {
        events::PacketHeader::OneRtt { number, .. } => Some(*number),
        _ => None,
    }
}

impl Subscriber for EventRecorder {
    type ConnectionContext = ConnectionEvents;

    fn create_connection_context(
        &mut self,
        _meta: &ConnectionMeta,
        _info: &ConnectionInfo,
    ) -> ConnectionEvents {
        ConnectionEvents::default()
    }

    fn on_tls_exporter_ready(
        &mut self,
        context: &mut ConnectionEvents,
        _meta: &events::ConnectionMeta,
        event: &events::TlsExporterReady,
    ) {
        if let Ok(chain) = event.session.peer_cert_chain_der() {
            context.peer = chain.first().map(|der| fingerprint(der));
        }
    }

    fn on_recovery_metrics(
        &mut self,
        context: &mut ConnectionEvents,
        _meta: &events::ConnectionMeta,
        event: &events::RecoveryMetrics,
    ) {
        context.path.rtt = event.smoothed_rtt;
        context.path.min_rtt = event.min_rtt;
    }

    fn on_mtu_updated(
        &mut self,
        context: &mut ConnectionEvents,
        _meta: &events::ConnectionMeta,
        event: &events::MtuUpdated,
    ) {
        context.path.mtu = event.mtu;
    }

    fn on_packet_sent(
        &mut self,
        context: &mut ConnectionEvents,
        _meta: &events::ConnectionMeta,
        event: &events::PacketSent,
    ) {
        context.path.bytes_sent += event.packet_len as u64;
    }

    fn on_packet_received(
        &mut self,
        context: &mut ConnectionEvents,
        _meta: &events::ConnectionMeta,
        event: &events::PacketReceived,
    ) {
        context.path.bytes_received += event.packet_len as u64;
    }

    fn on_frame_sent(
        &mut self,
        context: &mut ConnectionEvents,
        _meta: &events::ConnectionMeta,
        event: &events::FrameSent,
    ) {
        if let (events::Frame::Datagram { .. }, Some(number)) =
            (&event.frame, one_rtt(&event.packet_header))
        {
            context.ledger.on_datagram_sent(number);
        }
    }

    fn on_packet_lost(
        &mut self,
        context: &mut ConnectionEvents,
        _meta: &events::ConnectionMeta,
        event: &events::PacketLost,
    ) {
        if !event.is_mtu_probe {
            context.path.packets_lost += 1;
        }
        if let Some(number) = one_rtt(&event.packet_header) {
            context.ledger.on_packet_lost(number);
        }
    }

    fn on_ack_range_received(
        &mut self,
        context: &mut ConnectionEvents,
        _meta: &events::ConnectionMeta,
        event: &events::AckRangeReceived,
    ) {
        if one_rtt(&event.packet_header).is_some() {
            context.ledger.on_acked(event.ack_range.clone());
        }
    }

    fn on_connection_closed(
        &mut self,
        context: &mut ConnectionEvents,
        _meta: &events::ConnectionMeta,
        _event: &events::ConnectionClosed,
    ) {
        let counters = context.counters();
        *context.last.lock().unwrap_or_else(PoisonError::into_inner) = counters;
    }
}

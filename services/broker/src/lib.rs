//! Rally's connection broker (`rally.broker.v1.Broker`).
//!
//! Not built yet: the service is mounted so that the contract, authentication, health and
//! reflection are in place, and `Attach` answers `UNIMPLEMENTED` (after authentication) until the
//! broker lands. This crate will own presence and signalling between peers; it must never carry
//! game data.

use rally_proto::broker::v1::broker_server::{Broker, BrokerServer};

/// The broker service.
#[derive(Debug, Default)]
pub struct BrokerService {}

impl BrokerService {
    /// The tonic server for this service.
    pub fn into_server(self) -> BrokerServer<Self> {
        BrokerServer::new(self)
    }
}

#[tonic::async_trait]
impl Broker for BrokerService {}

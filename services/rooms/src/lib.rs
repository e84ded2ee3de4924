//! Rally's rooms and matchmaking services (`rally.rooms.v1.Rooms`, `rally.rooms.v1.Matchmaking`).
//!
//! Not built yet: both services are mounted so that the contract, authentication, health and
//! reflection are in place, and every call answers `UNIMPLEMENTED` (after authentication) until
//! rooms and matchmaking land. This crate will own room state, room events and match formation;
//! it must not depend on the broker or the relay.

use rally_proto::rooms::v1::matchmaking_server::{Matchmaking, MatchmakingServer};
use rally_proto::rooms::v1::rooms_server::{Rooms, RoomsServer};

/// The rooms service.
#[derive(Debug, Default)]
pub struct RoomsService {}

impl RoomsService {
    /// The tonic server for this service.
    pub fn into_server(self) -> RoomsServer<Self> {
        RoomsServer::new(self)
    }
}

#[tonic::async_trait]
impl Rooms for RoomsService {}

/// The matchmaking service.
#[derive(Debug, Default)]
pub struct MatchmakingService {}

impl MatchmakingService {
    /// The tonic server for this service.
    pub fn into_server(self) -> MatchmakingServer<Self> {
        MatchmakingServer::new(self)
    }
}

#[tonic::async_trait]
impl Matchmaking for MatchmakingService {}

//! Rally's rooms service (`rally.rooms.v1.Rooms`) and matchmaking (`rally.rooms.v1.Matchmaking`).
//!
//! Rooms: handlers validate input ([`rules`]), call one [`rally_store::RoomStore`] transaction,
//! then announce the new events through the [`RoomHub`], which wakes every WatchRoom stream of
//! that room on this replica and, through the cross-replica [`rally_store::Bus`], on the others.
//! Watch streams read events from the store, never from the bus, so a lost wake-up costs latency
//! at worst, never an event.
//!
//! Matchmaking: tickets are stored by a [`rally_store::TicketStore`]; the [`Matchmaker`] forms
//! matches in rounds (see [`planner`] and [`pools`]) and announces them on the hubs.
//!
//! Metrics ([`metrics`], [`census`]) are OpenTelemetry instruments on the global meter, no-ops
//! until a program installs a meter provider.
//!
//! This crate does not authenticate (the `rally-auth` layer in front does) and knows no database
//! driver; it must not depend on the broker or the relay.

pub mod census;
pub mod clock;
mod convert;
mod error;
pub mod history;
mod hub;
mod matchmaking;
pub mod metrics;
pub mod planner;
pub mod pools;
pub mod rules;
mod service;
mod watch;

pub use error::RoomsError;
pub use hub::{Hub, ROOMS_TOPIC, RoomHub, TICKETS_TOPIC};
pub use matchmaking::{Matchmaker, MatchmakingService};
pub use service::RoomsService;

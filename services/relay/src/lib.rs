//! Rally's relay (UDP, not gRPC).
//!
//! Two jobs: a *reflector* that answers a binding request with the address and port it saw (so a
//! client learns its server-reflexive address), and a *relay* that forwards the datagrams of two
//! peers with no direct path, admitted only with a short-lived grant the broker signed. The relay
//! never decrypts or parses what it forwards: QUIC inside is end-to-end encrypted between the
//! peers.
//!
//! The wire codec ([`wire`]), grants ([`grant`]) and the allocation state machine
//! ([`allocations`]) are sans-IO; [`server`] is the UDP loop around them, on one or several
//! addresses. `rallyd` runs it; the broker mints the grants and the SDK uses the codec to learn
//! its NAT and to carry its QUIC packets through an allocation.

pub mod allocations;
pub mod grant;
pub mod server;
pub mod wire;

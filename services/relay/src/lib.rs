//! Rally's relay (UDP, not gRPC).
//!
//! Two jobs: a *reflector* that answers a binding request with the address and port it saw (so a
//! client learns its server-reflexive address), and a *relay* that forwards the datagrams of two
//! peers with no direct path, admitted only with a short-lived grant the broker signed. The relay
//! never decrypts or parses what it forwards: QUIC inside is end-to-end encrypted between the
//! peers.
//!
//! Built so far, all sans-IO: the wire codec ([`wire`]), grants ([`grant`]) and the allocation
//! state machine ([`allocations`]), and the UDP loop around them ([`server`]). Not built yet:
//! running it from `rallyd` and the broker minting grants.

pub mod allocations;
pub mod grant;
pub mod server;
pub mod wire;

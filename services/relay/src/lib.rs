//! Rally's relay (UDP, not gRPC).
//!
//! Two jobs: a *reflector* that answers a binding request with the address and port it saw (so a
//! client learns its server-reflexive address), and a *relay* that forwards the datagrams of two
//! peers with no direct path, admitted only with a short-lived grant the broker signed. The relay
//! never decrypts or parses what it forwards: QUIC inside is end-to-end encrypted between the
//! peers.
//!
//! Built so far: the wire codec ([`wire`]) and grants ([`grant`]), both sans-IO. The UDP server
//! (allocations, limits, expiry) is not built yet.

pub mod grant;
pub mod wire;

//! The relay's state machine, sans-IO: what to answer or forward for each datagram, given the
//! time. The UDP loop in [`crate::server`] only moves bytes.
//!
//! Admission: a peer presents its grant ([`Message::Allocate`]) from the socket it will use;
//! each grant is for one side, and its first presentation binds that side to its source address.
//! `Data` is forwarded, byte for byte, only from one bound side to the other, within the grant's
//! byte cap and rate (a token bucket) and the relay's aggregate rate. Nothing unverified ever
//! creates state, so a flood of junk costs counters, not memory; the number of allocations is
//! capped in all and per user (each allocation counts for both its users), and allocations end
//! at their grant's expiry, after an idle period, or when the broker releases them
//! ([`Message::Release`]: the pair ended). An allocation that ends before its grant expires is
//! remembered until then (bounded): a released one refuses its grants, and an idle one comes back
//! with the bytes it had carried, so a grant's byte cap holds for the grant's whole life.
//!
//! The relay may listen on several addresses ([`Relay::set_listen_addresses`]) and is told which
//! one each datagram arrived on. They share one allocation table; Allocate is answered and Data
//! forwarded out of the address the datagram arrived on. Only a binding request may be answered
//! from another address, when it asks for it ([`RespondFrom`]), so that a client can classify
//! its NAT; when the relay has no such address it does not answer, and counts the request in
//! [`Counters::bindings_unanswerable`].

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::grant::{Grant, GrantKey};
use crate::wire::{self, Message, RefusedReason, RespondFrom};

/// Limits of a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Most allocations held at once.
    pub max_allocations: usize,
    /// Most allocations one user may be part of at once.
    pub max_allocations_per_user: usize,
    /// Most payload bytes per second the relay forwards, all allocations together.
    pub max_bytes_per_second: u64,
    /// An allocation with no traffic for this long ends (milliseconds).
    pub idle_timeout_ms: u64,
    /// How long a release of an allocation the relay does not hold is remembered (milliseconds):
    /// at least the broker's grant lifetime.
    pub release_memory_ms: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_allocations: 10_000,
            max_allocations_per_user: 16,
            max_bytes_per_second: 125_000_000,
            idle_timeout_ms: 60_000,
            release_memory_ms: 3_600_000,
        }
    }
}

/// What the relay did, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Binding requests answered.
    pub bindings: u64,
    /// Binding requests not answered because they asked to be answered from an address the
    /// relay does not have (another IP, or another port on the same IP).
    pub bindings_unanswerable: u64,
    /// Allocations created.
    pub allocations: u64,
    /// Datagrams forwarded.
    pub forwarded: u64,
    /// Payload bytes forwarded.
    pub forwarded_bytes: u64,
    /// Datagrams that did not decode.
    pub dropped_malformed: u64,
    /// Grants refused (bad MAC, unknown key, expired) or sides already taken.
    pub refused_grants: u64,
    /// Data for an unknown allocation, from a third address, or before the other side bound.
    pub dropped_unauthorised: u64,
    /// Data over the allocation's byte cap or rate.
    pub dropped_over_limit: u64,
    /// Data over the relay's aggregate rate.
    pub dropped_over_aggregate: u64,
    /// New allocations refused because one of their users held its share.
    pub refused_user_quota: u64,
    /// Allocations the broker released (their pair ended).
    pub released: u64,
}

struct Allocation {
    grant: Grant,
    sides: [Option<SocketAddr>; 2],
    bytes: u64,
    tokens: f64,
    refilled_at_ms: u64,
    active_at_ms: u64,
}

/// An allocation that ended before its grant expired.
#[derive(Debug, Clone, Copy)]
struct Ended {
    /// Until when it is remembered (its grant's expiry).
    until_ms: u64,
    /// The bytes it had forwarded.
    bytes: u64,
    /// Whether the broker released it (then its grants are refused).
    released: bool,
}

/// The relay's state; see the module docs.
pub struct Relay {
    keys: Vec<GrantKey>,
    listen: Vec<SocketAddr>,
    limits: RelayLimits,
    allocations: HashMap<[u8; 16], Allocation>,
    /// How many allocations each user is part of.
    per_user: HashMap<[u8; 16], usize>,
    /// Allocations that ended early, at most `max_allocations` of them.
    ended: HashMap<[u8; 16], Ended>,
    /// The aggregate rate's token bucket.
    aggregate_tokens: f64,
    aggregate_refilled_at_ms: u64,
    counters: Counters,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Which of the relay's addresses to send it from: the one the datagram it answers or
    /// forwards arrived on, except for a binding request that asked for another.
    pub from: SocketAddr,
    /// Where to.
    pub to: SocketAddr,
    /// The bytes.
    pub datagram: Vec<u8>,
}

impl Relay {
    /// A relay accepting grants signed with any of `keys`. It knows none of its listen addresses
    /// until [`Relay::set_listen_addresses`], so until then it answers binding requests only from
    /// the address they were sent to.
    pub fn new(keys: Vec<GrantKey>, limits: RelayLimits) -> Self {
        Self {
            keys,
            listen: Vec::new(),
            limits,
            allocations: HashMap::new(),
            per_user: HashMap::new(),
            ended: HashMap::new(),
            aggregate_tokens: limits.max_bytes_per_second as f64,
            aggregate_refilled_at_ms: 0,
            counters: Counters::default(),
        }
    }

    /// The addresses the relay listens on, from which a binding request may ask to be answered
    /// ([`RespondFrom::OtherAddress`], [`RespondFrom::OtherPort`]). Give each socket's bound
    /// address as it reports it: an address with an unspecified IP (`0.0.0.0`, `::`) never
    /// counts as another IP, since the IP it sends from is the kernel's choice.
    pub fn set_listen_addresses(&mut self, addresses: Vec<SocketAddr>) {
        self.listen = addresses;
    }

    /// The addresses given to [`Relay::set_listen_addresses`].
    pub fn listen_addresses(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// What has happened so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// How many allocations are held.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Handles one datagram that arrived on the relay's address `local` from `from` at `now_ms`;
    /// returns what to send, and from which of the relay's addresses, if anything.
    pub fn handle(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
        now_ms: u64,
    ) -> Option<Outgoing> {
        let message = match wire::decode(datagram) {
            Ok(message) => message,
            Err(_) => {
                self.counters.dropped_malformed += 1;
                return None;
            }
        };
        match message {
            Message::BindingRequest {
                transaction,
                respond_from,
            } => {
                let Some(answer_from) = self.answering_address(local, respond_from) else {
                    self.counters.bindings_unanswerable += 1;
                    return None;
                };
                self.counters.bindings += 1;
                Some(reply(
                    answer_from,
                    from,
                    &Message::BindingResponse {
                        transaction,
                        address: from,
                    },
                ))
            }
            Message::Allocate { side, grant } => self.allocate(local, from, side, grant, now_ms),
            Message::Data {
                allocation,
                payload,
            } => self.forward(local, from, allocation, payload.len(), datagram, now_ms),
            Message::Release { release } => {
                match crate::grant::verify_release(release, &self.keys, now_ms) {
                    Ok(id) => self.release(id, now_ms),
                    Err(_) => self.counters.refused_grants += 1,
                }
                None
            }
            // Answers are the relay's to send, never to receive.
            Message::BindingResponse { .. }
            | Message::Allocated { .. }
            | Message::Refused { .. } => {
                self.counters.dropped_malformed += 1;
                None
            }
        }
    }

    /// The listen address a binding request that arrived on `local` is answered from, if the
    /// relay has one that fits. Another address must be of `local`'s family (a socket cannot send
    /// to the other family) and, for another IP, neither IP may be unspecified.
    fn answering_address(
        &self,
        local: SocketAddr,
        respond_from: RespondFrom,
    ) -> Option<SocketAddr> {
        let same_family = |a: &&SocketAddr| a.is_ipv4() == local.is_ipv4();
        match respond_from {
            RespondFrom::Same => Some(local),
            RespondFrom::OtherAddress => {
                let mut other_ip = self.listen.iter().filter(same_family).filter(|a| {
                    a.ip() != local.ip() && !a.ip().is_unspecified() && !local.ip().is_unspecified()
                });
                // Another port as well, where there is one: a NAT whose filtering depends on
                // the port only would otherwise pass the answer as if it were endpoint-independent.
                other_ip
                    .clone()
                    .find(|a| a.port() != local.port())
                    .or_else(|| other_ip.next())
                    .copied()
            }
            RespondFrom::OtherPort => self
                .listen
                .iter()
                .filter(same_family)
                .find(|a| a.ip() == local.ip() && a.port() != local.port())
                .copied(),
        }
    }

    fn allocate(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        side: u8,
        grant: &[u8; crate::grant::GRANT_BYTES],
        now_ms: u64,
    ) -> Option<Outgoing> {
        let grant = match Grant::verify(grant, &self.keys, now_ms) {
            Ok(grant) => grant,
            Err(_) => {
                // The allocation id of an unverified grant means nothing: answer nothing that
                // could help a forger, and keep no state.
                self.counters.refused_grants += 1;
                return None;
            }
        };
        let id = grant.allocation;
        let refuse = |reason| {
            Some(reply(
                local,
                from,
                &Message::Refused {
                    allocation: id,
                    reason,
                },
            ))
        };
        if side != grant.side {
            self.counters.refused_grants += 1;
            return refuse(RefusedReason::WrongSide);
        }
        if !self.allocations.contains_key(&id) {
            let ended = self.ended.get(&id).copied();
            if ended.is_some_and(|e| e.released) {
                self.counters.refused_grants += 1;
                return refuse(RefusedReason::Released);
            }
            if self.allocations.len() >= self.limits.max_allocations {
                return refuse(RefusedReason::Full);
            }
            let held = |user: &[u8; 16]| self.per_user.get(user).copied().unwrap_or(0);
            if held(&grant.user_a) >= self.limits.max_allocations_per_user
                || held(&grant.user_b) >= self.limits.max_allocations_per_user
            {
                self.counters.refused_user_quota += 1;
                return refuse(RefusedReason::UserQuota);
            }
            self.ended.remove(&id);
            self.counters.allocations += 1;
            for user in [grant.user_a, grant.user_b] {
                *self.per_user.entry(user).or_default() += 1;
            }
            self.allocations.insert(
                id,
                Allocation {
                    grant,
                    sides: [None, None],
                    // An allocation that idled out comes back with what it had carried.
                    bytes: ended.map_or(0, |e| e.bytes),
                    tokens: f64::from(grant.rate_bytes_per_sec),
                    refilled_at_ms: now_ms,
                    active_at_ms: now_ms,
                },
            );
        }
        let allocation = self.allocations.get_mut(&id)?;
        let slot = &mut allocation.sides[usize::from(side)];
        match slot {
            Some(bound) if *bound != from => {
                self.counters.refused_grants += 1;
                refuse(RefusedReason::SideTaken)
            }
            _ => {
                *slot = Some(from);
                allocation.active_at_ms = now_ms;
                // A renewed grant for the same pair (the broker re-signs the same allocation with
                // a later expiry) extends it; its limits and the bytes carried stay.
                if grant.user_a == allocation.grant.user_a
                    && grant.user_b == allocation.grant.user_b
                    && grant.expires_at_ms > allocation.grant.expires_at_ms
                {
                    allocation.grant.expires_at_ms = grant.expires_at_ms;
                }
                Some(reply(
                    local,
                    from,
                    &Message::Allocated {
                        allocation: id,
                        expires_at_ms: allocation.grant.expires_at_ms,
                    },
                ))
            }
        }
    }

    fn forward(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        id: [u8; 16],
        payload_len: usize,
        datagram: &[u8],
        now_ms: u64,
    ) -> Option<Outgoing> {
        let Some(allocation) = self.allocations.get_mut(&id) else {
            self.counters.dropped_unauthorised += 1;
            return None;
        };
        let to = match allocation.sides {
            [Some(a), Some(b)] if a == from => b,
            [Some(a), Some(b)] if b == from => a,
            _ => {
                self.counters.dropped_unauthorised += 1;
                return None;
            }
        };
        if now_ms >= allocation.grant.expires_at_ms {
            self.counters.dropped_unauthorised += 1;
            self.end(id, false, now_ms);
            return None;
        }
        let rate = f64::from(allocation.grant.rate_bytes_per_sec);
        let elapsed = now_ms.saturating_sub(allocation.refilled_at_ms) as f64 / 1000.0;
        allocation.tokens = (allocation.tokens + elapsed * rate).min(rate);
        allocation.refilled_at_ms = now_ms;
        let size = payload_len as u64;
        if allocation.bytes.saturating_add(size) > allocation.grant.byte_cap
            || allocation.tokens < size as f64
        {
            self.counters.dropped_over_limit += 1;
            return None;
        }
        let total = self.limits.max_bytes_per_second as f64;
        let elapsed = now_ms.saturating_sub(self.aggregate_refilled_at_ms) as f64 / 1000.0;
        self.aggregate_tokens = (self.aggregate_tokens + elapsed * total).min(total);
        self.aggregate_refilled_at_ms = now_ms;
        if self.aggregate_tokens < size as f64 {
            self.counters.dropped_over_aggregate += 1;
            return None;
        }
        self.aggregate_tokens -= size as f64;
        allocation.tokens -= size as f64;
        allocation.bytes += size;
        allocation.active_at_ms = now_ms;
        self.counters.forwarded += 1;
        self.counters.forwarded_bytes += size;
        Some(Outgoing {
            from: local,
            to,
            datagram: datagram.to_vec(),
        })
    }

    /// Ends allocations past their grant's expiry or idle too long, and forgets ended ones
    /// whose grant expired.
    pub fn expire(&mut self, now_ms: u64) {
        let idle = self.limits.idle_timeout_ms;
        let over: Vec<[u8; 16]> = self
            .allocations
            .iter()
            .filter(|(_, a)| {
                now_ms >= a.grant.expires_at_ms || now_ms.saturating_sub(a.active_at_ms) >= idle
            })
            .map(|(id, _)| *id)
            .collect();
        for id in over {
            self.end(id, false, now_ms);
        }
        self.ended.retain(|_, e| now_ms < e.until_ms);
    }

    /// The broker released allocation `id`: its pair ended.
    fn release(&mut self, id: [u8; 16], now_ms: u64) {
        self.counters.released += 1;
        if self.allocations.contains_key(&id) {
            self.end(id, true, now_ms);
        } else {
            let until_ms = self
                .ended
                .get(&id)
                .map_or(now_ms.saturating_add(self.limits.release_memory_ms), |e| {
                    e.until_ms
                });
            let bytes = self.ended.get(&id).map_or(0, |e| e.bytes);
            self.remember(
                id,
                Ended {
                    until_ms,
                    bytes,
                    released: true,
                },
                now_ms,
            );
        }
    }

    /// Removes allocation `id`, remembering it until its grant expires.
    fn end(&mut self, id: [u8; 16], released: bool, now_ms: u64) {
        let Some(allocation) = self.allocations.remove(&id) else {
            return;
        };
        for user in [allocation.grant.user_a, allocation.grant.user_b] {
            if let Some(count) = self.per_user.get_mut(&user) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.per_user.remove(&user);
                }
            }
        }
        if now_ms < allocation.grant.expires_at_ms {
            self.remember(
                id,
                Ended {
                    until_ms: allocation.grant.expires_at_ms,
                    bytes: allocation.bytes,
                    released,
                },
                now_ms,
            );
        }
    }

    /// Remembers an ended allocation; when as many are remembered as allocations may be held,
    /// the expired ones go first, then the one remembered for the shortest time (the lowest id
    /// among equals).
    fn remember(&mut self, id: [u8; 16], ended: Ended, now_ms: u64) {
        if !self.ended.contains_key(&id) && self.ended.len() >= self.limits.max_allocations {
            self.ended.retain(|_, e| now_ms < e.until_ms);
            if self.ended.len() >= self.limits.max_allocations
                && let Some(soonest) = self
                    .ended
                    .iter()
                    .min_by_key(|(id, e)| (e.until_ms, **id))
                    .map(|(id, _)| *id)
            {
                self.ended.remove(&soonest);
            }
        }
        self.ended.insert(id, ended);
    }
}

fn reply(from: SocketAddr, to: SocketAddr, message: &Message<'_>) -> Outgoing {
    let mut datagram = Vec::with_capacity(64);
    wire::encode(message, &mut datagram);
    Outgoing { from, to, datagram }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn key() -> GrantKey {
        GrantKey::new(1, *b"relay test secret, 32 bytes long")
    }

    /// Side 0's grant for allocation `[allocation; 16]` of users 1 and 2.
    fn grant(allocation: u8) -> [u8; crate::grant::GRANT_BYTES] {
        grant_for(allocation, 0)
    }

    fn grant_for(allocation: u8, side: u8) -> [u8; crate::grant::GRANT_BYTES] {
        users_grant(allocation, side, [1; 16], [2; 16])
    }

    fn users_grant(
        allocation: u8,
        side: u8,
        user_a: [u8; 16],
        user_b: [u8; 16],
    ) -> [u8; crate::grant::GRANT_BYTES] {
        Grant {
            key_id: 1,
            allocation: [allocation; 16],
            user_a,
            user_b,
            side,
            expires_at_ms: NOW + 60_000,
            byte_cap: 10_000,
            rate_bytes_per_sec: 5_000,
        }
        .sign(&key())
    }

    /// The reason of a Refused answer, if the answer is one.
    fn refused(answer: Option<Outgoing>) -> Option<RefusedReason> {
        match wire::decode(&answer?.datagram) {
            Ok(Message::Refused { reason, .. }) => Some(reason),
            _ => None,
        }
    }

    fn allocate(
        relay: &mut Relay,
        port: u16,
        side: u8,
        grant: &[u8; crate::grant::GRANT_BYTES],
        now: u64,
    ) -> Option<Outgoing> {
        relay.handle(
            LOCAL,
            addr(port),
            &encode(&Message::Allocate { side, grant }),
            now,
        )
    }

    fn encode(message: &Message<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        wire::encode(message, &mut out);
        out
    }

    /// The relay's address the tests' datagrams arrive on, unless they say otherwise.
    const LOCAL: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
        7371,
    );

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn bound_pair() -> Relay {
        bound_pair_with(RelayLimits::default())
    }

    fn bound_pair_with(limits: RelayLimits) -> Relay {
        let mut relay = Relay::new(vec![key()], limits);
        for (side, port) in [(0, 1000), (1, 2000)] {
            let answer = relay
                .handle(
                    LOCAL,
                    addr(port),
                    &encode(&Message::Allocate {
                        side,
                        grant: &grant_for(7, side),
                    }),
                    NOW,
                )
                .expect("answer");
            assert!(matches!(
                wire::decode(&answer.datagram),
                Ok(Message::Allocated { .. })
            ));
        }
        relay
    }

    fn data(payload: &[u8]) -> Vec<u8> {
        encode(&Message::Data {
            allocation: [7; 16],
            payload,
        })
    }

    #[test]
    fn data_is_forwarded_unchanged_between_the_two_bound_sides_only() {
        let mut relay = bound_pair();
        let datagram = data(b"encrypted quic");
        let out = relay
            .handle(LOCAL, addr(1000), &datagram, NOW)
            .expect("forwarded");
        assert_eq!(
            out,
            Outgoing {
                from: LOCAL,
                to: addr(2000),
                datagram: datagram.clone()
            }
        );
        let back = relay
            .handle(LOCAL, addr(2000), &datagram, NOW)
            .expect("forwarded back");
        assert_eq!(back.to, addr(1000));
        assert_eq!(
            relay.handle(LOCAL, addr(3000), &datagram, NOW),
            None,
            "a third address"
        );
        assert_eq!(relay.counters().dropped_unauthorised, 1);
    }

    #[test]
    fn a_grant_replayed_from_another_address_cannot_take_a_bound_side() {
        let mut relay = bound_pair();
        let g = grant(7);
        let answer = relay
            .handle(
                LOCAL,
                addr(4000),
                &encode(&Message::Allocate { side: 0, grant: &g }),
                NOW,
            )
            .expect("answer");
        assert!(matches!(
            wire::decode(&answer.datagram),
            Ok(Message::Refused {
                reason: RefusedReason::SideTaken,
                ..
            })
        ));
        assert_eq!(relay.handle(LOCAL, addr(4000), &data(b"x"), NOW), None);
    }

    #[test]
    fn forged_and_expired_grants_create_nothing() {
        let mut relay = Relay::new(vec![key()], RelayLimits::default());
        let mut forged = grant(8);
        forged[10] ^= 1;
        let none = relay.handle(
            LOCAL,
            addr(1),
            &encode(&Message::Allocate {
                side: 0,
                grant: &forged,
            }),
            NOW,
        );
        assert_eq!(none, None);
        let late = relay.handle(
            LOCAL,
            addr(1),
            &encode(&Message::Allocate {
                side: 0,
                grant: &grant(8),
            }),
            NOW + 60_000,
        );
        assert_eq!(late, None);
        assert_eq!(relay.allocation_count(), 0);
        assert_eq!(relay.counters().refused_grants, 2);
    }

    #[test]
    fn a_renewed_grant_extends_the_allocation_and_an_older_one_does_not_shorten_it() {
        let mut relay = bound_pair();
        let renewed = |side, expires_at_ms| {
            Grant {
                key_id: 1,
                allocation: [7; 16],
                user_a: [1; 16],
                user_b: [2; 16],
                side,
                expires_at_ms,
                byte_cap: 10_000,
                rate_bytes_per_sec: 5_000,
            }
            .sign(&key())
        };
        let later = NOW + 120_000;
        let answer = relay
            .handle(
                LOCAL,
                addr(1000),
                &encode(&Message::Allocate {
                    side: 0,
                    grant: &renewed(0, later),
                }),
                NOW + 1000,
            )
            .expect("answer");
        assert_eq!(
            wire::decode(&answer.datagram),
            Ok(Message::Allocated {
                allocation: [7; 16],
                expires_at_ms: later
            })
        );
        // Past the first grant's expiry, data still flows.
        let at = NOW + 90_000;
        assert!(relay.handle(LOCAL, addr(1000), &data(b"x"), at).is_some());
        let answer = relay
            .handle(
                LOCAL,
                addr(2000),
                &encode(&Message::Allocate {
                    side: 1,
                    grant: &renewed(1, NOW + 100_000),
                }),
                at,
            )
            .expect("answer");
        assert_eq!(
            wire::decode(&answer.datagram),
            Ok(Message::Allocated {
                allocation: [7; 16],
                expires_at_ms: later
            })
        );
    }

    #[test]
    fn byte_cap_and_rate_are_enforced() {
        let mut relay = bound_pair();
        let big = data(&[0; 4000]);
        assert!(relay.handle(LOCAL, addr(1000), &big, NOW).is_some());
        assert_eq!(
            relay.handle(LOCAL, addr(1000), &big, NOW),
            None,
            "5000 B/s: 4000 + 4000 in one instant"
        );
        assert!(
            relay.handle(LOCAL, addr(1000), &big, NOW + 1000).is_some(),
            "refilled after a second"
        );
        assert_eq!(
            relay.handle(LOCAL, addr(1000), &big, NOW + 5000),
            None,
            "10 000 B cap reached"
        );
        assert_eq!(relay.counters().dropped_over_limit, 2);
    }

    #[test]
    fn allocations_end_at_expiry_and_when_idle() {
        let mut relay = bound_pair();
        relay.expire(NOW + 59_999);
        assert_eq!(relay.allocation_count(), 1);
        relay.expire(NOW + 60_000);
        assert_eq!(relay.allocation_count(), 0);

        let mut relay = Relay::new(
            vec![key()],
            RelayLimits {
                max_allocations: 10,
                idle_timeout_ms: 1000,
                ..RelayLimits::default()
            },
        );
        relay.handle(
            LOCAL,
            addr(1),
            &encode(&Message::Allocate {
                side: 0,
                grant: &grant(9),
            }),
            NOW,
        );
        relay.expire(NOW + 999);
        assert_eq!(relay.allocation_count(), 1);
        relay.expire(NOW + 1000);
        assert_eq!(relay.allocation_count(), 0);
    }

    #[test]
    fn the_number_of_allocations_is_capped() {
        let mut relay = Relay::new(
            vec![key()],
            RelayLimits {
                max_allocations: 2,
                ..RelayLimits::default()
            },
        );
        for id in 0..3 {
            relay.handle(
                LOCAL,
                addr(1),
                &encode(&Message::Allocate {
                    side: 0,
                    grant: &grant(id),
                }),
                NOW,
            );
        }
        assert_eq!(relay.allocation_count(), 2);
    }

    #[test]
    fn a_grant_binds_only_the_side_it_was_signed_for() {
        let mut relay = Relay::new(vec![key()], RelayLimits::default());
        assert_eq!(
            refused(allocate(&mut relay, 1000, 1, &grant_for(7, 0), NOW)),
            Some(RefusedReason::WrongSide),
            "side 0's grant presented for side 1"
        );
        assert_eq!(relay.allocation_count(), 0);
        assert_eq!(
            refused(allocate(&mut relay, 1000, 0, &grant_for(7, 0), NOW)),
            None
        );
        assert_eq!(
            refused(allocate(&mut relay, 2000, 1, &grant_for(7, 1), NOW)),
            None
        );
    }

    #[test]
    fn each_user_holds_at_most_its_share_of_allocations() {
        let limits = RelayLimits {
            max_allocations_per_user: 2,
            ..RelayLimits::default()
        };
        let mut relay = Relay::new(vec![key()], limits);
        let (alice, bob, carol, dave) = ([1; 16], [2; 16], [3; 16], [4; 16]);
        for (id, peer) in [(1, bob), (2, carol)] {
            assert_eq!(
                refused(allocate(
                    &mut relay,
                    1000,
                    0,
                    &users_grant(id, 0, alice, peer),
                    NOW
                )),
                None
            );
        }
        assert_eq!(
            refused(allocate(
                &mut relay,
                1000,
                0,
                &users_grant(3, 0, alice, dave),
                NOW
            )),
            Some(RefusedReason::UserQuota),
            "Alice's third"
        );
        assert_eq!(
            refused(allocate(
                &mut relay,
                1000,
                0,
                &users_grant(4, 0, dave, alice),
                NOW
            )),
            Some(RefusedReason::UserQuota),
            "Alice on the other side"
        );
        assert_eq!(
            refused(allocate(
                &mut relay,
                1000,
                0,
                &users_grant(5, 0, carol, dave),
                NOW
            )),
            None,
            "others are not held back"
        );
        assert_eq!(relay.counters().refused_user_quota, 2);
        // Releasing one of Alice's frees her share.
        let release = crate::grant::sign_release(&key(), [1; 16], NOW);
        assert_eq!(
            relay.handle(
                LOCAL,
                addr(9),
                &encode(&Message::Release { release: &release }),
                NOW
            ),
            None,
            "a release is never answered"
        );
        assert_eq!(
            refused(allocate(
                &mut relay,
                1000,
                0,
                &users_grant(3, 0, alice, dave),
                NOW
            )),
            None
        );
    }

    #[test]
    fn a_released_allocation_refuses_its_grants_until_they_expire() {
        let mut relay = bound_pair();
        let release = crate::grant::sign_release(&key(), [7; 16], NOW);
        relay.handle(
            LOCAL,
            addr(9),
            &encode(&Message::Release { release: &release }),
            NOW,
        );
        assert_eq!(relay.allocation_count(), 0);
        assert_eq!(relay.counters().released, 1);
        assert_eq!(
            relay.handle(LOCAL, addr(1000), &data(b"x"), NOW),
            None,
            "no more forwarding"
        );
        assert_eq!(
            refused(allocate(&mut relay, 1000, 0, &grant_for(7, 0), NOW + 1)),
            Some(RefusedReason::Released),
            "its grant cannot bring it back"
        );
        // A release that arrives before the allocation exists keeps it from being created.
        let early = crate::grant::sign_release(&key(), [8; 16], NOW);
        relay.handle(
            LOCAL,
            addr(9),
            &encode(&Message::Release { release: &early }),
            NOW,
        );
        assert_eq!(
            refused(allocate(&mut relay, 1000, 0, &grant_for(8, 0), NOW)),
            Some(RefusedReason::Released)
        );
        // A forged or stale release changes nothing.
        let mut relay = bound_pair();
        let mut forged = crate::grant::sign_release(&key(), [7; 16], NOW);
        forged[30] ^= 1;
        let stale = crate::grant::sign_release(&key(), [7; 16], NOW - 120_000);
        for bad in [forged, stale] {
            relay.handle(
                LOCAL,
                addr(9),
                &encode(&Message::Release { release: &bad }),
                NOW,
            );
        }
        assert_eq!(relay.allocation_count(), 1);
        assert_eq!(relay.counters().refused_grants, 2);
    }

    #[test]
    fn an_allocation_that_idled_out_comes_back_with_the_bytes_it_had_carried() {
        let limits = RelayLimits {
            idle_timeout_ms: 1000,
            ..RelayLimits::default()
        };
        let mut relay = bound_pair_with(limits);
        assert!(
            relay
                .handle(LOCAL, addr(1000), &data(&[0; 4000]), NOW)
                .is_some()
        );
        relay.expire(NOW + 1000);
        assert_eq!(relay.allocation_count(), 0, "idle");
        let later = NOW + 2000;
        for (side, port) in [(0, 1000), (1, 2000)] {
            assert_eq!(
                refused(allocate(&mut relay, port, side, &grant_for(7, side), later)),
                None
            );
        }
        assert!(
            relay
                .handle(LOCAL, addr(1000), &data(&[0; 4000]), later)
                .is_some()
        );
        assert_eq!(
            relay.handle(LOCAL, addr(1000), &data(&[0; 4000]), later + 2000),
            None,
            "the grant's 10 000 bytes hold across the idle gap"
        );
        assert_eq!(relay.counters().dropped_over_limit, 1);
    }

    #[test]
    fn the_relay_forwards_at_most_its_aggregate_rate() {
        let limits = RelayLimits {
            max_bytes_per_second: 6_000,
            ..RelayLimits::default()
        };
        let mut relay = Relay::new(vec![key()], limits);
        relay.aggregate_refilled_at_ms = NOW;
        // Two pairs, each well within its own rate.
        for (id, a, b) in [(1u8, 1000u16, 2000u16), (2, 3000, 4000)] {
            for (side, port) in [(0, a), (1, b)] {
                let grant = users_grant(id, side, [id; 16], [id + 10; 16]);
                assert_eq!(refused(allocate(&mut relay, port, side, &grant, NOW)), None);
            }
        }
        let chunk = |id: u8| {
            encode(&Message::Data {
                allocation: [id; 16],
                payload: &[0; 4000],
            })
        };
        assert!(relay.handle(LOCAL, addr(1000), &chunk(1), NOW).is_some());
        assert_eq!(
            relay.handle(LOCAL, addr(3000), &chunk(2), NOW),
            None,
            "8000 B in one instant"
        );
        assert_eq!(relay.counters().dropped_over_aggregate, 1);
        assert!(
            relay
                .handle(LOCAL, addr(3000), &chunk(2), NOW + 1000)
                .is_some(),
            "refilled"
        );
    }

    fn sa(text: &str) -> SocketAddr {
        text.parse().expect("a literal address")
    }

    /// The relay's answer to a binding request that arrived on `local` from `client`, and the
    /// address it reflects.
    fn bind(
        relay: &mut Relay,
        local: SocketAddr,
        client: SocketAddr,
        respond_from: RespondFrom,
    ) -> Option<(Outgoing, SocketAddr)> {
        let out = relay.handle(
            local,
            client,
            &encode(&Message::BindingRequest {
                transaction: [3; 12],
                respond_from,
            }),
            NOW,
        )?;
        match wire::decode(&out.datagram) {
            Ok(Message::BindingResponse {
                transaction: [3, ..],
                address,
            }) => Some((out, address)),
            other => panic!("expected a binding response, got {other:?}"),
        }
    }

    /// Two IPs, the first with two ports; and an IPv6 address.
    fn multi_homed() -> Relay {
        let mut relay = Relay::new(vec![key()], RelayLimits::default());
        relay.set_listen_addresses(vec![
            sa("192.0.2.1:7371"),
            sa("192.0.2.1:7372"),
            sa("198.51.100.1:7371"),
            sa("198.51.100.1:7373"),
            sa("[2001:db8::1]:7371"),
        ]);
        relay
    }

    #[test]
    fn binding_requests_are_answered_with_the_source_address_from_where_they_arrived() {
        let mut relay = Relay::new(vec![key()], RelayLimits::default());
        let (out, reflected) =
            bind(&mut relay, LOCAL, addr(5555), RespondFrom::Same).expect("answer");
        assert_eq!(
            (out.from, out.to, reflected),
            (LOCAL, addr(5555), addr(5555))
        );

        let mut relay = multi_homed();
        let local = sa("198.51.100.1:7373");
        let (out, _) = bind(&mut relay, local, addr(5555), RespondFrom::Same).expect("answer");
        assert_eq!(out.from, local);
        assert_eq!(relay.counters().bindings, 1);
    }

    #[test]
    fn other_address_answers_from_another_ip_and_another_port_where_there_is_one() {
        let mut relay = multi_homed();
        let client = sa("203.0.113.5:40000");
        let (out, reflected) = bind(
            &mut relay,
            sa("192.0.2.1:7371"),
            client,
            RespondFrom::OtherAddress,
        )
        .expect("answer");
        assert_eq!(out.from, sa("198.51.100.1:7373"), "another IP and port");
        assert_eq!((out.to, reflected), (client, client));
        let (out, _) = bind(
            &mut relay,
            sa("198.51.100.1:7373"),
            client,
            RespondFrom::OtherAddress,
        )
        .expect("answer");
        assert_eq!(out.from, sa("192.0.2.1:7371"));

        // With no other port on the other IP, the same port will do.
        let mut relay = Relay::new(vec![key()], RelayLimits::default());
        relay.set_listen_addresses(vec![sa("192.0.2.1:7371"), sa("198.51.100.1:7371")]);
        let (out, _) = bind(
            &mut relay,
            sa("192.0.2.1:7371"),
            client,
            RespondFrom::OtherAddress,
        )
        .expect("answer");
        assert_eq!(out.from, sa("198.51.100.1:7371"));
        assert_eq!(relay.counters().bindings, 1);
    }

    #[test]
    fn other_port_answers_from_the_same_ip_and_another_port() {
        let mut relay = multi_homed();
        let client = sa("203.0.113.5:40000");
        for (local, expected) in [
            ("192.0.2.1:7371", "192.0.2.1:7372"),
            ("192.0.2.1:7372", "192.0.2.1:7371"),
            ("198.51.100.1:7371", "198.51.100.1:7373"),
        ] {
            let (out, reflected) =
                bind(&mut relay, sa(local), client, RespondFrom::OtherPort).expect("answer");
            assert_eq!(out.from, sa(expected), "arrived on {local}");
            assert_eq!((out.to, reflected), (client, client));
        }
    }

    #[test]
    fn a_binding_request_no_listen_address_can_answer_is_dropped_and_counted() {
        let client = addr(5555);
        // A relay that knows no other address.
        let mut relay = Relay::new(vec![key()], RelayLimits::default());
        assert!(bind(&mut relay, LOCAL, client, RespondFrom::OtherAddress).is_none());
        assert!(bind(&mut relay, LOCAL, client, RespondFrom::OtherPort).is_none());
        // Only one address per family: the IPv6 one cannot answer an IPv4 client.
        let v6 = sa("[2001:db8::1]:7371");
        let mut relay = multi_homed();
        assert!(
            bind(
                &mut relay,
                v6,
                sa("[2001:db8::9]:1"),
                RespondFrom::OtherAddress
            )
            .is_none()
        );
        assert!(
            bind(
                &mut relay,
                v6,
                sa("[2001:db8::9]:1"),
                RespondFrom::OtherPort
            )
            .is_none()
        );
        // A wildcard address is not known to be another IP.
        let mut relay = Relay::new(vec![key()], RelayLimits::default());
        relay.set_listen_addresses(vec![sa("0.0.0.0:7371"), sa("192.0.2.1:7372")]);
        for local in ["0.0.0.0:7371", "192.0.2.1:7372"] {
            assert!(bind(&mut relay, sa(local), client, RespondFrom::OtherAddress).is_none());
            assert!(bind(&mut relay, sa(local), client, RespondFrom::OtherPort).is_none());
        }
        let counters = relay.counters();
        assert_eq!((counters.bindings, counters.bindings_unanswerable), (0, 4));
        assert_eq!(relay.allocation_count(), 0, "and it keeps no state");
    }

    #[test]
    fn one_allocation_table_serves_every_address_and_data_leaves_where_it_arrived() {
        let mut relay = multi_homed();
        let (first, second) = (sa("192.0.2.1:7371"), sa("198.51.100.1:7371"));
        for (side, port, local) in [(0, 1000, first), (1, 2000, second)] {
            let answer = relay
                .handle(
                    local,
                    addr(port),
                    &encode(&Message::Allocate {
                        side,
                        grant: &grant_for(7, side),
                    }),
                    NOW,
                )
                .expect("answer");
            assert_eq!(answer.from, local, "answered where it arrived");
            assert!(matches!(
                wire::decode(&answer.datagram),
                Ok(Message::Allocated { .. })
            ));
        }
        assert_eq!(relay.allocation_count(), 1);
        let datagram = data(b"x");
        let out = relay
            .handle(second, addr(1000), &datagram, NOW)
            .expect("forwarded");
        assert_eq!((out.from, out.to), (second, addr(2000)));
        let out = relay
            .handle(first, addr(2000), &datagram, NOW)
            .expect("forwarded");
        assert_eq!((out.from, out.to), (first, addr(1000)));
    }
}

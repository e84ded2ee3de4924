//! Fuzzes the relay's allocation state machine (`rally_relay::allocations::Relay`).
//!
//! The input is a sequence of steps: time passing, binding requests, grants signed with the
//! relay's keys (or an unknown key, or tampered), Data for a few allocation ids, raw bytes, and
//! `expire` sweeps; each datagram comes from one of a few fixed IPv4 and IPv6 addresses and
//! arrives on one of the relay's listen addresses (a subset of a few fixed ones, wildcard
//! included), and the clock never goes back. Alongside, a shadow model of what the module docs
//! promise checks every answer:
//!
//! - nothing is ever answered with more bytes than it was asked with (no amplification), every
//!   answer decodes, and a binding response carries the request's transaction and source;
//! - every answer leaves from the listen address the datagram arrived on, except a binding
//!   request's that asked for another: from another IP of the same family (neither unspecified),
//!   on another port too where the relay has one; or from the same IP on another port. When the
//!   relay has no such address the request gets no answer and is counted as unanswerable;
//! - junk, answers and unverified grants get no answer and create no state; only a verified
//!   grant creates an allocation, and never more than `max_allocations` in all, nor more than
//!   `max_allocations_per_user` for any user;
//! - a grant binds only the side it was signed for; the first presentation of a side binds it;
//!   another address presenting it is refused;
//! - a verified, fresh release ends its allocation (never answered); a released allocation's
//!   grants are refused until they expire; an allocation that idled out comes back with the
//!   bytes it had carried, so the byte cap holds for a grant's whole life;
//! - Data is forwarded unchanged only from one bound side to the other, never over the byte
//!   cap or the token-bucket rate, never after the grant's expiry; and after a second without
//!   Data, a datagram within the cap and the rate is forwarded;
//! - `expire` ends exactly the allocations past their expiry or idle timeout, and remembers the
//!   idle ones until their grant expires, at most `max_allocations` of them.
//!
//! Run every target (stable toolchain, cargo-fuzz installed on demand):
//! `bash services/relay/fuzz/run.sh`; this one alone for a minute:
//! `RALLY_FUZZ_SECONDS=60 bash services/relay/fuzz/run.sh relay_handle`.

#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use rally_relay::allocations::{Counters, Outgoing, Relay, RelayLimits};
use rally_relay::grant::{GRANT_BYTES, Grant, GrantKey, sign_release, verify_release};
use rally_relay::wire::{self, Message, RefusedReason, RespondFrom};

/// The clock starts at a realistic Unix time in milliseconds.
const START_MS: u64 = 1_700_000_000_000;

#[derive(Arbitrary, Debug)]
struct Input {
    /// 1 to 4 allocations.
    max_allocations: u8,
    /// 1 to 4 allocations per user.
    max_allocations_per_user: u8,
    idle_timeout_ms: u16,
    /// Which of [`LISTEN`] the relay listens on, a bit each (none: the first).
    listen: u8,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// Time passes.
    Wait { ms: u32 },
    /// The periodic sweep.
    Expire,
    /// A binding request; `respond_from % 3` picks [`RespondFrom`].
    Bind {
        from: u8,
        at: u8,
        transaction: [u8; 12],
        respond_from: u8,
    },
    /// A grant presented for `side` (anything but 0 and 1 does not decode).
    Allocate {
        from: u8,
        at: u8,
        side: u8,
        grant: GrantSpec,
    },
    /// Data with `len % 1500` bytes of `fill` for one of five allocation ids.
    Data {
        from: u8,
        at: u8,
        allocation: u8,
        len: u16,
        fill: u8,
    },
    /// Any bytes at all.
    Raw { from: u8, at: u8, bytes: Vec<u8> },
    /// The broker releases one of five allocation ids, with the relay's keys or not, issued
    /// `age_ms` ago (negative: ahead of the relay's clock), perhaps tampered with.
    Release {
        from: u8,
        at: u8,
        allocation: u8,
        key: u8,
        age_ms: i32,
        tamper: Option<(u8, u8)>,
    },
}

/// The addresses the relay may listen on: two ports on one IPv4 address, another IPv4 address,
/// an IPv6 address and an IPv4 wildcard.
const LISTEN: [&str; 5] = [
    "203.0.113.1:7371",
    "203.0.113.1:7372",
    "203.0.113.2:7371",
    "[2001:db8:1::1]:7371",
    "0.0.0.0:7373",
];

#[derive(Arbitrary, Debug)]
struct GrantSpec {
    /// One of a few ids, so that grants collide.
    allocation: u8,
    /// The side it is signed for (`% 2`).
    side: u8,
    /// One of a few pairs of users, so that users hold several allocations.
    users: u8,
    /// 0 and 1: the relay's keys; otherwise a key it does not have.
    key: u8,
    /// Relative to now; zero or negative is already expired.
    expires_in_ms: i32,
    byte_cap: u32,
    rate_bytes_per_sec: u16,
    /// Flip one bit of the signed grant.
    tamper: Option<(u8, u8)>,
}

fn keys() -> [GrantKey; 3] {
    [
        GrantKey::new(1, *b"relay fuzz secret one, 32 bytes!"),
        GrantKey::new(2, *b"relay fuzz secret two, 32 bytes!"),
        GrantKey::new(9, *b"a secret the relay does not have"),
    ]
}

fn source(index: u8) -> SocketAddr {
    const SOURCES: [&str; 5] = [
        "192.0.2.1:1000",
        "192.0.2.1:1001",
        "198.51.100.7:1000",
        "[2001:db8::1]:3000",
        "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
    ];
    SOURCES[usize::from(index) % SOURCES.len()]
        .parse()
        .expect("a literal address")
}

fn allocation_id(index: u8) -> [u8; 16] {
    // Four ids grants can name, and a fifth no grant ever names.
    [index % 5; 16]
}

/// The pairs of users grants name (each byte fills a user id).
const USERS: [(u8, u8); 4] = [(0xa, 0xb), (0xa, 0xc), (0xc, 0xb), (0xd, 0xe)];

fn sign(spec: &GrantSpec, now_ms: u64) -> [u8; GRANT_BYTES] {
    let keys = keys();
    let key = &keys[usize::from(spec.key).min(2)];
    let expires_at_ms = now_ms.saturating_add_signed(i64::from(spec.expires_in_ms));
    let mut bytes = Grant {
        key_id: 0,
        allocation: allocation_id(spec.allocation % 4),
        user_a: [USERS[usize::from(spec.users) % USERS.len()].0; 16],
        user_b: [USERS[usize::from(spec.users) % USERS.len()].1; 16],
        side: spec.side % 2,
        expires_at_ms,
        byte_cap: u64::from(spec.byte_cap),
        rate_bytes_per_sec: u32::from(spec.rate_bytes_per_sec),
    }
    .sign(key);
    if let Some((at, bit)) = spec.tamper {
        bytes[usize::from(at) % GRANT_BYTES] ^= 1 << (bit % 8);
    }
    bytes
}

/// What the model knows of one allocation.
struct Shadow {
    /// The grant that created it, with the expiry of the latest renewal for the same users.
    grant: Grant,
    sides: [Option<SocketAddr>; 2],
    bytes: u64,
    /// When it was first created (it may have idled out and come back since).
    created_at_ms: u64,
    /// How many times it was created (each time with a full token bucket).
    creations: u64,
    active_at_ms: u64,
    /// The last Data from a bound side before expiry (when the token bucket refilled).
    refilled_at_ms: u64,
}

/// What the model knows of an allocation that ended before its grant expired.
#[derive(Clone, Copy, Debug)]
struct EndedShadow {
    until_ms: u64,
    bytes: u64,
    released: bool,
    created_at_ms: u64,
    creations: u64,
}

/// The relay under test and a shadow model of what its docs promise.
struct Harness {
    relay: Relay,
    /// The relay's listen addresses; never empty.
    listen: Vec<SocketAddr>,
    keys: Vec<GrantKey>,
    limits: RelayLimits,
    model: HashMap<[u8; 16], Shadow>,
    ended: HashMap<[u8; 16], EndedShadow>,
    now_ms: u64,
}

impl Harness {
    fn new(input: &Input) -> Self {
        let limits = RelayLimits {
            max_allocations: usize::from(input.max_allocations % 4) + 1,
            max_allocations_per_user: usize::from(input.max_allocations_per_user % 4) + 1,
            // The aggregate rate is the unit tests' business: out of the way here.
            max_bytes_per_second: u64::MAX,
            idle_timeout_ms: u64::from(input.idle_timeout_ms),
            release_memory_ms: 600_000,
        };
        let keys = keys()[..2].to_vec();
        let mut listen: Vec<SocketAddr> = LISTEN
            .iter()
            .enumerate()
            .filter(|(i, _)| input.listen & (1 << i) != 0)
            .map(|(_, a)| a.parse().expect("a literal address"))
            .collect();
        if listen.is_empty() {
            listen.push(LISTEN[0].parse().expect("a literal address"));
        }
        let mut relay = Relay::new(keys.clone(), limits);
        relay.set_listen_addresses(listen.clone());
        Self {
            relay,
            listen,
            keys,
            limits,
            model: HashMap::new(),
            ended: HashMap::new(),
            now_ms: START_MS,
        }
    }

    fn step(&mut self, step: &Step) {
        let (from, at, datagram) = match step {
            Step::Wait { ms } => {
                self.now_ms += u64::from(*ms);
                return;
            }
            Step::Expire => {
                self.expire();
                return;
            }
            Step::Bind {
                from,
                at,
                transaction,
                respond_from,
            } => (
                source(*from),
                *at,
                encode(&Message::BindingRequest {
                    transaction: *transaction,
                    respond_from: match respond_from % 3 {
                        0 => RespondFrom::Same,
                        1 => RespondFrom::OtherAddress,
                        _ => RespondFrom::OtherPort,
                    },
                }),
            ),
            Step::Allocate {
                from,
                at,
                side,
                grant,
            } => (
                source(*from),
                *at,
                encode(&Message::Allocate {
                    side: *side,
                    grant: &sign(grant, self.now_ms),
                }),
            ),
            Step::Data {
                from,
                at,
                allocation,
                len,
                fill,
            } => (
                source(*from),
                *at,
                encode(&Message::Data {
                    allocation: allocation_id(*allocation),
                    payload: &vec![*fill; usize::from(*len) % 1500],
                }),
            ),
            Step::Raw { from, at, bytes } => (source(*from), *at, bytes.clone()),
            Step::Release {
                from,
                at,
                allocation,
                key,
                age_ms,
                tamper,
            } => {
                let keys = keys();
                let key = &keys[usize::from(*key).min(2)];
                let issued = self.now_ms.saturating_add_signed(-i64::from(*age_ms));
                let mut release = sign_release(key, allocation_id(*allocation), issued);
                if let Some((at, bit)) = tamper {
                    release[usize::from(*at) % release.len()] ^= 1 << (bit % 8);
                }
                (
                    source(*from),
                    *at,
                    encode(&Message::Release { release: &release }),
                )
            }
        };
        let local = self.listen[usize::from(at) % self.listen.len()];
        self.datagram(local, from, &datagram);
    }

    fn expire(&mut self) {
        let (now, idle) = (self.now_ms, self.limits.idle_timeout_ms);
        self.relay.expire(now);
        let over: Vec<[u8; 16]> = self
            .model
            .iter()
            .filter(|(_, s)| now >= s.grant.expires_at_ms || now - s.active_at_ms >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in over {
            self.end(id, false);
        }
        self.ended.retain(|_, e| now < e.until_ms);
        assert_eq!(self.relay.allocation_count(), self.model.len(), "expire");
    }

    /// The model's side of the relay ending allocation `id`.
    fn end(&mut self, id: [u8; 16], released: bool) {
        let Some(shadow) = self.model.remove(&id) else {
            return;
        };
        if self.now_ms < shadow.grant.expires_at_ms {
            self.remember(
                id,
                EndedShadow {
                    until_ms: shadow.grant.expires_at_ms,
                    bytes: shadow.bytes,
                    released,
                    created_at_ms: shadow.created_at_ms,
                    creations: shadow.creations,
                },
            );
        }
    }

    /// The model's side of the relay remembering an ended allocation (the same bound and
    /// eviction order as the relay's).
    fn remember(&mut self, id: [u8; 16], ended: EndedShadow) {
        let now = self.now_ms;
        if !self.ended.contains_key(&id) && self.ended.len() >= self.limits.max_allocations {
            self.ended.retain(|_, e| now < e.until_ms);
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

    fn release(
        &mut self,
        release: &[u8; rally_relay::grant::RELEASE_BYTES],
        out: Option<&Outgoing>,
        before: Counters,
        after: Counters,
    ) {
        assert_eq!(out, None, "a release is never answered");
        let Ok(id) = verify_release(release, &self.keys, self.now_ms) else {
            assert_eq!(
                after.refused_grants,
                before.refused_grants + 1,
                "a bad release"
            );
            return;
        };
        assert_eq!(after.released, before.released + 1);
        if self.model.contains_key(&id) {
            self.end(id, true);
        } else {
            let known = self.ended.get(&id).copied();
            self.remember(
                id,
                EndedShadow {
                    until_ms: known
                        .map_or(self.now_ms + self.limits.release_memory_ms, |e| e.until_ms),
                    bytes: known.map_or(0, |e| e.bytes),
                    released: true,
                    created_at_ms: known.map_or(self.now_ms, |e| e.created_at_ms),
                    creations: known.map_or(0, |e| e.creations),
                },
            );
        }
    }

    fn datagram(&mut self, local: SocketAddr, from: SocketAddr, datagram: &[u8]) {
        let before = self.relay.counters();
        let out = self.relay.handle(local, from, datagram, self.now_ms);
        let after = self.relay.counters();
        if let Some(out) = &out {
            if !matches!(wire::decode(datagram), Ok(Message::BindingRequest { .. })) {
                assert_eq!(
                    out.from, local,
                    "answered or forwarded from where it arrived"
                );
            }
            assert!(
                out.datagram.len() <= datagram.len(),
                "amplification: {} bytes answered with {}",
                datagram.len(),
                out.datagram.len()
            );
            assert!(wire::decode(&out.datagram).is_ok(), "undecodable answer");
        }
        match wire::decode(datagram) {
            Ok(Message::BindingRequest {
                transaction,
                respond_from,
            }) => {
                let Some(out) = out else {
                    assert!(
                        !self.can_answer(local, respond_from),
                        "{respond_from:?} unanswered on {local} of {:?}",
                        self.listen
                    );
                    assert_eq!(
                        after.bindings_unanswerable,
                        before.bindings_unanswerable + 1
                    );
                    self.check_bounds(before, after);
                    return;
                };
                self.check_answering_address(local, respond_from, out.from);
                assert_eq!(out.to, from);
                assert_eq!(
                    wire::decode(&out.datagram),
                    Ok(Message::BindingResponse {
                        transaction,
                        address: from
                    })
                );
                assert_eq!(after.bindings, before.bindings + 1);
            }
            Ok(Message::Allocate { side, grant }) => self.allocate(from, side, grant, out.as_ref()),
            Ok(Message::Release { release }) => self.release(release, out.as_ref(), before, after),
            Ok(Message::Data {
                allocation,
                payload,
            }) => self.forward(
                local,
                from,
                allocation,
                payload.len(),
                datagram,
                out.as_ref(),
            ),
            Ok(_) | Err(_) => {
                assert_eq!(out, None, "junk or an answer is never answered");
                assert_eq!(after.dropped_malformed, before.dropped_malformed + 1);
            }
        }
        self.check_bounds(before, after);
    }

    fn check_bounds(&self, before: Counters, after: Counters) {
        assert!(self.relay.allocation_count() <= self.limits.max_allocations);
        assert_eq!(self.relay.allocation_count(), self.model.len());
        // One datagram moves one counter by one (forwarding also counts its bytes).
        let total = |c: Counters| {
            c.bindings
                + c.bindings_unanswerable
                + c.allocations
                + c.forwarded
                + c.dropped_malformed
                + c.refused_grants
                + c.dropped_unauthorised
                + c.dropped_over_limit
                + c.refused_user_quota
                + c.released
        };
        assert_eq!(after.dropped_over_aggregate, 0, "no aggregate rate here");
        assert!(self.ended.len() <= self.limits.max_allocations);
        let moved = total(after) - total(before);
        assert!(moved <= 1, "{before:?} -> {after:?}");
    }

    /// Listen addresses of `local`'s family other than `local` itself.
    fn others(&self, local: SocketAddr) -> impl Iterator<Item = SocketAddr> + Clone + '_ {
        self.listen
            .iter()
            .copied()
            .filter(move |a| a.is_ipv4() == local.is_ipv4() && *a != local)
    }

    /// Whether the relay has an address to answer `respond_from` on `local` from.
    fn can_answer(&self, local: SocketAddr, respond_from: RespondFrom) -> bool {
        let mut others = self.others(local);
        match respond_from {
            RespondFrom::Same => true,
            RespondFrom::OtherAddress => others.any(|a| {
                a.ip() != local.ip() && !a.ip().is_unspecified() && !local.ip().is_unspecified()
            }),
            RespondFrom::OtherPort => others.any(|a| a.ip() == local.ip()),
        }
    }

    fn check_answering_address(
        &self,
        local: SocketAddr,
        respond_from: RespondFrom,
        answered: SocketAddr,
    ) {
        match respond_from {
            RespondFrom::Same => assert_eq!(answered, local),
            RespondFrom::OtherAddress => {
                assert!(self.others(local).any(|a| a == answered), "{answered}");
                assert_ne!(answered.ip(), local.ip());
                assert!(!answered.ip().is_unspecified() && !local.ip().is_unspecified());
                let another_port_exists = self.others(local).any(|a| {
                    a.ip() != local.ip() && !a.ip().is_unspecified() && a.port() != local.port()
                });
                if another_port_exists {
                    assert_ne!(answered.port(), local.port(), "another port was available");
                }
            }
            RespondFrom::OtherPort => {
                assert!(self.others(local).any(|a| a == answered), "{answered}");
                assert_eq!(answered.ip(), local.ip());
                assert_ne!(answered.port(), local.port());
            }
        }
    }

    fn allocate(
        &mut self,
        from: SocketAddr,
        side: u8,
        grant: &[u8; GRANT_BYTES],
        out: Option<&Outgoing>,
    ) {
        let Ok(grant) = Grant::verify(grant, &self.keys, self.now_ms) else {
            assert_eq!(out, None, "an unverified grant gets no answer");
            return;
        };
        let id = grant.allocation;
        let out = out.expect("a verified grant is answered");
        assert_eq!(out.to, from);
        let answer = wire::decode(&out.datagram).expect("decodes");
        let refused = |reason| Message::Refused {
            allocation: id,
            reason,
        };
        if side != grant.side {
            assert_eq!(answer, refused(RefusedReason::WrongSide));
            return;
        }
        if !self.model.contains_key(&id) {
            let ended = self.ended.get(&id).copied();
            if ended.is_some_and(|e| e.released) {
                assert_eq!(answer, refused(RefusedReason::Released));
                return;
            }
            if self.model.len() >= self.limits.max_allocations {
                assert_eq!(answer, refused(RefusedReason::Full));
                return;
            }
            let held = |user: [u8; 16]| {
                self.model
                    .values()
                    .filter(|s| s.grant.user_a == user || s.grant.user_b == user)
                    .count()
            };
            if held(grant.user_a) >= self.limits.max_allocations_per_user
                || held(grant.user_b) >= self.limits.max_allocations_per_user
            {
                assert_eq!(answer, refused(RefusedReason::UserQuota));
                return;
            }
            self.ended.remove(&id);
            let now = self.now_ms;
            self.model.insert(
                id,
                Shadow {
                    grant,
                    sides: [None, None],
                    bytes: ended.map_or(0, |e| e.bytes),
                    created_at_ms: ended.map_or(now, |e| e.created_at_ms),
                    creations: ended.map_or(0, |e| e.creations) + 1,
                    active_at_ms: now,
                    refilled_at_ms: now,
                },
            );
        }
        let shadow = self.model.get_mut(&id).expect("inserted above");
        let slot = &mut shadow.sides[usize::from(side)];
        match slot {
            Some(bound) if *bound != from => assert_eq!(
                answer,
                Message::Refused {
                    allocation: id,
                    reason: RefusedReason::SideTaken
                },
                "{from} took a side bound to {bound}"
            ),
            _ => {
                *slot = Some(from);
                shadow.active_at_ms = self.now_ms;
                if grant.user_a == shadow.grant.user_a
                    && grant.user_b == shadow.grant.user_b
                    && grant.expires_at_ms > shadow.grant.expires_at_ms
                {
                    shadow.grant.expires_at_ms = grant.expires_at_ms;
                }
                assert_eq!(
                    answer,
                    Message::Allocated {
                        allocation: id,
                        expires_at_ms: shadow.grant.expires_at_ms
                    }
                );
            }
        }
    }

    fn forward(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        id: [u8; 16],
        size: usize,
        datagram: &[u8],
        out: Option<&Outgoing>,
    ) {
        let now = self.now_ms;
        let Some(shadow) = self.model.get_mut(&id) else {
            assert_eq!(out, None, "Data for an unknown allocation");
            return;
        };
        let to = match shadow.sides {
            [Some(a), Some(b)] if a == from => b,
            [Some(a), Some(b)] if b == from => a,
            _ => {
                assert_eq!(out, None, "Data from {from}, not a bound side");
                return;
            }
        };
        if now >= shadow.grant.expires_at_ms {
            assert_eq!(out, None, "Data after the grant's expiry");
            self.model.remove(&id);
            return;
        }
        let size = size as u64;
        let quiet_for_a_second = now - shadow.refilled_at_ms >= 1000;
        shadow.refilled_at_ms = now;
        let within_cap = shadow.bytes + size <= shadow.grant.byte_cap;
        let Some(out) = out else {
            let rate = u64::from(shadow.grant.rate_bytes_per_sec);
            assert!(
                !within_cap || (size > 0 && !(quiet_for_a_second && size <= rate)),
                "dropped {size} bytes within the cap after a full refill"
            );
            return;
        };
        assert!(within_cap, "forwarded over the byte cap");
        assert_eq!(
            out,
            &Outgoing {
                from: local,
                to,
                datagram: datagram.to_vec()
            }
        );
        shadow.bytes += size;
        shadow.active_at_ms = now;
        // A full bucket at each creation plus the refills since the first: rate × (1 s per
        // creation + elapsed), with one byte of slack per creation for the floating-point bucket.
        let rate = u128::from(shadow.grant.rate_bytes_per_sec);
        let creations = u128::from(shadow.creations);
        let budget =
            rate * (1000 * creations + u128::from(now - shadow.created_at_ms)) + 1000 * creations;
        assert!(
            u128::from(shadow.bytes) * 1000 <= budget,
            "{} bytes forwarded in {} ms at {rate} B/s",
            shadow.bytes,
            now - shadow.created_at_ms
        );
    }
}

fn encode(message: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode(message, &mut out);
    out
}

fuzz_target!(|input: Input| {
    let mut harness = Harness::new(&input);
    for step in &input.steps {
        harness.step(step);
    }
    harness.expire();
});

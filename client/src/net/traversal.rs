//! How one connection attempt gets through NATs, as a sans-IO state machine: which candidate to
//! punch or dial when, whether to run birthday probing, when to fall back to the relay, and when
//! to give up and why. The driver's attempt task carries out its [`Step`]s and feeds back what
//! happened; nothing here touches a socket or a clock, so timers, retries, pair ordering and the
//! probing budget are unit- and property-tested.
//!
//! The rules (DESIGN.md, NAT-LAB.md):
//! - Exactly one side dials (the broker's PunchStart role: the stricter NAT, else the lower
//!   user id). The acceptor sends raw punch packets to every candidate of the dialer, so that its
//!   own NAT lets the dialer's handshake in, and accepts the handshake from whatever address it
//!   comes (a symmetric NAT's packets come from a port no reflector saw: peer-reflexive).
//! - The dialer dials the acceptor's candidates in priority order, one every `dial_stagger`,
//!   never two at once to the same address; the first handshake that completes with the pinned
//!   certificate wins.
//! - Symmetric dialer, moderate acceptor: birthday probing. The dialer opens many sockets that
//!   each send toward the acceptor's public address (many NAT mappings); the acceptor probes
//!   random ports of the dialer's public IP, paced; the socket a probe reaches dials.
//! - The relay: the dialer asks for a grant when the direct phase ends (at once when both NATs
//!   are symmetric, or when a side always relays); both sides open their relay path, and the
//!   dialer dials through it. Never, when this side's policy says so.
//! - A relayed connection can keep trying the direct candidates, a round every
//!   `upgrade_interval` (`upgrade_rounds` of them), so the driver can move it to a direct path.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Whether this client's connections may go through the relay (Epic Online Services' relay
/// control).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayPolicy {
    /// Direct paths only; a pair with none fails.
    Never,
    /// Direct when possible, the relay when no direct path opens in time.
    #[default]
    Fallback,
    /// Always through the relay: peers never learn this client's addresses.
    Always,
}

/// How restrictive a NAT is, as the broker's role rule and the report see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NatClass {
    /// Not known (no reflector answered).
    Unknown,
    /// No NAT, or one that maps and filters independently of the destination (full cone).
    Open,
    /// One mapping for every destination, but filtering by address or address and port.
    Moderate,
    /// A new mapping per destination (symmetric): no reflector can predict its ports.
    Strict,
}

/// The knobs of traversal. The defaults suit the internet; tests shorten them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraversalConfig {
    /// How long direct attempts run before the relay is asked for (default 3 s).
    pub direct_timeout: Duration,
    /// How often the acceptor punches each candidate during the direct phase (default 100 ms).
    pub punch_interval: Duration,
    /// Gap between starting dials of successive candidates (default 100 ms).
    pub dial_stagger: Duration,
    /// Sockets the symmetric side opens for birthday probing; 0 turns probing off (default 256).
    pub birthday_sockets: u16,
    /// Probes the other side sends to random ports (default 1024).
    pub birthday_probes: u16,
    /// Probes per second (default 500).
    pub birthday_probes_per_second: u32,
    /// While relayed, how often a round of direct attempts runs (default 5 s).
    pub upgrade_interval: Duration,
    /// Rounds of direct attempts while relayed (default 12: a minute); a direct connection
    /// found then replaces the relayed one without losing or reordering reliable packets.
    pub upgrade_rounds: u32,
}

impl Default for TraversalConfig {
    fn default() -> Self {
        Self {
            direct_timeout: Duration::from_secs(3),
            punch_interval: Duration::from_millis(100),
            dial_stagger: Duration::from_millis(100),
            birthday_sockets: 256,
            birthday_probes: 1024,
            birthday_probes_per_second: 500,
            upgrade_interval: Duration::from_secs(5),
            upgrade_rounds: 12,
        }
    }
}

impl TraversalConfig {
    /// Most birthday sockets accepted (each is a file descriptor).
    pub const MAX_BIRTHDAY_SOCKETS: u16 = 1024;
    /// Most birthday probes accepted per attempt.
    pub const MAX_BIRTHDAY_PROBES: u16 = 8192;

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.direct_timeout.is_zero()
            || self.punch_interval.is_zero()
            || self.upgrade_interval.is_zero()
        {
            return Err(
                "direct_timeout, punch_interval and upgrade_interval must not be zero".into(),
            );
        }
        if self.birthday_sockets > Self::MAX_BIRTHDAY_SOCKETS {
            return Err(format!(
                "birthday_sockets {} is above {}",
                self.birthday_sockets,
                Self::MAX_BIRTHDAY_SOCKETS
            ));
        }
        if self.birthday_probes > Self::MAX_BIRTHDAY_PROBES {
            return Err(format!(
                "birthday_probes {} is above {}",
                self.birthday_probes,
                Self::MAX_BIRTHDAY_PROBES
            ));
        }
        if self.birthday_probes_per_second == 0 || self.birthday_probes_per_second > 10_000 {
            return Err("birthday_probes_per_second must be 1 to 10000".into());
        }
        Ok(())
    }

    /// How long birthday probing runs.
    fn birthday_duration(&self) -> Duration {
        Duration::from_secs_f64(
            f64::from(self.birthday_probes) / f64::from(self.birthday_probes_per_second.max(1)),
        )
    }
}

/// What the attempt knows when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Whether this side dials.
    pub dialer: bool,
    /// The peer's direct candidates, highest priority first.
    pub candidates: Vec<SocketAddr>,
    /// Which of them are server-reflexive (its public addresses).
    pub reflexive: Vec<SocketAddr>,
    /// This side's NAT.
    pub ours: NatClass,
    /// The peer's NAT.
    pub theirs: NatClass,
    /// This side's relay policy.
    pub policy: RelayPolicy,
    /// Whether the server offers a relay.
    pub relay_available: bool,
    /// Whether the pair already holds a relay grant (a side that always relays).
    pub granted: bool,
}

/// Something the driver must do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send a raw punch datagram from the QUIC port to this address.
    Punch(SocketAddr),
    /// Dial this address from the QUIC port (report the outcome).
    Dial(SocketAddr),
    /// Open this many sockets, each sending one packet to each of these addresses, and dial
    /// from the first one a packet from the peer reaches (birthday probing, symmetric side).
    OpenBirthdaySockets {
        /// How many sockets.
        count: u16,
        /// The peer's public addresses.
        toward: Vec<SocketAddr>,
    },
    /// Send a birthday probe from the QUIC port to this address.
    Probe(SocketAddr),
    /// Ask the broker for a relay grant (the peer gets its own).
    RequestRelay,
    /// Open this side's relay path with the grant held (allocate at the relay).
    OpenRelay,
    /// Dial the peer through the relay path.
    DialRelay,
    /// Stop: the attempt failed.
    GiveUp(Failure),
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No direct path opened and this side's policy forbids the relay.
    NoDirectPath,
    /// No direct path opened and the server has no relay.
    NoRelay,
    /// The relay could not be used (the broker or the relay refused: the reason says why).
    RelayRefused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoDirectPath => write!(
                f,
                "no direct path opened and this client's relay policy is Never"
            ),
            Self::NoRelay => write!(f, "no direct path opened and the server has no relay"),
            Self::RelayRefused(reason) => write!(f, "the relay could not be used: {reason}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelayPhase {
    /// Not to be used (policy Never, or no relay).
    Off,
    /// The dialer asks at this time; the acceptor waits for a grant.
    At(Instant),
    /// Asked; waiting for the grant.
    Requested,
    /// Grant held; the relay path is being opened.
    Opening,
    /// The path is open and the dialer dialed through it (or the acceptor waits for that).
    Open,
    /// Refused or failed.
    Failed,
}

#[derive(Debug, Clone)]
enum Birthday {
    Off,
    /// Symmetric side: open the sockets once.
    Hard {
        opened: bool,
    },
    /// The other side: probe random ports of these IPs.
    Easy {
        ips: Vec<IpAddr>,
        sent: u16,
        used: HashSet<(IpAddr, u16)>,
        rng: u64,
    },
}

/// Where the attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Punching, dialing, probing, maybe relaying.
    Connecting,
    /// Connected through the relay; direct rounds continue.
    Upgrading,
    /// Over: connected directly, upgraded, given up, or out of upgrade rounds.
    Done,
}

/// One attempt to connect to one peer.
#[derive(Debug, Clone)]
pub struct Traversal {
    config: TraversalConfig,
    plan: Plan,
    start: Instant,
    stage: Stage,
    /// Punch targets (acceptor): every candidate; empty when this side hides its address.
    punch: Vec<SocketAddr>,
    next_punch: Instant,
    /// Dial order (dialer), the next index, and when it may start.
    next_dial: usize,
    next_dial_at: Instant,
    in_flight: HashSet<SocketAddr>,
    direct_until: Instant,
    birthday: Birthday,
    relay: RelayPhase,
    rounds_left: u32,
    next_round: Option<Instant>,
}

/// The payload of a punch packet (a QUIC endpoint drops it).
pub const PUNCH_PAYLOAD: &[u8] = b"rally-punch/1";
/// The payload of a birthday probe.
pub const PROBE_PAYLOAD: &[u8] = b"rally-probe/1";

impl Traversal {
    /// Starts an attempt at `start` (the broker's common start time). `seed` drives the random
    /// probe ports.
    pub fn new(config: TraversalConfig, plan: Plan, start: Instant, seed: u64) -> Self {
        let hides = plan.policy == RelayPolicy::Always;
        let relay_allowed = plan.policy != RelayPolicy::Never && plan.relay_available;
        let both_strict = plan.ours == NatClass::Strict && plan.theirs == NatClass::Strict;
        let birthday = if hides || config.birthday_sockets == 0 || config.birthday_probes == 0 {
            Birthday::Off
        } else if plan.dialer
            && plan.ours == NatClass::Strict
            && plan.theirs == NatClass::Moderate
            && !plan.reflexive.is_empty()
        {
            Birthday::Hard { opened: false }
        } else if !plan.dialer
            && plan.theirs == NatClass::Strict
            && plan.ours == NatClass::Moderate
            && !plan.reflexive.is_empty()
        {
            let mut ips: Vec<IpAddr> = plan.reflexive.iter().map(SocketAddr::ip).collect();
            ips.dedup();
            Birthday::Easy {
                ips,
                sent: 0,
                used: HashSet::new(),
                rng: seed | 1,
            }
        } else {
            Birthday::Off
        };
        let mut direct_for = config.direct_timeout;
        if !matches!(birthday, Birthday::Off) {
            direct_for = direct_for.max(config.birthday_duration() + config.direct_timeout / 2);
        }
        let no_direct = hides || plan.candidates.is_empty();
        let relay_at = if no_direct || plan.granted {
            start
        } else if both_strict {
            // No direct path can open between two symmetric NATs (unless they share a LAN,
            // which the host candidates still try): do not make the players wait.
            start + config.dial_stagger * 2
        } else {
            start + direct_for
        };
        let relay = if relay_allowed {
            RelayPhase::At(relay_at)
        } else {
            RelayPhase::Off
        };
        let punch = if hides || plan.dialer {
            Vec::new()
        } else {
            plan.candidates.clone()
        };
        // The acceptor's first punch must leave before the dialer's first handshake packet
        // reaches its NAT: the dialer starts half a punch interval later.
        let first_dial = start + config.punch_interval / 2;
        Self {
            direct_until: if no_direct { start } else { start + direct_for },
            next_punch: start,
            next_dial: 0,
            next_dial_at: first_dial,
            in_flight: HashSet::new(),
            stage: Stage::Connecting,
            rounds_left: config.upgrade_rounds,
            next_round: None,
            punch,
            birthday,
            relay,
            config,
            plan,
            start,
        }
    }

    /// Where the attempt is.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Whether this side may send anything directly to the peer.
    fn direct_allowed(&self) -> bool {
        self.plan.policy != RelayPolicy::Always
    }

    /// What to do at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<Step> {
        let mut steps = Vec::new();
        match self.stage {
            Stage::Done => {}
            Stage::Connecting => {
                self.poll_direct(now, &mut steps);
                self.poll_birthday(now, &mut steps);
                self.poll_relay(now, &mut steps);
                self.check_exhausted(now, &mut steps);
            }
            Stage::Upgrading => self.poll_upgrade(now, &mut steps),
        }
        steps
    }

    fn poll_direct(&mut self, now: Instant, steps: &mut Vec<Step>) {
        if now >= self.direct_until || !self.direct_allowed() {
            return;
        }
        if !self.punch.is_empty() && now >= self.next_punch {
            steps.extend(self.punch.iter().copied().map(Step::Punch));
            self.next_punch = later(self.next_punch, self.config.punch_interval, now);
        }
        if self.plan.dialer {
            while self.next_dial < self.plan.candidates.len() && now >= self.next_dial_at {
                let candidate = self.plan.candidates[self.next_dial];
                self.next_dial += 1;
                if self.in_flight.insert(candidate) {
                    steps.push(Step::Dial(candidate));
                    self.next_dial_at += self.config.dial_stagger;
                }
            }
        }
    }

    fn poll_birthday(&mut self, now: Instant, steps: &mut Vec<Step>) {
        if now < self.start || now >= self.direct_until {
            return;
        }
        let config = &self.config;
        match &mut self.birthday {
            Birthday::Off => {}
            Birthday::Hard { opened } => {
                if !*opened {
                    *opened = true;
                    steps.push(Step::OpenBirthdaySockets {
                        count: config.birthday_sockets,
                        toward: self.plan.reflexive.clone(),
                    });
                }
            }
            Birthday::Easy {
                ips,
                sent,
                used,
                rng,
            } => {
                let elapsed = now.duration_since(self.start).as_nanos();
                let due = elapsed * u128::from(config.birthday_probes_per_second) / NANOS + 1;
                let due = due.min(u128::from(config.birthday_probes));
                while u128::from(*sent) < due && !ips.is_empty() {
                    let ip = ips[usize::from(*sent) % ips.len()];
                    // A port not probed yet; bounded tries (the budget is far below the range).
                    let mut port = random_port(rng);
                    for _ in 0..16 {
                        if !used.contains(&(ip, port)) {
                            break;
                        }
                        port = random_port(rng);
                    }
                    used.insert((ip, port));
                    *sent += 1;
                    steps.push(Step::Probe(SocketAddr::new(ip, port)));
                }
            }
        }
    }

    fn poll_relay(&mut self, now: Instant, steps: &mut Vec<Step>) {
        if let RelayPhase::At(at) = self.relay
            && now >= at
            && self.plan.dialer
        {
            if self.plan.granted {
                self.relay = RelayPhase::Opening;
                steps.push(Step::OpenRelay);
            } else {
                self.relay = RelayPhase::Requested;
                steps.push(Step::RequestRelay);
            }
        }
        if let RelayPhase::At(_) = self.relay
            && !self.plan.dialer
            && self.plan.granted
        {
            self.relay = RelayPhase::Opening;
            steps.push(Step::OpenRelay);
        }
    }

    /// Gives up when nothing is left that could connect.
    fn check_exhausted(&mut self, now: Instant, steps: &mut Vec<Step>) {
        if now < self.direct_until || !self.in_flight.is_empty() {
            return;
        }
        let failure = match self.relay {
            RelayPhase::Off if !self.plan.relay_available => Failure::NoRelay,
            RelayPhase::Off => Failure::NoDirectPath,
            _ => return,
        };
        self.stage = Stage::Done;
        steps.push(Step::GiveUp(failure));
    }

    fn poll_upgrade(&mut self, now: Instant, steps: &mut Vec<Step>) {
        let Some(at) = self.next_round else {
            return;
        };
        if now < at {
            return;
        }
        if self.rounds_left == 0 {
            self.stage = Stage::Done;
            return;
        }
        self.rounds_left -= 1;
        self.next_round = Some(later(at, self.config.upgrade_interval, now));
        if self.plan.dialer {
            for candidate in &self.plan.candidates {
                if self.in_flight.insert(*candidate) {
                    steps.push(Step::Dial(*candidate));
                }
            }
        } else {
            steps.extend(self.plan.candidates.iter().copied().map(Step::Punch));
        }
    }

    /// When `poll` has something to do next (`None`: only an input can change anything).
    pub fn next_wakeup(&self) -> Option<Instant> {
        match self.stage {
            Stage::Done => None,
            Stage::Upgrading => self.next_round,
            Stage::Connecting => {
                let mut next: Option<Instant> = None;
                let mut consider = |at: Instant| {
                    next = Some(next.map_or(at, |n| n.min(at)));
                };
                if self.direct_allowed() {
                    if !self.punch.is_empty() && self.next_punch < self.direct_until {
                        consider(self.next_punch);
                    }
                    if self.plan.dialer && self.next_dial < self.plan.candidates.len() {
                        consider(self.next_dial_at);
                    }
                }
                match &self.birthday {
                    Birthday::Hard { opened: false } => consider(self.start),
                    Birthday::Easy { sent, .. } if *sent < self.config.birthday_probes => {
                        let next_probe =
                            self.start + probe_time(*sent, self.config.birthday_probes_per_second);
                        if next_probe < self.direct_until {
                            consider(next_probe);
                        }
                    }
                    _ => {}
                }
                // Only the dialer acts at the relay time; the acceptor waits for a grant.
                if let RelayPhase::At(at) = self.relay
                    && self.plan.dialer
                {
                    consider(at);
                }
                if self.in_flight.is_empty() && matches!(self.relay, RelayPhase::Off) {
                    consider(self.direct_until);
                }
                next
            }
        }
    }

    /// A dial to `candidate` failed (or timed out).
    pub fn on_dial_failed(&mut self, candidate: SocketAddr) {
        self.in_flight.remove(&candidate);
    }

    /// A relay grant arrived (asked for, or sent by the broker).
    pub fn on_grant(&mut self) -> Vec<Step> {
        self.plan.granted = true;
        match self.relay {
            RelayPhase::At(_) | RelayPhase::Requested if self.stage == Stage::Connecting => {
                self.relay = RelayPhase::Opening;
                vec![Step::OpenRelay]
            }
            _ => Vec::new(),
        }
    }

    /// The relay path is open (allocated at the relay).
    pub fn on_relay_open(&mut self) -> Vec<Step> {
        if self.relay != RelayPhase::Opening || self.stage != Stage::Connecting {
            return Vec::new();
        }
        self.relay = RelayPhase::Open;
        if self.plan.dialer {
            vec![Step::DialRelay]
        } else {
            Vec::new()
        }
    }

    /// The relay was refused (grant, allocation or the dial through it failed).
    pub fn on_relay_failed(&mut self, reason: String) -> Vec<Step> {
        if self.stage != Stage::Connecting || self.relay == RelayPhase::Failed {
            return Vec::new();
        }
        self.relay = RelayPhase::Failed;
        self.stage = Stage::Done;
        vec![Step::GiveUp(Failure::RelayRefused(reason))]
    }

    /// A connection came up: directly (the attempt is over) or through the relay (direct
    /// rounds continue, unless this side always relays).
    pub fn on_connected(&mut self, relayed: bool, now: Instant) {
        if relayed
            && self.direct_allowed()
            && !self.plan.candidates.is_empty()
            && self.config.upgrade_rounds > 0
        {
            self.stage = Stage::Upgrading;
            self.next_round = Some(now + self.config.upgrade_interval);
        } else {
            self.stage = Stage::Done;
        }
    }
}

const NANOS: u128 = 1_000_000_000;

/// When the `n`-th probe (from 0) is due: `n / rate` seconds after the start, rounded up.
fn probe_time(n: u16, rate: u32) -> Duration {
    let nanos = (u128::from(n) * NANOS).div_ceil(u128::from(rate.max(1)));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The next time of a periodic event after `at`, skipping missed periods.
fn later(at: Instant, period: Duration, now: Instant) -> Instant {
    let mut next = at + period;
    if next <= now {
        next = now + period;
    }
    next
}

/// A random port in 1024..=65535 (xorshift64).
fn random_port(state: &mut u64) -> u16 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    let span = u64::from(u16::MAX - 1024) + 1;
    1024 + u16::try_from(*state % span).unwrap_or(0)
}

#[cfg(test)]
mod tests;

use super::*;
use proptest::prelude::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn plan(dialer: bool) -> Plan {
    Plan {
        dialer,
        candidates: vec![addr("10.1.0.2:4000"), addr("100.64.0.11:4000")],
        reflexive: vec![addr("100.64.0.11:4000")],
        ours: NatClass::Moderate,
        theirs: NatClass::Moderate,
        policy: RelayPolicy::Fallback,
        relay_available: true,
        granted: false,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Polls at every wakeup until `until`, collecting (time offset, step).
fn run(t: &mut Traversal, start: Instant, until: Duration) -> Vec<(Duration, Step)> {
    let mut out = Vec::new();
    let mut now = start;
    for _ in 0..100_000 {
        for step in t.poll(now) {
            out.push((now - start, step));
        }
        match t.next_wakeup() {
            Some(next) if next <= start + until => now = next.max(now),
            _ => break,
        }
    }
    out
}

#[test]
fn the_acceptor_punches_every_candidate_each_interval_until_the_direct_phase_ends() {
    let start = Instant::now();
    let mut t = Traversal::new(TraversalConfig::default(), plan(false), start, 1);
    let steps = run(&mut t, start, Duration::from_secs(10));
    let punches: Vec<_> = steps
        .iter()
        .filter(|(_, s)| matches!(s, Step::Punch(_)))
        .collect();
    // 3 s of 100 ms rounds, two candidates each.
    assert_eq!(punches.len(), 60, "{punches:?}");
    assert!(punches.iter().all(|(at, _)| *at < Duration::from_secs(3)));
    assert!(
        !steps
            .iter()
            .any(|(_, s)| matches!(s, Step::Dial(_) | Step::RequestRelay)),
        "the acceptor never dials and never asks for the relay"
    );
}

#[test]
fn the_dialer_dials_candidates_in_priority_order_staggered_and_once_each() {
    let start = Instant::now();
    let mut p = plan(true);
    p.candidates.push(addr("10.1.0.2:4000"));
    let mut t = Traversal::new(TraversalConfig::default(), p, start, 1);
    let steps = run(&mut t, start, ms(2500));
    let dials: Vec<_> = steps
        .iter()
        .filter_map(|(at, s)| match s {
            Step::Dial(a) => Some((*at, *a)),
            _ => None,
        })
        .collect();
    assert_eq!(
        dials,
        vec![
            (ms(50), addr("10.1.0.2:4000")),
            (ms(150), addr("100.64.0.11:4000"))
        ],
        "a duplicate candidate is not dialed twice"
    );
    assert!(!steps.iter().any(|(_, s)| matches!(s, Step::Punch(_))));
}

#[test]
fn the_dialer_asks_for_the_relay_when_the_direct_phase_ends_and_dials_through_it() {
    let start = Instant::now();
    let mut t = Traversal::new(TraversalConfig::default(), plan(true), start, 1);
    let steps = run(&mut t, start, Duration::from_secs(10));
    assert_eq!(
        steps.last(),
        Some(&(Duration::from_secs(3), Step::RequestRelay))
    );
    assert_eq!(t.on_grant(), vec![Step::OpenRelay]);
    assert_eq!(t.on_relay_open(), vec![Step::DialRelay]);
    assert!(t.on_relay_open().is_empty(), "dials through the relay once");
}

#[test]
fn the_acceptor_opens_its_relay_path_when_a_grant_arrives_and_waits_for_the_dial() {
    let start = Instant::now();
    let mut t = Traversal::new(TraversalConfig::default(), plan(false), start, 1);
    run(&mut t, start, Duration::from_secs(5));
    assert_eq!(t.on_grant(), vec![Step::OpenRelay]);
    assert!(t.on_relay_open().is_empty());
    assert_eq!(t.stage(), Stage::Connecting);
}

#[test]
fn two_symmetric_nats_ask_for_the_relay_at_once() {
    let start = Instant::now();
    let mut p = plan(true);
    p.ours = NatClass::Strict;
    p.theirs = NatClass::Strict;
    let mut t = Traversal::new(TraversalConfig::default(), p, start, 1);
    let steps = run(&mut t, start, ms(500));
    assert!(steps.contains(&(ms(200), Step::RequestRelay)), "{steps:?}");
    assert!(
        steps.iter().any(|(_, s)| matches!(s, Step::Dial(_))),
        "host candidates are still tried (same LAN)"
    );
    assert!(
        !steps
            .iter()
            .any(|(_, s)| matches!(s, Step::OpenBirthdaySockets { .. })),
        "birthday probing cannot help two symmetric NATs"
    );
}

#[test]
fn policy_never_gives_up_with_a_reason_once_every_dial_is_done() {
    let start = Instant::now();
    let mut p = plan(true);
    p.policy = RelayPolicy::Never;
    let mut t = Traversal::new(TraversalConfig::default(), p, start, 1);
    let steps = run(&mut t, start, Duration::from_secs(4));
    assert!(
        !steps.iter().any(|(_, s)| matches!(s, Step::GiveUp(_))),
        "dials still in flight: not yet"
    );
    t.on_dial_failed(addr("10.1.0.2:4000"));
    t.on_dial_failed(addr("100.64.0.11:4000"));
    assert_eq!(
        t.poll(start + Duration::from_secs(4)),
        vec![Step::GiveUp(Failure::NoDirectPath)]
    );
    assert_eq!(t.stage(), Stage::Done);
    assert!(t.poll(start + Duration::from_secs(5)).is_empty());
    assert_eq!(t.next_wakeup(), None);
}

#[test]
fn an_acceptor_with_policy_never_gives_up_when_its_direct_phase_ends() {
    let start = Instant::now();
    let mut p = plan(false);
    p.policy = RelayPolicy::Never;
    let mut t = Traversal::new(TraversalConfig::default(), p, start, 1);
    let steps = run(&mut t, start, Duration::from_secs(4));
    assert_eq!(
        steps.last(),
        Some(&(Duration::from_secs(3), Step::GiveUp(Failure::NoDirectPath)))
    );
}

#[test]
fn without_a_relay_on_the_server_the_failure_says_so() {
    let start = Instant::now();
    let mut p = plan(false);
    p.relay_available = false;
    let mut t = Traversal::new(TraversalConfig::default(), p, start, 1);
    let steps = run(&mut t, start, Duration::from_secs(4));
    assert_eq!(
        steps.last().map(|(_, s)| s),
        Some(&Step::GiveUp(Failure::NoRelay))
    );
}

#[test]
fn a_side_that_always_relays_sends_nothing_directly() {
    let start = Instant::now();
    for dialer in [true, false] {
        let mut p = plan(dialer);
        p.policy = RelayPolicy::Always;
        p.granted = true;
        let mut t = Traversal::new(TraversalConfig::default(), p, start, 1);
        let steps = run(&mut t, start, Duration::from_secs(10));
        assert_eq!(steps, vec![(Duration::ZERO, Step::OpenRelay)], "{dialer}");
        t.on_relay_open();
        t.on_connected(true, start);
        assert_eq!(t.stage(), Stage::Done, "no upgrade for a side that hides");
    }
}

#[test]
fn a_peer_without_direct_candidates_is_reached_through_the_relay_at_once() {
    let start = Instant::now();
    let mut p = plan(true);
    p.candidates.clear();
    p.reflexive.clear();
    let mut t = Traversal::new(TraversalConfig::default(), p, start, 1);
    assert_eq!(t.poll(start), vec![Step::RequestRelay]);
}

#[test]
fn a_refused_relay_ends_the_attempt_with_the_reason() {
    let start = Instant::now();
    let mut t = Traversal::new(TraversalConfig::default(), plan(true), start, 1);
    run(&mut t, start, Duration::from_secs(4));
    assert_eq!(
        t.on_relay_failed("a side of this pair never relays".into()),
        vec![Step::GiveUp(Failure::RelayRefused(
            "a side of this pair never relays".into()
        ))]
    );
    assert!(t.on_relay_failed("again".into()).is_empty());
}

#[test]
fn the_symmetric_dialer_opens_its_birthday_sockets_once() {
    let start = Instant::now();
    let mut p = plan(true);
    p.ours = NatClass::Strict;
    let mut t = Traversal::new(TraversalConfig::default(), p, start, 1);
    let steps = run(&mut t, start, Duration::from_secs(10));
    let opened: Vec<_> = steps
        .iter()
        .filter(|(_, s)| matches!(s, Step::OpenBirthdaySockets { .. }))
        .collect();
    assert_eq!(
        opened,
        vec![&(
            Duration::ZERO,
            Step::OpenBirthdaySockets {
                count: 256,
                toward: vec![addr("100.64.0.11:4000")]
            }
        )]
    );
    // The relay waits for probing to have its chance.
    let relay_at = steps
        .iter()
        .find(|(_, s)| *s == Step::RequestRelay)
        .map(|(at, _)| *at);
    assert!(relay_at > Some(TraversalConfig::default().birthday_duration()));
}

#[test]
fn the_moderate_acceptor_probes_random_ports_of_the_symmetric_ip_paced_and_bounded() {
    let start = Instant::now();
    let mut p = plan(false);
    p.theirs = NatClass::Strict;
    let config = TraversalConfig::default();
    let mut t = Traversal::new(config.clone(), p, start, 7);
    let steps = run(&mut t, start, Duration::from_secs(10));
    let probes: Vec<_> = steps
        .iter()
        .filter_map(|(at, s)| match s {
            Step::Probe(a) => Some((*at, *a)),
            _ => None,
        })
        .collect();
    assert_eq!(probes.len(), usize::from(config.birthday_probes));
    let ports: HashSet<u16> = probes.iter().map(|(_, a)| a.port()).collect();
    assert_eq!(ports.len(), probes.len(), "no port is probed twice");
    assert!(
        probes
            .iter()
            .all(|(_, a)| a.ip() == addr("100.64.0.11:1").ip())
    );
    assert!(probes.iter().all(|(_, a)| a.port() >= 1024));
    // Paced: the n-th probe goes no earlier than n / rate.
    for (n, (at, _)) in probes.iter().enumerate() {
        let earliest = Duration::from_secs_f64(n as f64 / 500.0);
        assert!(*at + ms(1) >= earliest, "probe {n} at {at:?}");
    }
    let last = probes.last().map(|(at, _)| *at).unwrap_or_default();
    assert!(last <= Duration::from_millis(2050), "{last:?}");
}

#[test]
fn a_relayed_connection_keeps_trying_direct_for_a_bounded_number_of_rounds() {
    let start = Instant::now();
    let config = TraversalConfig {
        upgrade_rounds: 3,
        ..Default::default()
    };
    let mut t = Traversal::new(config, plan(true), start, 1);
    run(&mut t, start, ms(300));
    t.on_dial_failed(addr("10.1.0.2:4000"));
    t.on_connected(true, start + ms(300));
    assert_eq!(t.stage(), Stage::Upgrading);
    let mut dials = Vec::new();
    while let Some(next) = t.next_wakeup() {
        for step in t.poll(next) {
            if let Step::Dial(candidate) = step {
                dials.push((next - start, candidate));
                t.on_dial_failed(candidate);
            }
        }
    }
    // 100.64.0.11 is still in flight: only the failed candidate is dialed again, once a round.
    assert_eq!(
        dials,
        [5300, 10_300, 15_300].map(|at| (ms(at), addr("10.1.0.2:4000")))
    );
    assert_eq!(t.stage(), Stage::Done);
}

#[test]
fn a_direct_connection_ends_the_attempt() {
    let start = Instant::now();
    let mut t = Traversal::new(TraversalConfig::default(), plan(false), start, 1);
    t.poll(start);
    t.on_connected(false, start);
    assert_eq!(t.stage(), Stage::Done);
    assert!(t.poll(start + ms(100)).is_empty());
    assert!(t.on_grant().is_empty());
}

#[test]
fn the_configuration_is_bounded() {
    assert!(TraversalConfig::default().validate().is_ok());
    let too_many = TraversalConfig {
        birthday_sockets: 5000,
        ..Default::default()
    };
    assert!(too_many.validate().is_err());
    let zero = TraversalConfig {
        punch_interval: Duration::ZERO,
        ..Default::default()
    };
    assert!(zero.validate().is_err());
}

fn nat() -> impl Strategy<Value = NatClass> {
    prop_oneof![
        Just(NatClass::Unknown),
        Just(NatClass::Open),
        Just(NatClass::Moderate),
        Just(NatClass::Strict)
    ]
}

fn policy() -> impl Strategy<Value = RelayPolicy> {
    prop_oneof![
        Just(RelayPolicy::Never),
        Just(RelayPolicy::Fallback),
        Just(RelayPolicy::Always)
    ]
}

proptest! {
    #[test]
    fn every_attempt_respects_its_budget_and_roles(
        dialer in any::<bool>(),
        ours in nat(),
        theirs in nat(),
        own_policy in policy(),
        relay_available in any::<bool>(),
        granted in any::<bool>(),
        n in 0usize..6,
        seed in any::<u64>(),
        gaps in proptest::collection::vec(0u64..700, 1..60),
        fail_dials in any::<bool>(),
    ) {
        let candidates: Vec<SocketAddr> =
            (0..n).map(|i| SocketAddr::from(([100, 64, 0, 10 + i as u8], 4000))).collect();
        let plan = Plan {
            dialer,
            reflexive: candidates.iter().take(1).copied().collect(),
            candidates,
            ours,
            theirs,
            policy: own_policy,
            relay_available,
            granted,
        };
        let config = TraversalConfig { birthday_probes: 200, ..Default::default() };
        let start = Instant::now();
        let mut t = Traversal::new(config.clone(), plan.clone(), start, seed);
        let mut now = start;
        let mut in_flight = HashSet::new();
        let mut probes = 0usize;
        let mut gave_up = false;
        let mut relay_requests = 0;
        for gap in gaps {
            now += Duration::from_millis(gap);
            for step in t.poll(now) {
                prop_assert!(!gave_up, "a step after giving up: {step:?}");
                match step {
                    Step::Dial(a) => {
                        prop_assert!(plan.dialer, "the acceptor dialed");
                        prop_assert!(own_policy != RelayPolicy::Always, "a hiding side dialed");
                        prop_assert!(in_flight.insert(a), "{a} dialed twice at once");
                        if fail_dials {
                            in_flight.remove(&a);
                            t.on_dial_failed(a);
                        }
                    }
                    Step::Punch(_) => {
                        prop_assert!(!plan.dialer);
                        prop_assert!(own_policy != RelayPolicy::Always, "a hiding side punched");
                    }
                    Step::Probe(a) => {
                        probes += 1;
                        prop_assert!(own_policy != RelayPolicy::Always);
                        prop_assert!(a.port() >= 1024);
                    }
                    Step::OpenBirthdaySockets { count, .. } => {
                        prop_assert!(plan.dialer && ours == NatClass::Strict);
                        prop_assert_eq!(count, config.birthday_sockets);
                    }
                    Step::RequestRelay => {
                        relay_requests += 1;
                        prop_assert!(plan.dialer);
                        prop_assert!(own_policy != RelayPolicy::Never && relay_available);
                    }
                    Step::OpenRelay | Step::DialRelay => {
                        prop_assert!(own_policy != RelayPolicy::Never && relay_available);
                    }
                    Step::GiveUp(_) => gave_up = true,
                }
            }
            if let Some(next) = t.next_wakeup() {
                // A wakeup in the past is fine (poll catches up), but one must exist while
                // something is pending.
                prop_assert!(next >= start);
            }
        }
        prop_assert!(probes <= usize::from(config.birthday_probes));
        prop_assert!(relay_requests <= 1);
    }
}

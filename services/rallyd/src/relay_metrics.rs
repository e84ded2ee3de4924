//! The relay's metrics: its counters ([`rally_relay::allocations::Counters`]) as OpenTelemetry
//! observable instruments, read at each collection through a [`RelayStats`] handle (which does
//! not keep a stopped relay alive; a gone relay reports nothing).
//!
//! The relay crate itself stays free of OpenTelemetry: it counts, this module reports.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{AsyncInstrument, Meter};
use rally_relay::allocations::Counters;
use rally_relay::server::RelayStats;

/// The instrumentation scope of these instruments.
const METER_NAME: &str = "rally-relay";

/// Values read from the counters, each with its attributes.
type Observations = Vec<(u64, Vec<KeyValue>)>;

/// Registers the relay's instruments on the global meter (no-ops without a meter provider).
pub(crate) fn register(stats: &RelayStats) {
    let meter = opentelemetry::global::meter(METER_NAME);
    {
        let stats = stats.clone();
        meter
            .u64_observable_gauge("rally.relay.allocations")
            .with_unit("{allocation}")
            .with_description("Relay allocations held now")
            .with_callback(move |observer| {
                if let Some((_, held)) = stats.read() {
                    observer.observe(u64::try_from(held).unwrap_or(u64::MAX), &[]);
                }
            })
            .build();
    }
    counter(
        &meter,
        stats,
        "rally.relay.allocations.created",
        "{allocation}",
        "Relay allocations created",
        |counters| vec![(counters.allocations, vec![])],
    );
    counter(
        &meter,
        stats,
        "rally.relay.forwarded",
        "{datagram}",
        "Datagrams the relay forwarded between the two sides of an allocation",
        |counters| vec![(counters.forwarded, vec![])],
    );
    counter(
        &meter,
        stats,
        "rally.relay.forwarded.bytes",
        "By",
        "Payload bytes the relay forwarded",
        |counters| vec![(counters.forwarded_bytes, vec![])],
    );
    counter(
        &meter,
        stats,
        "rally.relay.dropped",
        "{datagram}",
        "Datagrams the relay dropped, by reason: malformed (did not decode), unauthorised \
         (unknown allocation, a third address, the other side not bound), over_limit (the \
         allocation's byte cap or rate), over_aggregate (the relay's total rate)",
        |counters| {
            vec![
                (counters.dropped_malformed, reason("malformed")),
                (counters.dropped_unauthorised, reason("unauthorised")),
                (counters.dropped_over_limit, reason("over_limit")),
                (counters.dropped_over_aggregate, reason("over_aggregate")),
            ]
        },
    );
    counter(
        &meter,
        stats,
        "rally.relay.grants.refused",
        "{grant}",
        "Allocation requests and releases refused, by reason: grant (bad, expired, for the \
         other side, side already taken, allocation released; or a bad release), user_quota \
         (one of the grant's users holds its share of allocations)",
        |counters| {
            vec![
                (counters.refused_grants, reason("grant")),
                (counters.refused_user_quota, reason("user_quota")),
            ]
        },
    );
    counter(
        &meter,
        stats,
        "rally.relay.allocations.released",
        "{allocation}",
        "Allocations the broker released because their pair ended",
        |counters| vec![(counters.released, vec![])],
    );
    counter(
        &meter,
        stats,
        "rally.relay.bindings",
        "{request}",
        "Reflector binding requests, by outcome: answered, or unanswerable (asked to be \
         answered from an address the relay does not have)",
        |counters| {
            vec![
                (counters.bindings, outcome("answered")),
                (counters.bindings_unanswerable, outcome("unanswerable")),
            ]
        },
    );
}

fn reason(reason: &'static str) -> Vec<KeyValue> {
    vec![KeyValue::new("reason", reason)]
}

fn outcome(outcome: &'static str) -> Vec<KeyValue> {
    vec![KeyValue::new("outcome", outcome)]
}

/// One observable counter, whose values (with their attributes) `pick` reads from the counters.
fn counter(
    meter: &Meter,
    stats: &RelayStats,
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    pick: fn(&Counters) -> Observations,
) {
    let stats = stats.clone();
    meter
        .u64_observable_counter(name)
        .with_unit(unit)
        .with_description(description)
        .with_callback(move |observer: &dyn AsyncInstrument<u64>| {
            if let Some((counters, _)) = stats.read() {
                for (value, attributes) in pick(&counters) {
                    observer.observe(value, &attributes);
                }
            }
        })
        .build();
}

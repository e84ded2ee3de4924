//! The rooms and matchmaking metrics: OpenTelemetry instruments on the global meter.
//!
//! Only the `opentelemetry` API is used here: with no meter provider installed (no exporter
//! configured, or in tests) every instrument is a no-op. `rallyd` installs its provider before
//! it builds the services, so the instruments made here report to it. The names, types and
//! attributes are listed in `docs/observability.md`.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};

/// The instrumentation scope of this crate's instruments.
pub const METER_NAME: &str = "rally-rooms";

/// Bucket boundaries of the match wait histogram, in seconds.
const WAIT_BOUNDARIES_SECS: [f64; 13] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

fn meter() -> Meter {
    opentelemetry::global::meter(METER_NAME)
}

fn pool(name: &str) -> [KeyValue; 1] {
    [KeyValue::new("pool", name.to_owned())]
}

/// The matchmaker's instruments (per pool; pools come from the configuration, so the
/// attribute's values are bounded).
pub(crate) struct MatchmakingMetrics {
    queue_depth: Gauge<u64>,
    wait: Histogram<f64>,
    matches: Counter<u64>,
}

impl MatchmakingMetrics {
    pub(crate) fn new() -> Self {
        let meter = meter();
        Self {
            queue_depth: meter
                .u64_gauge("rally.matchmaking.queue.depth")
                .with_unit("{ticket}")
                .with_description(
                    "Tickets left waiting in a pool after this replica's latest match round \
                     (counted up to 512 per round)",
                )
                .build(),
            wait: meter
                .f64_histogram("rally.matchmaking.wait.duration")
                .with_unit("s")
                .with_description("How long each matched ticket waited, from enqueue to match")
                .with_boundaries(WAIT_BOUNDARIES_SECS.to_vec())
                .build(),
            matches: meter
                .u64_counter("rally.matchmaking.matches")
                .with_unit("{match}")
                .with_description("Matches formed")
                .build(),
        }
    }

    /// After a round of `pool`: `waiting` tickets are still queued.
    pub(crate) fn queue(&self, pool_name: &str, waiting: u64) {
        self.queue_depth.record(waiting, &pool(pool_name));
    }

    /// A match formed in `pool`, its tickets having waited `waits_ms` each.
    pub(crate) fn matched(&self, pool_name: &str, waits_ms: impl IntoIterator<Item = i64>) {
        let attributes = pool(pool_name);
        self.matches.add(1, &attributes);
        for wait_ms in waits_ms {
            // Milliseconds to seconds; a clock step backwards counts as no wait.
            let secs = u32::try_from(wait_ms.max(0)).map_or(f64::from(u32::MAX), f64::from) / 1e3;
            self.wait.record(secs, &attributes);
        }
    }
}

/// The room census gauges (see [`crate::census`]).
pub(crate) struct RoomGauges {
    open: Gauge<u64>,
    members: Gauge<u64>,
}

impl RoomGauges {
    pub(crate) fn new() -> Self {
        let meter = meter();
        Self {
            open: meter
                .u64_gauge("rally.rooms.open")
                .with_unit("{room}")
                .with_description("Open rooms, public and private (the whole deployment's)")
                .build(),
            members: meter
                .u64_gauge("rally.rooms.members")
                .with_unit("{member}")
                .with_description("Users in an open room (the whole deployment's)")
                .build(),
        }
    }

    pub(crate) fn record(&self, open_rooms: u64, members: u64) {
        self.open.record(open_rooms, &[]);
        self.members.record(members, &[]);
    }
}

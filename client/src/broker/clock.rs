//! The control link's round trip and the server's clock, measured from Ping/Pong (sans-IO: every
//! instant is an argument).
//!
//! Each Pong (and the Welcome) is a sample: sent at `t0`, answered at server time `S`, received
//! at `t1`. The server's clock read `S` at about `t0 + rtt/2`, so at local `t1` it reads about
//! `S + rtt/2`. Of the recent samples, the one with the smallest round trip bounds the error
//! best (it is off by at most half its round trip), so server times are converted with it, as
//! NTP's clock filter does. The round trip reported is smoothed like TCP's SRTT.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many recent samples are kept.
const SAMPLES: usize = 8;
/// Server times further ahead than this are taken as this far ahead (a broken or hostile server
/// must not schedule punching in a year).
pub(crate) const MAX_AHEAD: Duration = Duration::from_secs(30);
/// Server times further behind than this are taken as this far behind.
pub(crate) const MAX_BEHIND: Duration = Duration::from_secs(30);
/// Nanoseconds per second.
const NANOS: i128 = 1_000_000_000;

/// A server time: nanoseconds since the Unix epoch on the server's clock.
pub(crate) type ServerNanos = i128;

/// The server time of a protobuf timestamp, or `None` if it is malformed.
pub(crate) fn server_nanos(timestamp: &prost_types::Timestamp) -> Option<ServerNanos> {
    if !(0..1_000_000_000).contains(&timestamp.nanos) {
        return None;
    }
    Some(i128::from(timestamp.seconds) * NANOS + i128::from(timestamp.nanos))
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    rtt: Duration,
    /// The local instant the answer arrived.
    received: Instant,
    /// The server's clock at `received`, estimated.
    server_at_received: ServerNanos,
}

/// Round trip and clock offset of the control link.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClockSync {
    samples: VecDeque<Sample>,
    smoothed_rtt: Option<Duration>,
}

impl ClockSync {
    /// Records a sample: a request sent at `sent`, answered at server time `server`, the answer
    /// received at `received`. `round_trip` says whether it counts for [`ClockSync::rtt`] (a Pong
    /// does; a Welcome, which waited for the server's database, does not).
    pub(crate) fn sample(
        &mut self,
        sent: Instant,
        received: Instant,
        server: ServerNanos,
        round_trip: bool,
    ) {
        let rtt = received.saturating_duration_since(sent);
        let half = i128::try_from(rtt.as_nanos() / 2).unwrap_or(i128::MAX / 4);
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            rtt,
            received,
            server_at_received: server.saturating_add(half),
        });
        if round_trip {
            self.smoothed_rtt = Some(match self.smoothed_rtt {
                None => rtt,
                Some(smoothed) => smoothed.saturating_mul(7).saturating_add(rtt) / 8,
            });
        }
    }

    /// The smoothed round trip, once a Pong was received.
    pub(crate) fn rtt(&self) -> Option<Duration> {
        self.smoothed_rtt
    }

    /// The local instant of server time `server`, given the local `now`: within [`MAX_BEHIND`]
    /// before and [`MAX_AHEAD`] after `now`; `now` when there is no sample yet.
    pub(crate) fn to_local(&self, server: ServerNanos, now: Instant) -> Instant {
        let Some(best) = self.samples.iter().min_by_key(|s| s.rtt) else {
            return now;
        };
        let delta = server.saturating_sub(best.server_at_received);
        let magnitude =
            Duration::from_nanos(u64::try_from(delta.unsigned_abs()).unwrap_or(u64::MAX));
        let local = if delta >= 0 {
            best.received.checked_add(magnitude)
        } else {
            best.received.checked_sub(magnitude)
        };
        let latest = now + MAX_AHEAD;
        let earliest = now.checked_sub(MAX_BEHIND).unwrap_or(now);
        match local {
            Some(local) => local.clamp(earliest, latest),
            None if delta >= 0 => latest,
            None => earliest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: i128 = NANOS;

    #[test]
    fn timestamps_convert_to_nanoseconds() {
        let ts = prost_types::Timestamp {
            seconds: 2,
            nanos: 5,
        };
        assert_eq!(server_nanos(&ts), Some(2 * SECOND + 5));
        let bad = prost_types::Timestamp {
            seconds: 2,
            nanos: -1,
        };
        assert_eq!(server_nanos(&bad), None);
    }

    #[test]
    fn server_times_map_through_the_sample_with_the_smallest_round_trip() {
        let t0 = Instant::now();
        let mut clock = ClockSync::default();
        // Server clock is 1000 s ahead of the local "t0 = 0". A slow sample (rtt 400 ms, the
        // answer stamped late) and a fast one (rtt 20 ms).
        clock.sample(
            t0,
            t0 + Duration::from_millis(400),
            1000 * SECOND + 300_000_000,
            true,
        );
        let sent = t0 + Duration::from_secs(1);
        clock.sample(
            sent,
            sent + Duration::from_millis(20),
            1001 * SECOND + 10_000_000,
            true,
        );
        // The fast sample says: server 1001.020 s at local t0 + 1.020 s.
        let at = clock.to_local(1002 * SECOND + 20_000_000, t0);
        assert_eq!(at.duration_since(t0), Duration::from_millis(2020));
    }

    #[test]
    fn server_times_in_the_past_map_to_the_past_and_far_futures_are_capped() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut clock = ClockSync::default();
        clock.sample(t0, t0, 5000 * SECOND, true);
        assert_eq!(
            clock.to_local(4999 * SECOND, t0),
            t0 - Duration::from_secs(1)
        );
        assert_eq!(clock.to_local(i128::MAX, t0), t0 + MAX_AHEAD);
        assert_eq!(clock.to_local(i128::MIN, t0), t0 - MAX_BEHIND);
    }

    #[test]
    fn without_samples_every_time_is_now() {
        let now = Instant::now();
        assert_eq!(ClockSync::default().to_local(123, now), now);
    }

    #[test]
    fn only_pongs_count_for_the_round_trip_which_is_smoothed() {
        let t0 = Instant::now();
        let mut clock = ClockSync::default();
        clock.sample(t0, t0 + Duration::from_secs(2), 0, false);
        assert_eq!(clock.rtt(), None);
        clock.sample(t0, t0 + Duration::from_millis(80), 0, true);
        assert_eq!(clock.rtt(), Some(Duration::from_millis(80)));
        clock.sample(t0, t0 + Duration::from_millis(160), 0, true);
        assert_eq!(clock.rtt(), Some(Duration::from_millis(90)));
    }

    proptest! {
        #[test]
        fn arbitrary_server_times_never_panic(samples in proptest::collection::vec((0u64..10_000, any::<i128>()), 0..12), query in any::<i128>()) {
            let t0 = Instant::now();
            let mut clock = ClockSync::default();
            for (rtt_ms, server) in samples {
                clock.sample(t0, t0 + Duration::from_millis(rtt_ms), server, true);
            }
            let local = clock.to_local(query, t0);
            prop_assert!(local <= t0 + MAX_AHEAD && local >= t0 - MAX_BEHIND);
        }
    }
}

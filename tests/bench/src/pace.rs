//! Pacing a background load of `rate` packets per second: a token bucket refilled from the time
//! elapsed, which tells a sending loop how many packets are due now.
//!
//! Bursts are bounded: the bucket holds at most [`BURST`] worth of packets (and at least one),
//! so a sender that fell behind sends that much at once and forgets the rest instead of
//! catching up with a flood. The bound is 2 ms rather than 1 ms because tokio's timer has a
//! 1 ms granularity: a wait for a few microseconds returns one to two milliseconds later, and a
//! 1 ms bucket would lose part of the rate at every late wake-up.

use std::time::{Duration, Instant};

/// How long a background load runs before the measurement it disturbs starts, to reach its
/// steady state.
pub(crate) const SETTLE: Duration = Duration::from_millis(100);

/// The most time's worth of packets the bucket holds.
pub(crate) const BURST: Duration = Duration::from_millis(2);

/// A token bucket of packets.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    /// Packets per second.
    rate: f64,
    /// Packets due and not yet taken, fractional.
    tokens: f64,
    /// Most packets the bucket holds.
    capacity: f64,
    /// When the bucket was last refilled.
    refilled: Instant,
}

impl Pacer {
    /// A pacer of `rate` packets per second (must be positive and finite), empty at `now`.
    pub(crate) fn new(rate: f64, now: Instant) -> anyhow::Result<Self> {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "a pacing rate must be positive, not {rate}"
        );
        Ok(Self {
            rate,
            tokens: 0.0,
            capacity: (rate * BURST.as_secs_f64()).max(1.0),
            refilled: now,
        })
    }

    /// How many packets are due at `now`; they count as sent from then on.
    pub(crate) fn due(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = self.refilled.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        // The epsilon keeps a whole packet whole despite rounding (3000/s for 1 ms is 3).
        let due = (self.tokens + 1e-9).floor();
        self.tokens = (self.tokens - due).max(0.0);
        // `due` is at most `capacity`, a finite non-negative number of packets.
        due as u64
    }

    /// How long after the last refill the next packet is due.
    pub(crate) fn until_next(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }

    /// Waits until at least one packet is due, and returns how many are (at least one).
    pub(crate) async fn wait(&mut self) -> u64 {
        loop {
            let due = self.due(Instant::now());
            if due > 0 {
                return due;
            }
            tokio::time::sleep(self.until_next()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(rate: f64, start: Instant) -> Pacer {
        match Pacer::new(rate, start) {
            Ok(pacer) => pacer,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn packets_fall_due_with_time_and_fractions_carry_over() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut p = pacer(1000.0, start);
        assert_eq!(p.due(start), 0);
        assert!(p.until_next().abs_diff(ms(1)) < Duration::from_micros(1));
        assert_eq!(p.due(start + Duration::from_micros(500)), 0);
        assert_eq!(p.due(start + ms(1)), 1);
        assert_eq!(p.due(start + Duration::from_micros(1500)), 0);
        assert_eq!(p.due(start + ms(2)), 1);

        // 3 per ms: three every millisecond, taken in one go or piecewise.
        let mut p = pacer(3000.0, start);
        assert_eq!(p.due(start + ms(1)), 3);
        assert_eq!(p.due(start + Duration::from_micros(1500)), 1);
        assert_eq!(p.due(start + ms(2)), 2);
    }

    #[test]
    fn a_late_sender_gets_at_most_one_burst() {
        let start = Instant::now();
        let mut p = pacer(100_000.0, start);
        // 10 ms late: only the 2 ms burst (200 packets), the rest is forgotten.
        assert_eq!(p.due(start + Duration::from_millis(10)), 200);
        assert_eq!(p.due(start + Duration::from_millis(10)), 0);
        assert_eq!(p.due(start + Duration::from_millis(11)), 100);
        // A slow rate still lets one packet through after a long pause.
        let mut slow = pacer(10.0, start);
        assert_eq!(slow.due(start + Duration::from_secs(5)), 1);
        assert_eq!(slow.due(start + Duration::from_secs(5)), 0);
    }

    #[test]
    fn time_going_backwards_changes_nothing() {
        let start = Instant::now();
        let later = start + Duration::from_millis(5);
        let mut p = pacer(1000.0, later);
        assert_eq!(p.due(start), 0);
        assert_eq!(p.due(later + Duration::from_millis(1)), 1);
    }

    #[test]
    fn a_rate_must_be_positive() {
        let now = Instant::now();
        assert!(Pacer::new(0.0, now).is_err());
        assert!(Pacer::new(f64::NAN, now).is_err());
        assert!(Pacer::new(-1.0, now).is_err());
    }
}

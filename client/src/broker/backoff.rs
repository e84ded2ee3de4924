//! Exponential backoff with full jitter, for re-attaching and for retrying a token refresh.
//!
//! The delay before attempt `n` is uniform in `[0, min(max, first * 2^n)]` ("full jitter", as in
//! the AWS architecture blog's "Exponential Backoff And Jitter"), so many clients that lost the
//! server at once do not come back at once.

use std::time::Duration;

/// A backoff sequence; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Ceilings start at `first` and double up to `max`.
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt, with randomness from the operating system.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // Without randomness, fall back to half the ceiling: still bounded, merely less spread.
        let random = getrandom::u64().unwrap_or(u64::MAX / 2);
        self.next_with(random)
    }

    /// The delay before the next attempt, drawn with `random` (deterministic, for tests).
    pub(crate) fn next_with(&mut self, random: u64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        full_jitter(ceiling, random)
    }

    /// Starts over from the first ceiling.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The largest delay of the next attempt.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// A delay uniform in `[0, ceiling]` drawn with `random`.
fn full_jitter(ceiling: Duration, random: u64) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(random % nanos.saturating_add(1).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(10);

    #[test]
    fn ceilings_double_from_the_first_up_to_the_max() {
        let mut backoff = Backoff::new(FIRST, MAX);
        let mut ceilings = Vec::new();
        for _ in 0..9 {
            ceilings.push(backoff.ceiling().as_millis());
            backoff.next_with(0);
        }
        assert_eq!(
            ceilings,
            [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]
        );
        backoff.reset();
        assert_eq!(backoff.ceiling(), FIRST);
    }

    #[test]
    fn the_delay_spans_zero_to_the_ceiling() {
        let mut low = Backoff::new(FIRST, MAX);
        assert_eq!(low.next_with(0), Duration::ZERO);
        let mut high = Backoff::new(FIRST, MAX);
        let nanos = u64::try_from(FIRST.as_nanos()).expect("fits");
        assert_eq!(high.next_with(nanos), FIRST);
    }

    proptest! {
        #[test]
        fn delays_never_exceed_the_ceiling(randoms in proptest::collection::vec(any::<u64>(), 1..80)) {
            let mut backoff = Backoff::new(FIRST, MAX);
            for random in randoms {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_with(random);
                prop_assert!(delay <= ceiling && ceiling <= MAX);
            }
        }
    }
}

//! Rate limits on sign-in attempts, per username and per peer address, in bounded memory.
//!
//! Two keyed GCRA limiters (the `governor` crate). Every Register, Login and DeviceLogin attempt
//! counts, successful or not. Memory is bounded by `max_tracked_keys` per limiter: when a limiter
//! is full, keys that are back at full quota are forgotten (at most once a second); if it is still
//! full, new attempts are refused until it drains. Under a flood of distinct usernames the service
//! therefore fails closed for sign-ins instead of growing without bound.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::IdentityError;

/// Sign-in rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Attempts per minute allowed for one username (also the burst).
    pub per_username_per_minute: NonZeroU32,
    /// Attempts per minute allowed from one peer IP address (also the burst).
    pub per_address_per_minute: NonZeroU32,
    /// How many usernames, and how many addresses, are tracked at most.
    pub max_tracked_keys: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            per_username_per_minute: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            per_address_per_minute: NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN),
            max_tracked_keys: 100_000,
        }
    }
}

struct Bounded<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    max_keys: usize,
    last_sweep: Mutex<Option<Instant>>,
    scope: &'static str,
}

impl<K: Hash + Eq + Clone> Bounded<K> {
    fn new(per_minute: NonZeroU32, max_keys: usize, scope: &'static str) -> Self {
        Self {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            max_keys: max_keys.max(1),
            last_sweep: Mutex::new(None),
            scope,
        }
    }

    fn check(&self, key: &K) -> Result<(), IdentityError> {
        if self.limiter.len() >= self.max_keys {
            self.sweep();
            if self.limiter.len() >= self.max_keys {
                return Err(IdentityError::Throttled {
                    scope: self.scope,
                    retry_after: Duration::from_secs(1),
                });
            }
        }
        self.limiter.check_key(key).map_err(|not_until| {
            let retry_after = not_until.wait_time_from(DefaultClock::default().now());
            IdentityError::Throttled {
                scope: self.scope,
                retry_after,
            }
        })
    }

    fn sweep(&self) {
        let Ok(mut last) = self.last_sweep.lock() else {
            return;
        };
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(Instant::now());
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

/// The sign-in limiter.
pub(crate) struct SignInThrottle {
    usernames: Bounded<String>,
    addresses: Bounded<IpAddr>,
}

impl SignInThrottle {
    pub(crate) fn new(config: ThrottleConfig) -> Self {
        Self {
            usernames: Bounded::new(
                config.per_username_per_minute,
                config.max_tracked_keys,
                "for this username",
            ),
            addresses: Bounded::new(
                config.per_address_per_minute,
                config.max_tracked_keys,
                "from this address",
            ),
        }
    }

    /// Counts one attempt from `address` (when known) for `username` (when the call has one,
    /// ASCII-lowercased by the caller so that case variants share a budget).
    pub(crate) fn attempt(
        &self,
        address: Option<IpAddr>,
        username: Option<&str>,
    ) -> Result<(), IdentityError> {
        if let Some(address) = address {
            self.addresses.check(&address)?;
        }
        if let Some(username) = username {
            self.usernames.check(&username.to_owned())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(per_username: u32, per_address: u32, max_keys: usize) -> ThrottleConfig {
        ThrottleConfig {
            per_username_per_minute: NonZeroU32::new(per_username).expect("non-zero"),
            per_address_per_minute: NonZeroU32::new(per_address).expect("non-zero"),
            max_tracked_keys: max_keys,
        }
    }

    #[test]
    fn the_quota_of_one_username_does_not_touch_another() {
        let throttle = SignInThrottle::new(config(3, 1000, 100));
        for _ in 0..3 {
            throttle.attempt(None, Some("alice")).expect("within quota");
        }
        let err = throttle
            .attempt(None, Some("alice"))
            .expect_err("over quota");
        assert!(matches!(
            err,
            IdentityError::Throttled {
                scope: "for this username",
                ..
            }
        ));
        throttle
            .attempt(None, Some("bob"))
            .expect("bob has his own quota");
    }

    #[test]
    fn one_address_is_limited_across_usernames() {
        let throttle = SignInThrottle::new(config(1000, 2, 100));
        let ip: IpAddr = [127, 0, 0, 1].into();
        throttle.attempt(Some(ip), Some("a")).expect("1");
        throttle.attempt(Some(ip), Some("b")).expect("2");
        let err = throttle.attempt(Some(ip), Some("c")).expect_err("3");
        assert!(matches!(
            err,
            IdentityError::Throttled {
                scope: "from this address",
                ..
            }
        ));
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_distinct_usernames() {
        let throttle = SignInThrottle::new(config(5, 1_000_000, 1000));
        let mut refused = 0;
        for i in 0..10_000 {
            if throttle.attempt(None, Some(&format!("user{i}"))).is_err() {
                refused += 1;
            }
        }
        assert!(throttle.usernames.tracked() <= 1000);
        assert!(refused > 0, "a full limiter must refuse new keys");
    }
}

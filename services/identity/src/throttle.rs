//! Rate limits on sign-in attempts, per username and per peer address, in bounded memory.
//!
//! Two keyed GCRA limiters ([`rally_auth::KeyedRate`]), each over an LRU table of at most
//! `max_tracked_keys` keys. Every
//! Register, Login and DeviceLogin attempt counts, successful or not. A full table forgets the
//! key seen least recently, which comes back, if ever, with a fresh quota: a flood of distinct
//! usernames or addresses costs the flooder its own quota only and never locks anyone else out.
//! IPv6 addresses count per /64 (one host usually holds a whole /64), IPv4-mapped IPv6 addresses
//! as their IPv4 address.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Instant;

use rally_auth::{KeyedRate, Rate};
use uuid::Uuid;

use crate::IdentityError;

/// Sign-in rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Attempts per minute allowed for one username (also the burst).
    pub per_username_per_minute: NonZeroU32,
    /// Attempts per minute allowed from one peer IP address, or one IPv6 /64 (also the burst).
    pub per_address_per_minute: NonZeroU32,
    /// Refresh calls per minute allowed from one peer IP address, or one IPv6 /64 (also the
    /// burst), counted before the database is touched.
    pub refresh_per_address_per_minute: NonZeroU32,
    /// Refresh calls per minute allowed for one session (one refresh-token family; also the
    /// burst). A client refreshes once per access-token lifetime.
    pub refresh_per_session_per_minute: NonZeroU32,
    /// How many keys each limiter tracks at most.
    pub max_tracked_keys: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            per_username_per_minute: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            per_address_per_minute: NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN),
            refresh_per_address_per_minute: NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN),
            refresh_per_session_per_minute: NonZeroU32::new(6).unwrap_or(NonZeroU32::MIN),
            max_tracked_keys: 100_000,
        }
    }
}

/// One keyed limiter and the words its refusals use.
struct Bounded<K: Hash + Eq> {
    rate: KeyedRate<K>,
    scope: &'static str,
}

impl<K: Hash + Eq> Bounded<K> {
    fn new(per_minute: NonZeroU32, max_keys: usize, scope: &'static str) -> Self {
        Self {
            rate: KeyedRate::new(
                Rate::per_minute(per_minute),
                NonZeroUsize::new(max_keys).unwrap_or(NonZeroUsize::MIN),
            ),
            scope,
        }
    }

    fn check(&self, key: K, now: Instant) -> Result<(), IdentityError> {
        self.rate
            .check_at(key, now)
            .map_err(|retry_after| IdentityError::Throttled {
                scope: self.scope,
                retry_after,
            })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.rate.tracked()
    }
}

/// The sign-in and refresh limiters.
pub(crate) struct SignInThrottle {
    usernames: Bounded<String>,
    addresses: Bounded<IpAddr>,
    refresh_addresses: Bounded<IpAddr>,
    refresh_sessions: Bounded<Uuid>,
}

impl SignInThrottle {
    pub(crate) fn new(config: ThrottleConfig) -> Self {
        Self {
            usernames: Bounded::new(
                config.per_username_per_minute,
                config.max_tracked_keys,
                "sign-in attempts for this username",
            ),
            addresses: Bounded::new(
                config.per_address_per_minute,
                config.max_tracked_keys,
                "sign-in attempts from this address",
            ),
            refresh_addresses: Bounded::new(
                config.refresh_per_address_per_minute,
                config.max_tracked_keys,
                "refreshes from this address",
            ),
            refresh_sessions: Bounded::new(
                config.refresh_per_session_per_minute,
                config.max_tracked_keys,
                "refreshes of this session",
            ),
        }
    }

    /// Counts one Refresh call from `address` (when known), before anything else is done.
    pub(crate) fn refresh_from(&self, address: Option<IpAddr>) -> Result<(), IdentityError> {
        match address {
            Some(address) => self
                .refresh_addresses
                .check(rally_auth::limit_key(address), Instant::now()),
            None => Ok(()),
        }
    }

    /// Counts one refresh of `session`, before its token is rotated.
    pub(crate) fn refresh_of(&self, session: Uuid) -> Result<(), IdentityError> {
        self.refresh_sessions.check(session, Instant::now())
    }

    /// Counts one attempt from `address` (when known) for `username` (when the call has one,
    /// ASCII-lowercased by the caller so that case variants share a budget).
    pub(crate) fn attempt(
        &self,
        address: Option<IpAddr>,
        username: Option<&str>,
    ) -> Result<(), IdentityError> {
        self.attempt_at(address, username, Instant::now())
    }

    fn attempt_at(
        &self,
        address: Option<IpAddr>,
        username: Option<&str>,
        now: Instant,
    ) -> Result<(), IdentityError> {
        if let Some(address) = address {
            self.addresses.check(rally_auth::limit_key(address), now)?;
        }
        if let Some(username) = username {
            self.usernames.check(username.to_owned(), now)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(per_username: u32, per_address: u32, max_keys: usize) -> ThrottleConfig {
        ThrottleConfig {
            per_username_per_minute: NonZeroU32::new(per_username).expect("non-zero"),
            per_address_per_minute: NonZeroU32::new(per_address).expect("non-zero"),
            max_tracked_keys: max_keys,
            ..ThrottleConfig::default()
        }
    }

    #[test]
    fn refreshes_count_per_address_and_per_session_apart_from_sign_ins() {
        let throttle = SignInThrottle::new(ThrottleConfig {
            per_address_per_minute: NonZeroU32::new(1).expect("non-zero"),
            refresh_per_address_per_minute: NonZeroU32::new(3).expect("non-zero"),
            refresh_per_session_per_minute: NonZeroU32::new(2).expect("non-zero"),
            ..ThrottleConfig::default()
        });
        let ip: IpAddr = [198, 51, 100, 1].into();
        throttle.attempt(Some(ip), None).expect("a sign-in");
        for _ in 0..3 {
            throttle
                .refresh_from(Some(ip))
                .expect("refreshes have their own budget");
        }
        let err = throttle
            .refresh_from(Some(ip))
            .expect_err("a fourth refresh");
        assert!(
            err.to_string()
                .starts_with("too many refreshes from this address"),
            "{err}"
        );
        let session = Uuid::new_v4();
        throttle.refresh_of(session).expect("1");
        throttle.refresh_of(session).expect("2");
        let err = throttle.refresh_of(session).expect_err("3");
        assert!(
            err.to_string()
                .starts_with("too many refreshes of this session"),
            "{err}"
        );
        throttle
            .refresh_of(Uuid::new_v4())
            .expect("another session has its own");
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
                scope: "sign-in attempts for this username",
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
                scope: "sign-in attempts from this address",
                ..
            }
        ));
    }

    #[test]
    fn a_flood_of_distinct_usernames_stays_bounded_and_locks_nobody_out() {
        let throttle = SignInThrottle::new(config(5, 1_000_000, 1000));
        throttle
            .attempt(None, Some("alice"))
            .expect("alice's first try");
        for i in 0..10_000 {
            throttle
                .attempt(None, Some(&format!("user{i}")))
                .expect("a new key always gets its quota");
        }
        assert_eq!(
            throttle.usernames.tracked(),
            1000,
            "the oldest were forgotten"
        );
        throttle
            .attempt(None, Some("a new player"))
            .expect("a full table does not refuse everyone");
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() {
        let throttle = SignInThrottle::new(config(1000, 2, 100));
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("v6");
        let same_64: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().expect("v6");
        let other_64: IpAddr = "2001:db8:1:3::1".parse().expect("v6");
        throttle.attempt(Some(one), None).expect("1");
        throttle.attempt(Some(same_64), None).expect("2");
        assert!(
            throttle.attempt(Some(same_64), None).is_err(),
            "the /64 shares one budget"
        );
        throttle
            .attempt(Some(other_64), None)
            .expect("another /64 has its own");
        let v4: IpAddr = [192, 0, 2, 7].into();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("mapped");
        throttle.attempt(Some(v4), None).expect("1");
        throttle.attempt(Some(mapped), None).expect("2");
        assert!(throttle.attempt(Some(v4), None).is_err(), "one address");
    }

    #[test]
    fn a_spent_quota_comes_back_one_attempt_per_interval() {
        let throttle = SignInThrottle::new(config(6, 1000, 100));
        let start = Instant::now();
        for _ in 0..6 {
            throttle
                .attempt_at(None, Some("alice"), start)
                .expect("the burst");
        }
        match throttle.attempt_at(None, Some("alice"), start) {
            Err(IdentityError::Throttled { retry_after, .. }) => {
                assert_eq!(retry_after, Duration::from_secs(10), "60 s / 6")
            }
            other => panic!("expected Throttled, got {other:?}"),
        }
        let later = start + Duration::from_secs(10);
        throttle
            .attempt_at(None, Some("alice"), later)
            .expect("one more after an interval");
        assert!(throttle.attempt_at(None, Some("alice"), later).is_err());
    }
}

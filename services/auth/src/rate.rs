//! Rate limits in bounded memory, and the tower layer that applies them per user.
//!
//! [`KeyedRate`] is GCRA (the algorithm of the `governor` crate: one theoretical arrival time per
//! key) over an LRU table of at most a fixed number of keys (the `lru` crate). A full table
//! forgets the key seen least recently, which comes back, if ever, with a fresh quota: a flood of
//! distinct keys costs the flooder its own quota and never refuses anyone else.
//!
//! [`RateLayer`] sits behind [`crate::AuthLayer`] and counts the calls of each authenticated user
//! per class of method (writes, streams): a user past its class's budget gets
//! `RESOURCE_EXHAUSTED` with a `retry-after-ms` trailer, before the call reaches a handler or
//! the database. Calls without a [`Caller`] (public methods) are not counted here; those limit
//! themselves per address.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{Either, Ready, ready};
use lru::LruCache;
use tower::{Layer, Service};
use uuid::Uuid;

use crate::Caller;

/// The metadata key (a trailer of the refusal) that says how long to wait, in milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// A sustained rate and the burst allowed on top of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Calls per minute, sustained.
    pub per_minute: NonZeroU32,
    /// Calls allowed at once after a quiet period.
    pub burst: NonZeroU32,
}

impl Rate {
    /// `per_minute` a minute, all of them at once at most.
    pub fn per_minute(per_minute: NonZeroU32) -> Self {
        Self {
            per_minute,
            burst: per_minute,
        }
    }
}

/// One rate per key, for at most `max_keys` keys; see the module docs.
#[derive(Debug)]
pub struct KeyedRate<K: Hash + Eq> {
    /// Each key's theoretical arrival time: the next call conforms from `tat - tolerance`.
    table: Mutex<LruCache<K, Instant>>,
    /// The time one call costs.
    interval: Duration,
    /// How far ahead of its theoretical arrival a call may come (the burst).
    tolerance: Duration,
}

impl<K: Hash + Eq> KeyedRate<K> {
    /// A limiter allowing `rate` per key, tracking at most `max_keys` keys.
    pub fn new(rate: Rate, max_keys: NonZeroUsize) -> Self {
        let interval = Duration::from_secs(60) / rate.per_minute.get();
        Self {
            table: Mutex::new(LruCache::new(max_keys)),
            interval,
            tolerance: interval * (rate.burst.get() - 1),
        }
    }

    /// Counts one call for `key` now; `Err` holds how long to wait when it is over its rate.
    pub fn check(&self, key: K) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    /// [`KeyedRate::check`] at a given instant.
    pub fn check_at(&self, key: K, now: Instant) -> Result<(), Duration> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = table.get(&key).copied().unwrap_or(now).max(now);
        let earliest = tat.checked_sub(self.tolerance).unwrap_or(now);
        if now < earliest {
            return Err(earliest - now);
        }
        // A full table forgets the least recently seen key.
        table.put(key, tat + self.interval);
        Ok(())
    }

    /// How many keys are tracked now.
    pub fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A `RESOURCE_EXHAUSTED` status saying `what` and, in the `retry-after-ms` metadata, how long
/// to wait.
pub fn exhausted(what: impl std::fmt::Display, retry_after: Duration) -> tonic::Status {
    let millis = retry_after.as_millis().max(1);
    let mut status = tonic::Status::resource_exhausted(format!("{what}; retry in {millis} ms"));
    if let Ok(value) = millis.to_string().parse() {
        status.metadata_mut().insert(RETRY_AFTER_MS, value);
    }
    status
}

/// One class of methods sharing one budget per user.
#[derive(Debug)]
struct Class {
    name: &'static str,
    limiter: KeyedRate<Uuid>,
}

/// Per-user budgets for classes of methods, built once and shared by every connection through
/// [`RateLayer`].
#[derive(Debug)]
pub struct RateLimits {
    classes: Vec<Class>,
    by_path: HashMap<String, usize>,
    max_users: NonZeroUsize,
}

impl RateLimits {
    /// Limits that track at most `max_users` users per class (the least recently seen are
    /// forgotten first).
    pub fn new(max_users: NonZeroUsize) -> Self {
        Self {
            classes: Vec::new(),
            by_path: HashMap::new(),
            max_users,
        }
    }

    /// Gives the methods at `paths` (full gRPC paths) one budget of `rate` per user, named
    /// `name` in refusals.
    pub fn class(mut self, name: &'static str, rate: Rate, paths: &[&str]) -> Self {
        let index = self.classes.len();
        self.classes.push(Class {
            name,
            limiter: KeyedRate::new(rate, self.max_users),
        });
        for path in paths {
            self.by_path.insert((*path).to_owned(), index);
        }
        self
    }

    fn class_of(&self, path: &str) -> Option<&Class> {
        self.by_path
            .get(path)
            .and_then(|index| self.classes.get(*index))
    }
}

/// Applies [`RateLimits`]; see the module docs.
#[derive(Debug, Clone)]
pub struct RateLayer {
    limits: Arc<RateLimits>,
}

impl RateLayer {
    /// A layer applying `limits` to every connection it wraps.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits: Arc::new(limits),
        }
    }
}

impl<S> Layer<S> for RateLayer {
    type Service = RateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateService {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// The service [`RateLayer`] wraps.
#[derive(Debug, Clone)]
pub struct RateService<S> {
    inner: S,
    limits: Arc<RateLimits>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RateService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let class = self.limits.class_of(request.uri().path());
        let user = request.extensions().get::<Caller>().map(|c| c.user_id);
        if let (Some(class), Some(user)) = (class, user)
            && let Err(retry_after) = class.limiter.check(user)
        {
            tracing::debug!(path = request.uri().path(), %user, class = class.name, "call over the user's rate");
            let status = exhausted(
                format_args!("too many {} calls for this user", class.name),
                retry_after,
            );
            return Either::Left(ready(Ok(status.into_http())));
        }
        Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_minute: u32, burst: u32) -> Rate {
        Rate {
            per_minute: NonZeroU32::new(per_minute).expect("non-zero"),
            burst: NonZeroU32::new(burst).expect("non-zero"),
        }
    }

    fn keys(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).expect("non-zero")
    }

    #[test]
    fn a_burst_then_one_call_per_interval() {
        let limiter = KeyedRate::new(rate(60, 5), keys(10));
        let start = Instant::now();
        for _ in 0..5 {
            limiter.check_at("a", start).expect("the burst");
        }
        assert_eq!(limiter.check_at("a", start), Err(Duration::from_secs(1)));
        limiter
            .check_at("b", start)
            .expect("another key has its own");
        let later = start + Duration::from_secs(1);
        limiter.check_at("a", later).expect("one interval later");
        assert!(limiter.check_at("a", later).is_err());
    }

    #[test]
    fn a_full_table_forgets_the_oldest_key_and_refuses_nobody_new() {
        let limiter = KeyedRate::new(rate(1, 1), keys(100));
        let now = Instant::now();
        limiter.check_at(0usize, now).expect("first");
        assert!(limiter.check_at(0usize, now).is_err(), "over its rate");
        for key in 1..=10_000usize {
            limiter
                .check_at(key, now)
                .expect("a new key gets its quota");
        }
        assert_eq!(limiter.tracked(), 100);
        limiter
            .check_at(0usize, now)
            .expect("forgotten, so fresh again");
    }

    #[test]
    fn exhausted_carries_the_wait_in_metadata() {
        let status = exhausted("too many writes", Duration::from_millis(1500));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status
                .metadata()
                .get(RETRY_AFTER_MS)
                .and_then(|v| v.to_str().ok()),
            Some("1500")
        );
        assert!(
            status.message().contains("retry in 1500 ms"),
            "{}",
            status.message()
        );
    }
}

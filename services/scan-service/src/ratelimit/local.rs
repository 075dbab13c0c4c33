//! The per-process fallback limiter (governor), used when Redis is unusable and
//! `RATE_LIMIT_FAIL_CLOSED=false`. Same bucket parameters as the shared one, but each instance
//! counts on its own.
//!
//! Memory stays bounded: buckets of idle clients (full again) are freed by [`LocalBuckets::sweep`],
//! which a background task runs periodically, and a limiter that still holds more than
//! `max_keys` clients after a sweep is replaced by an empty one.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock as _, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::Verdict;
use crate::config::BucketLimits;

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// In-process token buckets, one keyed limiter per distinct set of limits.
#[derive(Debug)]
pub struct LocalBuckets {
    limiters: Mutex<HashMap<BucketLimits, Arc<Keyed>>>,
    max_keys: usize,
}

impl LocalBuckets {
    /// Buckets holding at most about `max_keys` clients per set of limits.
    pub fn new(max_keys: usize) -> Self {
        Self {
            limiters: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(1),
        }
    }

    fn limiter(&self, limits: BucketLimits) -> Arc<Keyed> {
        let mut map = self.lock();
        map.entry(limits)
            .or_insert_with(|| Arc::new(new_limiter(limits)))
            .clone()
    }

    /// Takes one token from `key`'s bucket.
    pub fn take(&self, key: &str, limits: BucketLimits) -> Verdict {
        let mut limiter = self.limiter(limits);
        if limiter.len() >= self.max_keys {
            limiter.retain_recent();
            if limiter.len() >= self.max_keys {
                tracing::warn!(
                    clients = limiter.len(),
                    "fallback rate limiter is full of active clients; starting it afresh"
                );
                let fresh = Arc::new(new_limiter(limits));
                self.lock().insert(limits, fresh.clone());
                limiter = fresh;
            }
        }
        // The bucket is full again at most `missing` token periods from now (governor's
        // snapshot counts whole tokens, so the fraction of one may already be back): the
        // reset is that instant rounded up, never a second it is not full yet.
        let now = unix_now_secs_f64();
        let seconds_per_token = 60.0 / f64::from(limits.per_minute);
        match limiter.check_key(&key.to_owned()) {
            Ok(snapshot) => {
                let remaining = u64::from(snapshot.remaining_burst_capacity());
                let missing = u64::from(limits.burst).saturating_sub(remaining);
                Verdict {
                    allowed: true,
                    limit: limits.per_minute,
                    remaining,
                    reset_unix: unix_after(now, missing as f64 * seconds_per_token),
                    retry_after_secs: 0,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                Verdict {
                    allowed: false,
                    limit: limits.per_minute,
                    remaining: 0,
                    reset_unix: unix_after(now, f64::from(limits.burst) * seconds_per_token),
                    retry_after_secs: whole_seconds(wait),
                }
            }
        }
    }

    /// Frees the buckets of clients that have been idle long enough to be full again.
    pub fn sweep(&self) {
        let limiters: Vec<Arc<Keyed>> = self.lock().values().cloned().collect();
        for limiter in limiters {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// How many clients the fallback currently tracks (all limits together).
    pub fn len(&self) -> usize {
        self.lock().values().map(|l| l.len()).sum()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BucketLimits, Arc<Keyed>>> {
        // Only map look-ups happen under the lock: a poisoned map is still consistent.
        self.limiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn new_limiter(limits: BucketLimits) -> Keyed {
    let per_minute = NonZeroU32::new(limits.per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(limits.burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
        .with_middleware::<StateInformationMiddleware>()
}

/// Seconds since the Unix epoch, now, with their fraction.
pub(crate) fn unix_now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The whole Unix second at or after `secs` seconds past `now` (Unix seconds with fraction):
/// a reset stated in whole seconds that is never before the instant it stands for.
pub(crate) fn unix_after(now: f64, secs: f64) -> u64 {
    (now + secs).ceil() as u64
}

/// Whole seconds, rounded up, at least 1.
pub(crate) fn whole_seconds(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BucketLimits = BucketLimits {
        per_minute: 60,
        burst: 20,
    };

    #[test]
    fn burst_then_limited() {
        let buckets = LocalBuckets::new(1000);
        let allowed = (0..25)
            .filter(|_| buckets.take("ip:1.2.3.4", LIMITS).allowed)
            .count();
        assert_eq!(allowed, 20);
        let v = buckets.take("ip:1.2.3.4", LIMITS);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_secs, 1);
        assert_eq!(v.limit, 60);
        // Another client has its own bucket.
        let v = buckets.take("ip:5.6.7.8", LIMITS);
        assert!(v.allowed);
        assert_eq!(v.remaining, 19);
    }

    /// `X-RateLimit-Reset` is a whole second at or after the instant the bucket is full: a
    /// client that waits for it finds the whole burst there.
    #[test]
    fn the_reset_is_never_before_the_bucket_is_full() {
        let buckets = LocalBuckets::new(1000);
        let before = unix_now_secs_f64();
        let v = buckets.take("ip:1.2.3.4", LIMITS);
        // One token spent at 60 a minute: full one second after the take, not sooner.
        assert!(
            v.reset_unix as f64 >= before + 1.0,
            "{} < {before} + 1",
            v.reset_unix
        );
        for _ in 0..19 {
            buckets.take("ip:1.2.3.4", LIMITS);
        }
        let before = unix_now_secs_f64();
        let refused = buckets.take("ip:1.2.3.4", LIMITS);
        assert!(!refused.allowed);
        // Refused, the bucket is empty: full again a whole burst (20 s) after the take.
        assert!(
            refused.reset_unix as f64 >= before + 20.0,
            "{refused:?} at {before}"
        );
    }

    #[test]
    fn memory_stays_bounded_under_many_clients() {
        let buckets = LocalBuckets::new(1000);
        for i in 0..10_000u32 {
            buckets.take(&format!("ip:{i}"), LIMITS);
        }
        assert!(buckets.len() <= 1000, "{} clients kept", buckets.len());
    }

    #[test]
    fn idle_buckets_are_swept() {
        let fast = BucketLimits {
            per_minute: 6_000_000,
            burst: 1,
        };
        let buckets = LocalBuckets::new(1000);
        for i in 0..100 {
            buckets.take(&format!("ip:{i}"), fast);
        }
        // At 100 000 tokens a second a spent token is back within 10 µs.
        std::thread::sleep(Duration::from_millis(5));
        buckets.sweep();
        assert!(buckets.is_empty(), "{} clients kept", buckets.len());
    }
}

//! Rate limiting of scans (CONTRACT 2.2): a token bucket per identity, decided atomically in
//! Redis, behind a circuit breaker, with a configurable behaviour when Redis is unusable.

pub mod local;
pub mod redis;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{BreakerError, CircuitBreaker};
use metrics::{Counter, Histogram};
use uuid::Uuid;

pub use self::local::LocalBuckets;
pub use self::redis::RedisBuckets;
use crate::config::{BucketLimits, RateLimitConfig};

/// Who a bucket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// An anonymous caller, by client IP.
    Ip(IpAddr),
    /// A caller with a valid API key, by key id.
    ApiKey(Uuid),
}

/// The outcome of one decision, with what the rate-limit headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The bucket's refill per minute (`X-RateLimit-Limit`).
    pub limit: u32,
    /// Whole tokens left (`X-RateLimit-Remaining`).
    pub remaining: u64,
    /// Unix seconds when the bucket is full again (`X-RateLimit-Reset`).
    pub reset_unix: u64,
    /// When refused: whole seconds until a token is there (at least 1). 0 when allowed.
    pub retry_after_secs: u64,
}

/// No decision could be made and the service is configured to fail closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limiter unavailable; retry after {retry_after_secs} s")]
pub struct Unavailable {
    /// Whole seconds a client should wait (at least 1).
    pub retry_after_secs: u64,
    /// The caller's refill per minute.
    pub limit: u32,
    /// Unix seconds, rounded up, when the wait ends.
    pub until_unix: u64,
}

impl Unavailable {
    /// Refused for `retry_after` (the breaker's remaining open time, say) to a caller whose
    /// bucket refills `limit` a minute.
    pub fn new(retry_after: Duration, limit: u32) -> Self {
        Self {
            retry_after_secs: local::whole_seconds(retry_after),
            limit,
            until_unix: local::unix_after(local::unix_now_secs_f64(), retry_after.as_secs_f64()),
        }
    }

    /// The figures for the answer's rate-limit headers: the caller's limit, no tokens to spend,
    /// and full again (as far as anyone knows) when the wait ends: the same second for every
    /// answer while the breaker stays open, never before it may close.
    pub fn verdict(&self) -> Verdict {
        Verdict {
            allowed: false,
            limit: self.limit,
            remaining: 0,
            reset_unix: self.until_unix,
            retry_after_secs: self.retry_after_secs,
        }
    }
}

/// The limits of a key's bucket: its own `rate_limit_per_minute` when it has one, else the
/// default. An override also caps the burst at one minute's worth, so a key limited to 5 a
/// minute cannot spend the default burst of 100 at once.
pub fn key_limits(default: BucketLimits, override_per_minute: Option<u32>) -> BucketLimits {
    match override_per_minute {
        Some(per_minute) if per_minute > 0 => BucketLimits {
            per_minute,
            burst: default.burst.min(per_minute),
        },
        _ => default,
    }
}

pub use common::http::client_ip::client_network;

/// The Redis key of `identity`'s bucket under `prefix`: `<prefix>:rl:{ip:<network>}` or
/// `<prefix>:rl:{key:<id>}`, the braces a Redis Cluster hash tag.
fn bucket_key(prefix: &str, identity: Identity) -> String {
    // Sized once: `format!` would start from a guess below the key's length and grow the
    // string two or three times on every decision.
    let mut key = String::with_capacity(prefix.len() + BUCKET_KEY_EXTRA);
    // Writing to a `String` cannot fail.
    let _ = match identity {
        Identity::Ip(ip) => write!(key, "{prefix}:rl:{{ip:{}}}", client_network(ip)),
        Identity::ApiKey(id) => write!(key, "{prefix}:rl:{{key:{id}}}"),
    };
    key
}

/// The scan rate limiter.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    shared: RedisBuckets,
    local: Arc<LocalBuckets>,
    breaker: CircuitBreaker,
    config: RateLimitConfig,
    prefix: Arc<str>,
    metrics: Arc<Metrics>,
}

/// The limiter's metric handles, registered once.
#[derive(Debug)]
struct Metrics {
    redis_seconds: Histogram,
    allowed: Counter,
    limited: Counter,
    fallback: Counter,
    fail_closed: Counter,
}

impl Metrics {
    fn register() -> Self {
        let outcome = |label: &'static str| metrics::counter!("rate_limit_decisions_total", "outcome" => label);
        Self {
            redis_seconds: metrics::histogram!("rate_limit_redis_seconds"),
            allowed: outcome("allowed"),
            limited: outcome("limited"),
            fallback: outcome("fallback"),
            fail_closed: outcome("fail_closed"),
        }
    }
}

/// The longest a bucket key gets beyond its prefix: `:rl:{key:`, a hyphenated UUID and the
/// closing brace. A network's text is shorter: at most 21 characters once IPv6 is cut to /64.
const BUCKET_KEY_EXTRA: usize = 9 + 36 + 1;

/// Clients the fallback limiter tracks per set of limits before it starts afresh.
const LOCAL_MAX_CLIENTS: usize = 200_000;

impl RateLimiter {
    /// A limiter on `shared` (Redis) with `breaker` around it; keys start with `prefix`.
    pub fn new(
        shared: RedisBuckets,
        breaker: CircuitBreaker,
        config: RateLimitConfig,
        prefix: &str,
    ) -> Self {
        Self {
            shared,
            local: Arc::new(LocalBuckets::new(LOCAL_MAX_CLIENTS)),
            breaker,
            config,
            prefix: Arc::from(prefix),
            metrics: Arc::new(Metrics::register()),
        }
    }

    /// The fallback buckets (swept periodically by the service).
    pub fn local(&self) -> &Arc<LocalBuckets> {
        &self.local
    }

    /// The limits for anonymous callers.
    pub fn ip_limits(&self) -> BucketLimits {
        self.config.ip
    }

    /// The limits for a key, honouring its override.
    pub fn key_limits(&self, override_per_minute: Option<u32>) -> BucketLimits {
        key_limits(self.config.key, override_per_minute)
    }

    /// The Redis key of `identity`'s bucket. The braces are a Redis Cluster hash tag.
    pub fn bucket_key(&self, identity: Identity) -> String {
        bucket_key(&self.prefix, identity)
    }

    /// Takes one token from `identity`'s bucket. Redis errors, timeouts and an open breaker give
    /// [`Unavailable`] when failing closed, else a decision of the in-process fallback.
    pub async fn check(
        &self,
        identity: Identity,
        limits: BucketLimits,
    ) -> Result<Verdict, Unavailable> {
        let key = self.bucket_key(identity);
        let started = std::time::Instant::now();
        let outcome = self.breaker.call(self.shared.take(&key, limits)).await;
        let metrics = &*self.metrics;
        let retry_after = match outcome {
            Ok(verdict) => {
                metrics
                    .redis_seconds
                    .record(started.elapsed().as_secs_f64());
                if verdict.allowed {
                    metrics.allowed.increment(1);
                } else {
                    metrics.limited.increment(1);
                }
                return Ok(verdict);
            }
            Err(BreakerError::Inner(e)) => {
                metrics
                    .redis_seconds
                    .record(started.elapsed().as_secs_f64());
                tracing::warn!(error = %e, fail_closed = self.config.fail_closed, "rate-limit decision in Redis failed");
                Duration::from_secs(1)
            }
            Err(BreakerError::Rejected { retry_after }) => retry_after,
        };
        if self.config.fail_closed {
            metrics.fail_closed.increment(1);
            return Err(Unavailable::new(retry_after, limits.per_minute));
        }
        metrics.fallback.increment(1);
        Ok(self.local.take(&key, limits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failing closed, `X-RateLimit-Reset` is not before the wait ends (the old figure was
    /// the current whole second plus `Retry-After`, up to a second early).
    #[test]
    fn a_fail_closed_reset_is_not_before_the_wait_ends() {
        let before = local::unix_now_secs_f64();
        let refused = Unavailable::new(Duration::from_secs(1), 60).verdict();
        assert_eq!(refused.retry_after_secs, 1);
        assert!(
            refused.reset_unix as f64 >= before + 1.0,
            "{refused:?} at {before}"
        );
    }

    #[test]
    fn bucket_keys_are_sized_once() {
        let longest_v6: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        let cases = [
            (
                Identity::Ip("203.0.113.7".parse().unwrap()),
                "vt:rl:{ip:203.0.113.7}",
            ),
            (
                Identity::Ip("::ffff:203.0.113.7".parse().unwrap()),
                "vt:rl:{ip:203.0.113.7}",
            ),
            (Identity::Ip(longest_v6), "vt:rl:{ip:ffff:ffff:ffff:ffff::}"),
            (
                Identity::ApiKey(Uuid::from_u128(u128::MAX)),
                "vt:rl:{key:ffffffff-ffff-ffff-ffff-ffffffffffff}",
            ),
        ];
        for (identity, want) in cases {
            let key = bucket_key("vt", identity);
            assert_eq!(key, want);
            // The string was never grown (it would then hold more than was reserved).
            assert_eq!(key.capacity(), "vt".len() + BUCKET_KEY_EXTRA, "{key}");
        }
    }

    #[test]
    fn override_caps_the_burst() {
        let default = BucketLimits {
            per_minute: 600,
            burst: 100,
        };
        assert_eq!(key_limits(default, None), default);
        assert_eq!(
            key_limits(default, Some(5)),
            BucketLimits {
                per_minute: 5,
                burst: 5
            }
        );
        assert_eq!(
            key_limits(default, Some(6000)),
            BucketLimits {
                per_minute: 6000,
                burst: 100
            }
        );
    }
}

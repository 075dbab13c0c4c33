//! In-process token buckets: the per-client limit on the admin API and the login limits.
//!
//! The admin API is low-traffic and each client mostly talks to one instance, so an
//! in-process bucket is enough; the scan service's Redis limiter is for the public edge.
//! Buckets that have refilled completely are indistinguishable from new ones and are swept.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use common::http::client_ip::client_network;
use common::http::{ClientIp, rate_limited_response};
use tokio::time::Instant;

use crate::auth::{Claimed, Principal};
use crate::state::AppState;

/// How often idle buckets are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Most clients a set of buckets tracks at once (about 100 bytes each). Keys come from clients
/// (addresses, emails), so the map must not grow with whatever they send: when it is full, a
/// sweep runs at once, and if every bucket is still in use, the map starts afresh.
pub const MAX_KEYS: usize = 100_000;

/// The outcome of taking one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The request may proceed.
    pub allowed: bool,
    /// Whole tokens left.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub full_in: Duration,
    /// Seconds until one token is available (0 when allowed).
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets keyed by client: each starts with `burst` tokens and refills `per_sec`.
#[derive(Debug)]
pub struct Buckets {
    per_sec: f64,
    burst: f64,
    max_keys: usize,
    state: Mutex<(HashMap<String, Bucket>, Instant)>,
}

impl Buckets {
    /// Buckets of `burst` tokens refilling `per_sec` tokens a second.
    pub fn new(per_sec: f64, burst: u32) -> Self {
        Self::with_max_keys(per_sec, burst, MAX_KEYS)
    }

    /// As [`Buckets::new`], tracking at most `max_keys` clients.
    pub fn with_max_keys(per_sec: f64, burst: u32, max_keys: usize) -> Self {
        Self {
            per_sec,
            burst: f64::from(burst),
            max_keys: max_keys.max(1),
            state: Mutex::new((HashMap::new(), Instant::now())),
        }
    }

    /// The refill rate per minute (the `X-RateLimit-Limit` header).
    pub fn per_minute(&self) -> u64 {
        (self.per_sec * 60.0).round() as u64
    }

    /// Takes a token from `key`'s bucket, now.
    pub fn check(&self, key: &str) -> Decision {
        self.check_at(key, Instant::now())
    }

    /// Takes a token from `key`'s bucket at `now` (tests pass their own clock).
    pub fn check_at(&self, key: &str, now: Instant) -> Decision {
        // A poisoned lock only means another request panicked mid-update; the map is still sound.
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (buckets, last_sweep) = &mut *guard;
        let full = buckets.len() >= self.max_keys && !buckets.contains_key(key);
        if full || now.duration_since(*last_sweep) >= SWEEP_EVERY {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * per_sec < burst
            });
            *last_sweep = now;
            if buckets.len() >= self.max_keys {
                tracing::warn!(
                    clients = buckets.len(),
                    "rate-limit buckets full of active clients; starting afresh"
                );
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_sec).min(self.burst);
        bucket.updated = now;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        let secs = |tokens: f64| (tokens.max(0.0) / self.per_sec).ceil() as u64;
        Decision {
            allowed,
            remaining: bucket.tokens.floor() as u64,
            full_in: Duration::from_secs_f64((self.burst - bucket.tokens).max(0.0) / self.per_sec),
            retry_after_secs: if allowed {
                0
            } else {
                secs(1.0 - bucket.tokens).max(1)
            },
        }
    }

    /// Gives back one token to `key`'s bucket (never above the burst): for an attempt that,
    /// once finished, should not count, such as a login that succeeded.
    pub fn refund(&self, key: &str) {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = guard.0.get_mut(key) {
            bucket.tokens = (bucket.tokens + 1.0).min(self.burst);
        }
    }

    /// Number of buckets held (for tests of the sweep).
    pub fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The key an address is limited by: IPv4 as is, IPv6 by its /64, which one subscriber holds
/// whole and could otherwise rotate through for fresh buckets.
pub fn network_key(ip: IpAddr) -> String {
    client_network(ip).to_string()
}

/// Adds `X-RateLimit-Limit`, `-Remaining` and `-Reset` (Unix seconds when full).
pub fn add_headers(headers: &mut HeaderMap, per_minute: u64, decision: &Decision) {
    // The whole second at or after the instant the bucket is full, never one before it.
    let now = chrono::Utc::now().timestamp_micros().max(0) as f64 / 1e6;
    let reset = (now + decision.full_in.as_secs_f64()).ceil() as u64;
    headers.insert("x-ratelimit-limit", HeaderValue::from(per_minute));
    headers.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(decision.remaining),
    );
    headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
}

/// The bucket of a caller: the user its access token names, else its client network.
fn client_key(user: Option<&Principal>, ip: Option<&ClientIp>) -> String {
    match (user, ip) {
        (Some(p), _) => format!("user:{}", p.id),
        (None, Some(ClientIp(ip))) => format!("ip:{}", network_key(*ip)),
        (None, None) => "ip:unknown".to_owned(),
    }
}

/// Middleware: one token per request from the caller's bucket; the caller is the access
/// token's subject when a well-signed, unexpired token came (its session is confirmed after
/// this limit, see [`recharge_to_address`]), else the client IP.
pub async fn admin_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let key = client_key(
        req.extensions()
            .get::<Claimed>()
            .and_then(Claimed::principal),
        req.extensions().get::<ClientIp>(),
    );
    let limiter = &state.admin_limiter;
    let decision = limiter.check(&key);
    let mut response = if decision.allowed {
        next.run(req).await
    } else {
        metrics::counter!("admin_rate_limited_total").increment(1);
        rate_limited_response(decision.retry_after_secs)
    };
    // A refusal from an inner limiter (login attempts per IP and email, or the address of a
    // token whose session ended) carries its own Retry-After, and an answer charged to the
    // address instead carries that bucket's figures: this bucket's (tokens left) would
    // contradict them.
    let inner_refusal = decision.allowed && response.status() == StatusCode::TOO_MANY_REQUESTS;
    let inner_figures = response.headers().contains_key("x-ratelimit-limit");
    if !inner_refusal && !inner_figures {
        add_headers(response.headers_mut(), limiter.per_minute(), &decision);
    }
    response
}

/// For a request [`admin_limit`] charged to `user`, whose token turned out to belong to a
/// session that has ended: gives the user's token back and charges the client's address
/// instead, so that a revoked token (a thief's, say) cannot use up the budget of the user's
/// live sessions. The address bucket's decision, whose figures the answer shows, or the
/// seconds the 429 to answer asks to wait when the address is over its limit.
pub fn recharge_to_address(
    state: &AppState,
    user: &Principal,
    ip: Option<&ClientIp>,
) -> Result<Decision, u64> {
    let limiter = &state.admin_limiter;
    limiter.refund(&client_key(Some(user), ip));
    let decision = limiter.check(&client_key(None, ip));
    if decision.allowed {
        Ok(decision)
    } else {
        metrics::counter!("admin_rate_limited_total").increment(1);
        Err(decision.retry_after_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let b = Buckets::new(10.0, 20);
        let t0 = Instant::now();
        let passed = (0..25).filter(|_| b.check_at("k", t0).allowed).count();
        assert_eq!(passed, 20);
        let denied = b.check_at("k", t0);
        assert_eq!(denied.retry_after_secs, 1);
        assert!(b.check_at("k", t0 + Duration::from_millis(100)).allowed);
        assert!(b.check_at("other", t0).allowed);
    }

    /// `X-RateLimit-Reset` is a whole second at or after the instant the bucket is full: a
    /// client that waits for it finds the whole burst there.
    #[test]
    fn the_reset_header_is_never_before_the_bucket_is_full() {
        let buckets = Buckets::new(1.0, 20);
        let before = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        let mut headers = HeaderMap::new();
        add_headers(&mut headers, 60, &buckets.check("ip:a"));
        let reset: Option<f64> = headers
            .get("x-ratelimit-reset")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        // One token spent at one a second: full a second after the check, not sooner.
        assert!(
            reset.is_some_and(|r| r >= before + 1.0),
            "{reset:?} at {before}"
        );
    }

    #[test]
    fn idle_buckets_are_swept() {
        let b = Buckets::new(1.0, 5);
        let t0 = Instant::now();
        b.check_at("a", t0);
        b.check_at("b", t0);
        assert_eq!(b.len(), 2);
        b.check_at("c", t0 + SWEEP_EVERY);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_slash_64() {
        let a: IpAddr = "2001:db8:7:8:1::1".parse().unwrap();
        let b: IpAddr = "2001:db8:7:8:ffff::2".parse().unwrap();
        let other: IpAddr = "2001:db8:7:9::1".parse().unwrap();
        assert_eq!(network_key(a), network_key(b));
        assert_ne!(network_key(a), network_key(other));
        assert_eq!(network_key("192.0.2.4".parse().unwrap()), "192.0.2.4");
    }

    #[test]
    fn the_map_stays_bounded_whatever_keys_clients_send() {
        let b = Buckets::with_max_keys(1.0, 5, 100);
        let t0 = Instant::now();
        // Full, refilled buckets make room at once.
        for i in 0..100 {
            b.check_at(&format!("idle-{i}"), t0);
        }
        let later = t0 + Duration::from_secs(10);
        assert!(b.check_at("new", later).allowed);
        assert_eq!(b.len(), 1, "the refilled buckets were swept to make room");
        // Buckets still in use: the map starts afresh rather than growing.
        for i in 0..10_000 {
            b.check_at(&format!("busy-{i}"), later);
            assert!(b.len() <= 100);
        }
        // A tracked client is never the one that triggers a reset.
        let kept = b.len();
        b.check_at("busy-9999", later);
        assert_eq!(b.len(), kept);
    }
}

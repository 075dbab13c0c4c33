//! The shared state every handler and middleware gets: pools, keys, limiters, settings.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use common::db::RedisCallError;
use common::{BreakerError, CircuitBreaker};
use futures::FutureExt as _;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::AuditLog;
use crate::auth::{CsrfKey, EndedSessions, JwtKeys, RefreshLifetime};
use crate::catalog::bulk::BulkWork;
use crate::ratelimit::Buckets;

/// Login attempts allowed per client IP: a burst, then this many a minute.
pub const LOGIN_PER_IP_PER_MINUTE: u32 = 30;
/// Login attempts allowed per email: a burst, then this many a minute. Lower than per IP so
/// guessing one account's password is slow even from many addresses.
pub const LOGIN_PER_EMAIL_PER_MINUTE: u32 = 10;

/// Cheap to clone: everything inside is shared.
#[derive(Clone)]
pub struct AppState {
    /// PostgreSQL.
    pub pool: PgPool,
    /// Redis.
    pub redis: Redis,
    /// The audit log.
    pub audit: AuditLog,
    /// Access-token keys.
    pub jwt: Arc<JwtKeys>,
    /// CSRF key.
    pub csrf: Arc<CsrfKey>,
    /// Refresh-token and session lifetimes.
    pub refresh: RefreshLifetime,
    /// A password hash to verify unknown emails against (equal timing).
    pub dummy_hash: Arc<str>,
    /// Login limit per client IP.
    pub login_by_ip: Arc<Buckets>,
    /// Login limit per email.
    pub login_by_email: Arc<Buckets>,
    /// The admin API's per-client limit.
    pub admin_limiter: Arc<Buckets>,
    /// Sessions found ended, whose tokens are refused without a query.
    pub ended_sessions: Arc<EndedSessions>,
    /// How long idempotent results are kept.
    pub idempotency_ttl: Duration,
    /// How long an in-flight idempotency claim holds before a retry may take over (longer
    /// than any request may run, so it only lapses when the process holding it died).
    pub idempotency_lease: Duration,
    /// Largest request body (the idempotency layer buffers bodies to fingerprint them).
    pub body_limit: usize,
    /// Work a request leaves running after its answer, or after its client stopped waiting
    /// (the idempotency layer storing a result or giving a claim back; keyed writes and login
    /// attempts, which run to their end), waited for at shutdown after the requests have
    /// drained.
    pub after_answer: TaskTracker,
    /// Cancelled at shutdown once [`AppState::after_answer`]'s grace is over: keyed writes still
    /// running then are cut while the runtime can still give their claims back (dropped with
    /// the runtime, they left them to their leases: 409 to every retry for a minute).
    pub abandon: CancellationToken,
    /// Batch creates' turns (one at a time in an instance: `catalog::bulk`).
    pub batch_creates: BulkWork,
    /// Tag CSV downloads' turns (two at a time in an instance: `catalog::bulk`).
    pub tag_csv: BulkWork,
}

/// A Redis pool with the key prefix and per-call timeout of this deployment.
#[derive(Clone)]
pub struct Redis {
    /// The pool.
    pub pool: deadpool_redis::Pool,
    /// `REDIS_KEY_PREFIX`.
    pub prefix: Arc<str>,
    /// `REDIS_TIMEOUT_MS`.
    pub timeout: Duration,
    /// Around every Redis operation (`CIRCUIT_BREAKER_*`): while Redis is down, requests that
    /// need it are refused at once instead of each waiting out the timeout.
    pub breaker: CircuitBreaker,
}

impl Redis {
    /// Runs `operation` (one or more bounded Redis calls) through the breaker: its failure
    /// counts towards opening it, and while it is open the operation is not started.
    pub fn guarded<T, F>(&self, operation: F) -> impl Future<Output = Result<T, RedisCallError>>
    where
        F: Future<Output = Result<T, RedisCallError>>,
    {
        self.breaker.call(operation).map(|result| {
            result.map_err(|e| match e {
                BreakerError::Inner(e) => e,
                BreakerError::Rejected { retry_after } => RedisCallError::BreakerOpen(retry_after),
            })
        })
    }

    /// The scan service's cache key for a tag look-up: `{prefix}:tag:{<tag_id>}` (the braces
    /// are a Redis Cluster hash tag; both services build the key exactly this way).
    pub fn tag_cache_key(&self, tag_id: &str) -> String {
        format!("{}:tag:{{{tag_id}}}", self.prefix)
    }

    /// The scan service's cache key for an API key look-up: `{prefix}:apikey:{<hex SHA-256>}`.
    pub fn api_key_cache_key(&self, key_hash: &[u8]) -> String {
        format!("{}:apikey:{{{}}}", self.prefix, hex::encode(key_hash))
    }
}

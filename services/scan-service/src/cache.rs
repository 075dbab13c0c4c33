//! A short-lived Redis cache of JSON values, in front of PostgreSQL look-ups.
//!
//! Entries live `ttl` (2 s), so a revocation in the database is seen within 5 s without any
//! invalidation message. The cache is an optimisation only: a Redis error or an open breaker
//! means a miss, and writes happen off the request path.

use std::sync::Arc;
use std::time::Duration;

use common::CircuitBreaker;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::redis_conn::RedisConn;

/// How long a cached look-up is believed.
pub const TTL: Duration = Duration::from_secs(2);

/// A JSON cache in Redis.
#[derive(Debug, Clone)]
pub struct Cache {
    redis: Arc<RedisConn>,
    breaker: CircuitBreaker,
    ttl: Duration,
}

impl Cache {
    /// A cache on `redis` behind `breaker`, entries kept `ttl`.
    pub fn new(redis: Arc<RedisConn>, breaker: CircuitBreaker, ttl: Duration) -> Self {
        Self {
            redis,
            breaker,
            ttl,
        }
    }

    /// The cached value at `key`, `None` on a miss, an unreadable entry or any Redis trouble.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let raw = self
            .breaker
            .call(self.redis.run(|mut conn| async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
            }))
            .await;
        match raw {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "cache read skipped");
                None
            }
        }
    }

    /// Stores `value` at `key` in the background, so the caller never waits for the write.
    pub fn put<T: Serialize>(&self, key: String, value: &T) {
        let Ok(bytes) = serde_json::to_vec(value) else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let ttl_ms = u64::try_from(this.ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            let written = this
                .breaker
                .call(this.redis.run(|mut conn| async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(bytes)
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async::<()>(&mut conn)
                        .await
                }))
                .await;
            if let Err(e) = written {
                tracing::debug!(error = %e, "cache write skipped");
            }
        });
    }
}

//! The shared limiter: one Lua script per decision, run with `EVALSHA` (falling back to `EVAL`,
//! which also reloads the script, when Redis answers `NOSCRIPT` after a restart or
//! `SCRIPT FLUSH`).

use std::sync::Arc;

use common::db::RedisCallError;
use redis::{ErrorKind, RedisError, ServerErrorKind, Value};

use super::Verdict;
use crate::config::BucketLimits;
use crate::redis_conn::RedisConn;

const SCRIPT: &str = include_str!("token_bucket.lua");

/// Arguments of the `EVALSHA` command, its name included: the hash, the key count, the key, the
/// burst, the rate and the cost.
const COMMAND_ARGS: usize = 7;

/// Bytes of those arguments besides the key: the name, the 40-digit hash and four numbers.
const COMMAND_BYTES: usize = 80;

/// Token buckets kept in Redis, shared by every instance of the service.
#[derive(Debug, Clone)]
pub struct RedisBuckets {
    redis: Arc<RedisConn>,
    sha: Arc<str>,
}

impl RedisBuckets {
    /// Buckets on `redis`.
    pub fn new(redis: Arc<RedisConn>) -> Self {
        let sha = redis::Script::new(SCRIPT).get_hash().to_owned();
        Self {
            redis,
            sha: Arc::from(sha),
        }
    }

    /// Takes one token from the bucket at `key`: one round trip (two after a `NOSCRIPT`).
    pub async fn take(&self, key: &str, limits: BucketLimits) -> Result<Verdict, RedisCallError> {
        let sha = self.sha.clone();
        let reply: Vec<i64> = self
            .redis
            .run(|mut conn| async move {
                // Sized for the whole command at once: grown from empty, its two buffers
                // took five allocations per decision.
                let first = redis::Cmd::with_capacity(COMMAND_ARGS, COMMAND_BYTES + key.len())
                    .arg("EVALSHA")
                    .arg(&*sha)
                    .arg(1)
                    .arg(key)
                    .arg(limits.burst)
                    .arg(limits.per_minute)
                    .arg(1)
                    .query_async::<Vec<i64>>(&mut conn)
                    .await;
                match first {
                    Err(e) if is_noscript(&e) => {
                        tracing::info!(
                            "rate-limit script not cached in Redis; sending it with EVAL"
                        );
                        redis::cmd("EVAL")
                            .arg(SCRIPT)
                            .arg(1)
                            .arg(key)
                            .arg(limits.burst)
                            .arg(limits.per_minute)
                            .arg(1)
                            .query_async::<Vec<i64>>(&mut conn)
                            .await
                    }
                    other => other,
                }
            })
            .await?;
        parse(&reply, limits).ok_or_else(|| {
            RedisCallError::Redis(RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "rate-limit script returned an unexpected reply",
                format!(
                    "{:?}",
                    reply.iter().map(|v| Value::Int(*v)).collect::<Vec<_>>()
                ),
            )))
        })
    }
}

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

fn parse(reply: &[i64], limits: BucketLimits) -> Option<Verdict> {
    let [allowed, remaining, reset, retry_after] = *reply else {
        return None;
    };
    Some(Verdict {
        allowed: allowed == 1,
        limit: limits.per_minute,
        remaining: u64::try_from(remaining).ok()?,
        reset_unix: u64::try_from(reset).ok()?,
        retry_after_secs: u64::try_from(retry_after).ok()?,
    })
}

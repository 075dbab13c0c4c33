//! The Redis side of idempotency: an atomic in-flight claim with a lease, and the finished
//! result kept for `IDEMPOTENCY_TTL_SEC`.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::db::{RedisCallError, bounded};
use serde::{Deserialize, Serialize};

use super::IdempotencyKey;
use crate::state::Redis;

/// What is stored under a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Entry {
    /// A request holds the key and is running.
    Pending {
        /// Fingerprint (hex) of the request holding it.
        fp: String,
        /// Random value identifying this claim, so only its owner releases it.
        claim: String,
    },
    /// The request finished; this is its response.
    Done {
        /// Fingerprint (hex) of the request that produced it.
        fp: String,
        /// HTTP status.
        status: u16,
        /// `Content-Type`, if any.
        content_type: Option<String>,
        /// Body, base64: sealed with the request's [`super::SealKey`] when `sealed`.
        body: String,
        /// Whether `body` is sealed (false only for results stored before sealing).
        #[serde(default)]
        sealed: bool,
    },
}

/// A finished response as stored.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`, if any.
    pub content_type: Option<String>,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// The outcome of trying to claim a key.
#[derive(Debug)]
pub enum Claim {
    /// The key is ours until the lease runs out; the value releases it.
    Acquired(String),
    /// Another request with this key is running; its fingerprint.
    InFlight(String),
    /// A request with this key finished; its fingerprint and response.
    Done(String, StoredResponse),
}

fn redis_key(redis: &Redis, key: &IdempotencyKey) -> String {
    // The hash tag keeps all of one caller's keys in one Redis Cluster slot.
    format!(
        "{}:idem:{{{}}}:{}",
        redis.prefix,
        key.user_id,
        hex::encode(key.key_hash)
    )
}

/// Claims `key` for `lease` (SET NX), or reports who has it. Through the Redis breaker, like
/// every operation here.
pub async fn claim(
    redis: &Redis,
    key: &IdempotencyKey,
    lease: Duration,
) -> Result<Claim, RedisCallError> {
    redis.guarded(try_claim(redis, key, lease)).await
}

async fn try_claim(
    redis: &Redis,
    key: &IdempotencyKey,
    lease: Duration,
) -> Result<Claim, RedisCallError> {
    let name = redis_key(redis, key);
    let mut claim_id = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut claim_id);
    let pending = Entry::Pending {
        fp: hex::encode(key.fingerprint),
        claim: hex::encode(claim_id),
    };
    let value = serde_json::to_string(&pending).unwrap_or_default();
    let mut conn = bounded(redis.timeout, redis.pool.get()).await?;
    // A key that expires between SET NX and GET is simply claimed on the next turn.
    for _ in 0..3 {
        let set = bounded(
            redis.timeout,
            redis::cmd("SET")
                .arg(&name)
                .arg(&value)
                .arg("NX")
                .arg("PX")
                .arg(lease.as_millis() as u64)
                .query_async::<Option<String>>(&mut conn),
        )
        .await;
        let set = match set {
            Ok(set) => set,
            // No answer in time (ours or the client's own response timeout), or a broken
            // connection: the `SET` may have been carried out all the same.
            Err(e) => {
                withdraw(conn, name, value, lease);
                return Err(e);
            }
        };
        if set.is_some() {
            return Ok(Claim::Acquired(value));
        }
        let current: Option<String> = bounded(
            redis.timeout,
            redis::cmd("GET").arg(&name).query_async(&mut conn),
        )
        .await?;
        match current.as_deref().map(serde_json::from_str::<Entry>) {
            None => continue,
            Some(Ok(Entry::Pending { fp, .. })) => return Ok(Claim::InFlight(fp)),
            Some(Ok(Entry::Done {
                fp,
                status,
                content_type,
                body,
                sealed,
            })) => {
                let body = STANDARD.decode(body).unwrap_or_default();
                // A sealed result opens only for the request that produced it. Another
                // request's result is answered 422 by its fingerprint alone, body unread.
                let body = if sealed && fp == hex::encode(key.fingerprint) {
                    match key.open_body(&body) {
                        Some(body) => body,
                        // Tampered with: never run the request again over it.
                        None => return Ok(Claim::InFlight(fp)),
                    }
                } else {
                    body
                };
                return Ok(Claim::Done(
                    fp,
                    StoredResponse {
                        status,
                        content_type,
                        body,
                    },
                ));
            }
            // Not ours to interpret: treat as in flight rather than run the request twice.
            Some(Err(_)) => return Ok(Claim::InFlight(hex::encode(key.fingerprint))),
        }
    }
    Ok(Claim::InFlight(hex::encode(key.fingerprint)))
}

/// Takes back a claim whose `SET` failed without an answer (a timeout, a broken connection):
/// Redis may still carry it out (it was slow, or its answer was), and the claim would then hold
/// the key for its whole lease with no run behind it, every retry answered 409 (soak). Sent on
/// the connection the `SET` went out on, so Redis runs it after the `SET`; it deletes the key
/// only if our claim holds it, so it is harmless when the `SET` was not carried out.
fn withdraw(
    mut conn: deadpool_redis::Connection,
    name: String,
    claim_value: String,
    lease: Duration,
) {
    tokio::spawn(async move {
        let withdrawn = tokio::time::timeout(
            lease,
            RELEASE
                .key(&name)
                .arg(&claim_value)
                .invoke_async::<i64>(&mut conn),
        )
        .await;
        match withdrawn {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "a timed-out idempotency claim not withdrawn; it expires with its lease");
            }
            Err(_) => tracing::warn!(
                "a timed-out idempotency claim not withdrawn in its lease; it has expired"
            ),
        }
    });
}

/// Gives an in-flight claim back if it is still ours (`release.lua`).
static RELEASE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("release.lua")));

/// Stores the finished response for `ttl` in place of our claim `claim_value`. Returns
/// `false` (and changes nothing) when the claim no longer holds the key: its lease ran out, so
/// the key may now belong to another run or hold that run's result, which must stay.
pub async fn complete(
    redis: &Redis,
    key: &IdempotencyKey,
    claim_value: &str,
    response: &StoredResponse,
    ttl: Duration,
) -> Result<bool, RedisCallError> {
    redis
        .guarded(try_complete(redis, key, claim_value, response, ttl))
        .await
}

async fn try_complete(
    redis: &Redis,
    key: &IdempotencyKey,
    claim_value: &str,
    response: &StoredResponse,
    ttl: Duration,
) -> Result<bool, RedisCallError> {
    static COMPLETE: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(include_str!("complete.lua")));
    let Ok(sealed) = key.seal_body(&response.body) else {
        // The claim lapses with its lease; a retry replays from PostgreSQL.
        tracing::error!("an idempotent result could not be sealed; not kept in Redis");
        return Ok(false);
    };
    let done = Entry::Done {
        fp: hex::encode(key.fingerprint),
        status: response.status,
        content_type: response.content_type.clone(),
        body: STANDARD.encode(sealed),
        sealed: true,
    };
    let value = serde_json::to_string(&done).unwrap_or_default();
    let mut conn = bounded(redis.timeout, redis.pool.get()).await?;
    bounded(
        redis.timeout,
        COMPLETE
            .key(redis_key(redis, key))
            .arg(claim_value)
            .arg(value)
            .arg(ttl.as_millis() as u64)
            .invoke_async::<i64>(&mut conn),
    )
    .await
    .map(|stored| stored == 1)
}

/// Gives the key back (after a 5xx or a refusal that is not the request's result) if our claim
/// still holds it, so a retry can run.
pub async fn release(
    redis: &Redis,
    key: &IdempotencyKey,
    claim_value: &str,
) -> Result<(), RedisCallError> {
    redis.guarded(try_release(redis, key, claim_value)).await
}

async fn try_release(
    redis: &Redis,
    key: &IdempotencyKey,
    claim_value: &str,
) -> Result<(), RedisCallError> {
    let mut conn = bounded(redis.timeout, redis.pool.get()).await?;
    bounded(
        redis.timeout,
        RELEASE
            .key(redis_key(redis, key))
            .arg(claim_value)
            .invoke_async::<i64>(&mut conn),
    )
    .await
    .map(|_| ())
}

//! Keeping the scan service's Redis cache honest: when a tag or API key is revoked here, its
//! cached look-up there is dropped, so scans see the change within seconds rather than at the
//! cache's expiry.

use std::time::Duration;

use common::db::bounded;

use crate::state::Redis;

/// How long a failed drop is retried in the background before giving up (the scan service's
/// own cache expiry is then the bound).
const RETRY_FOR: Duration = Duration::from_secs(30);

/// Drops the cached look-up of `tag_id`.
pub async fn invalidate_tag(redis: &Redis, tag_id: &str) {
    invalidate(redis, redis.tag_cache_key(tag_id)).await;
}

/// Drops the cache entry `key`. Called after the change committed; if Redis does not answer,
/// the drop is retried in the background rather than failing a request whose change is
/// already durable.
pub async fn invalidate(redis: &Redis, key: String) {
    if del(redis, &key).await.is_ok() {
        return;
    }
    let redis = redis.clone();
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut wait = Duration::from_millis(100);
        while started.elapsed() < RETRY_FOR {
            tokio::time::sleep(wait).await;
            match del(&redis, &key).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "scan cache entry not dropped yet; retrying"),
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        tracing::error!(
            "scan cache entry of a revoked tag or key could not be dropped; it lives until its expiry"
        );
    });
}

async fn del(redis: &Redis, key: &str) -> Result<(), common::db::RedisCallError> {
    redis
        .guarded(async {
            let mut conn = bounded(redis.timeout, redis.pool.get()).await?;
            bounded(
                redis.timeout,
                redis::cmd("DEL").arg(key).query_async::<i64>(&mut conn),
            )
            .await
            .map(|_| ())
        })
        .await
}

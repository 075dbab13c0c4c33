//! SQL for the `idempotency_keys` table: the durable record written in the action's own
//! transaction.

use std::time::Duration;

use sqlx::PgConnection;

use super::IdempotencyKey;

/// A result recorded by an earlier run with the same key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Recorded {
    /// Fingerprint of the request that produced it.
    pub fingerprint: Vec<u8>,
    /// HTTP status.
    pub status: i16,
    /// JSON body, for a result recorded before results were sealed.
    pub body: Option<serde_json::Value>,
    /// The JSON body sealed with the request's [`super::SealKey`].
    pub sealed_body: Option<Vec<u8>>,
}

/// The live (unexpired) record for this caller and key.
pub async fn find(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
) -> Result<Option<Recorded>, sqlx::Error> {
    sqlx::query_as(
        "SELECT fingerprint, status, body, sealed_body FROM idempotency_keys \
         WHERE user_id = $1 AND key_hash = $2 AND expires_at > now()",
    )
    .bind(key.user_id)
    .bind(&key.key_hash[..])
    .fetch_optional(conn)
    .await
}

/// Records the result, `sealed_body` sealed by [`IdempotencyKey::seal_body`]; `false` when a
/// live record already exists (another run committed first, in which case the caller must roll back). An expired record is replaced.
pub async fn save(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    ttl: Duration,
    status: u16,
    sealed_body: &[u8],
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO idempotency_keys \
             (user_id, key_hash, fingerprint, status, sealed_body, expires_at) \
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) \
         ON CONFLICT (user_id, key_hash) DO UPDATE \
         SET fingerprint = EXCLUDED.fingerprint, status = EXCLUDED.status, body = NULL, \
             sealed_body = EXCLUDED.sealed_body, \
             created_at = now(), expires_at = EXCLUDED.expires_at \
         WHERE idempotency_keys.expires_at <= now()",
    )
    .bind(key.user_id)
    .bind(&key.key_hash[..])
    .bind(&key.fingerprint[..])
    .bind(status as i16)
    .bind(sealed_body)
    .bind(ttl.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes expired records; returns how many.
pub async fn sweep(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= now()")
        .execute(conn)
        .await
        .map(|r| r.rows_affected())
}

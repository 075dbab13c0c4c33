//! SQL for `api_keys`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{ApiKeySummary, RevokedApiKey};

/// One key row, with its hash (never leaves the service).
#[derive(Debug, sqlx::FromRow)]
pub struct KeyRow {
    /// Revocation time, if revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// SHA-256 of the key.
    pub key_hash: Vec<u8>,
}

/// Inserts a key; `None` when the prefix is taken (draw another).
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    name: &str,
    prefix: &str,
    key_hash: &[u8; 32],
    rate_limit_per_minute: Option<i32>,
    created_by: Uuid,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO api_keys (id, name, prefix, key_hash, rate_limit_per_minute, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (prefix) DO NOTHING RETURNING created_at",
    )
    .bind(id)
    .bind(name)
    .bind(prefix)
    .bind(&key_hash[..])
    .bind(rate_limit_per_minute)
    .bind(created_by)
    .fetch_optional(conn)
    .await
}

/// Every key, newest first.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<ApiKeySummary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, prefix, created_at, revoked_at \
         FROM api_keys ORDER BY created_at DESC, id DESC",
    )
    .fetch_all(conn)
    .await
}

/// One key, with its hash.
pub async fn find(conn: &mut PgConnection, id: Uuid) -> Result<Option<KeyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, prefix, rate_limit_per_minute, created_at, revoked_at, key_hash \
         FROM api_keys WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Revokes an active key; `None` when it does not exist or is already revoked.
pub async fn revoke(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<RevokedApiKey>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL \
         RETURNING id, revoked_at, key_hash",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

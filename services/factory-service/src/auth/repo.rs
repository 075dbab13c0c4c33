//! SQL for users, refresh-token families and refresh tokens.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A user row as sign-in needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    /// Id.
    pub id: Uuid,
    /// Email.
    pub email: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
    /// Set when the account is disabled.
    pub disabled_at: Option<DateTime<Utc>>,
}

/// The user with this (normalized) email.
pub async fn user_by_email(
    conn: &mut PgConnection,
    email: &str,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, email, password_hash, role, disabled_at FROM users WHERE email = $1")
        .bind(email)
        .fetch_optional(conn)
        .await
}

/// Locks the user's row (`FOR SHARE`, until the transaction ends) if they are still enabled
/// with this password hash; false when the account changed since it was read.
pub async fn lock_unchanged_user(
    conn: &mut PgConnection,
    user_id: Uuid,
    password_hash: &str,
) -> Result<bool, sqlx::Error> {
    let found: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM users WHERE id = $1 AND password_hash = $2 AND disabled_at IS NULL FOR SHARE",
    )
    .bind(user_id)
    .bind(password_hash)
    .fetch_optional(conn)
    .await?;
    Ok(found.is_some())
}

/// Starts a family bound to `device_id`, at `created_at` (the login; its session's lifetime
/// counts from it).
pub async fn insert_family(
    conn: &mut PgConnection,
    id: Uuid,
    user_id: Uuid,
    device_id: &str,
    created_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO refresh_families (id, user_id, device_id, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(user_id)
    .bind(device_id)
    .bind(created_at)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Adds a token (by its hash) to a family.
pub async fn insert_token(
    conn: &mut PgConnection,
    family_id: Uuid,
    token_hash: &[u8; 32],
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO refresh_tokens (id, family_id, token_hash, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(Uuid::now_v7())
        .bind(family_id)
        .bind(&token_hash[..])
        .bind(expires_at)
        .execute(conn)
        .await
        .map(|_| ())
}

/// A presented refresh token with its family and user, as refresh and logout need it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PresentedToken {
    /// The token row's id.
    pub token_id: Uuid,
    /// Its family.
    pub family_id: Uuid,
    /// Already exchanged for a newer token.
    pub rotated: bool,
    /// Past its expiry.
    pub expired: bool,
    /// The family was revoked (reuse, device mismatch, logout).
    pub family_revoked: bool,
    /// The family's login, from which the session's lifetime counts.
    pub session_started_at: DateTime<Utc>,
    /// The device the family is bound to.
    pub device_id: String,
    /// The user.
    pub user_id: Uuid,
    /// The user's email.
    pub email: String,
    /// The user's role.
    pub role: String,
    /// The user is disabled.
    pub user_disabled: bool,
}

/// Finds the token with this hash and locks it and its family until the transaction ends, so
/// two refreshes racing with one token cannot both rotate it.
pub async fn presented_token_for_update(
    conn: &mut PgConnection,
    token_hash: &[u8; 32],
) -> Result<Option<PresentedToken>, sqlx::Error> {
    sqlx::query_as(include_str!("sql/presented_token.sql"))
        .bind(&token_hash[..])
        .fetch_optional(conn)
        .await
}

/// Marks a token as exchanged; `false` if it already was.
pub async fn mark_rotated(conn: &mut PgConnection, token_id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE refresh_tokens SET rotated_at = now() WHERE id = $1 AND rotated_at IS NULL",
    )
    .bind(token_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Revokes a whole family (every token in it stops working).
pub async fn revoke_family(
    conn: &mut PgConnection,
    family_id: Uuid,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE refresh_families SET revoked_at = now(), revoked_reason = $2 \
         WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(family_id)
    .bind(reason)
    .execute(conn)
    .await
    .map(|_| ())
}

/// The user of a session that still lasts, as an access token of it may act now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionHolder {
    /// The user's email now.
    pub email: String,
    /// The user's role now.
    pub role: String,
}

/// The user of session (family) `family_id` when it belongs to `user_id`, is not revoked, and
/// the user is not disabled; `None` when the session has ended (signed out, revoked for reuse
/// or a device mismatch, swept after its tokens expired) or the user was disabled.
pub async fn live_session(
    pool: &PgPool,
    family_id: Uuid,
    user_id: Uuid,
) -> Result<Option<SessionHolder>, sqlx::Error> {
    sqlx::query_as(
        "SELECT u.email, u.role FROM refresh_families f JOIN users u ON u.id = f.user_id \
         WHERE f.id = $1 AND f.user_id = $2 AND f.revoked_at IS NULL AND u.disabled_at IS NULL",
    )
    .bind(family_id)
    .bind(user_id)
    .fetch_optional(pool)
    .await
}

/// Deletes families whose every token has expired: nothing in them can be used or reused
/// any more (the audit log keeps what happened). Returns how many.
pub async fn delete_expired_families(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "DELETE FROM refresh_families f \
         WHERE NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.family_id = f.id AND t.expires_at > now())",
    )
    .execute(conn)
    .await
    .map(|r| r.rows_affected())
}

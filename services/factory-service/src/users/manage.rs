//! Changing users after they were created: disable and enable, role, password, ending their
//! sessions, and listing them. Each change commits with its audit event, in one transaction
//! that holds the user's row. Disabling, enabling or setting a role that would change nothing
//! writes no event; setting a password and ending sessions always do (the operator's act is
//! recorded, with the sessions it ended).

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{Role, check_password, normalize_email};
use crate::audit::{Actor, AuditLog, NewEvent};
use crate::auth::password;

/// Why a change could not be made.
#[derive(Debug, thiserror::Error)]
pub enum UserChangeError {
    /// The email given is not an address at all.
    #[error("{0:?} is not an email address")]
    InvalidEmail(String),
    /// No user has this (normalized) email.
    #[error("no user has the email {0}")]
    NoSuchUser(String),
    /// The new password breaks a rule.
    #[error("the password is {0}")]
    InvalidPassword(String),
    /// Hashing the new password failed.
    #[error("hashing the password: {0}")]
    Hashing(String),
    /// PostgreSQL failed or refused.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// A user as `user list` shows them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserSummary {
    /// The user's id.
    pub id: Uuid,
    /// Their email.
    pub email: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
    /// When they were created.
    pub created_at: DateTime<Utc>,
    /// When they were disabled, if they are.
    pub disabled_at: Option<DateTime<Utc>>,
    /// Sessions that could still be refreshed.
    pub live_sessions: i64,
}

/// Every user, by email.
pub async fn list(pool: &PgPool) -> Result<Vec<UserSummary>, sqlx::Error> {
    sqlx::query_as(include_str!("sql/list.sql"))
        .fetch_all(pool)
        .await
}

/// What disabling did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disabled {
    /// Disabled now; this many live sessions ended with it.
    Now {
        /// Live sessions ended.
        sessions_ended: i64,
        /// Admins still able to sign in.
        active_admins_left: i64,
    },
    /// Already disabled since then; nothing changed.
    Already(DateTime<Utc>),
}

/// Disables the user of `email`: they cannot sign in, and every session of theirs ends (their
/// refresh and access tokens stop working at once). Audited as `user.disabled`.
pub async fn disable(
    pool: &PgPool,
    audit: &AuditLog,
    email: &str,
) -> Result<Disabled, UserChangeError> {
    let mut tx = pool.begin().await?;
    let user = lock_user(&mut tx, email).await?;
    if let Some(since) = user.disabled_at {
        return Ok(Disabled::Already(since));
    }
    // Ended here rather than by the trigger the update fires, so they can be counted.
    let sessions_ended = end_sessions_of(&mut tx, user.id, "user_disabled").await?;
    sqlx::query("UPDATE users SET disabled_at = now() WHERE id = $1")
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    let event = NewEvent::new("user.disabled", Actor::System)
        .target("user", user.id)
        .details(serde_json::json!({"email": user.email, "sessions_ended": sessions_ended}));
    audit.append(&mut tx, event).await?;
    let active_admins_left = active_admins(&mut tx).await?;
    tx.commit().await?;
    Ok(Disabled::Now {
        sessions_ended,
        active_admins_left,
    })
}

/// Lets a disabled user sign in again (their old sessions stay ended). Audited as
/// `user.enabled`. Returns whether anything changed.
pub async fn enable(pool: &PgPool, audit: &AuditLog, email: &str) -> Result<bool, UserChangeError> {
    let mut tx = pool.begin().await?;
    let user = lock_user(&mut tx, email).await?;
    if user.disabled_at.is_none() {
        return Ok(false);
    }
    sqlx::query("UPDATE users SET disabled_at = NULL WHERE id = $1")
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    let event = NewEvent::new("user.enabled", Actor::System)
        .target("user", user.id)
        .details(serde_json::json!({"email": user.email}));
    audit.append(&mut tx, event).await?;
    tx.commit().await?;
    Ok(true)
}

/// What a role change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleChange {
    /// Changed from this role; tokens already issued act with the new one from their next
    /// request.
    Changed {
        /// The role before.
        from: String,
        /// Admins still able to sign in.
        active_admins_left: i64,
    },
    /// The user already had the role.
    Unchanged,
}

/// Gives the user of `email` the role `role`. Audited as `user.role_changed`.
pub async fn set_role(
    pool: &PgPool,
    audit: &AuditLog,
    email: &str,
    role: Role,
) -> Result<RoleChange, UserChangeError> {
    let mut tx = pool.begin().await?;
    let user = lock_user(&mut tx, email).await?;
    if user.role == role.as_str() {
        return Ok(RoleChange::Unchanged);
    }
    sqlx::query("UPDATE users SET role = $2 WHERE id = $1")
        .bind(user.id)
        .bind(role.as_str())
        .execute(&mut *tx)
        .await?;
    let event = NewEvent::new("user.role_changed", Actor::System)
        .target("user", user.id)
        .details(serde_json::json!({"email": user.email, "from": user.role, "to": role.as_str()}));
    audit.append(&mut tx, event).await?;
    let active_admins_left = active_admins(&mut tx).await?;
    tx.commit().await?;
    Ok(RoleChange::Changed {
        from: user.role,
        active_admins_left,
    })
}

/// Sets a new password for the user of `email` and ends every session of theirs (whoever knew
/// the old password is signed out). Audited as `user.password_changed`, without the password.
/// Returns the number of live sessions ended.
pub async fn set_password(
    pool: &PgPool,
    audit: &AuditLog,
    email: &str,
    new_password: &SecretString,
) -> Result<i64, UserChangeError> {
    // Checked and hashed before the transaction: hashing takes a while, and holds no row.
    let normalized = normalize(email)?;
    check_password(new_password.expose_secret()).map_err(UserChangeError::InvalidPassword)?;
    let hash = password::hash(new_password.clone())
        .await
        .map_err(|e| UserChangeError::Hashing(e.to_string()))?;
    let mut tx = pool.begin().await?;
    let user = lock_user(&mut tx, &normalized).await?;
    sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
        .bind(user.id)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
    let sessions_ended = end_sessions_of(&mut tx, user.id, "password_changed").await?;
    let event = NewEvent::new("user.password_changed", Actor::System)
        .target("user", user.id)
        .details(serde_json::json!({"email": user.email, "sessions_ended": sessions_ended}));
    audit.append(&mut tx, event).await?;
    tx.commit().await?;
    Ok(sessions_ended)
}

/// Ends every session of the user of `email` (a lost laptop, say) without disabling them:
/// they sign in again. Audited as `user.sessions_ended`. Returns the number of live sessions
/// ended.
pub async fn end_sessions(
    pool: &PgPool,
    audit: &AuditLog,
    email: &str,
) -> Result<i64, UserChangeError> {
    let mut tx = pool.begin().await?;
    let user = lock_user(&mut tx, email).await?;
    let sessions_ended = end_sessions_of(&mut tx, user.id, "ended_by_operator").await?;
    let event = NewEvent::new("user.sessions_ended", Actor::System)
        .target("user", user.id)
        .details(serde_json::json!({"email": user.email, "sessions_ended": sessions_ended}));
    audit.append(&mut tx, event).await?;
    tx.commit().await?;
    Ok(sessions_ended)
}

#[derive(Debug, sqlx::FromRow)]
struct LockedUser {
    id: Uuid,
    email: String,
    role: String,
    disabled_at: Option<DateTime<Utc>>,
}

fn normalize(email: &str) -> Result<String, UserChangeError> {
    normalize_email(email).map_err(|_| UserChangeError::InvalidEmail(email.to_owned()))
}

/// The user of `email`, their row locked until the transaction ends, so concurrent changes to
/// them (and logins' and refreshes' checks of them, `FOR SHARE`) go one at a time.
///
/// `FOR NO KEY UPDATE`, the lock an `UPDATE` of the columns changed here takes, not `FOR
/// UPDATE`: the user's own writes reference the row (`api_keys.created_by`,
/// `idempotency_keys.user_id`), and each such insert takes `FOR KEY SHARE` on it, which only
/// `FOR UPDATE` conflicts with. With `FOR UPDATE`, a change waited behind a stream of those
/// writes (minutes, while the account it was to stop kept writing), and deadlocked with a keyed
/// write, which holds the audit chain's head before it records its key, while the change holds
/// the user before it appends its own audit event.
async fn lock_user(
    tx: &mut Transaction<'_, Postgres>,
    email: &str,
) -> Result<LockedUser, UserChangeError> {
    let email = normalize(email)?;
    sqlx::query_as(
        "SELECT id, email, role, disabled_at FROM users WHERE email = $1 FOR NO KEY UPDATE",
    )
    .bind(&email)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(UserChangeError::NoSuchUser(email))
}

/// Revokes every session of the user still open, for `reason`; returns how many of them were
/// live (a token in them could still be refreshed), not counting those that had lapsed.
async fn end_sessions_of(
    conn: &mut PgConnection,
    user_id: Uuid,
    reason: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(include_str!("sql/end_sessions.sql"))
        .bind(user_id)
        .bind(reason)
        .fetch_one(conn)
        .await
}

/// Admins who can still sign in.
async fn active_admins(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM users WHERE role = 'admin' AND disabled_at IS NULL")
        .fetch_one(conn)
        .await
}

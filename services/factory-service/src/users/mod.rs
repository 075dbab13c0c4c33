//! Admin users: roles, email and password rules, creation (CLI, bootstrap, tests), and the
//! operator's changes to them (`manage`, run by `factory-service user ...`).

pub mod command;
pub mod manage;

use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::audit::{Actor, AuditLog, NewEvent};
use crate::auth::password;
use crate::error::FactoryError;

/// What a user may do: `admin` everything, `operator` the catalog, `viewer` read only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including API keys and the audit log.
    Admin,
    /// Products, batches and tags.
    Operator,
    /// Reads only.
    Viewer,
}

impl Role {
    /// The name stored in `users.role` and carried in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Self::Admin),
            "operator" => Ok(Self::Operator),
            "viewer" => Ok(Self::Viewer),
            _ => Err(format!(
                "unknown role {s:?} (expected admin, operator or viewer)"
            )),
        }
    }
}

/// An email address as accounts are stored and found (trimmed, lower-cased, in Unicode
/// normalization form C: [`crate::text::email`]); the error says what is wrong.
pub fn normalize_email(raw: &str) -> Result<String, String> {
    crate::text::email(raw).ok_or_else(|| "not an email address".to_owned())
}

/// Checks a new password's length; the error says what is wrong.
pub fn check_password(password: &str) -> Result<(), String> {
    match password.chars().count() {
        0..12 => Err("shorter than 12 characters".to_owned()),
        12..=1024 => Ok(()),
        _ => Err("longer than 1024 characters".to_owned()),
    }
}

/// A user as created.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The new user's id.
    pub id: Uuid,
    /// Their (normalized) email.
    pub email: String,
    /// Their role.
    pub role: Role,
}

/// Creates a user with an argon2id hash of `password`, audited as `user.created` by `actor`.
pub async fn create_user(
    pool: &PgPool,
    audit: &AuditLog,
    email: &str,
    password: &SecretString,
    role: Role,
    actor: Actor,
) -> Result<NewUser, FactoryError> {
    let email = normalize_email(email).map_err(FactoryError::validation)?;
    check_password(password.expose_secret())
        .map_err(|p| FactoryError::validation(format!("The password is {p}.")))?;
    let hash = password::hash(password.clone()).await?;
    let mut tx = pool.begin().await?;
    let user = insert_user(&mut tx, &email, &hash, role)
        .await
        .map_err(|e| match e {
            FactoryError::Database(db)
                if db
                    .as_database_error()
                    .is_some_and(|d| d.is_unique_violation()) =>
            {
                FactoryError::Conflict {
                    code: "email_taken",
                    detail: format!("A user with the email {email} already exists."),
                }
            }
            other => other,
        })?;
    audit_created(&mut tx, audit, &user, actor).await?;
    tx.commit().await?;
    Ok(user)
}

/// Creates the bootstrap admin when no user exists yet; returns whether one was created.
/// Safe to run from several instances at once: the check and insert hold an advisory lock.
pub async fn bootstrap_admin(
    pool: &PgPool,
    audit: &AuditLog,
    email: &str,
    password: &SecretString,
) -> Result<bool, FactoryError> {
    const BOOTSTRAP_LOCK: i64 = 0x766b_7462_6f6f_7473; // "vktboots"
    let hash = password::hash(password.clone()).await?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(BOOTSTRAP_LOCK)
        .execute(&mut *tx)
        .await?;
    let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users)")
        .fetch_one(&mut *tx)
        .await?;
    if any {
        return Ok(false);
    }
    let user = insert_user(&mut tx, email, &hash, Role::Admin).await?;
    audit_created(&mut tx, audit, &user, Actor::System).await?;
    tx.commit().await?;
    Ok(true)
}

async fn insert_user(
    conn: &mut PgConnection,
    email: &str,
    hash: &str,
    role: Role,
) -> Result<NewUser, FactoryError> {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO users (id, email, password_hash, role) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(email)
        .bind(hash)
        .bind(role.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(NewUser {
        id,
        email: email.to_owned(),
        role,
    })
}

async fn audit_created(
    conn: &mut PgConnection,
    audit: &AuditLog,
    user: &NewUser,
    actor: Actor,
) -> Result<(), FactoryError> {
    let event = NewEvent::new("user.created", actor)
        .target("user", user.id)
        .details(serde_json::json!({"email": user.email, "role": user.role.as_str()}));
    audit.append(conn, event).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(normalize_email(" A@B.example ").unwrap(), "a@b.example");
        assert!(normalize_email("@b").is_err());
        assert!(normalize_email("a@").is_err());
        assert!(normalize_email("a b@c").is_err());
    }

    #[test]
    fn passwords() {
        assert!(check_password("short").is_err());
        assert!(check_password("long enough pw").is_ok());
    }

    #[test]
    fn roles_round_trip() {
        for r in [Role::Admin, Role::Operator, Role::Viewer] {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
    }
}

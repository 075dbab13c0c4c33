//! API keys for the scan service (CONTRACT 3.2): generated here, shown once, stored as a hash.
//!
//! A key reads `vt_<prefix>_<secret>`: an 8-character base62 prefix (stored in clear, so
//! operators can tell keys apart) and 43 base64url characters (256 bits) from the OS CSPRNG.
//! The database keeps `key_hash = SHA-256(whole key string)`; the scan service hashes the key it
//! receives the same way and looks the hash up.

pub mod repo;
pub mod routes;

use chrono::{DateTime, Utc};
use rand::Rng as _;
use rand::distributions::Alphanumeric;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::{AuditLog, NewEvent};
use crate::auth::tokens::sha256;
use crate::auth::{ClientInfo, Principal};
use crate::error::FactoryError;

/// Largest per-key override of the scan rate limit.
pub const MAX_RATE_LIMIT_PER_MINUTE: i32 = 1_000_000;

/// Body of `POST /v1/api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// A name to recognise the key by: 1 to 200 characters (Unicode code points) once surrounding
    /// whitespace is trimmed, one line; a value with nothing visible (whitespace only, zero-width
    /// characters) is refused, as are control, bidirectional-control and noncharacter code points.
    /// Stored trimmed.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Override of the scan service's per-key rate (requests per minute, 1 to 1,000,000).
    /// Read as any JSON integer, so that an out-of-range one gets the range in its 400.
    #[schema(minimum = 1, maximum = 1000000)]
    pub rate_limit_per_minute: Option<i64>,
}

impl NewApiKey {
    /// The trimmed name and the rate, or the 400 the route answers when the name or rate is
    /// out of bounds.
    pub fn validate(&self) -> Result<(&str, Option<i32>), FactoryError> {
        let name = crate::text::line("name", &self.name, 200)?;
        let rate = match self.rate_limit_per_minute {
            None => None,
            Some(rate) => match i32::try_from(rate) {
                Ok(rate) if (1..=MAX_RATE_LIMIT_PER_MINUTE).contains(&rate) => Some(rate),
                _ => {
                    return Err(FactoryError::validation(format!(
                        "`rate_limit_per_minute` must be 1 to {MAX_RATE_LIMIT_PER_MINUTE}."
                    )));
                }
            },
        };
        Ok((name, rate))
    }
}

/// A newly created key: the only time `key` is shown. No `Debug`, so it cannot be logged.
#[derive(Serialize, ToSchema)]
pub struct CreatedApiKey {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// The public prefix (`vt_XXXXXXXX`).
    pub prefix: String,
    /// The whole key. Store it now: the server keeps only its hash.
    pub key: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A key as listed (no secret).
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ApiKeySummary {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// The public prefix.
    pub prefix: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Revocation time; null unless revoked.
    #[schema(required = true)]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The answer to a revocation.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct RevokedApiKey {
    /// Id.
    pub id: Uuid,
    /// When it was revoked.
    pub revoked_at: DateTime<Utc>,
    /// SHA-256 of the key, to drop the scan service's cached look-up (not serialized).
    #[serde(skip)]
    #[schema(ignore)]
    pub key_hash: Vec<u8>,
}

/// A fresh key: its stored prefix (`vt_` + 8 base62) and the full key string.
pub fn generate() -> (String, String) {
    let mut rng = rand::rngs::OsRng;
    let short: String = (0..8)
        .map(|_| char::from(rng.sample(Alphanumeric)))
        .collect();
    let secret = crate::auth::tokens::new_refresh_token();
    let prefix = format!("vt_{short}");
    let key = format!("{prefix}_{secret}");
    (prefix, key)
}

/// Creates a key, audited as `api_key.created`.
pub async fn create(
    conn: &mut PgConnection,
    audit: &AuditLog,
    by: &Principal,
    client: &ClientInfo,
    input: NewApiKey,
) -> Result<CreatedApiKey, FactoryError> {
    let (name, rate_limit_per_minute) = input.validate()?;
    let name = name.to_owned();
    // A prefix collision (1 in 62^8) just draws again.
    for _ in 0..5 {
        let (prefix, key) = generate();
        let id = Uuid::now_v7();
        let row = repo::insert(
            conn,
            id,
            &name,
            &prefix,
            &sha256(&key),
            rate_limit_per_minute,
            by.id,
        )
        .await?;
        if let Some(created_at) = row {
            let event = NewEvent::new("api_key.created", by.actor())
                .target("api_key", id)
                .client(client.ip.clone(), client.user_agent.clone())
                .details(serde_json::json!({
                    "name": name,
                    "prefix": prefix,
                    // null: the scan service's default for keys applies.
                    "rate_limit_per_minute": rate_limit_per_minute,
                }));
            audit.append(conn, event).await?;
            return Ok(CreatedApiKey {
                id,
                name,
                prefix,
                key,
                created_at,
            });
        }
    }
    Err(FactoryError::Internal(
        "could not draw a free API key prefix".to_owned(),
    ))
}

/// Revokes a key, audited as `api_key.revoked`. Revoking a revoked key answers its
/// revocation again without a new event.
pub async fn revoke(
    conn: &mut PgConnection,
    audit: &AuditLog,
    by: &Principal,
    client: &ClientInfo,
    id: Uuid,
) -> Result<RevokedApiKey, FactoryError> {
    if let Some(revoked) = repo::revoke(conn, id).await? {
        let event = NewEvent::new("api_key.revoked", by.actor())
            .target("api_key", id)
            .client(client.ip.clone(), client.user_agent.clone());
        audit.append(conn, event).await?;
        return Ok(revoked);
    }
    match repo::find(conn, id).await? {
        Some(repo::KeyRow {
            revoked_at: Some(revoked_at),
            key_hash,
        }) => Ok(RevokedApiKey {
            id,
            revoked_at,
            key_hash,
        }),
        _ => Err(FactoryError::NotFound("API key")),
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_RATE_LIMIT_PER_MINUTE, NewApiKey, generate};

    #[test]
    fn validation() {
        let key = |name: &str, rate| NewApiKey {
            name: name.to_owned(),
            rate_limit_per_minute: rate,
        };
        assert_eq!(
            key(" scanner ", None).validate().unwrap(),
            ("scanner", None)
        );
        let max = i64::from(MAX_RATE_LIMIT_PER_MINUTE);
        assert_eq!(
            key("k", Some(max)).validate().unwrap(),
            ("k", Some(MAX_RATE_LIMIT_PER_MINUTE))
        );
        for bad in [0, -1, max + 1, i64::from(i32::MAX) + 1, i64::MAX, i64::MIN] {
            assert!(key("k", Some(bad)).validate().is_err(), "{bad}");
        }
        assert!(key("", None).validate().is_err());
        assert!(key(&"n".repeat(201), None).validate().is_err());
    }

    #[test]
    fn key_format() {
        let (prefix, key) = generate();
        assert_eq!(prefix.len(), 11);
        assert!(key.starts_with(&format!("{prefix}_")));
        let secret = &key[prefix.len() + 1..];
        assert!(secret.len() >= 32);
        assert!(
            secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
}

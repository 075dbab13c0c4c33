//! Tags: look-up and revocation.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{repo, tag_id};
use crate::audit::{AuditLog, NewEvent};
use crate::auth::{ClientInfo, Principal};
use crate::error::FactoryError;

/// The product a tag belongs to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProductRef {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// SKU.
    pub sku: String,
}

/// A tag with its status and scan statistics.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Tag {
    /// Tag id.
    pub tag_id: String,
    /// `authentic` or `revoked`.
    #[schema(schema_with = crate::openapi::fields::tag_status)]
    pub status: String,
    /// Its product.
    pub product: ProductRef,
    /// Its batch.
    pub batch_id: Uuid,
    /// Scans counted so far (eventually consistent).
    pub scan_count: i64,
    /// First scan (the `scanned_at` of its event, in the same form: RFC 3339 UTC with
    /// milliseconds); null before the first.
    #[serde(with = "common::timestamp::millis_opt")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    pub first_scanned_at: Option<DateTime<Utc>>,
    /// Revocation time; null unless revoked.
    #[schema(required = true)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why it was revoked; null unless revoked.
    #[schema(required = true)]
    pub revoked_reason: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /v1/tags/{tag_id}/revoke`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeTag {
    /// Why: 1 to 500 characters (Unicode code points) once surrounding whitespace is trimmed; tabs
    /// and line breaks are allowed; a value with nothing visible (whitespace only, zero-width
    /// characters) is refused, as are other control, bidirectional-control and noncharacter code
    /// points. Kept, trimmed, with the tag and in the audit log.
    #[schema(min_length = 1, max_length = 500)]
    pub reason: String,
}

impl RevokeTag {
    /// The trimmed reason, or the 400 the route answers when it is not 1 to 500 characters.
    pub fn validate(&self) -> Result<&str, FactoryError> {
        crate::text::text("reason", &self.reason, 500)
    }
}

/// A revoked tag.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct RevokedTag {
    /// Tag id.
    pub tag_id: String,
    /// Always `revoked`.
    #[schema(schema_with = crate::openapi::fields::revoked_status)]
    pub status: String,
    /// When (always set: a revoked tag has a revocation time).
    #[schema(value_type = DateTime<Utc>, required = true)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why.
    #[schema(required = true)]
    pub revoked_reason: Option<String>,
}

/// Checks a path tag id.
pub fn check_tag_id(id: &str) -> Result<(), FactoryError> {
    if tag_id::is_valid(id) {
        Ok(())
    } else {
        Err(invalid_tag_id())
    }
}

/// The 400 `invalid_tag_id` of a path that holds no tag id.
pub fn invalid_tag_id() -> FactoryError {
    FactoryError::BadRequest {
        code: "invalid_tag_id",
        detail: "A tag id is 16 to 64 characters of A-Z a-z 0-9 _ -.".to_owned(),
    }
}

/// Looks a tag up.
pub async fn find(conn: &mut PgConnection, id: &str) -> Result<Tag, FactoryError> {
    check_tag_id(id)?;
    repo::find_tag(conn, id)
        .await?
        .ok_or(FactoryError::NotFound("tag"))
}

/// Revokes a tag (audited as `tag.revoked`). Revoking a revoked tag answers its state again
/// without a new event. The caller drops the scan cache entry after the commit.
pub async fn revoke(
    conn: &mut PgConnection,
    audit: &AuditLog,
    by: &Principal,
    client: &ClientInfo,
    id: &str,
    input: RevokeTag,
) -> Result<RevokedTag, FactoryError> {
    check_tag_id(id)?;
    let reason = input.validate()?;
    if let Some(revoked) = repo::revoke_tag(conn, id, reason).await? {
        let event = NewEvent::new("tag.revoked", by.actor())
            .target("tag", id)
            .client(client.ip.clone(), client.user_agent.clone())
            .details(serde_json::json!({"reason": reason}));
        audit.append(conn, event).await?;
        return Ok(revoked);
    }
    match repo::find_tag(conn, id).await? {
        Some(tag) => Ok(RevokedTag {
            tag_id: tag.tag_id,
            status: tag.status,
            revoked_at: tag.revoked_at,
            revoked_reason: tag.revoked_reason,
        }),
        None => Err(FactoryError::NotFound("tag")),
    }
}

#[cfg(test)]
mod tests {
    use super::{RevokeTag, check_tag_id};

    #[test]
    fn reason_and_tag_id_rules() {
        let revoke = |reason: &str| RevokeTag {
            reason: reason.to_owned(),
        };
        assert_eq!(revoke("  stolen \n").validate().unwrap(), "stolen");
        assert!(revoke(&"x".repeat(500)).validate().is_ok());
        assert!(revoke(&"x".repeat(501)).validate().is_err());
        assert!(revoke(" \t ").validate().is_err());
        assert!(check_tag_id("AbCdEfGh1234_-xyZ9876q").is_ok());
        assert!(check_tag_id("AbCdEfGh1234/-xyZ9876q").is_err());
    }
}

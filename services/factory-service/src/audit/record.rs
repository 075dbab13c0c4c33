//! A stored audit event, as read from `audit_events` and as served by the API.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::canonical;

/// One row of `audit_events` (format version 1 or 2).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AuditRecord {
    /// Position in the log, gap-free from 1.
    pub seq: i64,
    /// Format version: 1 (legacy, no chain fields) or 2.
    pub version: i16,
    /// Unique id of the event (UUID v7).
    pub event_id: Uuid,
    /// When it happened (database clock, microseconds).
    pub occurred_at: DateTime<Utc>,
    /// The acting user, if any.
    pub actor_id: Option<Uuid>,
    /// The acting user's email, `system` for the service itself, or for someone not signed in
    /// the address of the account they tried to act as (null when none matched).
    pub actor_email: Option<String>,
    /// What happened, e.g. `api_key.created`.
    pub action: String,
    /// The kind of thing acted on.
    pub target_type: Option<String>,
    /// Its id.
    pub target_id: Option<String>,
    /// The client's IP address.
    pub client_ip: Option<String>,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// Free-form details.
    pub details: Value,
    /// Hash of the previous version-2 event (32 zero bytes for the first one).
    pub prev_hash: Option<Vec<u8>>,
    /// SHA-256(prev_hash || canonical bytes).
    pub hash: Option<Vec<u8>>,
    /// RSASSA-PKCS1-v1_5/SHA-256 signature of `hash`, when events are signed.
    pub signature: Option<Vec<u8>>,
    /// The signing key's id.
    pub key_id: Option<String>,
}

/// The columns of [`AuditRecord`], in `SELECT` order.
pub const COLUMNS: &str = "seq, version, event_id, occurred_at, actor_id, actor_email, action, \
     target_type, target_id, client_ip, user_agent, details, prev_hash, hash, signature, key_id";

/// Whether `e` is a row whose `details` could not be read: a value the service never writes (a
/// number beyond a double's range, which jsonb accepts), so a changed event.
pub fn unreadable_details(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::ColumnDecode { index, .. } if index.contains("details"))
}

/// One audit event: hashes in lower-case hex, signatures in standard base64, timestamps
/// exactly as hashed (docs/AUDIT_FORMAT.md).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = AuditEvent)]
pub struct EventView {
    /// Position in the log, gap-free from 1.
    #[schema(minimum = 1)]
    pub seq: i64,
    /// Format version: 1 (legacy, no chain fields) or 2.
    #[schema(minimum = 1, maximum = 2)]
    pub version: i16,
    /// Unique id of the event (UUID v7).
    pub event_id: Uuid,
    /// When it happened: `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds).
    #[schema(format = DateTime)]
    pub occurred_at: String,
    /// The acting user, if any.
    #[schema(required = true)]
    pub actor_id: Option<Uuid>,
    /// The acting user's email, `system` for the service itself, or for someone not signed
    /// in the address of the account they tried to act as (null when none matched).
    #[schema(required = true)]
    pub actor_email: Option<String>,
    /// What happened, e.g. `api_key.created`.
    pub action: String,
    /// The kind of thing acted on.
    #[schema(required = true)]
    pub target_type: Option<String>,
    /// Its id.
    #[schema(required = true)]
    pub target_id: Option<String>,
    /// The client's IP address.
    #[schema(required = true)]
    pub client_ip: Option<String>,
    /// The client's user agent.
    #[schema(required = true)]
    pub user_agent: Option<String>,
    /// Free-form details (null when `details_unreadable` is given).
    pub details: Value,
    /// Hex hash of the previous version-2 event (64 zeros for the first); null for a
    /// version-1 event.
    #[schema(required = true)]
    pub prev_hash: Option<String>,
    /// Hex SHA-256 of `prev_hash` and the event's canonical bytes; null for a version-1
    /// event.
    #[schema(required = true)]
    pub hash: Option<String>,
    /// Base64 RSASSA-PKCS1-v1_5/SHA-256 signature of `hash`; null when events are not
    /// signed.
    #[schema(required = true)]
    pub signature: Option<String>,
    /// The signing key's id; null when unsigned.
    #[schema(required = true)]
    pub key_id: Option<String>,
    /// Only for an event whose stored `details` cannot be read as JSON numbers the service
    /// writes: the stored text, with `details` null. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub details_unreadable: Option<String>,
}

impl From<AuditRecord> for EventView {
    fn from(r: AuditRecord) -> Self {
        Self {
            seq: r.seq,
            version: r.version,
            event_id: r.event_id,
            occurred_at: canonical::timestamp(&r.occurred_at),
            actor_id: r.actor_id,
            actor_email: r.actor_email,
            action: r.action,
            target_type: r.target_type,
            target_id: r.target_id,
            client_ip: r.client_ip,
            user_agent: r.user_agent,
            details: r.details,
            prev_hash: r.prev_hash.map(hex::encode),
            hash: r.hash.map(hex::encode),
            signature: r.signature.map(|s| BASE64.encode(s)),
            key_id: r.key_id,
            details_unreadable: None,
        }
    }
}

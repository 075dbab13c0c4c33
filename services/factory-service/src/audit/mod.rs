//! The audit log: every security-relevant action appends one event in the same database
//! transaction as the action itself.
//!
//! This is the seam the rest of the service uses: build a [`NewEvent`] and call
//! [`AuditLog::append`] on the action's transaction. How events are encoded, chained and signed
//! lives behind it.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The service itself (start-up, background jobs).
    System,
    /// A signed-in user.
    User {
        /// The user's id.
        id: Uuid,
        /// The user's email at the time.
        email: String,
    },
    /// Someone not (yet) authenticated, e.g. a failed login; only the claimed email is known.
    Anonymous {
        /// The email that was claimed, if any.
        email: Option<String>,
    },
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// What happened, e.g. `api_key.created`.
    pub action: String,
    /// Who did it.
    pub actor: Actor,
    /// The kind of thing acted on, e.g. `api_key`.
    pub target_type: Option<String>,
    /// Its id.
    pub target_id: Option<String>,
    /// The client's IP address.
    pub client_ip: Option<String>,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// Anything else worth keeping (never a secret).
    pub details: Value,
}

impl NewEvent {
    /// An event with no target, IP, user agent or details yet.
    pub fn new(action: &str, actor: Actor) -> Self {
        Self {
            action: action.to_owned(),
            actor,
            target_type: None,
            target_id: None,
            client_ip: None,
            user_agent: None,
            details: Value::Object(Default::default()),
        }
    }

    /// Sets the target.
    pub fn target(mut self, kind: &str, id: impl ToString) -> Self {
        self.target_type = Some(kind.to_owned());
        self.target_id = Some(id.to_string());
        self
    }

    /// Sets the client IP and user agent.
    pub fn client(mut self, ip: Option<String>, user_agent: Option<String>) -> Self {
        self.client_ip = ip;
        self.user_agent = user_agent;
        self
    }

    /// Sets the details.
    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}

/// Appends audit events. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AuditLog {}

/// Serializes appends across every instance of the service: a transaction-scoped advisory lock
/// on the chain head (released at commit or rollback).
const CHAIN_LOCK_KEY: i64 = 0x766b_7461_6175_6474; // "vktaaudt"

impl AuditLog {
    /// An audit log.
    pub fn new() -> Self {
        Self {}
    }

    /// Appends `event` inside the caller's transaction (`conn` must be in one), so the event
    /// exists if and only if the action commits. Returns the event's `seq`.
    pub async fn append(&self, conn: &mut PgConnection, event: NewEvent) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CHAIN_LOCK_KEY)
            .execute(&mut *conn)
            .await?;
        let (actor_id, actor_email) = match &event.actor {
            Actor::System => (None, Some("system".to_owned())),
            Actor::User { id, email } => (Some(*id), Some(email.clone())),
            Actor::Anonymous { email } => (None, email.clone()),
        };
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO audit_events \
             (seq, event_id, occurred_at, actor_id, actor_email, action, target_type, target_id, client_ip, user_agent, details) \
             SELECT COALESCE(MAX(seq), 0) + 1, $1, now(), $2, $3, $4, $5, $6, $7, $8, $9 FROM audit_events \
             RETURNING seq",
        )
        .bind(Uuid::now_v7())
        .bind(actor_id)
        .bind(actor_email)
        .bind(&event.action)
        .bind(&event.target_type)
        .bind(&event.target_id)
        .bind(&event.client_ip)
        .bind(&event.user_agent)
        .bind(&event.details)
        .fetch_one(&mut *conn)
        .await?;
        Ok(seq)
    }
}

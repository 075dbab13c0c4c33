//! The tamper-evident audit log: every security-relevant action appends one event in the same
//! database transaction as the action itself, and the events form a hash chain (format version
//! 2, docs/AUDIT_FORMAT.md) with optional RSA signatures and signed checkpoints.
//!
//! This is the seam the rest of the service uses: build a [`NewEvent`] and call
//! [`AuditLog::append`] on the action's transaction. Encoding ([`canonical`]), chaining
//! ([`chain`]), signing ([`signing`]), checkpoints ([`checkpoint`]) and verification ([`verify`])
//! live behind it.

pub mod canonical;
pub mod chain;
pub mod checkpoint;
pub mod command;
pub mod config;
pub mod error;
pub mod job;
pub mod record;
pub mod routes;
pub mod signing;
pub mod verify;

use std::sync::Arc;

pub use config::AuditConfig;
pub use error::AuditError;
pub use record::AuditRecord;
pub use signing::{KeyRing, Signer};
pub use verify::{BreakReason, VerifyReport};

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
    /// Someone not (yet) authenticated, e.g. a failed login.
    Anonymous {
        /// The address of the account they tried to act as, when one matched; never text that
        /// matched no account (the chain keeps it for good).
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
pub struct AuditLog {
    /// The audit signing key, when configured.
    signer: Option<Arc<Signer>>,
    /// Whether every event is signed (not only checkpoints).
    sign_events: bool,
    /// What this process's audit jobs found (shared with them and the verify route).
    findings: job::Findings,
    /// The verifications of [`AuditLog::verify`], one at a time, shared by the callers that
    /// were waiting when one started.
    verifying: Verifications,
}

/// The latest answer of [`AuditLog::verify`], with the ticket that was the latest when its run
/// began: a caller whose ticket is no later asked before the run started, and may take it.
type Latest = Option<(u64, Result<Arc<verify::Verification>, Arc<AuditError>>)>;

/// One whole-chain verification at a time.
#[derive(Clone, Default)]
struct Verifications {
    /// Tickets handed to callers, in the order they asked.
    tickets: Arc<std::sync::atomic::AtomicU64>,
    /// Held while a verification runs; holds the latest answer.
    latest: Arc<tokio::sync::Mutex<Latest>>,
}

impl std::fmt::Debug for Verifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifications")
    }
}

impl AuditLog {
    /// An audit log that hashes but does not sign (no key configured).
    pub fn new() -> Self {
        Self::default()
    }

    /// An audit log with `signer` for checkpoints, and for every event when `sign_events`.
    pub fn with_signer(signer: Option<Arc<Signer>>, sign_events: bool) -> Self {
        let sign_events = sign_events && signer.is_some();
        Self {
            signer,
            sign_events,
            findings: job::Findings::default(),
            verifying: Verifications::default(),
        }
    }

    /// The audit log the configuration asks for.
    pub fn from_config(config: &AuditConfig) -> Self {
        Self::with_signer(config.signer.clone(), config.sign_events)
    }

    /// The signing key, if any.
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_deref()
    }

    /// What this process's audit jobs found: the jobs started with this log record there (see
    /// [`job::spawn`]), and [`AuditLog::verify`] checks the chain against their anchors.
    pub fn findings(&self) -> &job::Findings {
        &self.findings
    }

    /// Verifies the whole chain with the service's keys (`GET /v1/audit/verify`), against the
    /// stored checkpoints and what this process saw intact too: with history rewritten behind
    /// its background verifier and the stored checkpoints deleted to match, the database alone
    /// looks intact while the verifier reports the break.
    ///
    /// One verification runs at a time: a whole pass over years of events takes a connection,
    /// a snapshot and CPU for seconds, and sixteen clicks on the console's button ran sixteen,
    /// taking every connection of the API's pool. Callers that asked before a run began share
    /// its answer (the same `Arc`); one that asks while a run goes on waits for the next run,
    /// so every answer comes from a snapshot taken after its caller asked. A caller that stops
    /// waiting (a client gone, the request timeout) cancels only its own run, whose
    /// transaction then ends; the next waiting caller runs one.
    pub async fn verify(
        &self,
        pool: &sqlx::PgPool,
    ) -> Result<Arc<verify::Verification>, Arc<AuditError>> {
        use std::sync::atomic::Ordering;
        let tickets = &self.verifying.tickets;
        let mine = tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let mut latest = self.verifying.latest.lock().await;
        if let Some((started_after, answer)) = latest.as_ref()
            && *started_after >= mine
        {
            return answer.clone();
        }
        let started_after = tickets.load(Ordering::SeqCst);
        let mut keys = job::service_key_ring(self.signer());
        let anchors = self.findings.get().anchors();
        let answer = verify::verify(pool, &mut keys, &anchors, verify::ChainState::default())
            .await
            .map(Arc::new)
            .map_err(Arc::new);
        *latest = Some((started_after, answer.clone()));
        answer
    }

    /// Appends `event` inside the caller's transaction (`conn` must be in one, at READ
    /// COMMITTED, the default), so the event exists if and only if the action commits. Returns
    /// the event's `seq`. Appends from every instance are serialized on the chain-head row lock,
    /// held until the caller's transaction ends, so keep that transaction short after this.
    pub async fn append(
        &self,
        conn: &mut PgConnection,
        event: NewEvent,
    ) -> Result<i64, sqlx::Error> {
        match self.try_append(conn, event).await {
            Ok(record) => Ok(record.seq),
            Err(AuditError::Database(e)) => Err(e),
            // Signing can only fail with an unusable key, which start-up already rejected;
            // surface it through the seam's error type rather than panic.
            Err(other) => Err(sqlx::Error::Protocol(format!(
                "audit append failed: {other}"
            ))),
        }
    }

    /// [`AuditLog::append`] returning the stored record and the audit log's own error type.
    pub async fn try_append(
        &self,
        conn: &mut PgConnection,
        event: NewEvent,
    ) -> Result<AuditRecord, AuditError> {
        let signer = if self.sign_events {
            self.signer.as_deref()
        } else {
            None
        };
        chain::append(conn, event, signer).await
    }
}

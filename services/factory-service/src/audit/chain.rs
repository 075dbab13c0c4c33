//! The hash chain: how an event's hash is computed, and the append under the chain-head lock.

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres, Row as _};
use uuid::Uuid;

use super::canonical::{self, FORMAT_VERSION};
use super::error::AuditError;
use super::record::AuditRecord;
use super::signing::Signer;
use super::{Actor, NewEvent};

/// What the first version-2 event links to.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// `SHA-256(prev_hash || canonical)`.
pub fn link_hash(prev_hash: &Hash, canonical: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(canonical);
    hasher.finalize().into()
}

/// The hash of a version-2 `event` given its `prev_hash` (its own chain fields are ignored).
/// `buf` is scratch space, reused by callers that hash many events.
pub fn event_hash(prev_hash: &Hash, event: &AuditRecord, buf: &mut Vec<u8>) -> Hash {
    buf.clear();
    canonical::event_bytes(event, buf);
    link_hash(prev_hash, buf)
}

/// The chain head: the newest event's seq and hash (32 zero bytes while there is no v2 event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Seq of the newest event (legacy events included); 0 for an empty log.
    pub seq: i64,
    /// Hash of the newest version-2 event.
    pub hash: Hash,
}

/// Converts a stored hash column to a [`Hash`].
pub fn to_hash(seq: i64, bytes: &[u8]) -> Result<Hash, AuditError> {
    bytes.try_into().map_err(|_| AuditError::MalformedRow {
        seq,
        reason: format!("hash is {} bytes, not 32", bytes.len()),
    })
}

/// Reads the committed chain head without locking it.
pub async fn read_head(conn: &mut PgConnection) -> Result<Head, AuditError> {
    let (seq, hash): (i64, Vec<u8>) =
        sqlx::query_as("SELECT seq, hash FROM audit_chain_head WHERE id")
            .fetch_one(conn)
            .await?;
    Ok(Head {
        seq,
        hash: to_hash(seq, &hash)?,
    })
}

/// Appends `event` as the next version-2 event inside the caller's transaction, signing it
/// when `signer` is given. Holds the chain-head row lock until that transaction ends.
pub async fn append(
    conn: &mut PgConnection,
    event: NewEvent,
    signer: Option<&Signer>,
) -> Result<AuditRecord, AuditError> {
    match signer {
        None => append_unsigned(conn, event).await,
        Some(signer) => append_signed(conn, event, signer).await,
    }
}

/// The record of `event` before it has a place in the chain (seq 0, chain fields empty).
fn unchained(event: NewEvent, occurred_at: DateTime<Utc>) -> AuditRecord {
    let (actor_id, actor_email) = match event.actor {
        Actor::System => (None, Some("system".to_owned())),
        Actor::User { id, email } => (Some(id), Some(email)),
        Actor::Anonymous { email } => (None, email),
    };
    AuditRecord {
        seq: 0,
        version: FORMAT_VERSION,
        event_id: Uuid::now_v7(),
        occurred_at,
        actor_id,
        actor_email,
        action: event.action,
        target_type: event.target_type,
        target_id: event.target_id,
        client_ip: event.client_ip,
        user_agent: event.user_agent,
        details: event.details,
        prev_hash: None,
        hash: None,
        signature: None,
        key_id: None,
    }
}

/// One statement: the database locks the head, takes its clock and hashes the event from the
/// canonical bytes around `occurred_at` and `seq` computed here (`sql/append_event.sql`).
async fn append_unsigned(
    conn: &mut PgConnection,
    event: NewEvent,
) -> Result<AuditRecord, AuditError> {
    let mut record = unchained(event, DateTime::<Utc>::UNIX_EPOCH);
    let (mut prefix, mut suffix) = (Vec::with_capacity(384), Vec::with_capacity(128));
    canonical::event_prefix(&record, &mut prefix);
    canonical::event_suffix(&record, &mut suffix);
    let row = bind_event_fields(sqlx::query(include_str!("sql/append_event.sql")), &record)
        .bind(prefix)
        .bind(suffix)
        .fetch_one(&mut *conn)
        .await?;
    record.seq = row.try_get("seq")?;
    record.occurred_at = row.try_get("occurred_at")?;
    record.prev_hash = Some(row.try_get("prev_hash")?);
    record.hash = Some(row.try_get("hash")?);
    Ok(record)
}

/// Two statements: the hash is needed here before the insert, to sign it.
async fn append_signed(
    conn: &mut PgConnection,
    event: NewEvent,
    signer: &Signer,
) -> Result<AuditRecord, AuditError> {
    let (head_seq, head_hash, now): (i64, Vec<u8>, DateTime<Utc>) =
        sqlx::query_as(include_str!("sql/lock_head.sql"))
            .fetch_one(&mut *conn)
            .await?;
    let prev_hash = to_hash(head_seq, &head_hash)?;
    // PostgreSQL keeps microseconds; the clock already has that precision, and the hash must
    // cover exactly what is stored.
    let mut record = unchained(event, now);
    record.seq = head_seq + 1;
    let hash = event_hash(&prev_hash, &record, &mut Vec::with_capacity(512));
    record.signature = Some(signer.sign(&hash)?);
    record.key_id = Some(signer.key_id().to_owned());
    record.prev_hash = Some(prev_hash.to_vec());
    record.hash = Some(hash.to_vec());
    bind_event_fields(sqlx::query(include_str!("sql/insert_event.sql")), &record)
        .bind(record.seq)
        .bind(record.occurred_at)
        .bind(&record.prev_hash)
        .bind(&record.hash)
        .bind(&record.signature)
        .bind(&record.key_id)
        .execute(&mut *conn)
        .await?;
    Ok(record)
}

/// Binds the event's own fields as `$1..$9`, in the order both append statements expect:
/// event_id, actor_id, actor_email, action, target_type, target_id, client_ip, user_agent,
/// details.
fn bind_event_fields<'q>(
    query: Query<'q, Postgres, PgArguments>,
    record: &'q AuditRecord,
) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(record.event_id)
        .bind(record.actor_id)
        .bind(&record.actor_email)
        .bind(&record.action)
        .bind(&record.target_type)
        .bind(&record.target_id)
        .bind(&record.client_ip)
        .bind(&record.user_agent)
        .bind(&record.details)
}

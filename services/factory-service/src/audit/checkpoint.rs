//! Signed checkpoints: the chain head `{seq, hash, signed_at, key_id}` signed with the audit key,
//! stored in `audit_checkpoints`, served, and written to the log. A copy kept anywhere else (log
//! storage, a ticket, an auditor's laptop) later proves the chain once reached that seq with that
//! hash, so a truncated or rewritten tail is detected.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SubsecRound as _, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use super::canonical;
use super::chain::{self, GENESIS_HASH, Hash};
use super::error::AuditError;
use super::signing::Signer;
use super::verify::{self, BreakReason, ChainState};

/// Serializes checkpoint writers across instances (transaction-scoped advisory lock).
const CHECKPOINT_LOCK_KEY: i64 = 0x766b_7461_6370_6b74; // "vktacpkt"

/// A checkpoint of the chain head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The head's seq.
    pub seq: i64,
    /// The hash of the event at `seq`.
    pub hash: Hash,
    /// When it was signed (microseconds).
    pub signed_at: DateTime<Utc>,
    /// The signing key's id (`None`: unsigned, no key configured).
    pub key_id: Option<String>,
    /// RSASSA-PKCS1-v1_5/SHA-256 signature of [`Checkpoint::message`].
    pub signature: Option<Vec<u8>>,
}

/// A checkpoint of the chain head. `key_id` and `signature` are null when the service has
/// no audit signing key configured (an unsigned checkpoint).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = AuditCheckpoint)]
pub struct CheckpointJson {
    /// The head's seq.
    #[schema(minimum = 1)]
    pub seq: i64,
    /// Lower-case hex hash of the event at `seq`.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub hash: String,
    /// When it was signed: `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds).
    #[schema(format = DateTime)]
    pub signed_at: String,
    /// The signing key's id; null when no signing key is configured.
    #[schema(required = true)]
    pub key_id: Option<String>,
    /// Standard base64 (padded) RSASSA-PKCS1-v1_5/SHA-256 signature of the checkpoint's JCS
    /// form; null when no signing key is configured.
    #[schema(required = true)]
    pub signature: Option<String>,
}

impl Checkpoint {
    /// The signed bytes: the JCS form of `{"hash","key_id","seq","signed_at"}` (hash in hex,
    /// `signed_at` as served).
    pub fn message(&self) -> Vec<u8> {
        canonical::jcs(&json!({
            "hash": hex::encode(self.hash),
            "key_id": self.key_id,
            "seq": self.seq,
            "signed_at": canonical::timestamp(&self.signed_at),
        }))
    }

    /// The JSON form.
    pub fn to_json(&self) -> CheckpointJson {
        CheckpointJson {
            seq: self.seq,
            hash: hex::encode(self.hash),
            signed_at: canonical::timestamp(&self.signed_at),
            key_id: self.key_id.clone(),
            signature: self.signature.as_ref().map(|s| BASE64.encode(s)),
        }
    }

    /// Parses the JSON form (as served or logged).
    pub fn from_json(json: &CheckpointJson) -> Result<Self, AuditError> {
        let bad = |what: &str| AuditError::InvalidCheckpoint(what.to_owned());
        let hash = hex::decode(&json.hash).map_err(|_| bad("hash is not hex"))?;
        let hash: Hash = hash.try_into().map_err(|_| bad("hash is not 32 bytes"))?;
        let signed_at = DateTime::parse_from_rfc3339(&json.signed_at)
            .map_err(|_| bad("signed_at is not an RFC 3339 timestamp"))?
            .with_timezone(&Utc);
        let signature = match &json.signature {
            Some(s) => Some(
                BASE64
                    .decode(s)
                    .map_err(|_| bad("signature is not base64"))?,
            ),
            None => None,
        };
        if json.seq < 1 {
            return Err(bad("seq must be at least 1"));
        }
        Ok(Self {
            seq: json.seq,
            hash,
            signed_at,
            key_id: json.key_id.clone(),
            signature,
        })
    }

    /// Parses checkpoints from text: one JSON object, or JSON lines. In JSON lines, log lines
    /// carrying a checkpoint (a `checkpoint` field, as the service logs them) and bare
    /// checkpoint objects count; other lines (the rest of a log file) are skipped, so a whole
    /// service log can be given. A malformed checkpoint is an error, and so is text without any.
    pub fn parse_many(text: &str) -> Result<Vec<Self>, AuditError> {
        let trimmed = text.trim();
        if let Ok(one) = serde_json::from_str::<serde_json::Value>(trimmed) {
            return Ok(vec![Self::from_value(&one)?]);
        }
        let mut found = Vec::new();
        for line in trimmed.lines() {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
                continue;
            };
            let carries_one = value.get("checkpoint").is_some()
                || value.pointer("/fields/checkpoint").is_some()
                || (value.get("seq").is_some() && value.get("hash").is_some());
            if carries_one {
                found.push(Self::from_value(&value)?);
            }
        }
        if found.is_empty() {
            return Err(AuditError::InvalidCheckpoint(
                "no checkpoint found (expected a checkpoint JSON object or log lines with a `checkpoint` field)".into(),
            ));
        }
        Ok(found)
    }

    fn from_value(value: &serde_json::Value) -> Result<Self, AuditError> {
        // A log line carries the checkpoint as a JSON string in its `checkpoint` field.
        let inner = match value
            .get("checkpoint")
            .or_else(|| value.pointer("/fields/checkpoint"))
        {
            Some(serde_json::Value::String(s)) => serde_json::from_str(s)
                .map_err(|e| AuditError::InvalidCheckpoint(format!("not JSON: {e}")))?,
            Some(v) => v.clone(),
            None => value.clone(),
        };
        let json: CheckpointJson = serde_json::from_value(inner)
            .map_err(|e| AuditError::InvalidCheckpoint(e.to_string()))?;
        Self::from_json(&json)
    }
}

type CheckpointRow = (i64, Vec<u8>, DateTime<Utc>, Option<String>, Option<Vec<u8>>);

fn from_row(
    (seq, hash, signed_at, key_id, signature): CheckpointRow,
) -> Result<Checkpoint, AuditError> {
    Ok(Checkpoint {
        seq,
        hash: chain::to_hash(seq, &hash)?,
        signed_at,
        key_id,
        signature,
    })
}

/// The newest signed checkpoint (what `GET /v1/audit/checkpoint` serves); when none was ever
/// signed (no key configured), the newest unsigned one. An instance started without its key
/// stores unsigned checkpoints after signed ones, and those prove nothing to whoever keeps
/// copies: serving one of them would silently replace a proof with a claim.
pub async fn latest(pool: &PgPool) -> Result<Option<Checkpoint>, AuditError> {
    // Two look-ups of one index entry each rather than one sort of the whole table: the route
    // that asks needs no credentials.
    let signed: Option<CheckpointRow> = sqlx::query_as(NEWEST_SIGNED).fetch_optional(pool).await?;
    let row = match signed {
        Some(row) => Some(row),
        None => sqlx::query_as(NEWEST).fetch_optional(pool).await?,
    };
    row.map(from_row).transpose()
}

/// The newest signed checkpoint: one entry of `audit_checkpoints_signed_seq_idx` (a partial
/// index of the signed ones), however many unsigned checkpoints were written after it.
const NEWEST_SIGNED: &str = "SELECT seq, hash, signed_at, key_id, signature \
     FROM audit_checkpoints WHERE signature IS NOT NULL ORDER BY seq DESC LIMIT 1";

/// The newest checkpoint, signed or not: one entry of the primary key.
const NEWEST: &str = "SELECT seq, hash, signed_at, key_id, signature \
     FROM audit_checkpoints ORDER BY seq DESC LIMIT 1";

/// Up to `limit` stored checkpoints after seq `after`, in seq order (a chain of years holds
/// hundreds of thousands: read a page at a time).
pub async fn page_after(
    conn: &mut PgConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<Checkpoint>, AuditError> {
    let rows: Vec<CheckpointRow> = sqlx::query_as(
        "SELECT seq, hash, signed_at, key_id, signature FROM audit_checkpoints \
         WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(from_row).collect()
}

/// Checkpoints the committed chain head if it moved past the newest checkpoint and `due` says
/// so (given the number of events since that checkpoint and the time since it was signed, by
/// the database's clock; `None` before the first). Returns the new
/// checkpoint, already committed and logged; `None` when nothing was due or another instance
/// is writing one right now.
///
/// `anchors` are points of the chain this process saw intact (the head its background
/// verifier last verified, the checkpoint it signed last: `job::Found::anchors`), held in
/// memory, out of reach of whoever can write to the database: a head that does not pass
/// through them (the tail cut, or history rewritten, with the stored checkpoints deleted to
/// match) is refused too.
pub async fn checkpoint_if_due(
    pool: &PgPool,
    signer: Option<&Signer>,
    anchors: &[Checkpoint],
    due: impl FnOnce(i64, Option<chrono::Duration>) -> bool,
) -> Result<Option<Checkpoint>, AuditError> {
    let mut tx = pool.begin().await?;
    let written = write_if_due(&mut tx, signer, anchors, due).await;
    let checkpoint = match written {
        Ok(Some(checkpoint)) => checkpoint,
        other => {
            // Ended now rather than when the pool next uses the connection: until then its
            // advisory lock would make the next attempt, on another connection, take this one
            // for another instance's checkpoint in progress.
            if let Err(e) = tx.rollback().await {
                tracing::debug!(error = %e, "rolling back a checkpoint attempt failed");
            }
            return other;
        }
    };
    tx.commit().await?;
    // Logged only after the commit: a logged checkpoint must exist in the chain.
    match serde_json::to_string(&checkpoint.to_json()) {
        Ok(json) => tracing::info!(checkpoint = %json, seq = checkpoint.seq, "audit checkpoint"),
        Err(e) => tracing::error!(error = %e, "cannot serialize audit checkpoint for the log"),
    }
    Ok(Some(checkpoint))
}

/// [`checkpoint_if_due`] in `tx`: the checkpoint written (not yet committed), `None` when
/// nothing was due or the lock is taken, or the refusal.
async fn write_if_due(
    tx: &mut PgConnection,
    signer: Option<&Signer>,
    anchors: &[Checkpoint],
    due: impl FnOnce(i64, Option<chrono::Duration>) -> bool,
) -> Result<Option<Checkpoint>, AuditError> {
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(CHECKPOINT_LOCK_KEY)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(None);
    }
    let head = chain::read_head(tx).await?;
    if head.hash == GENESIS_HASH {
        // Legacy events only: there is no chain to checkpoint yet.
        return Ok(None);
    }
    let last: Option<CheckpointRow> = sqlx::query_as(
        "SELECT seq, hash, signed_at, key_id, signature FROM audit_checkpoints \
         ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let last = last.map(from_row).transpose()?;
    let refuse = |seq: i64, reason: BreakReason, detail: String| AuditError::Unverifiable {
        seq,
        reason: reason.code(),
        detail,
    };
    if let Some(cp) = &last
        && cp.seq > head.seq
    {
        return Err(refuse(
            head.seq + 1,
            BreakReason::TailTruncated,
            format!(
                "the recorded chain head is seq {} but a checkpoint covers seq {}",
                head.seq, cp.seq
            ),
        ));
    }
    let since = head.seq - last.as_ref().map_or(0, |cp| cp.seq);
    if since <= 0 {
        return Ok(None);
    }
    // The database's clock, as for the events' `occurred_at`: the one clock every instance
    // shares. Each instance's own dated its checkpoints, and one running ahead (or jumping
    // ahead for a moment) dated one in the others' future, and no instance found an interval
    // passed since it until that time: checkpoints by time stopped for as long as the skew.
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut *tx)
        .await?;
    if !due(since, last.as_ref().map(|cp| now - cp.signed_at)) {
        return Ok(None);
    }
    for anchor in anchors {
        if head.seq < anchor.seq {
            return Err(refuse(
                head.seq + 1,
                BreakReason::TailTruncated,
                format!(
                    "the recorded chain head is seq {} but this process saw the chain intact up \
                     to seq {}",
                    head.seq, anchor.seq
                ),
            ));
        }
        let hash: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT hash FROM audit_events WHERE seq = $1")
                .bind(anchor.seq)
                .fetch_optional(&mut *tx)
                .await?;
        if hash.flatten().as_deref() != Some(anchor.hash.as_slice()) {
            return Err(refuse(
                anchor.seq,
                BreakReason::CheckpointMismatch,
                format!(
                    "the event at seq {} is not the one this process saw intact",
                    anchor.seq
                ),
            ));
        }
    }
    // Only a head that extends the last checkpoint (or, before the first, the whole chain)
    // gets signed; the events' and that checkpoint's signatures by this service's key are
    // checked on the way (other key ids: hashes only, as in the background verifier).
    let mut keys = super::job::service_key_ring(signer);
    let from = match &last {
        Some(cp) => {
            if let Some(b) = verify::checkpoint_signature_break(cp, &mut keys) {
                return Err(refuse(b.seq, b.reason, b.detail));
            }
            ChainState {
                last_seq: cp.seq,
                last_hash: Some(cp.hash),
                ..ChainState::default()
            }
        }
        None => ChainState::default(),
    };
    if let Some(b) = verify::check_extension(tx, &mut keys, from, &head).await? {
        return Err(refuse(b.seq, b.reason, b.detail));
    }
    // Read again: the checks above may have taken a while (the first checkpoint of a long
    // chain verifies all of it), and this is when it is signed.
    let signed_at: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut *tx)
        .await?;
    let mut checkpoint = Checkpoint {
        seq: head.seq,
        hash: head.hash,
        signed_at: signed_at.trunc_subsecs(6),
        key_id: signer.map(|s| s.key_id().to_owned()),
        signature: None,
    };
    if let Some(signer) = signer {
        checkpoint.signature = Some(signer.sign(&checkpoint.message())?);
    }
    sqlx::query(
        "INSERT INTO audit_checkpoints (seq, hash, signed_at, key_id, signature) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING",
    )
    .bind(checkpoint.seq)
    .bind(checkpoint.hash.as_slice())
    .bind(checkpoint.signed_at)
    .bind(&checkpoint.key_id)
    .bind(&checkpoint.signature)
    .execute(&mut *tx)
    .await?;
    Ok(Some(checkpoint))
}

/// Writes a checkpoint of the current head now (if it moved since the last one).
pub async fn checkpoint_now(
    pool: &PgPool,
    signer: Option<&Signer>,
) -> Result<Option<Checkpoint>, AuditError> {
    checkpoint_if_due(pool, signer, &[], |_, _| true).await
}

#[cfg(test)]
mod tests {
    use common::testing::TestDb;

    use super::*;

    /// Rows PostgreSQL read to answer `sql` (`EXPLAIN ANALYZE`: those returned plus those a
    /// filter threw away, over the whole plan).
    async fn rows_read(pool: &PgPool, sql: &str) -> f64 {
        let plan: serde_json::Value =
            sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}"))
                .fetch_one(pool)
                .await
                .expect("explain");
        fn walk(node: &serde_json::Value) -> f64 {
            let here = ["Actual Rows", "Rows Removed by Filter"]
                .iter()
                .filter_map(|k| node.get(*k).and_then(serde_json::Value::as_f64))
                .sum::<f64>();
            let below = node
                .get("Plans")
                .and_then(serde_json::Value::as_array)
                .map_or(0.0, |plans| plans.iter().map(walk).sum());
            here + below
        }
        walk(&plan[0]["Plan"])
    }

    /// The public checkpoint route must not read a row more for every unsigned checkpoint an
    /// instance without its key wrote (one a minute): 20,000 of them after one signed, and on a
    /// chain never signed. Without the partial index both look-ups walk them all.
    #[tokio::test]
    async fn the_served_checkpoint_is_found_without_reading_the_unsigned_ones() {
        let db = TestDb::new().await;
        let insert = |seqs: &str, signed: bool| {
            format!(
                "INSERT INTO audit_checkpoints (seq, hash, signed_at, key_id, signature) \
                 SELECT s, sha256(s::text::bytea), now(), {key}, {sig} FROM {seqs} AS s",
                key = if signed { "'k1'" } else { "NULL" },
                sig = if signed { "'\\x01'::bytea" } else { "NULL" },
            )
        };
        sqlx::query(&insert("generate_series(2, 20001)", false))
            .execute(&db.pool)
            .await
            .expect("unsigned checkpoints");
        sqlx::query("ANALYZE audit_checkpoints")
            .execute(&db.pool)
            .await
            .expect("analyze");
        // Never signed: the signed look-up finds nothing, the newest is served.
        let read = rows_read(&db.pool, NEWEST_SIGNED).await + rows_read(&db.pool, NEWEST).await;
        assert!(read <= 10.0, "read {read} rows for a chain never signed");
        assert_eq!(
            latest(&db.pool).await.expect("latest").map(|c| c.seq),
            Some(20001)
        );
        // One signed checkpoint before them all.
        sqlx::query(&insert("generate_series(1, 1)", true))
            .execute(&db.pool)
            .await
            .expect("signed checkpoint");
        sqlx::query("ANALYZE audit_checkpoints")
            .execute(&db.pool)
            .await
            .expect("analyze");
        let read = rows_read(&db.pool, NEWEST_SIGNED).await;
        assert!(
            read <= 10.0,
            "read {read} rows to find the signed checkpoint"
        );
        assert_eq!(
            latest(&db.pool).await.expect("latest").map(|c| c.seq),
            Some(1)
        );
    }
}

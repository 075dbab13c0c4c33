//! The one verifier: streams `audit_events` in seq order and checks seq continuity, links,
//! hashes and signatures, then the chain head and every known checkpoint. Used by the CLI
//! (`factory-service audit verify`), by `GET /v1/audit/verify`, and incrementally by the
//! background job.

use std::collections::{BTreeSet, HashMap};

use futures::TryStreamExt as _;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::chain::{self, GENESIS_HASH, Hash};
use super::checkpoint::{self, Checkpoint};
use super::error::AuditError;
use super::record::{AuditRecord, COLUMNS};
use super::signing::{KeyRing, SignatureCheck};

/// Why the chain is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakReason {
    /// The stored hash is not SHA-256(prev_hash || canonical bytes): the event was changed.
    HashMismatch,
    /// `prev_hash` is not the previous event's hash: events were removed, swapped or inserted.
    BrokenLink,
    /// A seq is missing.
    SeqGap,
    /// A signature (of an event or a checkpoint) does not verify with its key id's key.
    BadSignature,
    /// No public key is known for the key id.
    UnknownKey,
    /// The chain ends before a known checkpoint or the recorded chain head: the tail was cut.
    TailTruncated,
    /// A checkpoint's hash differs from the chain's hash at that seq: history was rewritten.
    CheckpointMismatch,
    /// The recorded chain head does not match the last event.
    HeadMismatch,
}

impl BreakReason {
    /// The snake_case code used in JSON and CLI output.
    pub fn code(self) -> &'static str {
        match self {
            Self::HashMismatch => "hash_mismatch",
            Self::BrokenLink => "broken_link",
            Self::SeqGap => "seq_gap",
            Self::BadSignature => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::TailTruncated => "tail_truncated",
            Self::CheckpointMismatch => "checkpoint_mismatch",
            Self::HeadMismatch => "head_mismatch",
        }
    }
}

/// The first place the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The first bad seq (for a gap or a cut tail: the first missing seq).
    pub seq: i64,
    /// Why.
    pub reason: BreakReason,
    /// A human sentence with the specifics.
    pub detail: String,
}

/// How far the chain has been verified; the background job resumes from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainState {
    /// The last verified seq (0: nothing verified).
    pub last_seq: i64,
    /// The last verified version-2 hash (`None` while only legacy events were seen).
    pub last_hash: Option<Hash>,
    /// Version-2 events verified.
    pub events_checked: u64,
    /// Legacy (version 1) events seen before the chain starts.
    pub legacy_events: u64,
    /// Event signatures verified.
    pub signatures_checked: u64,
    /// Signatures (of events, and of checkpoints compared) by key ids the verifier has no key
    /// for and was told to skip (the service without `AUDIT_PREVIOUS_PUBLIC_KEYS`).
    pub signatures_unchecked: u64,
    /// Those key ids.
    pub unchecked_key_ids: BTreeSet<String>,
}

impl ChainState {
    /// Counts a signature by `key_id` that passed unchecked.
    fn note_unchecked(&mut self, key_id: &str) {
        self.signatures_unchecked += 1;
        if !self.unchecked_key_ids.contains(key_id) {
            self.unchecked_key_ids.insert(key_id.to_owned());
        }
    }

    /// Counts `cp`'s signature when it passed unchecked. Uncounted, a checkpoint a forger
    /// re-signed under a key id of their own went unseen where such an event signature was
    /// reported.
    fn note(&mut self, cp: &Checkpoint, signature: CheckpointSignature) {
        if signature == CheckpointSignature::Unchecked {
            self.note_unchecked(cp.key_id.as_deref().unwrap_or_default());
        }
    }
}

/// The verification report: CONTRACT 3.5's keys, then the signature counts and `detail`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = AuditVerifyReport)]
pub struct VerifyReport {
    /// Whether the chain is intact.
    pub ok: bool,
    /// Version-2 events whose hash (and link) were checked.
    pub events_checked: u64,
    /// Legacy events (format version 1) before the chain.
    pub legacy_events: u64,
    /// Event signatures checked.
    pub signatures_checked: u64,
    /// Signatures of events, and of the checkpoints compared, by key ids the service has no
    /// key for, not checked (the hashes were).
    pub signatures_unchecked: u64,
    /// Those key ids.
    pub unchecked_key_ids: Vec<String>,
    /// The last verified event.
    pub head: HeadView,
    /// The first bad seq (for a gap or a cut tail, the first missing one); null when `ok`.
    #[schema(required = true)]
    pub first_bad_seq: Option<i64>,
    /// Why, when broken: `hash_mismatch`, `broken_link`, `seq_gap`, `bad_signature`,
    /// `unknown_key`, `tail_truncated`, `checkpoint_mismatch` or `head_mismatch`; null when
    /// `ok`.
    #[schema(value_type = Option<String>, required = true)]
    pub reason: Option<&'static str>,
    /// A sentence with the specifics when broken; null when `ok`.
    #[schema(required = true)]
    pub detail: Option<String>,
}

/// The last verified event.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = AuditHead)]
pub struct HeadView {
    /// Its seq (0: nothing verified).
    #[schema(minimum = 0)]
    pub seq: i64,
    /// Its hex hash; null while only legacy (version-1) events, or none, were seen.
    #[schema(required = true)]
    pub hash: Option<String>,
}

/// A finished verification run.
#[derive(Debug, Clone)]
pub struct Verification {
    /// What verified: up to the break, or the whole chain.
    pub state: ChainState,
    /// The first break, if any.
    pub broken: Option<Break>,
    /// Checkpoints (stored and given) compared with the chain; with no break, all matched.
    pub checkpoints_compared: usize,
}

impl Verification {
    /// The JSON report.
    pub fn report(&self) -> VerifyReport {
        VerifyReport {
            ok: self.broken.is_none(),
            events_checked: self.state.events_checked,
            legacy_events: self.state.legacy_events,
            signatures_checked: self.state.signatures_checked,
            signatures_unchecked: self.state.signatures_unchecked,
            unchecked_key_ids: self.state.unchecked_key_ids.iter().cloned().collect(),
            head: HeadView {
                seq: self.state.last_seq,
                hash: self.state.last_hash.map(hex::encode),
            },
            first_bad_seq: self.broken.as_ref().map(|b| b.seq),
            reason: self.broken.as_ref().map(|b| b.reason.code()),
            detail: self.broken.as_ref().map(|b| b.detail.clone()),
        }
    }
}

/// Checks rows one by one; holds the running state.
struct RowChecker<'k> {
    state: ChainState,
    keys: &'k mut KeyRing,
    /// Checkpoint seqs to remember the chain's hash at.
    wanted: HashMap<i64, Option<Hash>>,
    buf: Vec<u8>,
}

impl RowChecker<'_> {
    fn broken(seq: i64, reason: BreakReason, detail: String) -> Result<(), Break> {
        Err(Break {
            seq,
            reason,
            detail,
        })
    }

    fn check(&mut self, row: &AuditRecord) -> Result<(), Break> {
        let expected = self.state.last_seq + 1;
        if row.seq != expected {
            return Self::broken(
                expected,
                BreakReason::SeqGap,
                format!("seq {expected} is missing (next event is seq {})", row.seq),
            );
        }
        match row.version {
            1 => {
                if self.state.last_hash.is_some() {
                    return Self::broken(
                        row.seq,
                        BreakReason::BrokenLink,
                        "a version-1 event after the chain started".into(),
                    );
                }
                // A legacy row is unsigned by nature. Were legacy rows allowed here, anyone
                // able to write to the database could turn the whole chain into legacy rows
                // (and the head into zeros) and pass a check that requires signatures.
                if self.keys.signatures_required() {
                    return Self::broken(
                        row.seq,
                        BreakReason::BadSignature,
                        "a legacy (version-1) event is not signed, and signatures are required"
                            .into(),
                    );
                }
                self.state.legacy_events += 1;
                self.state.last_seq = row.seq;
                if let Some(slot) = self.wanted.get_mut(&row.seq) {
                    *slot = None;
                }
                Ok(())
            }
            2 => self.check_v2(row),
            v => Self::broken(
                row.seq,
                BreakReason::HashMismatch,
                format!("unknown format version {v}"),
            ),
        }
    }

    fn check_v2(&mut self, row: &AuditRecord) -> Result<(), Break> {
        let seq = row.seq;
        let (Some(prev), Some(stored)) = (row.prev_hash.as_deref(), row.hash.as_deref()) else {
            return Self::broken(
                seq,
                BreakReason::HashMismatch,
                "chain fields are missing".into(),
            );
        };
        let expected_prev = self.state.last_hash.unwrap_or(GENESIS_HASH);
        if prev != expected_prev {
            return Self::broken(
                seq,
                BreakReason::BrokenLink,
                format!(
                    "prev_hash {} is not the previous event's hash {}",
                    hex::encode(prev),
                    hex::encode(expected_prev)
                ),
            );
        }
        let computed = chain::event_hash(&expected_prev, row, &mut self.buf);
        if stored != computed {
            return Self::broken(
                seq,
                BreakReason::HashMismatch,
                format!(
                    "stored hash {} but the event hashes to {}",
                    hex::encode(stored),
                    hex::encode(computed)
                ),
            );
        }
        if row.signature.is_none() && self.keys.signatures_required() {
            return Self::broken(
                seq,
                BreakReason::BadSignature,
                "the event is not signed, and signatures are required".into(),
            );
        }
        if let Some(signature) = &row.signature
            && !self.keys.is_empty()
        {
            let key_id = row.key_id.as_deref().unwrap_or_default();
            match self.keys.check(key_id, &computed, signature) {
                SignatureCheck::Valid => self.state.signatures_checked += 1,
                SignatureCheck::Skipped => self.state.note_unchecked(key_id),
                SignatureCheck::Invalid => {
                    return Self::broken(
                        seq,
                        BreakReason::BadSignature,
                        format!("the event signature does not verify with key {key_id:?}"),
                    );
                }
                SignatureCheck::UnknownKey => {
                    return Self::broken(
                        seq,
                        BreakReason::UnknownKey,
                        format!("no public key verifies key id {key_id:?}"),
                    );
                }
            }
        }
        self.state.events_checked += 1;
        self.state.last_seq = seq;
        self.state.last_hash = Some(computed);
        if let Some(slot) = self.wanted.get_mut(&seq) {
            *slot = Some(computed);
        }
        Ok(())
    }
}

/// Verifies the chain after `from` (use `ChainState::default()` for the whole chain), against
/// the stored checkpoints and `external` ones, checking signatures with `keys` (none given:
/// hashes only). Reads one consistent snapshot, so concurrent appends do not look like breaks.
pub async fn verify(
    pool: &PgPool,
    keys: &mut KeyRing,
    external: &[Checkpoint],
    from: ChainState,
) -> Result<Verification, AuditError> {
    verify_in_pages(pool, keys, external, from, CHECKPOINT_PAGE).await
}

/// [`verify`], reading the stored checkpoints `page` at a time (tests use small pages to show
/// that the answer does not depend on where pages end).
pub async fn verify_in_pages(
    pool: &PgPool,
    keys: &mut KeyRing,
    external: &[Checkpoint],
    from: ChainState,
    page: i64,
) -> Result<Verification, AuditError> {
    let page_size = page.max(1);
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let head = chain::read_head(&mut tx).await?;
    // Checkpoints at or before `from` were compared by an earlier run.
    let from_seq = from.last_seq;
    let mut external: Vec<Checkpoint> = external
        .iter()
        .filter(|c| c.seq > from_seq)
        .cloned()
        .collect();
    external.sort_by_key(|c| c.seq);
    let mut external = external.into_iter().peekable();

    // The stored checkpoints a page at a time, each page after the events up to its last seq:
    // memory stays bounded however many years of checkpoints there are.
    let mut checker = RowChecker {
        state: from,
        keys,
        wanted: HashMap::new(),
        buf: Vec::with_capacity(1024),
    };
    let mut row_break = None;
    let mut checkpoint_breaks = Vec::new();
    // A checkpoint past where the chain was verified to is a truncated tail, unless the chain
    // broke first (known only once the head is checked): every such checkpoint with a good
    // signature says the same, so the first is kept for the end.
    let mut past_the_chain: Option<Checkpoint> = None;
    let mut compared = 0;
    let mut after = from_seq;
    loop {
        let mut page = checkpoint::page_after(&mut tx, after, page_size).await?;
        let last_page = page.len() < usize::try_from(page_size).unwrap_or(usize::MAX);
        let page_end = if last_page {
            i64::MAX
        } else {
            page.last().map_or(i64::MAX, |c| c.seq)
        };
        while let Some(cp) = external.next_if(|c| c.seq <= page_end) {
            page.push(cp);
        }
        if row_break.is_none() {
            checker.wanted = page.iter().map(|c| (c.seq, None)).collect();
            row_break = check_rows(&mut tx, &mut checker, page_end).await?;
        }
        compared += page.len();
        let verified_to = row_break
            .as_ref()
            .map_or(checker.state.last_seq, |b| b.seq - 1);
        for cp in page {
            // Each is an RSA verification: let other tasks run between them.
            tokio::task::coop::consume_budget().await;
            match checkpoint_signature(&cp, checker.keys) {
                Err(b) => checkpoint_breaks.push(b),
                Ok(signature) => {
                    checker.state.note(&cp, signature);
                    if cp.seq > verified_to {
                        if past_the_chain.is_none() {
                            past_the_chain = Some(cp);
                        }
                    } else if let Some(b) =
                        checkpoint_hash_break(&cp, &checker.wanted, verified_to, true)
                    {
                        checkpoint_breaks.push(b);
                    }
                }
            }
        }
        if last_page {
            break;
        }
        after = page_end;
    }
    tx.commit().await?;

    let state = &checker.state;
    let verified_to = row_break.as_ref().map_or(state.last_seq, |b| b.seq - 1);
    let mut breaks: Vec<Break> = row_break.into_iter().collect();
    if breaks.is_empty()
        && let Some(b) = head_break(&head, state)
    {
        breaks.push(b);
    }
    let chain_complete = breaks.is_empty();
    breaks.extend(checkpoint_breaks);
    // Its signature was checked (and counted) in the loop.
    if let Some(cp) = past_the_chain
        && let Some(b) = checkpoint_hash_break(&cp, &checker.wanted, verified_to, chain_complete)
    {
        breaks.push(b);
    }
    // The earliest problem is the one to report; on a tie, the row's own reason.
    let broken = breaks.into_iter().min_by_key(|b| b.seq);
    Ok(Verification {
        state: checker.state,
        broken,
        checkpoints_compared: compared,
    })
}

/// Stored checkpoints read at a time by [`verify`]: their RSA checks run between the page's
/// statements, with the snapshot's transaction idle, so a page is kept well under a second of
/// them (`DATABASE_IDLE_TX_TIMEOUT_SEC` ends a session idle in a transaction that long).
const CHECKPOINT_PAGE: i64 = 1_000;

/// Checks, on `conn`, the events after `from` up to `head`: seq continuity, links, hashes and
/// the signatures `keys` can check, ending at `head`. The checkpointer runs this before it signs a head, so it
/// never vouches for a chain that does not extend its previous checkpoint (a head or events
/// written around the service). `Some` is the first break.
pub async fn check_extension(
    conn: &mut PgConnection,
    keys: &mut KeyRing,
    from: ChainState,
    head: &chain::Head,
) -> Result<Option<Break>, AuditError> {
    let mut checker = RowChecker {
        state: from,
        keys,
        wanted: HashMap::new(),
        buf: Vec::with_capacity(1024),
    };
    if let Some(b) = check_rows(conn, &mut checker, head.seq).await? {
        return Ok(Some(b));
    }
    Ok(head_break(head, &checker.state))
}

/// Streams the events after the checker's state up to seq `to` through it; the first break.
async fn check_rows(
    conn: &mut PgConnection,
    checker: &mut RowChecker<'_>,
    to: i64,
) -> Result<Option<Break>, AuditError> {
    let sql =
        format!("SELECT {COLUMNS} FROM audit_events WHERE seq > $1 AND seq <= $2 ORDER BY seq");
    let mut rows = sqlx::query_as::<_, AuditRecord>(&sql)
        .bind(checker.state.last_seq)
        .bind(to)
        .fetch(&mut *conn);
    loop {
        // Rows come from a buffer far faster than they are checked, so the loop would hold its
        // worker thread for the whole chain (seconds per million), starving every other task
        // on it: `/healthz` stalled as long, and the request timeout could not fire.
        tokio::task::coop::consume_budget().await;
        let row = match rows.try_next().await {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(None),
            // A value the service never writes (a `details` number beyond a double's range,
            // say) makes the row unreadable. That is a changed event, reported where it sits
            // (rows come in seq order, so it is the one after the last checked), not a
            // verification that cannot run: the latter would silence the alarm on any edit
            // that came with such a value.
            Err(e) if super::record::unreadable_details(&e) => {
                return Ok(Some(Break {
                    seq: checker.state.last_seq + 1,
                    reason: BreakReason::HashMismatch,
                    detail: format!(
                        "the event after seq {} cannot be read ({e}); the service never writes \
                         such a value",
                        checker.state.last_seq
                    ),
                }));
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(b) = checker.check(&row) {
            return Ok(Some(b));
        }
    }
}

/// Compares the end of an intact chain with the recorded head.
fn head_break(head: &chain::Head, state: &ChainState) -> Option<Break> {
    if head.seq > state.last_seq {
        return Some(Break {
            seq: state.last_seq + 1,
            reason: BreakReason::TailTruncated,
            detail: format!(
                "the chain ends at seq {} but the recorded chain head is seq {}",
                state.last_seq, head.seq
            ),
        });
    }
    let head_hash = (head.hash != GENESIS_HASH).then_some(head.hash);
    if head.seq < state.last_seq || head_hash != state.last_hash {
        // Events past the recorded head: the first of them is the first the head does not
        // vouch for. Otherwise the head's own event differs.
        let seq = if head.seq < state.last_seq {
            head.seq + 1
        } else {
            head.seq.max(1)
        };
        return Some(Break {
            seq,
            reason: BreakReason::HeadMismatch,
            detail: format!(
                "the recorded chain head (seq {}) does not match the last event (seq {})",
                head.seq, state.last_seq
            ),
        });
    }
    None
}

/// A checkpoint's own signature, checked with `keys` (unsigned, when signatures are required,
/// is a break too). Used by the checkpointer before it builds on one.
pub fn checkpoint_signature_break(cp: &Checkpoint, keys: &mut KeyRing) -> Option<Break> {
    checkpoint_signature(cp, keys).err()
}

/// What became of a checkpoint's signature that is not a break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckpointSignature {
    /// Verified, or not asked for (unsigned, or no keys given).
    Fine,
    /// Signed by a key id the verifier has no key for and was told to skip.
    Unchecked,
}

/// [`checkpoint_signature_break`], saying whether the signature passed unchecked.
fn checkpoint_signature(cp: &Checkpoint, keys: &mut KeyRing) -> Result<CheckpointSignature, Break> {
    let at = |reason, detail| {
        Err(Break {
            seq: cp.seq,
            reason,
            detail,
        })
    };
    if cp.signature.is_none() && keys.signatures_required() {
        return at(
            BreakReason::BadSignature,
            format!(
                "the checkpoint at seq {} is not signed, and signatures are required",
                cp.seq
            ),
        );
    }
    if let (Some(signature), Some(key_id)) = (&cp.signature, &cp.key_id)
        && !keys.is_empty()
    {
        match keys.check(key_id, &cp.message(), signature) {
            SignatureCheck::Valid => {}
            SignatureCheck::Skipped => return Ok(CheckpointSignature::Unchecked),
            SignatureCheck::Invalid => {
                return at(
                    BreakReason::BadSignature,
                    format!(
                        "the checkpoint at seq {} has a bad signature (key {key_id:?})",
                        cp.seq
                    ),
                );
            }
            SignatureCheck::UnknownKey => {
                return at(
                    BreakReason::UnknownKey,
                    format!("no public key verifies the checkpoint's key id {key_id:?}"),
                );
            }
        }
    }
    Ok(CheckpointSignature::Fine)
}

/// Compares one checkpoint (its signature already checked) with the chain. `chain_complete`:
/// the rows verified to the end, so a checkpoint beyond them means the tail was cut.
fn checkpoint_hash_break(
    cp: &Checkpoint,
    hashes: &HashMap<i64, Option<Hash>>,
    verified_to: i64,
    chain_complete: bool,
) -> Option<Break> {
    let at = |reason, detail| {
        Some(Break {
            seq: cp.seq,
            reason,
            detail,
        })
    };
    if cp.seq > verified_to {
        if !chain_complete {
            // Beyond an earlier break: that break is the one to report.
            return None;
        }
        return Some(Break {
            seq: verified_to + 1,
            reason: BreakReason::TailTruncated,
            detail: format!(
                "the chain ends at seq {verified_to} but a checkpoint of {} covers seq {}",
                super::canonical::timestamp(&cp.signed_at),
                cp.seq
            ),
        });
    }
    match hashes.get(&cp.seq).copied().flatten() {
        Some(hash) if hash == cp.hash => None,
        Some(hash) => at(
            BreakReason::CheckpointMismatch,
            format!(
                "the checkpoint says seq {} has hash {} but the chain has {}",
                cp.seq,
                hex::encode(cp.hash),
                hex::encode(hash)
            ),
        ),
        None => at(
            BreakReason::CheckpointMismatch,
            format!(
                "the checkpoint covers seq {}, which is not a version-2 event",
                cp.seq
            ),
        ),
    }
}

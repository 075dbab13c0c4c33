//! The audit log's background jobs: the checkpointer (signed checkpoints at the configured
//! cadence) and the verifier (incremental verification every few minutes, a full pass now and
//! then, `audit_chain_breaks_total` on a break).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::outage::{OutageLog, Report};

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{self, Checkpoint};
use super::config::AuditConfig;
use super::error::AuditError;
use super::signing::{KeyRing, Signer, UnknownKeys};
use super::verify::{self, Break, ChainState, Verification};

/// How often the checkpointer looks at the chain head (one indexed one-row read).
const CHECKPOINT_POLL: Duration = Duration::from_secs(1);

/// Every this many incremental runs, verify the whole chain again: an incremental run only
/// reads new events, so it cannot notice an old one being changed.
const FULL_PASS_EVERY: u64 = 12;

/// The key ring the service verifies with: its own public key, and the keys it succeeded when
/// `AUDIT_PREVIOUS_PUBLIC_KEYS` gives them; then any other key id is a break (`unknown_key`).
/// Without that setting, other key ids (older keys after a rotation, or a forger's) get their
/// hashes checked but not their signatures, and are counted and reported as unchecked. The
/// offline verifier, given every public key, is the authoritative check.
pub fn service_key_ring(signer: Option<&Signer>) -> KeyRing {
    let previous = signer.and_then(Signer::previous_keys);
    let mut keys = KeyRing::new(if previous.is_some() {
        UnknownKeys::Fail
    } else {
        UnknownKeys::Skip
    });
    if let Some(signer) = signer {
        keys.add(
            Some(signer.key_id().to_owned()),
            signer.public_key().clone(),
        );
    }
    for (id, key) in previous.unwrap_or_default() {
        keys.add(Some(id.clone()), key.clone());
    }
    keys
}

/// Starts both jobs, recording what they find in `log`'s findings (which its
/// [`super::AuditLog::verify`] reads); they stop when `shutdown` is cancelled.
pub fn spawn(
    pool: PgPool,
    config: &AuditConfig,
    log: &super::AuditLog,
    shutdown: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let findings = log.findings().clone();
    // Both counters exist from the first scrape, so `increase()` sees their first step.
    metrics::counter!("audit_chain_breaks_total").increment(0);
    metrics::counter!("audit_checkpoints_refused_total").increment(0);
    if config.signer.is_none() {
        tracing::warn!(
            "AUDIT_SIGNING_KEY_FILE is not set: the audit chain is hashed but neither checkpoints nor events are signed"
        );
    }
    let verifier =
        IncrementalVerifier::with_findings(service_key_ring(config.signer.as_deref()), findings);
    let checkpointer = tokio::spawn(run_checkpointer(
        pool.clone(),
        config.signer.clone(),
        config.checkpoint_every,
        config.checkpoint_interval,
        verifier.findings(),
        shutdown.clone(),
    ));
    let verifier = tokio::spawn(verifier.run(pool, config.verify_interval, shutdown));
    vec![checkpointer, verifier]
}

/// What this process's audit jobs know about the chain, shared by its verifier, its
/// checkpointer and the verify route: the head the verifier last found intact and the newest
/// checkpoint the checkpointer signed (both held in memory, out of reach of whoever can write
/// to the database), and the break the verifier reports, if any.
#[derive(Debug, Clone, Default)]
pub struct Findings(Arc<Mutex<Found>>);

/// See [`Findings`].
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The head of the chain as the verifier's last good run verified it.
    pub verified: Option<Checkpoint>,
    /// The newest checkpoint this process signed (and committed).
    pub signed: Option<Checkpoint>,
    /// The break the verifier's last run found.
    pub broken: Option<Break>,
}

impl Found {
    /// The points of the chain this process itself saw intact: the chain must still pass
    /// through them. Rewriting or cutting history behind them, with the stored checkpoints
    /// deleted to match, leaves the database consistent, and only these tell.
    pub fn anchors(&self) -> Vec<Checkpoint> {
        self.verified
            .iter()
            .chain(self.signed.iter())
            .cloned()
            .collect()
    }
}

impl Findings {
    /// The latest findings.
    pub fn get(&self) -> Found {
        self.lock().clone()
    }

    /// Records a verifier run's outcome.
    fn set_verification(&self, verified: Option<Checkpoint>, broken: Option<Break>) {
        let mut found = self.lock();
        found.verified = verified;
        found.broken = broken;
    }

    /// Records a checkpoint this process signed and committed.
    pub fn record_signed(&self, checkpoint: Checkpoint) {
        let mut found = self.lock();
        if found.signed.as_ref().is_none_or(|s| s.seq < checkpoint.seq) {
            found.signed = Some(checkpoint);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Found> {
        // Only plain assignments happen under the lock: a poisoned value is still whole.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes a checkpoint whenever `every` events were appended since the last one, or `interval`
/// passed and at least one was. It never signs while `findings` report a break, nor a head that
/// does not pass through their anchors (the head verified, and the checkpoint this process
/// signed last, which it records there).
pub async fn run_checkpointer(
    pool: PgPool,
    signer: Option<Arc<Signer>>,
    every: i64,
    interval: Duration,
    findings: Findings,
    shutdown: CancellationToken,
) {
    let interval = chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::seconds(60));
    // The break the checkpointer last refused to sign over, so a persisting one is logged and
    // counted once rather than every second.
    let mut refused: Option<(i64, &'static str)> = None;
    // A database away or unmigrated fails every poll: said at once, then every few minutes.
    let mut outages = OutageLog::default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(CHECKPOINT_POLL) => {}
        }
        // `elapsed`: since the last checkpoint was signed, by the database's clock. Negative,
        // that checkpoint is dated in the database's future (signed by an instance whose clock
        // ran ahead, before checkpoints were dated by the database): due, rather than none by
        // time until then.
        let due = |since: i64, elapsed: Option<chrono::Duration>| {
            since >= every || elapsed.is_none_or(|e| e >= interval || e < chrono::Duration::zero())
        };
        let found = findings.get();
        let result = match found.broken {
            Some(b) => Err(AuditError::Unverifiable {
                seq: b.seq,
                reason: b.reason.code(),
                detail: format!(
                    "the background verifier reports the chain broken: {}",
                    b.detail
                ),
            }),
            None => {
                checkpoint::checkpoint_if_due(&pool, signer.as_deref(), &found.anchors(), due).await
            }
        };
        // A refusal is the chain's state, not an outage.
        let report = match &result {
            Err(AuditError::Unverifiable { .. }) => Report::Quiet,
            other => outages.observe(other.is_ok(), Instant::now()),
        };
        if report == Report::Back {
            tracing::info!("audit checkpoints can be written again");
        }
        match result {
            // Another instance holding the lock (`Ok(None)`) says nothing about the break.
            Ok(Some(checkpoint)) => {
                findings.record_signed(checkpoint);
                refused = None;
            }
            Ok(None) => {}
            Err(AuditError::Unverifiable {
                seq,
                reason,
                detail,
            }) => {
                if refused != Some((seq, reason)) {
                    tracing::error!(
                        first_bad_seq = seq,
                        reason,
                        detail = %detail,
                        "audit chain does not extend the last checkpoint; not signing its head"
                    );
                    metrics::counter!("audit_checkpoints_refused_total").increment(1);
                    refused = Some((seq, reason));
                }
            }
            Err(e) if report == Report::Warn => tracing::warn!(
                error = %e,
                "audit checkpoint failed; retrying every second (said again every 5 minutes \
                 while it fails)"
            ),
            Err(_) => {}
        }
    }
}

/// Verifies the chain incrementally, remembering how far it got.
pub struct IncrementalVerifier {
    keys: KeyRing,
    state: ChainState,
    /// When `state` was verified.
    verified_at: chrono::DateTime<chrono::Utc>,
    runs: u64,
    /// The last break reported, so a persisting break is counted once.
    reported: Option<(i64, &'static str)>,
    /// What the runs found, for the checkpointer.
    findings: Findings,
    /// The key ids of unchecked signatures last warned about, so the warning is not repeated
    /// every run.
    warned_unchecked: std::collections::BTreeSet<String>,
}

impl IncrementalVerifier {
    /// A verifier that has verified nothing yet.
    pub fn new(keys: KeyRing) -> Self {
        Self::with_findings(keys, Findings::default())
    }

    /// A verifier that has verified nothing yet, recording what it finds in `findings` (and
    /// checking the chain against the checkpoints recorded there as signed).
    pub fn with_findings(keys: KeyRing, findings: Findings) -> Self {
        Self {
            keys,
            state: ChainState::default(),
            verified_at: chrono::Utc::now(),
            runs: 0,
            reported: None,
            findings,
            warned_unchecked: std::collections::BTreeSet::new(),
        }
    }

    /// What this verifier's runs find, kept up to date as it runs.
    pub fn findings(&self) -> Findings {
        self.findings.clone()
    }

    /// One run: new events since the last good run (every [`FULL_PASS_EVERY`]th run, and after
    /// a break, the whole chain), checked against the anchors in the findings too (the head
    /// verified before, the checkpoint this process signed last). Logs and counts a new break.
    pub async fn run_once(&mut self, pool: &PgPool) -> Result<Verification, AuditError> {
        let full = self.runs.is_multiple_of(FULL_PASS_EVERY) || self.reported.is_some();
        self.runs += 1;
        let from = if full {
            ChainState::default()
        } else {
            self.state.clone()
        };
        // The verified head among them is this verifier's own (it records it after each run).
        let anchors = self.findings.get().anchors();
        let result = verify::verify(pool, &mut self.keys, &anchors, from).await?;
        match &result.broken {
            None => {
                self.state = result.state.clone();
                self.verified_at = chrono::Utc::now();
                self.reported = None;
                metrics::gauge!("audit_chain_verified_seq").set(self.state.last_seq as f64);
                self.report_unchecked();
                self.findings.set_verification(self.verified_head(), None);
            }
            Some(b) => {
                tracing::error!(
                    first_bad_seq = b.seq,
                    reason = b.reason.code(),
                    detail = %b.detail,
                    "audit chain is BROKEN"
                );
                let key = (b.seq, b.reason.code());
                if self.reported != Some(key) {
                    metrics::counter!("audit_chain_breaks_total").increment(1);
                    self.reported = Some(key);
                }
                self.findings
                    .set_verification(self.verified_head(), Some(b.clone()));
            }
        }
        Ok(result)
    }

    /// Signatures by key ids the service has no key for pass unchecked (a rotation, or a forger
    /// who re-signed rows with a key of their own): exported as `audit_signatures_unchecked`
    /// and warned about when the set of such key ids changes.
    fn report_unchecked(&mut self) {
        let state = &self.state;
        metrics::gauge!("audit_signatures_unchecked").set(state.signatures_unchecked as f64);
        if state.unchecked_key_ids.is_empty() || state.unchecked_key_ids == self.warned_unchecked {
            return;
        }
        tracing::warn!(
            signatures = state.signatures_unchecked,
            key_ids = ?state.unchecked_key_ids,
            "audit events signed by key ids this service has no key for: their signatures are not \
             checked. If they are earlier keys of yours, list their public keys in \
             AUDIT_PREVIOUS_PUBLIC_KEYS (then any other key id is a break); if not, someone \
             re-signed the log: run `factory-service audit verify --public-key ...`"
        );
        self.warned_unchecked = state.unchecked_key_ids.clone();
    }

    /// The head an earlier run verified, as a checkpoint held in this process's memory, out
    /// of reach of whoever can write to the database. A full pass checks the chain against it,
    /// like against a stored checkpoint: someone who rewrote the whole chain (recomputing every
    /// hash, or turning every event into a legacy one, with the head row to match) and deleted
    /// the stored checkpoints would otherwise pass the full pass that follows the incremental
    /// run that noticed, and the break would clear itself.
    fn verified_head(&self) -> Option<Checkpoint> {
        Some(Checkpoint {
            seq: self.state.last_seq,
            hash: self.state.last_hash?,
            signed_at: self.verified_at,
            key_id: None,
            signature: None,
        })
    }

    /// Runs now and then every `interval` until `shutdown`.
    pub async fn run(mut self, pool: PgPool, interval: Duration, shutdown: CancellationToken) {
        let mut outages = OutageLog::default();
        loop {
            let result = self.run_once(&pool).await;
            match (outages.observe(result.is_ok(), Instant::now()), result) {
                (Report::Warn, Err(e)) => tracing::warn!(
                    error = %e,
                    "audit verification could not run; retrying every {interval:?} (said again \
                     every 5 minutes while it fails)"
                ),
                (Report::Back, _) => tracing::info!("audit verification runs again"),
                _ => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

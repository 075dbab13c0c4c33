//! Scan retention (`SCANS_RETENTION_DAYS`): the factory's periodic sweep deletes the `scans`
//! rows scanned longer ago than the retention. `tags.scan_count` and `first_scanned_at` keep
//! counting them; only the per-scan rows go.
//!
//! A scan row is also what makes a redelivered event count once (its `event_id`). So each
//! sweep moves the retention horizon (`scans_horizon`) up to its cutoff, and the consumer
//! records no event scanned before the horizon (`sql/insert_scans.sql`; such an event is acked
//! as a duplicate): an event whose row is gone is never counted again, however late it comes.
//! A sweep deletes only up to the horizon as it was before its own move, and moves it only
//! when the last move (by any instance) is [`MIN_MOVE_SPACING`] old: so it deletes up to a
//! horizon every consumer statement begun in the last minutes has read. Else a statement that
//! read the old horizon just before the move could insert, and count, an event whose row the
//! same sweep is deleting. The retention is at least
//! [`MIN_DAYS`], longer than Pub/Sub keeps a message, so that no event still on its way is
//! refused for its age.
//!
//! One instance sweeps at a time (an advisory lock): every `serve` instance, in every region,
//! runs the sweep against the one primary.

use sqlx::PgConnection;

/// The shortest retention accepted, in days: longer than Pub/Sub keeps any message (31 days
/// at most, a topic's retention; a subscription's, the dead-letter one's included, 7).
pub const MIN_DAYS: u32 = 32;
/// The longest, in days (100 years).
pub const MAX_DAYS: u32 = 36_500;

/// Rows deleted per statement: each is its own short transaction, so the sweep never holds
/// many row locks or a long snapshot while the consumer inserts.
const BATCH: i64 = 10_000;
/// Statements per sweep at most (a million rows): a backlog is worked off over several sweeps
/// rather than in one long run.
const MAX_BATCHES: u32 = 100;

/// The most one sweep deletes ([`BATCH`] × [`MAX_BATCHES`]): one sweep every 10 minutes keeps up
/// with about 1,600 scans a second; a sweep that reaches it says so.
pub const MAX_PER_SWEEP: u64 = BATCH as u64 * MAX_BATCHES as u64;

/// The advisory lock one sweeping instance holds (any number; distinct from the audit
/// checkpointer's).
pub(crate) const SWEEP_LOCK_KEY: i64 = 0x766f_6b65_7363_616e; // "vokescan"

/// The least time between two moves of the horizon, whichever instances sweep.
pub const MIN_MOVE_SPACING: &str = "5 minutes";

/// Moves the horizon to `days` before now (by the database's clock; never back), then deletes
/// the scans scanned before the horizon as it was before this move, in batches. Returns how
/// many were deleted; 0 while another instance sweeps, or when the horizon moved less than
/// [`MIN_MOVE_SPACING`] ago (or has no row).
pub async fn sweep(conn: &mut PgConnection, days: u32) -> Result<u64, sqlx::Error> {
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(SWEEP_LOCK_KEY)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(0);
    }
    let swept = sweep_locked(conn, days).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(SWEEP_LOCK_KEY)
        .execute(&mut *conn)
        .await;
    let deleted = swept?;
    unlocked?;
    Ok(deleted)
}

async fn sweep_locked(conn: &mut PgConnection, days: u32) -> Result<u64, sqlx::Error> {
    // The horizon before the move: the one every consumer statement since the last sweep read.
    // No row: moved too recently. A null horizon: the first move (from `-infinity`), nothing
    // to delete yet.
    let previous: Option<Option<chrono::DateTime<chrono::Utc>>> = sqlx::query_scalar(&format!(
        "WITH previous AS (SELECT before, moved_at FROM scans_horizon FOR UPDATE) \
         UPDATE scans_horizon \
         SET before = GREATEST(scans_horizon.before, now() - make_interval(days => $1)), \
             moved_at = now() \
         FROM previous WHERE previous.moved_at <= now() - interval '{MIN_MOVE_SPACING}' \
         RETURNING NULLIF(previous.before, '-infinity')"
    ))
    .bind(i32::try_from(days).unwrap_or(i32::MAX))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(Some(horizon)) = previous else {
        return Ok(0);
    };
    let mut deleted = 0;
    for _ in 0..MAX_BATCHES {
        let n = sqlx::query(
            "DELETE FROM scans WHERE ctid = ANY(ARRAY(\
             SELECT ctid FROM scans WHERE scanned_at < $1 LIMIT $2))",
        )
        .bind(horizon)
        .bind(BATCH)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        deleted += n;
        if n < u64::try_from(BATCH).unwrap_or(u64::MAX) {
            break;
        }
    }
    Ok(deleted)
}

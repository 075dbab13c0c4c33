//! Applying valid scan events: record each and count it on its tag, exactly once per
//! `event_id`. A micro-batch is applied in one transaction with set-based statements; a batch
//! the database refuses as data is split until the event at fault is alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::schema::ScanEvent;

const INSERT_SCANS: &str = include_str!("sql/insert_scans.sql");
const LOCK_TAGS: &str = include_str!("sql/lock_tags.sql");
const COUNT_SCANS: &str = include_str!("sql/count_scans.sql");

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The scan was recorded and counted.
    Recorded,
    /// The event was already recorded (or came earlier in the same batch); nothing changed.
    Duplicate,
    /// The event was scanned before the retention horizon (`events::retention`): it may have
    /// been recorded and counted already, its row since deleted, so nothing changed. Told apart
    /// from a duplicate because it may also be a scan never counted (a scanning instance whose
    /// clock ran far behind), which must not pass unseen.
    Expired,
}

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The database is unreachable or failed; a later attempt may succeed.
    #[error("database unavailable: {0}")]
    Transient(#[source] sqlx::Error),
    /// The database refused the event's data; no attempt will succeed.
    #[error("database refused the event: {0}")]
    Rejected(#[source] sqlx::Error),
    /// The database did not answer in time; a later attempt may succeed (like `Transient`).
    #[error("database unavailable: no answer within {0:?}")]
    TimedOut(std::time::Duration),
}

impl ApplyError {
    /// Whether the database could not be reached or did not answer, or lacks a table or column
    /// this build's migrations add (it is a migration behind: `migrate` has not run yet): the
    /// batch holds its events and tries again rather than nacking them. A failure the database
    /// reported while it worked (a deadlock, a lock or statement timeout, ...) is only
    /// transient: nacked at once.
    pub fn is_database_away(&self) -> bool {
        match self {
            Self::TimedOut(_) => true,
            Self::Transient(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed => true,
                // Connection exceptions, the server shutting down or refusing new connections;
                // an undefined table or column.
                sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                    c.starts_with("08")
                        || matches!(
                            &*c,
                            "57P01" | "57P02" | "57P03" | "53300" | "42P01" | "42703"
                        )
                }),
                _ => false,
            },
            Self::Rejected(_) => false,
        }
    }
}

impl From<sqlx::Error> for ApplyError {
    /// SQLSTATE classes 22 (data exception) and 23 (integrity violation) are about the events
    /// themselves; everything else (connections, timeouts, server trouble) may pass.
    fn from(e: sqlx::Error) -> Self {
        let data_problem = e
            .as_database_error()
            .and_then(|db| db.code())
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23"));
        if data_problem {
            Self::Rejected(e)
        } else {
            Self::Transient(e)
        }
    }
}

/// One event's fate after [`apply_isolating`]; a failure may be shared by several events.
pub type EventResult = Result<Applied, Arc<ApplyError>>;

/// Applies `events` in one transaction and returns what became of each, in order. Commits
/// before returning, so the caller may ack afterwards. On any error nothing was applied.
///
/// An `event_id` seen twice in `events` is recorded for its first occurrence and the later
/// ones are duplicates, just as if the events had been applied one after the other.
pub async fn apply_batch(pool: &PgPool, events: &[&ScanEvent]) -> Result<Vec<Applied>, ApplyError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    // The first occurrence of each event id, by position; only those are inserted, in id
    // order (see insert_scans.sql).
    let mut first: HashMap<Uuid, usize> = HashMap::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        first.entry(event.event_id).or_insert(i);
    }
    let mut unique: Vec<&ScanEvent> = first.values().map(|&i| events[i]).collect();
    unique.sort_unstable_by_key(|e| e.event_id);

    let mut tx = pool.begin().await?;
    let inserted: Vec<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(INSERT_SCANS)
        .bind(column(&unique, |e| e.event_id))
        .bind(column(&unique, |e| e.tag_id.as_str()))
        .bind(column(&unique, |e| e.result.as_str()))
        .bind(column(&unique, |e| e.scanned_at))
        .bind(column(&unique, |e| e.client_ip_hash.as_str()))
        .bind(column(&unique, |e| e.api_key_id))
        .bind(column(&unique, |e| e.user_agent.as_deref()))
        .fetch_all(&mut *tx)
        .await?;
    // Which events were not inserted because they are older than the horizon: the horizon is
    // read again only when some event was not inserted (it only moves forward, so an event
    // below it now was below it, or was a duplicate, when it was refused).
    let horizon: Option<DateTime<Utc>> = if inserted.len() < unique.len() {
        // `-infinity` (never moved) is no bound, and chrono cannot hold it.
        sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
            "SELECT before FROM scans_horizon WHERE isfinite(before)",
        )
        .fetch_optional(&mut *tx)
        .await?
        .flatten()
    } else {
        None
    };
    let not_inserted = |e: &ScanEvent| {
        if horizon.is_some_and(|h| e.scanned_at < h) {
            Applied::Expired
        } else {
            Applied::Duplicate
        }
    };
    if inserted.is_empty() {
        // Nothing to undo; ending the transaction here keeps an all-duplicate batch cheap.
        tx.rollback().await?;
        return Ok(events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                if first.get(&e.event_id) == Some(&i) {
                    not_inserted(e)
                } else {
                    Applied::Duplicate
                }
            })
            .collect());
    }

    // Per tag: how many new scans and the earliest; a BTreeMap keeps the tags sorted.
    let mut per_tag: BTreeMap<&str, (i64, DateTime<Utc>)> = BTreeMap::new();
    for (_, tag_id, scanned_at) in &inserted {
        per_tag
            .entry(tag_id.as_str())
            .and_modify(|(n, earliest)| {
                *n += 1;
                *earliest = (*earliest).min(*scanned_at);
            })
            .or_insert((1, *scanned_at));
    }
    let tags: Vec<&str> = per_tag.keys().copied().collect();
    sqlx::query(LOCK_TAGS).bind(&tags).execute(&mut *tx).await?;
    sqlx::query(COUNT_SCANS)
        .bind(&tags)
        .bind(per_tag.values().map(|(n, _)| *n).collect::<Vec<_>>())
        .bind(per_tag.values().map(|(_, t)| *t).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    let recorded: HashSet<Uuid> = inserted.iter().map(|(id, _, _)| *id).collect();
    Ok(events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if first.get(&e.event_id) != Some(&i) {
                Applied::Duplicate
            } else if recorded.contains(&e.event_id) {
                Applied::Recorded
            } else {
                not_inserted(e)
            }
        })
        .collect())
}

/// One field of every event: a column for `unnest`.
fn column<'a, T>(events: &[&'a ScanEvent], field: impl Fn(&'a ScanEvent) -> T) -> Vec<T> {
    events.iter().map(|e| field(e)).collect()
}

/// Applies `events` as one batch; if the database refuses the batch as data, applies each half
/// the same way, down to single events, so that one bad event never holds up the others. A
/// transient failure is not split: it is every event's result in that part. Results are in
/// the order of `events`, and earlier events are always applied first.
pub async fn apply_isolating(pool: &PgPool, events: &[&ScanEvent]) -> Vec<EventResult> {
    let mut results: Vec<(usize, EventResult)> = Vec::with_capacity(events.len());
    // A stack of parts still to apply, the leftmost on top.
    let mut parts: Vec<Range<usize>> = Vec::with_capacity(8);
    parts.push(0..events.len());
    while let Some(part) = parts.pop() {
        if part.is_empty() {
            continue;
        }
        match apply_batch(pool, &events[part.clone()]).await {
            Ok(applied) => results.extend(part.zip(applied.into_iter().map(Ok))),
            Err(ApplyError::Rejected(e)) if part.len() > 1 => {
                tracing::debug!(error = %e, size = part.len(), "batch refused; splitting it");
                let middle = part.start + part.len() / 2;
                parts.push(middle..part.end);
                parts.push(part.start..middle);
            }
            Err(e) => {
                let e = Arc::new(e);
                results.extend(part.map(|i| (i, Err(Arc::clone(&e)))));
            }
        }
    }
    results.sort_unstable_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests;

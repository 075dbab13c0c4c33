//! Applying a valid scan event: record it and count it on its tag, exactly once per `event_id`,
//! in one transaction.

use sqlx::PgPool;

use super::schema::ScanEvent;

const INSERT_SCAN: &str = include_str!("sql/insert_scan.sql");
const COUNT_SCAN: &str = include_str!("sql/count_scan.sql");

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The scan was recorded and counted.
    Recorded,
    /// The event was already recorded; nothing changed.
    Duplicate,
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
}

impl From<sqlx::Error> for ApplyError {
    /// SQLSTATE classes 22 (data exception) and 23 (integrity violation) are about the event
    /// itself; everything else (connections, timeouts, server trouble) may pass.
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

/// Records `event` and, only if it was not recorded before, counts it on its tag. Commits
/// before returning, so the caller may ack afterwards.
pub async fn apply(pool: &PgPool, event: &ScanEvent) -> Result<Applied, ApplyError> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(INSERT_SCAN)
        .bind(event.event_id)
        .bind(&event.tag_id)
        .bind(event.result.as_str())
        .bind(event.scanned_at)
        .bind(&event.client_ip_hash)
        .bind(event.api_key_id)
        .bind(event.user_agent.as_deref())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if inserted == 0 {
        // Nothing to undo; ending the transaction here keeps the duplicate path cheap.
        tx.rollback().await?;
        return Ok(Applied::Duplicate);
    }
    sqlx::query(COUNT_SCAN)
        .bind(&event.tag_id)
        .bind(event.scanned_at)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Applied::Recorded)
}

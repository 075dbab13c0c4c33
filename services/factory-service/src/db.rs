//! The database schema: the one sqlx migration history in `migrations/`.

use sqlx::PgPool;

/// Why `migrate` did not bring the schema up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrationFailure {
    /// sqlx could not apply the migrations (or refused the database's history).
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query of the lock or of the checks around the migrations failed.
    #[error("checking the schema: {0}")]
    Check(#[from] sqlx::Error),
    /// Indexes left invalid by a `CREATE INDEX CONCURRENTLY` that failed half way: PostgreSQL
    /// keeps but never uses them. sqlx records no row for the failed migration, so a rerun
    /// would stop at "already exists" (or, with `IF NOT EXISTS`, take them for done).
    #[error(
        "invalid indexes {0:?}: a concurrent index build failed half way (or is running in a \
         session whose progress this role cannot see: pg_stat_progress_create_index); drop \
         each that is not being built (DROP INDEX CONCURRENTLY <name>) and migrate again"
    )]
    InvalidIndexes(Vec<String>),
}

/// Applies pending migrations (a no-op when the schema is current), and warns when the
/// database holds migrations newer than this build's (see `common::db::MIGRATOR`). Fails,
/// before and after, while an index of the schema is invalid and not being built.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrationFailure> {
    let mut lock = MigrateLock::acquire(pool).await?;
    refuse_invalid_indexes(pool).await?;
    // On the lock's own session: should an earlier build's `migrate` wait in sqlx's
    // `pg_advisory_lock` meanwhile (holding a snapshot a concurrent index build waits for),
    // PostgreSQL sees the whole cycle and fails one side, rather than both waiting for ever
    // through a lock held by another session of this process.
    common::db::migrator(false)
        .run_direct(&mut lock.conn)
        .await?;
    refuse_invalid_indexes(pool).await?;
    lock.release().await;
    let newest = common::db::MIGRATOR.iter().map(|m| m.version).max();
    let newer: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE version > $1 ORDER BY version",
    )
    .bind(newest.unwrap_or(0))
    .fetch_all(pool)
    .await?;
    if !newer.is_empty() {
        tracing::warn!(
            versions = ?newer,
            "the database holds migrations newer than this build's (a newer release applied \
             them); this build's migrations are all applied"
        );
    }
    Ok(())
}

/// The advisory lock one `migrate` at a time holds: sqlx's own for this database, so that a
/// `migrate` of an earlier build (which takes it the sqlx way) takes turns with this one.
/// sqlx's `generate_lock_id` (sqlx-postgres 0.8, `migrate.rs`), which is private.
fn migrate_lock_key(database: &str) -> i64 {
    const CRC_IEEE: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32_ad9e * i64::from(CRC_IEEE.checksum(database.as_bytes()))
}

/// How often a `migrate` that found the lock taken asks again.
const MIGRATE_LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// One `migrate` at a time, held on the connection that runs the migrations. Asked for with
/// `pg_try_advisory_lock` in a loop, not waited for in `pg_advisory_lock` as sqlx does: a
/// statement waiting for the lock holds a snapshot for as long as it waits, and a `CREATE
/// INDEX CONCURRENTLY` of the run holding the lock waits for every such snapshot to end, so
/// two runs at once deadlocked (and could leave an invalid index).
struct MigrateLock {
    conn: sqlx::PgConnection,
}

impl MigrateLock {
    async fn acquire(pool: &PgPool) -> Result<Self, MigrationFailure> {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
        let database: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut conn)
            .await?;
        let key = migrate_lock_key(&database);
        let mut said = false;
        loop {
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await?;
            if taken {
                return Ok(Self { conn });
            }
            if !said {
                said = true;
                tracing::info!("another `migrate` is running on this database; waiting for it");
            }
            tokio::time::sleep(MIGRATE_LOCK_POLL).await;
        }
    }

    /// Ends the session, and so the lock (as a crash would).
    async fn release(self) {
        use sqlx::Connection as _;
        let _ = self.conn.close().await;
    }
}

/// [`MigrationFailure::InvalidIndexes`] for the schema's invalid indexes, leaving out those a
/// `CREATE INDEX CONCURRENTLY` (or `REINDEX CONCURRENTLY`) is building right now.
async fn refuse_invalid_indexes(pool: &PgPool) -> Result<(), MigrationFailure> {
    let invalid: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE NOT i.indisvalid AND n.nspname = current_schema() \
         AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p \
                         WHERE p.index_relid = i.indexrelid) \
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    if invalid.is_empty() {
        Ok(())
    } else {
        Err(MigrationFailure::InvalidIndexes(invalid))
    }
}

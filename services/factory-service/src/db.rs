//! The database schema: the one sqlx migration history in `migrations/`.

use sqlx::PgPool;

/// Why `migrate` did not bring the schema up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrationFailure {
    /// sqlx could not apply the migrations (or refused the database's history).
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query of the checks after the migrations failed.
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
    refuse_invalid_indexes(pool).await?;
    common::db::MIGRATOR.run(pool).await?;
    refuse_invalid_indexes(pool).await?;
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

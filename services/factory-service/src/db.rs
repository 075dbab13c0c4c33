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
    /// keeps but never uses them, and rerunning the migration with `IF NOT EXISTS` would take
    /// them for done.
    #[error(
        "invalid indexes {0:?}: a concurrent index build failed half way; drop each \
         (DROP INDEX CONCURRENTLY <name>), delete its migration's row from _sqlx_migrations if \
         there is one, and migrate again"
    )]
    InvalidIndexes(Vec<String>),
}

/// Applies pending migrations (a no-op when the schema is current), and warns when the
/// database holds migrations newer than this build's (see `common::db::MIGRATOR`). Fails
/// while an index of the schema is invalid.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrationFailure> {
    common::db::MIGRATOR.run(pool).await?;
    let invalid: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE NOT i.indisvalid AND n.nspname = current_schema() ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    if !invalid.is_empty() {
        return Err(MigrationFailure::InvalidIndexes(invalid));
    }
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

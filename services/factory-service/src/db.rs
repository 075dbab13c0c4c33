//! The database schema: the one sqlx migration history in `migrations/`.

use sqlx::PgPool;

/// Applies pending migrations (a no-op when the schema is current), and warns when the
/// database holds migrations newer than this build's (see `common::db::MIGRATOR`).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    common::db::MIGRATOR.run(pool).await?;
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

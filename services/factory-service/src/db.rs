//! The database schema: the one sqlx migration history in `migrations/`.

use sqlx::PgPool;

/// Applies pending migrations (a no-op when the schema is current).
///
/// A database may also hold migrations this build does not know: a newer release applied them
/// and was rolled back. A migration must leave a schema the release before it still runs on
/// (infra/terraform/README.md), so that is not an error: it would stop the rollback at its
/// migrate step. It is said in a warning naming them. The checksums of the migrations this
/// build knows are still checked.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut migrator = sqlx::migrate!("../../migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
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

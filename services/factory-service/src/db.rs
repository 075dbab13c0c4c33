//! The database schema: the one sqlx migration history in `migrations/`.

use sqlx::PgPool;

/// Applies pending migrations (a no-op when the schema is current).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    common::db::MIGRATOR.run(pool).await
}

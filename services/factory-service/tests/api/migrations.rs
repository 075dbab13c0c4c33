//! The migration history applies to an empty database, again as a no-op, and reverts.

use common::testing::admin_url;
use sqlx::{Connection, PgConnection, PgPool};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn empty_database() -> PgPool {
    let admin = admin_url();
    let name = format!("voketag_t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&admin).await.expect("connect");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    PgPool::connect(&format!("{base}/{name}"))
        .await
        .expect("connect to new database")
}

async fn applied(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .expect("count migrations")
}

#[tokio::test]
async fn migrations_apply_on_an_empty_database_and_again_as_a_no_op() {
    let pool = empty_database().await;
    factory_service::db::migrate(&pool)
        .await
        .expect("first run");
    let first = applied(&pool).await;
    assert_eq!(
        first as usize,
        common::db::MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .count()
    );
    for table in [
        "users",
        "refresh_families",
        "refresh_tokens",
        "api_keys",
        "products",
        "batches",
        "tags",
        "scans",
        "audit_events",
        "audit_checkpoints",
        "idempotency_keys",
    ] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&pool)
            .await
            .expect("regclass");
        assert!(exists, "table {table}");
    }
    factory_service::db::migrate(&pool)
        .await
        .expect("second run");
    assert_eq!(
        applied(&pool).await,
        first,
        "the second run applies nothing"
    );
}

/// A newer release migrated the database and was rolled back: the older build's `migrate`
/// (the release pipeline runs it before every deploy) must not stop the rollback. It stopped
/// with "migration … was previously applied but is missing in the resolved migrations".
#[tokio::test]
async fn a_database_migrated_by_a_newer_release_still_migrates() -> TestResult {
    let pool = empty_database().await;
    factory_service::db::migrate(&pool).await?;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (29991231000001, 'from a newer release', true, '\\x00', 1)",
    )
    .execute(&pool)
    .await?;
    factory_service::db::migrate(&pool).await?;
    // A changed migration this build knows is still refused.
    sqlx::query(
        "UPDATE _sqlx_migrations SET checksum = '\\x00' \
         WHERE version = (SELECT min(version) FROM _sqlx_migrations)",
    )
    .execute(&pool)
    .await?;
    assert!(factory_service::db::migrate(&pool).await.is_err());
    Ok(())
}

#[tokio::test]
async fn migrations_revert_and_reapply() {
    let pool = empty_database().await;
    factory_service::db::migrate(&pool).await.expect("apply");
    common::db::MIGRATOR
        .undo(&pool, 0)
        .await
        .expect("revert everything");
    let users: bool = sqlx::query_scalar("SELECT to_regclass('users') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .expect("regclass");
    assert!(!users, "reverting drops the schema");
    factory_service::db::migrate(&pool)
        .await
        .expect("apply again");
}

/// Users disabled before the migration that ends a disabled user's sessions lose theirs when
/// it is applied, as if disabled after it (else enabling them again would bring the sessions
/// back, which the migration is there to prevent).
#[tokio::test]
async fn sessions_of_users_disabled_before_the_session_trigger_end_when_it_is_applied() -> TestResult
{
    let pool = empty_database().await;
    factory_service::db::migrate(&pool).await?;
    common::db::MIGRATOR.undo(&pool, 20261201000002).await?;
    let (user, family) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    sqlx::query(
        "INSERT INTO users (id, email, password_hash, role, disabled_at) \
         VALUES ($1, 'gone@example.com', 'x', 'viewer', now())",
    )
    .bind(user)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO refresh_families (id, user_id, device_id) VALUES ($1, $2, 'a-device-id-0123456')",
    )
    .bind(family)
    .bind(user)
    .execute(&pool)
    .await
    ?;
    factory_service::db::migrate(&pool).await?;
    let reason: Option<String> =
        sqlx::query_scalar("SELECT revoked_reason FROM refresh_families WHERE id = $1")
            .bind(family)
            .fetch_one(&pool)
            .await?;
    assert_eq!(reason.as_deref(), Some("user_disabled"));
    Ok(())
}

/// A `CREATE INDEX CONCURRENTLY` that failed half way leaves an invalid index, which
/// PostgreSQL keeps but never uses, and sqlx records no row for its migration: `migrate`
/// names the index and says what to do, rather than stop at sqlx's "already exists" on the
/// rerun (or report the schema current, when the row is there). The failed build's state is
/// made by hand: the index marked invalid, the migration's row deleted.
#[tokio::test]
async fn migrate_refuses_to_finish_while_an_index_is_invalid() -> TestResult {
    let pool = empty_database().await;
    factory_service::db::migrate(&pool).await?;
    sqlx::query(
        "UPDATE pg_index SET indisvalid = false \
         WHERE indexrelid = 'scans_scanned_at_idx'::regclass",
    )
    .execute(&pool)
    .await?;
    let refused = |e: Option<factory_service::db::MigrationFailure>| -> TestResult {
        let text = e.ok_or("migrate passed over an invalid index")?.to_string();
        assert!(
            text.contains("invalid indexes [\"scans_scanned_at_idx\"]"),
            "{text}"
        );
        assert!(text.contains("DROP INDEX CONCURRENTLY"), "{text}");
        Ok(())
    };
    // The migration recorded (an index gone invalid later).
    refused(factory_service::db::migrate(&pool).await.err())?;
    // As a failed build leaves it: no row for its migration.
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 20261205000002")
        .execute(&pool)
        .await?;
    refused(factory_service::db::migrate(&pool).await.err())?;
    // Dropped as the error says, the migration builds it again.
    sqlx::query("DROP INDEX CONCURRENTLY scans_scanned_at_idx")
        .execute(&pool)
        .await?;
    factory_service::db::migrate(&pool).await?;
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'scans_scanned_at_idx'::regclass",
    )
    .fetch_one(&pool)
    .await?;
    assert!(valid);
    Ok(())
}

/// Two `migrate` runs at once (a pipeline's and an operator's): the second waited for sqlx's
/// lock inside a statement, holding a snapshot that the first run's `CREATE INDEX
/// CONCURRENTLY` waited for, and PostgreSQL broke the deadlock by failing one or both (and
/// could leave the index invalid). Now they take turns.
#[tokio::test]
async fn two_migrate_runs_at_once_take_turns() -> TestResult {
    let pool = empty_database().await;
    factory_service::db::migrate(&pool).await?;
    // Back to before the migration that builds an index concurrently.
    sqlx::query("DROP INDEX scans_scanned_at_idx")
        .execute(&pool)
        .await?;
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 20261205000002")
        .execute(&pool)
        .await?;
    let (first, second) = tokio::join!(
        factory_service::db::migrate(&pool),
        factory_service::db::migrate(&pool)
    );
    first?;
    second?;
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'scans_scanned_at_idx'::regclass",
    )
    .fetch_one(&pool)
    .await?;
    assert!(valid);
    assert!(common::db::missing_migrations(&pool).await?.is_empty());
    Ok(())
}

/// `/readyz` on a schema a migration behind named each version twice (the up and the down
/// half of a reversible migration).
#[tokio::test]
async fn readiness_names_each_missing_migration_once() -> TestResult {
    let pool = empty_database().await;
    factory_service::db::migrate(&pool).await?;
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 20261205000002")
        .execute(&pool)
        .await?;
    assert_eq!(
        common::db::missing_migrations(&pool).await?,
        [20261205000002]
    );
    let check = common::health::ReadinessCheck::postgres(pool.clone());
    assert_eq!(
        (check.check)().await,
        Err("schema lacks migrations [20261205000002] (run `factory-service migrate`)".to_owned())
    );
    Ok(())
}

/// An earlier build's `migrate` takes sqlx's lock; this build's takes the same one (by
/// polling), so the two take turns rather than apply the same migration at once.
#[tokio::test]
async fn migrate_takes_turns_with_a_migrate_holding_sqlx_s_lock() -> TestResult {
    use sqlx::migrate::Migrate as _;
    let pool = empty_database().await;
    let mut other = pool.acquire().await?;
    other.lock().await?;
    let run = tokio::spawn({
        let pool = pool.clone();
        async move { factory_service::db::migrate(&pool).await }
    });
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(!run.is_finished(), "migrate ran while sqlx's lock was held");
    assert_eq!(
        sqlx::query_scalar::<_, Option<String>>("SELECT to_regclass('users')::text")
            .fetch_one(&pool)
            .await?,
        None
    );
    other.unlock().await?;
    run.await??;
    assert!(common::db::missing_migrations(&pool).await?.is_empty());
    Ok(())
}

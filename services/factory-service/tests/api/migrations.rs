//! The migration history applies to an empty database, again as a no-op, and reverts.

use common::testing::admin_url;
use sqlx::{Connection, PgConnection, PgPool};

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

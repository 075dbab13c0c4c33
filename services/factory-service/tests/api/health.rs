//! `/healthz` and `/readyz` against the real dependencies: ready while PostgreSQL, Redis and the
//! scan-event subscription (`serve` runs the consumer) answer; 503 naming the one that does not.

use common::Env;
use common::config::PubSubConfig;
use factory_service::events::{EventsSettings, setup};
use reqwest::Method;
use uuid::Uuid;

use crate::helpers::{TestApp, body, spawn_app_with};

/// An app whose scan-event topic and subscription (names of its own) exist on the emulator.
async fn spawn_ready_app_with(adjust: impl FnOnce(Env) -> Env) -> TestApp {
    let id = Uuid::new_v4().simple();
    let pubsub = PubSubConfig {
        project_id: "voketag-test".into(),
        emulator_host: Some("127.0.0.1:8085".into()),
        topic: format!("health-events-{id}"),
        subscription: format!("health-sub-{id}"),
        dlq_topic: format!("health-dlq-{id}"),
    };
    setup::setup(&EventsSettings::new(pubsub.clone(), 5))
        .await
        .expect("pubsub setup (is the emulator running? scripts/dev-services.sh up)");
    spawn_app_with(move |env| {
        adjust(
            env.with("PUBSUB_PROJECT_ID", &pubsub.project_id)
                .with("SCAN_EVENTS_TOPIC", &pubsub.topic)
                .with("SCAN_EVENTS_SUBSCRIPTION", &pubsub.subscription)
                .with("SCAN_EVENTS_DLQ_TOPIC", &pubsub.dlq_topic),
        )
    })
    .await
}

async fn spawn_ready_app() -> TestApp {
    spawn_ready_app_with(|env| env).await
}

/// The body of the first `/readyz` 200 within 30 s. Panics with the last answer.
async fn ready_within_30s(app: &TestApp) -> serde_json::Value {
    common::testing::ready_within(&app.client, &app.base, std::time::Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn readyz_is_200_with_live_dependencies() {
    let app = spawn_ready_app().await;
    let b = ready_within_30s(&app).await;
    assert_eq!(b["status"], "ready");
    assert_eq!(
        b["checks"],
        serde_json::json!({"postgres": "ok", "redis": "ok", "pubsub": "ok"}),
        "{b}"
    );
}

/// The consumer's subscription does not exist (a deployment that skipped `pubsub setup`): the
/// API answers, but the process is not ready.
#[tokio::test]
async fn readyz_is_503_naming_pubsub_while_the_subscription_is_missing() {
    let missing = format!("no-such-subscription-{}", Uuid::new_v4().simple());
    let app = spawn_app_with(|env| env.with("SCAN_EVENTS_SUBSCRIPTION", &missing)).await;
    let r = app.req(Method::GET, "/readyz", None).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let b = body(r).await;
    assert_eq!(b["failing"], serde_json::json!(["pubsub"]), "{b}");
    assert_eq!(b["checks"]["postgres"], "ok", "{b}");
    assert_eq!(b["checks"]["redis"], "ok", "{b}");
}

#[tokio::test]
async fn readyz_is_503_naming_a_dead_redis_while_healthz_stays_200() {
    let url = format!(
        "redis://127.0.0.1:{}",
        common::testing::closed_port().unwrap()
    );
    let app =
        spawn_ready_app_with(|env| env.with("REDIS_URL", &url).with("REDIS_TIMEOUT_MS", "200"))
            .await;
    let r = app.req(Method::GET, "/readyz", None).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let b = body(r).await;
    assert_eq!(b["error"], "not_ready", "{b}");
    assert_eq!(b["failing"], serde_json::json!(["redis"]), "{b}");
    assert_eq!(b["checks"]["postgres"], "ok", "{b}");
    let live = app.req(Method::GET, "/healthz", None).send().await.unwrap();
    assert_eq!(live.status(), 200, "liveness does not depend on Redis");
}

#[tokio::test]
async fn readyz_is_503_naming_postgres_while_the_schema_is_not_migrated() {
    let app = spawn_ready_app().await;
    let ready = |expected: u16| {
        let app = &app;
        async move {
            if expected == 200 {
                return ready_within_30s(app).await;
            }
            let r = app.req(Method::GET, "/readyz", None).send().await.unwrap();
            assert_eq!(r.status(), expected);
            body(r).await
        }
    };
    let exec = |sql: &'static str| {
        let pool = app.db.pool.clone();
        async move {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
    };
    ready(200).await;
    for (broken, repaired) in [
        // Never migrated: PostgreSQL answers, but every request would fail.
        (
            "ALTER TABLE _sqlx_migrations RENAME TO _sqlx_migrations_away",
            "ALTER TABLE _sqlx_migrations_away RENAME TO _sqlx_migrations",
        ),
        // Migrated, but not up to this build's newest migration.
        (
            "UPDATE _sqlx_migrations SET success = false \
             WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
            "UPDATE _sqlx_migrations SET success = true",
        ),
        // An older migration missing (merged late, applied out of order) counts too.
        (
            "UPDATE _sqlx_migrations SET success = false \
             WHERE version = (SELECT min(version) FROM _sqlx_migrations)",
            "UPDATE _sqlx_migrations SET success = true",
        ),
    ] {
        exec(broken).await;
        let b = ready(503).await;
        assert_eq!(
            b["failing"],
            serde_json::json!(["postgres"]),
            "{broken}: {b}"
        );
        exec(repaired).await;
        ready(200).await;
    }
}

/// The PostgreSQL probe on its own: while PostgreSQL refuses connections it says so at once,
/// rather than waiting in the pool's retry loop for refused connects (its acquire timeout of 3 s
/// is longer than `/readyz` gives a probe, so the answer was "no answer within 2000 ms", two
/// seconds later); with PostgreSQL up, the probe leaves a connection in the pool for the next
/// one (no new connection per probe); and an idle connection that PostgreSQL has closed since
/// (as on a restart) does not make a live database look down.
#[tokio::test]
async fn the_postgres_probe_reports_a_refusal_and_keeps_a_pooled_connection() {
    use common::health::ReadinessCheck;
    use secrecy::SecretString;

    let refused = SecretString::from(format!(
        "postgres://postgres@127.0.0.1:{}/voketag",
        common::testing::closed_port().unwrap()
    ));
    let pool = common::db::pg_pool(
        &refused,
        "voketag-test",
        2,
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let probe = ReadinessCheck::postgres(pool);
    let outcome = (probe.check)().await;
    let e = outcome.expect_err("nothing listens there");
    assert!(e.contains("refused"), "the refusal itself: {e}");

    let db = common::testing::TestDb::new().await;
    let pool = common::db::pg_pool(
        &db.url,
        "voketag-test",
        2,
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let probe = ReadinessCheck::postgres(pool.clone());
    assert_eq!((probe.check)().await, Ok(()));
    // The probe's connection goes back to the pool (in a task of its own) and stays there.
    for _ in 0..500 {
        if pool.num_idle() >= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(pool.num_idle(), 1, "the probe's connection is kept");
    // PostgreSQL ends every session of this database, as a restart would.
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db.name)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(ended.iter().any(|&e| e), "sessions ended: {ended:?}");
    assert_eq!((probe.check)().await, Ok(()), "a new connection answers");
}

/// The instance measures its clock against the database's (`clock_offset_seconds`): nothing
/// else showed an instance whose clock was off, only what went wrong because of it. Here both
/// are this machine's clock.
#[tokio::test]
async fn the_clock_offset_from_the_database_is_measured() {
    let app = crate::helpers::spawn_app().await;
    let mut offset = None;
    for _ in 0..100 {
        offset = app.metric("clock_offset_seconds").await;
        if offset.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let offset = offset.expect("clock_offset_seconds is exported");
    assert!(offset.abs() < 1.0, "{offset} s off on one machine");
}

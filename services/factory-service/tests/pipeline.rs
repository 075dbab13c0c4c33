//! End to end through real processes' code paths: a scan on the scan service is published to the
//! Pub/Sub emulator, consumed by the factory service's consumer, and shows up in the tag's
//! `scan_count` — in the database, through the factory's admin API, and in the next scan's answer.

use std::time::Duration;

use common::Env;
use common::testing::{TestDb, env_for};
use factory_service::events::{self, EventsSettings};
use factory_service::{Application, FactoryConfig};
use scan_service::ScanConfig;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ADMIN_EMAIL: &str = "pipeline-admin@example.com";
const ADMIN_PASSWORD: &str = "pipeline-admin-password-1";

/// An environment both services share: one database, unique Pub/Sub names, no timing floor.
fn shared_env(db: &TestDb) -> Env {
    let id = Uuid::new_v4().simple();
    env_for(db)
        .with("PUBSUB_PROJECT_ID", "voketag-test")
        .with("SCAN_EVENTS_TOPIC", &format!("scan-events-{id}"))
        .with(
            "SCAN_EVENTS_SUBSCRIPTION",
            &format!("factory-scan-events-{id}"),
        )
        .with("SCAN_EVENTS_DLQ_TOPIC", &format!("scan-events-dlq-{id}"))
        .with("SCAN_MIN_RESPONSE_MS", "0")
        .with("SCAN_JITTER_MS", "0")
        .with("REDIS_TIMEOUT_MS", "2000")
        .with("JWT_SECRET", "a-pipeline-test-secret-of-at-least-32-bytes")
        .with("BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL)
        .with("BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
}

async fn seed_tag(db: &TestDb) -> String {
    let product = Uuid::now_v7();
    let batch = Uuid::now_v7();
    let tag_id = format!("pipe{}", Uuid::new_v4().simple());
    sqlx::query("INSERT INTO products (id, name, sku) VALUES ($1, 'Pipeline bag', $2)")
        .bind(product)
        .bind(format!("PIPE-{}", &tag_id[4..12]))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO batches (id, product_id, quantity) VALUES ($1, $2, 1)")
        .bind(batch)
        .bind(product)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO tags (tag_id, batch_id, product_id) VALUES ($1, $2, $3)")
        .bind(&tag_id)
        .bind(batch)
        .bind(product)
        .execute(&db.pool)
        .await
        .unwrap();
    tag_id
}

async fn poll<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_reaches_the_tags_scan_count_through_pubsub_and_the_consumer() {
    common::telemetry::prometheus();
    let db = TestDb::new().await;
    let env = shared_env(&db);
    let tag_id = seed_tag(&db).await;
    let shutdown = CancellationToken::new();

    // The factory: topics and subscriptions, the admin API, and its consumer (as `serve` runs it).
    let factory_config = FactoryConfig::from_env(&env).expect("factory config");
    events::setup::setup(&EventsSettings::from_config(&factory_config))
        .await
        .expect("pubsub setup");
    let consumer = events::commands::consumer(&factory_config)
        .await
        .expect("consumer");
    let consumer_task = tokio::spawn(consumer.run(shutdown.clone()));
    let factory = Application::build(factory_config).await.expect("factory");
    let factory_base = format!("http://{}", factory.local_addr());
    tokio::spawn(factory.run_until_stopped(shutdown.clone()));

    // The scan service on the same database and topic.
    let scan = scan_service::Application::build(ScanConfig::from_env(&env).expect("scan config"))
        .await
        .expect("scan");
    let scan_base = format!("http://{}", scan.local_addr());
    tokio::spawn(scan.run_until_stopped(shutdown.clone()));

    let client = reqwest::Client::new();
    for _ in 0..2 {
        let r = client
            .get(format!("{scan_base}/v1/scan/{tag_id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "authentic");
    }

    // Eventually consistent: both events applied exactly once each.
    let (count, first): (i64, Option<chrono::DateTime<chrono::Utc>>) =
        poll("scan_count = 2", async || {
            let row: (i64, Option<chrono::DateTime<chrono::Utc>>) =
                sqlx::query_as("SELECT scan_count, first_scanned_at FROM tags WHERE tag_id = $1")
                    .bind(&tag_id)
                    .fetch_one(&db.pool)
                    .await
                    .ok()?;
            (row.0 >= 2).then_some(row)
        })
        .await;
    assert_eq!(count, 2, "each scan counted once");
    assert!(first.is_some());
    let scans: i64 = sqlx::query_scalar("SELECT count(*) FROM scans WHERE tag_id = $1")
        .bind(&tag_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(scans, 2);

    // Through the factory's admin API.
    let login: Value = client
        .post(format!("{factory_base}/v1/auth/login"))
        .header("x-device-id", "pipeline-test-device-0001")
        .json(&serde_json::json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"]
        .as_str()
        .expect("access token")
        .to_owned();
    let tag: Value = client
        .get(format!("{factory_base}/v1/tags/{tag_id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tag["scan_count"], 2, "{tag}");
    assert!(tag["first_scanned_at"].is_string(), "{tag}");

    // And in the scan service's own answer once its short cache has turned over.
    poll("the scan answer to show scan_count >= 2", async || {
        let body: Value = client
            .get(format!("{scan_base}/v1/scan/{tag_id}"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (body["scan_count"].as_i64()? >= 2 && body["first_scanned_at"].is_string()).then_some(())
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), consumer_task)
        .await
        .expect("consumer stops")
        .expect("consumer task");
}

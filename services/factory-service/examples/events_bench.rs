//! Scan-event consumer throughput on the Pub/Sub emulator: a backlog of events is published
//! first, then one (and then two) consumers drain it; prints events applied per second.
//!
//! `cargo run --release -p factory-service --example events_bench -- [EVENTS]`
//! (default 100,000; needs the local PostgreSQL and emulator of `make services-up`). Each run
//! uses a fresh test database and its own topic and subscription names.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{SecondsFormat, Utc};
use common::config::PubSubConfig;
use common::testing::TestDb;
use factory_service::events::{Consumer, EventsSettings, setup};
use google_cloud_pubsub::model::Message;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Tags the events are spread over (counter updates on one row would serialize).
const TAGS: usize = 1000;
/// Publishes awaited together (the publisher batches them).
const PUBLISH_WINDOW: usize = 1000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events: usize = std::env::args()
        .nth(1)
        .map_or(Ok(100_000), |a| a.parse())
        .context("EVENTS must be a whole number")?;
    common::telemetry::prometheus();
    for consumers in [1, 2] {
        let db = TestDb::new().await;
        let settings = settings();
        setup::setup(&settings).await?;
        let tags = seed_tags(&db.pool).await?;
        let started = Instant::now();
        publish_backlog(&settings, &tags, events).await?;
        let published = started.elapsed().as_secs_f64();
        println!("published {events} events in {published:.1} s");
        let secs = drain(&settings, &db.url, &db.pool, consumers, events).await?;
        println!(
            "consumers={consumers}: {events} events applied in {secs:.1} s = {:.0} events/s",
            events as f64 / secs
        );
    }
    Ok(())
}

fn settings() -> EventsSettings {
    let id = Uuid::new_v4().simple();
    let pubsub = PubSubConfig {
        project_id: "voketag-bench".into(),
        emulator_host: Some(
            std::env::var("PUBSUB_EMULATOR_HOST").unwrap_or_else(|_| "127.0.0.1:8085".into()),
        ),
        topic: format!("bench-scan-events-{id}"),
        subscription: format!("bench-factory-scan-events-{id}"),
        dlq_topic: format!("bench-scan-events-dlq-{id}"),
    };
    EventsSettings::new(pubsub, 5)
}

async fn seed_tags(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let (product, batch) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query("INSERT INTO products (id, name, sku) VALUES ($1, 'Bench', $2)")
        .bind(product)
        .bind(format!("BENCH-{product}"))
        .execute(pool)
        .await?;
    sqlx::query("INSERT INTO batches (id, product_id, quantity) VALUES ($1, $2, $3)")
        .bind(batch)
        .bind(product)
        .bind(TAGS as i32)
        .execute(pool)
        .await?;
    let tags: Vec<String> = (0..TAGS)
        .map(|_| format!("B{}", Uuid::new_v4().simple()))
        .collect();
    sqlx::query(
        "INSERT INTO tags (tag_id, batch_id, product_id) \
         SELECT unnest($1::text[]), $2, $3",
    )
    .bind(&tags)
    .bind(batch)
    .bind(product)
    .execute(pool)
    .await?;
    Ok(tags)
}

async fn publish_backlog(
    settings: &EventsSettings,
    tags: &[String],
    events: usize,
) -> anyhow::Result<()> {
    let publisher = common::pubsub::publisher(&settings.pubsub, &settings.pubsub.topic).await?;
    let mut pending = Vec::with_capacity(PUBLISH_WINDOW);
    for i in 0..events {
        let body = serde_json::json!({
            "event_id": Uuid::now_v7(),
            "tag_id": tags[i % tags.len()],
            "result": "authentic",
            "scanned_at": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            "client_ip_hash": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "api_key_id": null,
            "user_agent": "events-bench/1"
        });
        let message = Message::new()
            .set_data(body.to_string())
            .set_attributes([("event_type", "scan"), ("schema_version", "1")]);
        pending.push(publisher.publish(message));
        if pending.len() == PUBLISH_WINDOW {
            for id in futures::future::join_all(pending.drain(..)).await {
                id?;
            }
        }
    }
    for id in futures::future::join_all(pending).await {
        id?;
    }
    Ok(())
}

/// Runs `consumers` consumers until every event is counted; returns the seconds it took.
async fn drain(
    settings: &EventsSettings,
    database_url: &secrecy::SecretString,
    pool: &PgPool,
    consumers: usize,
    events: usize,
) -> anyhow::Result<f64> {
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let started = Instant::now();
    for _ in 0..consumers {
        // Each consumer gets its own pool, sized as `worker` sizes it.
        let connections = settings.concurrency as u32 + 2;
        let own_pool = common::db::pg_pool(database_url, connections)?;
        let consumer = Consumer::build(settings.clone(), own_pool).await?;
        tasks.push(tokio::spawn(consumer.run(stop.clone())));
    }
    loop {
        let counted: i64 =
            sqlx::query_scalar("SELECT coalesce(sum(scan_count), 0)::bigint FROM tags")
                .fetch_one(pool)
                .await?;
        if counted >= events as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    for task in tasks {
        task.await?;
    }
    Ok(secs)
}

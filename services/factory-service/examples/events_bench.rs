//! Scan-event consumer throughput on the Pub/Sub emulator: a backlog of events is published
//! first, then one (and then two) consumers drain it; prints events applied per second.
//!
//! `cargo run --release -p factory-service --example events_bench -- [EVENTS]`
//! (default 100,000; needs the local PostgreSQL and emulator of `make services-up`). Each run
//! uses a fresh test database and its own topic and subscription names.
//!
//! The drain fails (exit status 1) instead of waiting forever when no event is applied for
//! [`STALL`], or when the whole drain takes longer than [`DRAIN_DEADLINE_BASE`] plus one second
//! per [`DEADLINE_RATE`] events; publishing has [`PUBLISH_DEADLINE`] per window. The last line
//! is this process's peak RSS (`VmHWM`): publisher and consumers together.

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
/// No progress for this long fails the drain (a message that is never applied, e.g. one
/// dead-lettered, would otherwise leave the count short forever).
const STALL: Duration = Duration::from_secs(60);
/// The drain's deadline: this, plus one second per `DEADLINE_RATE` events.
const DRAIN_DEADLINE_BASE: Duration = Duration::from_secs(60);
/// A tenth of the 5,000 events/s target.
const DEADLINE_RATE: usize = 500;
/// Longest wait for one window of publishes.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events: usize = std::env::args()
        .nth(1)
        .map_or(Ok(100_000), |a| a.parse())
        .context("EVENTS must be a whole number")?;
    anyhow::ensure!(events > 0, "EVENTS must be at least 1");
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
    println!("peak RSS: {:.0} MiB", peak_rss_mib()?);
    Ok(())
}

/// `VmHWM` of this process, in MiB.
fn peak_rss_mib() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kib / 1024.0)
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
            await_window(pending.drain(..), i + 1).await?;
        }
    }
    await_window(pending.drain(..), events).await
}

/// Waits for a window of publishes, each one of which must succeed, within [`PUBLISH_DEADLINE`].
async fn await_window<F, T, E>(
    window: impl IntoIterator<Item = F>,
    upto: usize,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let ids = tokio::time::timeout(PUBLISH_DEADLINE, futures::future::join_all(window))
        .await
        .with_context(|| {
            format!("publishing stalled: events up to #{upto} not acknowledged within {PUBLISH_DEADLINE:?}")
        })?;
    for id in ids {
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
        let connections = settings.consumer.db_connections;
        let own_pool = common::db::pg_pool(
            database_url,
            "voketag-bench",
            connections,
            Duration::from_secs(60),
        )?;
        let consumer = Consumer::build(settings.clone(), own_pool).await?;
        tasks.push(tokio::spawn(consumer.run(stop.clone())));
    }
    let deadline = DRAIN_DEADLINE_BASE + Duration::from_secs((events / DEADLINE_RATE) as u64);
    let (mut last_count, mut last_progress) = (-1, Instant::now());
    let outcome = loop {
        let counted: i64 =
            sqlx::query_scalar("SELECT coalesce(sum(scan_count), 0)::bigint FROM tags")
                .fetch_one(pool)
                .await?;
        if counted >= events as i64 {
            break Ok(started.elapsed().as_secs_f64());
        }
        if counted != last_count {
            (last_count, last_progress) = (counted, Instant::now());
        }
        if last_progress.elapsed() >= STALL {
            break Err(anyhow::anyhow!(
                "consumers={consumers}: stalled at {counted} of {events} events applied \
                 (none for {STALL:?}; dead-lettered or lost messages?)"
            ));
        }
        if started.elapsed() >= deadline {
            break Err(anyhow::anyhow!(
                "consumers={consumers}: only {counted} of {events} events applied within {deadline:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.cancel();
    // After a failure, exit at once rather than wait for the consumers to settle.
    let secs = outcome?;
    for task in tasks {
        task.await?;
    }
    Ok(secs)
}

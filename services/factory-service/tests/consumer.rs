//! The scan-event consumer against the real Pub/Sub emulator and PostgreSQL. Every test has its
//! own database and its own topic, subscription and DLQ names, and runs `pubsub setup` itself,
//! so tests run in parallel. Waits poll with deadlines; nothing sleeps for a fixed long time.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use common::config::PubSubConfig;
use common::testing::{Proxy, TestDb};
use factory_service::events::dead_letter::{self, DlqEntry};
use factory_service::events::dlq::{self, ReadWindow, Selector};
use factory_service::events::setup::{self, Change};
use factory_service::events::{Consumer, EventsSettings};
use google_cloud_pubsub::model::Message;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const WAIT: Duration = Duration::from_secs(60);

fn emulator() -> String {
    std::env::var("PUBSUB_EMULATOR_HOST").unwrap_or_else(|_| "127.0.0.1:8085".to_owned())
}

/// Settings on names no other test uses, with fast back-off so retries take seconds.
fn settings(max_delivery_attempts: u32) -> EventsSettings {
    // Install the recorder before anything counts, or early counts are lost.
    common::telemetry::prometheus();
    let id = Uuid::new_v4().simple();
    let pubsub = PubSubConfig {
        project_id: "voketag-test".into(),
        emulator_host: Some(emulator()),
        topic: format!("scan-events-{id}"),
        subscription: format!("factory-scan-events-{id}"),
        dlq_topic: format!("scan-events-dlq-{id}"),
    };
    let mut s = EventsSettings::new(pubsub, max_delivery_attempts);
    s.ack_deadline = Duration::from_secs(10);
    s.min_backoff = Duration::from_millis(100);
    s.max_backoff = Duration::from_secs(1);
    s.drain_timeout = Duration::from_secs(5);
    s
}

async fn set_up(max_delivery_attempts: u32) -> EventsSettings {
    let s = settings(max_delivery_attempts);
    setup::setup(&s).await.expect("pubsub setup");
    s
}

/// A consumer running on its own task until stopped.
struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
    settled: Arc<AtomicU64>,
}

impl Running {
    async fn start(settings: &EventsSettings, pool: PgPool) -> Self {
        let consumer = Consumer::build(settings.clone(), pool)
            .await
            .expect("consumer");
        let stop = CancellationToken::new();
        let settled = consumer.settled();
        let task = tokio::spawn(consumer.run(stop.clone()));
        Self {
            stop,
            task,
            settled,
        }
    }

    /// Stops it and checks that shutdown is prompt.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("consumer stops within 20 s")
            .expect("consumer task");
    }
}

async fn publish_raw(
    settings: &EventsSettings,
    data: &[u8],
    attributes: &[(&str, &str)],
) -> String {
    let publisher = common::pubsub::publisher(&settings.pubsub, &settings.pubsub.topic)
        .await
        .expect("publisher");
    let message = Message::new()
        .set_data(data.to_vec())
        .set_attributes(attributes.iter().copied());
    publisher.publish(message).await.expect("publish")
}

const SCAN_ATTRIBUTES: &[(&str, &str)] = &[("event_type", "scan"), ("schema_version", "1")];

async fn publish_event(settings: &EventsSettings, event: &Value) -> String {
    publish_raw(settings, event.to_string().as_bytes(), SCAN_ATTRIBUTES).await
}

fn event(tag_id: &str, scanned_at: DateTime<Utc>) -> Value {
    json!({
        "event_id": Uuid::now_v7(),
        "tag_id": tag_id,
        "result": "authentic",
        "scanned_at": scanned_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "client_ip_hash": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "api_key_id": null,
        "user_agent": "consumer-test/1"
    })
}

/// A product, a batch and `n` tags; returns the tag ids.
async fn seed_tags(pool: &PgPool, n: usize) -> Vec<String> {
    let product = Uuid::new_v4();
    let batch = Uuid::new_v4();
    sqlx::query("INSERT INTO products (id, name, sku) VALUES ($1, 'Test', $2)")
        .bind(product)
        .bind(format!("SKU-{product}"))
        .execute(pool)
        .await
        .expect("product");
    sqlx::query("INSERT INTO batches (id, product_id, quantity) VALUES ($1, $2, $3)")
        .bind(batch)
        .bind(product)
        .bind(i32::try_from(n).expect("small n"))
        .execute(pool)
        .await
        .expect("batch");
    let mut tags = Vec::new();
    for _ in 0..n {
        let tag = format!("T{}", Uuid::new_v4().simple());
        // Made well before any scan the tests date (a scan dated before its tag was made
        // counts from when it was made).
        sqlx::query(
            "INSERT INTO tags (tag_id, batch_id, product_id, created_at) \
             VALUES ($1, $2, $3, now() - interval '400 days')",
        )
        .bind(&tag)
        .bind(batch)
        .bind(product)
        .execute(pool)
        .await
        .expect("tag");
        tags.push(tag);
    }
    tags
}

async fn scan_state(pool: &PgPool, tag: &str) -> (i64, Option<DateTime<Utc>>) {
    sqlx::query_as("SELECT scan_count, first_scanned_at FROM tags WHERE tag_id = $1")
        .bind(tag)
        .fetch_one(pool)
        .await
        .expect("tag row")
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// The test database behind a [`Proxy`] the test controls, and a pool through the proxy that
/// gives up quickly while the database is away.
async fn behind_a_proxy(db: &TestDb) -> (Proxy, PgPool) {
    let url = db.url.expose_secret();
    let (head, rest) = url.split_once('@').expect("user@host in the test URL");
    let (target, name) = rest.split_once('/').expect("host/db in the test URL");
    let proxy = Proxy::start(target).await.expect("proxy");
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        // In clear, so that the proxy can stall on what it reads.
        .connect_lazy(&format!(
            "{head}@127.0.0.1:{}/{name}?sslmode=disable",
            proxy.port
        ))
        .expect("lazy pool");
    (proxy, pool)
}

/// Polls `check` until it yields a value or the deadline passes.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const QUICK: ReadWindow = ReadWindow {
    first: Duration::from_secs(2),
    idle: Duration::from_millis(500),
};

/// Waits until the DLQ holds `n` messages (read without consuming them).
async fn dlq_entries(settings: &EventsSettings, n: usize) -> Vec<DlqEntry> {
    eventually(&format!("{n} DLQ messages"), || async {
        let entries = dlq::list(settings, 100, QUICK).await.expect("dlq list");
        (entries.len() >= n).then_some(entries)
    })
    .await
}

/// The value of a counter with one label in this process's Prometheus text.
fn counter(name: &str, label: &str, value: &str) -> u64 {
    let text = common::telemetry::prometheus().render();
    let prefix = format!("{name}{{{label}=\"{value}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn processed(outcome: &str) -> u64 {
    counter("scan_events_processed_total", "outcome", outcome)
}

#[tokio::test]
async fn setup_is_idempotent_and_configures_dead_lettering() {
    let s = set_up(3).await;
    let again = setup::setup(&s).await.expect("second setup");
    assert!(
        again.iter().all(|r| r.change == Change::Existed),
        "{again:?}"
    );
    assert_eq!(again.len(), 4);

    let admin = common::pubsub::subscription_admin(&s.pubsub)
        .await
        .expect("admin");
    let sub = admin
        .get_subscription()
        .set_subscription(s.pubsub.subscription_path(&s.pubsub.subscription))
        .send()
        .await
        .expect("get subscription");
    let policy = sub.dead_letter_policy.expect("dead-letter policy");
    assert_eq!(
        policy.dead_letter_topic,
        s.pubsub.topic_path(&s.pubsub.dlq_topic)
    );
    // 3 is below Pub/Sub's minimum of 5; the consumer enforces 3 itself.
    assert_eq!(policy.max_delivery_attempts, 5);
    assert!(sub.retry_policy.is_some());
    assert_eq!(sub.ack_deadline_seconds, 10);

    // Other settings: the consumer's subscription is updated, and says so; the rest exists.
    let changed = EventsSettings {
        max_delivery_attempts: 7,
        ..s.clone()
    };
    let after = setup::setup(&changed)
        .await
        .expect("setup with new settings");
    let main = s.pubsub.subscription_path(&s.pubsub.subscription);
    for r in &after {
        let expected = if r.name == main {
            Change::Updated
        } else {
            Change::Existed
        };
        assert_eq!(r.change, expected, "{after:?}");
    }
    assert!(
        after.iter().any(|r| r.to_string().starts_with("updated  ")),
        "{after:?}"
    );
    let sub = admin
        .get_subscription()
        .set_subscription(main)
        .send()
        .await
        .expect("get subscription");
    assert_eq!(
        sub.dead_letter_policy
            .expect("policy")
            .max_delivery_attempts,
        7
    );
}

#[tokio::test]
async fn a_published_scan_event_is_applied() {
    let db = TestDb::new().await;
    let s = set_up(5).await;
    let tag = seed_tags(&db.pool, 1).await.remove(0);
    let consumer = Running::start(&s, db.pool.clone()).await;
    let scanned_at = Utc::now().trunc_subsecs(3);
    let body = event(&tag, scanned_at);
    publish_event(&s, &body).await;

    let (count, first) = eventually("the scan to be counted", || async {
        let state = scan_state(&db.pool, &tag).await;
        (state.0 > 0).then_some(state)
    })
    .await;
    assert_eq!(count, 1);
    assert_eq!(first, Some(scanned_at));
    let (result, ua): (String, Option<String>) =
        sqlx::query_as("SELECT result, user_agent FROM scans WHERE event_id = $1")
            .bind(Uuid::parse_str(body["event_id"].as_str().expect("id")).expect("uuid"))
            .fetch_one(&db.pool)
            .await
            .expect("scan row");
    assert_eq!(
        (result.as_str(), ua.as_deref()),
        ("authentic", Some("consumer-test/1"))
    );
    consumer.stop().await;
}

#[tokio::test]
async fn a_duplicated_event_counts_once() {
    common::in_own_process!();
    let db = TestDb::new().await;
    let s = set_up(5).await;
    let tag = seed_tags(&db.pool, 1).await.remove(0);
    let consumer = Running::start(&s, db.pool.clone()).await;
    let early = Utc::now().trunc_subsecs(3) - chrono::TimeDelta::minutes(5);
    let twice = event(&tag, Utc::now().trunc_subsecs(3));
    let once = event(&tag, early);
    publish_event(&s, &twice).await;
    publish_event(&s, &twice).await;
    publish_event(&s, &once).await;

    eventually("three deliveries: two applied, one duplicate", || async {
        (processed("applied") >= 2 && processed("duplicate") >= 1).then_some(())
    })
    .await;
    assert_eq!(scan_state(&db.pool, &tag).await, (2, Some(early)));
    assert_eq!(count(&db.pool, "SELECT count(*) FROM scans").await, 2);
    consumer.stop().await;
}

#[tokio::test]
async fn poison_goes_straight_to_the_dlq_while_valid_events_flow() {
    common::in_own_process!();
    let db = TestDb::new().await;
    let s = set_up(5).await;
    let tag = seed_tags(&db.pool, 1).await.remove(0);
    let consumer = Running::start(&s, db.pool.clone()).await;

    let bad_json = publish_raw(&s, b"{\"event_id\": oops", SCAN_ATTRIBUTES).await;
    let future = event(&tag, Utc::now());
    let v2 = publish_raw(
        &s,
        future.to_string().as_bytes(),
        &[("event_type", "scan"), ("schema_version", "2")],
    )
    .await;
    let mut missing = event(&tag, Utc::now());
    missing.as_object_mut().expect("object").remove("tag_id");
    let missing = publish_event(&s, &missing).await;
    publish_event(&s, &event(&tag, Utc::now())).await;

    eventually("the valid event to be applied", || async {
        (scan_state(&db.pool, &tag).await.0 == 1).then_some(())
    })
    .await;
    let entries = dlq_entries(&s, 3).await;
    let reasons: HashMap<String, String> = entries
        .iter()
        .map(|e| {
            (
                e.original_message_id.clone().expect("original id"),
                e.reason.clone(),
            )
        })
        .collect();
    assert_eq!(reasons[&bad_json], "bad_json");
    assert_eq!(reasons[&v2], "unknown_schema_version");
    assert_eq!(reasons[&missing], "missing_field");
    assert!(entries.iter().all(|e| e.attempts == Some(1)), "{entries:?}");
    // Poison is dead-lettered on its first delivery, never retried.
    assert_eq!(processed("retried"), 0);
    assert_eq!(processed("poison"), 3);
    assert_eq!(counter("dlq_messages_total", "reason", "bad_json"), 1);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM scans").await, 1);
    consumer.stop().await;
}

#[tokio::test]
async fn with_the_database_down_an_event_is_dead_lettered_after_max_attempts_then_replayed() {
    common::in_own_process!();
    const MAX: u32 = 3;
    let db = TestDb::new().await;
    let mut s = set_up(MAX).await;
    // Nacked at once instead of held (the outage outlasts any hold; this checks what then).
    s.consumer.hold = Duration::ZERO;
    let tag = seed_tags(&db.pool, 1).await.remove(0);
    // One consumer throughout, its database switched off and on under it.
    let (mut proxy, pool) = behind_a_proxy(&db).await;
    proxy.down().await;
    let consumer = Running::start(&s, pool).await;
    let original = publish_event(&s, &event(&tag, Utc::now())).await;

    eventually("the event to be dead-lettered", || async {
        (processed("dead_lettered") == 1).then_some(())
    })
    .await;
    // Exactly MAX attempts: MAX - 1 nacks for redelivery, then the dead letter on the last.
    assert_eq!(processed("retried"), u64::from(MAX - 1));
    assert_eq!(counter("dlq_messages_total", "reason", "max_attempts"), 1);
    assert_eq!(scan_state(&db.pool, &tag).await.0, 0);

    // The database is back: replay the dead letter by its original id. (Replaying without
    // listing first: on the emulator a listed message stays leased for a while.)
    proxy.up().expect("proxy listening again");
    let selector = Selector::MessageId(original.clone());
    let replayed = eventually("the dead letter to be replayed", || async {
        let replayed = dlq::replay(&s, &selector, QUICK, |_| {})
            .await
            .expect("replay");
        (!replayed.is_empty()).then_some(replayed)
    })
    .await;
    assert_eq!(replayed.len(), 1);
    let entry = &replayed[0];
    assert_eq!(
        entry.original_message_id.as_deref(),
        Some(original.as_str())
    );
    assert_eq!(entry.reason, dead_letter::MAX_ATTEMPTS);
    assert_eq!(entry.attempts, Some(i32::try_from(MAX).expect("small")));
    assert!(
        entry
            .error
            .as_deref()
            .is_some_and(|e| e.contains("database")),
        "{entry:?}"
    );
    eventually("the replayed event to be applied", || async {
        (scan_state(&db.pool, &tag).await.0 == 1).then_some(())
    })
    .await;
    assert!(
        dlq::list(&s, 10, QUICK).await.expect("list").is_empty(),
        "replay acks the DLQ copy"
    );
    consumer.stop().await;
}

/// A database outage shorter than `SCAN_EVENTS_HOLD_SEC` costs no delivery attempt: the batch
/// holds its events and tries again until the database is back. Before, each failure nacked
/// them, and every redelivery spent an attempt: with `MAX_DELIVERY_ATTEMPTS` of 2 here, an
/// outage of a few seconds dead-lettered the event (and on the emulator nacked events can stay
/// away for minutes, docs/SCAN_EVENTS.md).
#[tokio::test]
async fn a_short_database_outage_holds_the_events_instead_of_spending_their_attempts() {
    common::in_own_process!();
    let db = TestDb::new().await;
    let s = set_up(2).await;
    let tag = seed_tags(&db.pool, 1).await.remove(0);
    let (mut proxy, pool) = behind_a_proxy(&db).await;
    proxy.down().await;
    let consumer = Running::start(&s, pool).await;
    let body = event(&tag, Utc::now());
    publish_event(&s, &body).await;
    eventually("the event to be tried again", || async {
        (processed("retried") >= 2).then_some(())
    })
    .await;
    // Down for longer than the emulator's redelivery of a nacked message.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(processed("dead_lettered"), 0);
    assert_eq!(scan_state(&db.pool, &tag).await.0, 0);

    proxy.up().expect("proxy listening again");
    eventually("the held event to be applied", || async {
        (scan_state(&db.pool, &tag).await.0 == 1).then_some(())
    })
    .await;
    assert_eq!(processed("dead_lettered"), 0);
    assert_eq!(processed("applied"), 1);
    consumer.stop().await;
    assert_eq!(scan_state(&db.pool, &tag).await.0, 1, "counted once");
}

/// A release's consumer that starts before its `migrate` has run (the deploy rolls out the
/// services and the migrate job together) found the new table missing, nacked every event
/// and dead-lettered it after its attempts. It now pulls nothing until the schema is there.
#[tokio::test]
async fn a_consumer_waits_for_its_migrations_before_pulling_events() {
    common::in_own_process!();
    let db = TestDb::new().await;
    let s = set_up(2).await;
    let tag = seed_tags(&db.pool, 1).await.remove(0);
    // As if the newest migration had not run yet (the consumer's insert reads its table).
    let undone: (i64, String, Vec<u8>) = sqlx::query_as(
        "DELETE FROM _sqlx_migrations WHERE version = 20261205000001 \
         RETURNING version, description, checksum",
    )
    .fetch_one(&db.pool)
    .await
    .expect("a migration to undo");
    sqlx::query("ALTER TABLE scans_horizon RENAME TO scans_horizon_later")
        .execute(&db.pool)
        .await
        .expect("rename");
    let (mut proxy, pool) = behind_a_proxy(&db).await;
    let consumer = Running::start(&s, pool).await;
    publish_event(&s, &event(&tag, Utc::now())).await;
    // Long enough for two deliveries and their back-off, had it pulled.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(processed("retried"), 0);
    assert_eq!(consumer.settled.load(Ordering::Relaxed), 0);
    // The database away for a while, then back still unmigrated: it goes on waiting (it
    // stopped waiting at the first failed look, and pulled).
    proxy.down().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.up().expect("proxy listening again");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(processed("retried"), 0);
    assert_eq!(processed("dead_lettered"), 0);
    assert_eq!(consumer.settled.load(Ordering::Relaxed), 0);

    // `migrate` runs.
    sqlx::query("ALTER TABLE scans_horizon_later RENAME TO scans_horizon")
        .execute(&db.pool)
        .await
        .expect("rename back");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, $2, true, $3, 1)",
    )
    .bind(undone.0)
    .bind(&undone.1)
    .bind(&undone.2)
    .execute(&db.pool)
    .await
    .expect("migration recorded");
    eventually("the waiting event to be applied", || async {
        (scan_state(&db.pool, &tag).await.0 == 1).then_some(())
    })
    .await;
    assert_eq!(processed("dead_lettered"), 0);
    consumer.stop().await;
}

/// Stopped with an event in flight while Pub/Sub stopped answering, the consumer waited for
/// ever for the broker to confirm its last nack, and the process never exited (minutes, or
/// until killed). Stopping is now bounded. Pub/Sub is reached through a proxy that stalls
/// whatever the consumer sends from then on (a broker that hangs, which the emulator cannot
/// be made to do on demand).
#[tokio::test]
async fn a_consumer_stops_even_when_pub_sub_stops_answering_with_an_event_in_flight() {
    let db = TestDb::new().await;
    let s = set_up(5).await;
    let tag = seed_tags(&db.pool, 1).await.remove(0);
    let proxy = Proxy::start(&emulator()).await.expect("proxy");
    let mut through_proxy = s.clone();
    through_proxy.pubsub.emulator_host = Some(format!("127.0.0.1:{}", proxy.port));
    // The event's tag is locked, so its batch waits in the database: in flight.
    let mut holder = db.pool.begin().await.expect("tx");
    sqlx::query("SELECT 1 FROM tags WHERE tag_id = $1 FOR UPDATE")
        .bind(&tag)
        .execute(&mut *holder)
        .await
        .expect("lock");
    let consumer = Running::start(&through_proxy, db.pool.clone()).await;
    publish_event(&s, &event(&tag, Utc::now())).await;
    eventually("the event to wait on the tag's lock", || async {
        (count(&db.pool, "SELECT count(*) FROM pg_locks WHERE NOT granted").await > 0).then_some(())
    })
    .await;
    // From now on nothing the consumer sends reaches Pub/Sub (HTTP/2 frames all hold a 0).
    proxy.stall_when_sent(b"\0");
    consumer.stop().await;
    holder.rollback().await.expect("rollback");
    proxy.resume();
}

/// The database stops answering in the middle of a batch's transaction (a partition: the
/// connection stays open, the statement gets no reply). After `apply_timeout` (1 s here) the
/// batch gives up and tries again like after any database failure, instead of waiting on the
/// connection for as long as TCP keeps it; once the database answers again the event is
/// applied, once.
#[tokio::test]
async fn a_database_that_stops_answering_mid_batch_costs_a_retry_not_a_hang() {
    common::in_own_process!();
    let db = TestDb::new().await;
    let mut s = set_up(10).await;
    s.apply_timeout = Duration::from_secs(1);
    let tag = seed_tags(&db.pool, 1).await.remove(0);
    let (proxy, pool) = behind_a_proxy(&db).await;
    let consumer = Running::start(&s, pool).await;
    // The batch's statements carry the tag id: the proxy stalls as they go through.
    proxy.stall_when_sent(tag.as_bytes());
    let body = event(&tag, Utc::now());
    publish_event(&s, &body).await;

    eventually("the stalled batch to be given up and retried", || async {
        (processed("retried") >= 1).then_some(())
    })
    .await;
    assert_eq!(scan_state(&db.pool, &tag).await.0, 0);

    proxy.resume();
    eventually("the event to be applied", || async {
        (scan_state(&db.pool, &tag).await.0 == 1).then_some(())
    })
    .await;
    let rows = count(
        &db.pool,
        &format!(
            "SELECT count(*) FROM scans WHERE event_id = '{}'",
            body["event_id"].as_str().expect("id")
        ),
    )
    .await;
    assert_eq!(rows, 1, "recorded once");
    consumer.stop().await;
    assert_eq!(scan_state(&db.pool, &tag).await.0, 1, "counted once");
}

/// A dead letter as the consumer writes it, published straight to the DLQ topic.
async fn publish_dead_letter(
    dlq_publisher: &google_cloud_pubsub::client::Publisher,
    tag: &str,
    dead_lettered_at: DateTime<Utc>,
) {
    let mut original = Message::new()
        .set_data(event(tag, Utc::now()).to_string())
        .set_attributes(SCAN_ATTRIBUTES.iter().copied());
    original.message_id = Uuid::new_v4().to_string();
    let letter = dead_letter::DeadLetter {
        reason: dead_letter::MAX_ATTEMPTS,
        error: "database unavailable".into(),
        delivery_attempt: Some(5),
        subscription: "test",
    };
    dlq_publisher
        .publish(dead_letter::to_dlq_message(
            &original,
            &letter,
            dead_lettered_at,
        ))
        .await
        .expect("publish dead letter");
}

#[tokio::test]
async fn replay_all_republishes_every_dead_letter() {
    let db = TestDb::new().await;
    let s = set_up(5).await;
    let dlq_publisher = common::pubsub::publisher(&s.pubsub, &s.pubsub.dlq_topic)
        .await
        .expect("publisher");
    let tags = seed_tags(&db.pool, 2).await;
    for tag in &tags {
        publish_dead_letter(&dlq_publisher, tag, Utc::now()).await;
    }
    let mut replayed = Vec::new();
    while replayed.len() < 2 {
        let more = eventually("dead letters to replay", || async {
            let more = dlq::replay(&s, &Selector::All, QUICK, |_| {})
                .await
                .expect("replay");
            (!more.is_empty()).then_some(more)
        })
        .await;
        replayed.extend(more);
    }
    assert_eq!(replayed.len(), 2);
    let consumer = Running::start(&s, db.pool.clone()).await;
    for tag in &tags {
        eventually("each replayed event to be applied", || async {
            (scan_state(&db.pool, tag).await.0 == 1).then_some(())
        })
        .await;
    }
    consumer.stop().await;
}

/// `dlq replay --all` took only dead letters the broker dated before this machine's clock at
/// the start, so run from a machine whose clock was behind, it replayed nothing and said "0
/// replayed". A loop is now told by content (what this run republished), not by time: a dead
/// letter the broker dates after the run began is replayed too. (This machine's clock cannot be
/// set back in a test; a dead letter arriving during the run is what such a run saw.)
#[tokio::test]
async fn replay_all_does_not_go_by_this_machine_s_clock() {
    let db = TestDb::new().await;
    let s = set_up(5).await;
    let dlq_publisher = common::pubsub::publisher(&s.pubsub, &s.pubsub.dlq_topic)
        .await
        .expect("publisher");
    let tags = seed_tags(&db.pool, 1).await;
    let window = ReadWindow {
        first: Duration::from_secs(15),
        idle: Duration::from_secs(2),
    };
    let settings = s.clone();
    let run = tokio::spawn(async move {
        dlq::replay(&settings, &Selector::All, window, |_| {})
            .await
            .expect("replay")
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    publish_dead_letter(&dlq_publisher, &tags[0], Utc::now()).await;
    let replayed = run.await.expect("the replay");
    assert_eq!(replayed.len(), 1, "{replayed:?}");
}

/// `dlq replay --all` says what it replayed as it goes. It used to print nothing until the
/// end, so a long replay looked stuck, and one stopped midway had not said what went through.
/// Dead letters keep arriving (dated before the replay, so it takes them) until the command
/// has printed its first line: the old command, printing at the end, never did while they came.
#[tokio::test]
async fn dlq_replay_all_prints_each_message_as_it_is_replayed() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};

    let db = TestDb::new().await;
    let s = set_up(5).await;
    let dlq_publisher = common::pubsub::publisher(&s.pubsub, &s.pubsub.dlq_topic)
        .await
        .expect("publisher");
    let tag = seed_tags(&db.pool, 1).await.remove(0);
    let before = Utc::now() - chrono::TimeDelta::minutes(1);
    publish_dead_letter(&dlq_publisher, &tag, before).await;

    let mut child = Command::new(env!("CARGO_BIN_EXE_factory-service"))
        .args(["dlq", "replay", "--all"])
        .env("APP_ENV", "test")
        .env("RUST_LOG", "off")
        .env("PUBSUB_EMULATOR_HOST", emulator())
        .env("PUBSUB_PROJECT_ID", &s.pubsub.project_id)
        .env("SCAN_EVENTS_TOPIC", &s.pubsub.topic)
        .env("SCAN_EVENTS_SUBSCRIPTION", &s.pubsub.subscription)
        .env("SCAN_EVENTS_DLQ_TOPIC", &s.pubsub.dlq_topic)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dlq replay");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    // One more dead letter every half second, for at most 40 s, until the first line.
    let mut published = 1;
    let first = loop {
        match tokio::time::timeout(Duration::from_millis(500), lines.recv()).await {
            Ok(Some(line)) => break line,
            Ok(None) => panic!("dlq replay ended before it printed anything"),
            Err(_) => {
                assert!(
                    published < 80,
                    "nothing printed while {published} dead letters were replayed"
                );
                publish_dead_letter(&dlq_publisher, &tag, before).await;
                published += 1;
            }
        }
    };
    assert!(first.starts_with("replayed "), "{first}");
    assert!(first.ends_with("(reason max_attempts)"), "{first}");

    // No more arrive: it ends by itself, having named each message once, then the count.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let Ok(status) = ended else {
        let _ = child.kill();
        panic!("dlq replay did not end within {WAIT:?} of the last dead letter");
    };
    reader.join().expect("reader");
    let mut rest = Vec::new();
    while let Ok(line) = lines.try_recv() {
        rest.push(line);
    }
    assert!(status.success(), "{status:?} {rest:?}");
    let summary = rest.pop().expect("a summary line");
    let named = 1 + rest.len();
    assert!(rest.iter().all(|l| l.starts_with("replayed ")), "{rest:?}");
    assert_eq!(summary, format!("{named} message(s) replayed"));
    assert!(named <= published, "{named} of {published}");
}

#[tokio::test]
async fn two_consumers_share_the_load_without_double_counting() {
    const EVENTS: usize = 60;
    let db = TestDb::new().await;
    let mut s = set_up(5).await;
    // A small outstanding limit makes the emulator spread messages over both streams.
    s.consumer.max_outstanding_messages = 5;
    s.consumer.db_connections = 4;
    let tags = seed_tags(&db.pool, 6).await;
    let a = Running::start(&s, db.pool.clone()).await;
    let b = Running::start(&s, db.pool.clone()).await;

    let mut ids = HashSet::new();
    for i in 0..EVENTS {
        let body = event(&tags[i % tags.len()], Utc::now());
        ids.insert(body["event_id"].as_str().expect("id").to_owned());
        publish_event(&s, &body).await;
        // Every third event is published again: a producer retry.
        if i % 3 == 0 {
            publish_event(&s, &body).await;
        }
    }
    let total = EVENTS + EVENTS.div_ceil(3);
    eventually("every delivery to be settled", || async {
        let settled = a.settled.load(Ordering::Relaxed) + b.settled.load(Ordering::Relaxed);
        (settled >= total as u64).then_some(())
    })
    .await;
    let counted = count(&db.pool, "SELECT sum(scan_count)::bigint FROM tags").await;
    assert_eq!(counted, EVENTS as i64);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM scans").await,
        EVENTS as i64
    );
    assert_eq!(ids.len(), EVENTS);
    let (by_a, by_b) = (
        a.settled.load(Ordering::Relaxed),
        b.settled.load(Ordering::Relaxed),
    );
    assert!(
        by_a > 0 && by_b > 0,
        "both consumers worked: {by_a} and {by_b}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_stopped_consumer_settles_its_messages_and_the_next_one_takes_the_rest() {
    const EVENTS: usize = 20;
    let db = TestDb::new().await;
    let mut s = set_up(5).await;
    s.consumer.max_outstanding_messages = 2;
    s.consumer.streams = 1;
    s.consumer.db_connections = 1;
    let tag = seed_tags(&db.pool, 1).await.remove(0);
    for _ in 0..EVENTS {
        publish_event(&s, &event(&tag, Utc::now())).await;
    }
    let first = Running::start(&s, db.pool.clone()).await;
    eventually("the first consumer to get going", || async {
        (first.settled.load(Ordering::Relaxed) >= 3).then_some(())
    })
    .await;
    // Shutdown stops pulling and settles what is in flight; nothing is applied twice or lost.
    first.stop().await;
    let second = Running::start(&s, db.pool.clone()).await;
    eventually("every event to be applied", || async {
        (scan_state(&db.pool, &tag).await.0 == EVENTS as i64).then_some(())
    })
    .await;
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM scans").await,
        EVENTS as i64
    );
    second.stop().await;
}

/// Publishes `bodies` as scan events through one publisher, all at once; returns the ids.
async fn publish_all(settings: &EventsSettings, bodies: &[Value]) -> Vec<String> {
    let publisher = common::pubsub::publisher(&settings.pubsub, &settings.pubsub.topic)
        .await
        .expect("publisher");
    let pending = bodies.iter().map(|body| {
        publisher.publish(
            Message::new()
                .set_data(body.to_string())
                .set_attributes(SCAN_ATTRIBUTES.iter().copied()),
        )
    });
    futures::future::join_all(pending)
        .await
        .into_iter()
        .map(|id| id.expect("publish"))
        .collect()
}

/// A series of this process's Prometheus text without labels (e.g. a histogram's `_sum`).
fn series(name: &str) -> f64 {
    let text = common::telemetry::prometheus().render();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn batches_count_each_event_once_and_isolate_an_event_the_database_refuses() {
    common::in_own_process!();
    const TAGS: usize = 40;
    const EVENTS: usize = 300;
    const REPEATED: usize = 50;
    const REPLAYED: usize = 20;
    let db = TestDb::new().await;
    let mut s = set_up(5).await;
    // A long wait makes sure the backlog is applied in large batches.
    s.consumer.batch_wait = Duration::from_millis(100);
    let tags = seed_tags(&db.pool, TAGS).await;
    // The first tag's counter is at its ceiling: counting one more scan on it is a numeric
    // overflow (SQLSTATE 22003), which fails the whole batch's transaction.
    sqlx::query("UPDATE tags SET scan_count = 9223372036854775807 WHERE tag_id = $1")
        .bind(&tags[0])
        .execute(&db.pool)
        .await
        .expect("counter at its ceiling");
    let early = Utc::now().trunc_subsecs(3) - chrono::TimeDelta::hours(1);
    // Every tag but the first; each tag's first event is the earliest.
    let good: Vec<Value> = (0..EVENTS - 1)
        .map(|i| {
            let tag = &tags[1 + i % (TAGS - 1)];
            let at = if i < TAGS - 1 { early } else { Utc::now() };
            event(tag, at)
        })
        .collect();
    let bad = event(&tags[0], Utc::now());
    let mut backlog = good.clone();
    backlog.insert(EVENTS / 2, bad);
    // Producer retries: the same event ids again, within the same backlog.
    backlog.extend(good[..REPEATED].iter().cloned());
    let ids = publish_all(&s, &backlog).await;
    let bad_id = ids[EVENTS / 2].clone();

    let consumer = Running::start(&s, db.pool.clone()).await;
    eventually("the backlog to be settled", || async {
        let settled = consumer.settled.load(Ordering::Relaxed);
        (settled >= backlog.len() as u64).then_some(())
    })
    .await;
    // Redeliveries across batches, after the originals were applied.
    publish_all(&s, &good[..REPLAYED]).await;
    eventually("the replays to be settled", || async {
        let settled = consumer.settled.load(Ordering::Relaxed);
        (settled >= (backlog.len() + REPLAYED) as u64).then_some(())
    })
    .await;

    let counted = count(
        &db.pool,
        "SELECT sum(scan_count)::bigint FROM tags WHERE scan_count < 9223372036854775807",
    )
    .await;
    assert_eq!(counted, (EVENTS - 1) as i64);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM scans").await,
        (EVENTS - 1) as i64
    );
    for tag in &tags[1..] {
        let (n, first) = scan_state(&db.pool, tag).await;
        assert!(n >= 7, "{tag}: {n}");
        assert_eq!(first, Some(early), "{tag}");
    }
    assert_eq!(scan_state(&db.pool, &tags[0]).await, (i64::MAX, None));

    assert_eq!(processed("applied"), (EVENTS - 1) as u64);
    // Redeliveries by the emulator could only add duplicates.
    assert!(processed("duplicate") >= (REPEATED + REPLAYED) as u64);
    assert_eq!(processed("poison"), 1);
    assert_eq!(processed("retried"), 0);
    assert_eq!(counter("dlq_messages_total", "reason", "rejected"), 1);
    let entries = dlq_entries(&s, 1).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        entries[0].original_message_id.as_deref(),
        Some(bad_id.as_str())
    );
    assert_eq!(entries[0].reason, "rejected");
    assert!(
        entries[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("out of range")),
        "{entries:?}"
    );
    // The events really were applied together, not one by one.
    let (sum, batches) = (
        series("scan_events_batch_size_sum"),
        series("scan_events_batch_size_count"),
    );
    assert!(
        batches > 0.0 && sum / batches > 2.0,
        "{sum} events in {batches} batches"
    );
    consumer.stop().await;
}

/// The real `factory-service worker` (a process, and a metrics recorder, of its own) on
/// `settings`' names, pulling through the broker at `broker`, serving health and metrics on
/// port 0; with the address it logs. Port 0 and the logged address: a port probed here and
/// freed could be taken by another test's server (whose /metrics, in a process without a
/// recorder, is empty) before the worker binds it.
async fn worker_serving_metrics(
    settings: &EventsSettings,
    db: &TestDb,
    broker: &str,
) -> (common::testing::ChildGuard, std::net::SocketAddr) {
    let mut worker = common::testing::ChildGuard(
        std::process::Command::new(env!("CARGO_BIN_EXE_factory-service"))
            .args(["worker", "--metrics-addr", "127.0.0.1:0"])
            .env("DATABASE_URL", db.url.expose_secret())
            .env("PUBSUB_EMULATOR_HOST", broker)
            .env("PUBSUB_PROJECT_ID", &settings.pubsub.project_id)
            .env("SCAN_EVENTS_TOPIC", &settings.pubsub.topic)
            .env("SCAN_EVENTS_SUBSCRIPTION", &settings.pubsub.subscription)
            .env("SCAN_EVENTS_DLQ_TOPIC", &settings.pubsub.dlq_topic)
            .env("APP_ENV", "test")
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "json")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the worker"),
    );
    let stdout = worker.0.stdout.take().expect("piped stdout");
    let addr = common::testing::logged_address(stdout, "worker health and metrics on http://")
        .await
        .expect("the worker logs where it serves metrics");
    (worker, addr)
}

#[tokio::test]
async fn a_worker_serving_metrics_exports_every_outcome_from_the_start() {
    // The real binary, so that the worker has a process (and a metrics recorder) of its own.
    let s = set_up(5).await;
    let db = TestDb::new().await;
    let (_worker, addr) = worker_serving_metrics(&s, &db, &emulator()).await;

    let client = reqwest::Client::new();
    let text = eventually("the worker's /metrics", || async {
        let response = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .ok()?;
        response.text().await.ok()
    })
    .await;
    // Before any event: every outcome at zero, with its description, so rates and alerts work
    // from the first scrape. The consumer registers them as it is built; a recorder installed
    // after that would have lost them.
    for outcome in [
        "applied",
        "duplicate",
        "expired",
        "poison",
        "retried",
        "dead_lettered",
    ] {
        let line = format!("scan_events_processed_total{{outcome=\"{outcome}\"}} 0");
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    assert!(
        text.contains("# HELP scan_events_processed_total"),
        "{text}"
    );
    // And every dead-letter reason, so that `DeadLetters` sees the first one as an increase.
    for reason in [
        "bad_json",
        "unknown_schema_version",
        "unknown_event_type",
        "missing_field",
        "invalid_field",
        "rejected",
        "max_attempts",
    ] {
        let line = format!("dlq_messages_total{{reason=\"{reason}\"}} 0");
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    // Ready: its database and the subscription it pulls from both answer.
    let body = common::testing::ready_within(&client, &format!("http://{addr}"), WAIT)
        .await
        .unwrap_or_else(|e| panic!("the worker's /readyz: {e}"));
    assert_eq!(
        body["checks"],
        serde_json::json!({"postgres": "ok", "pubsub": "ok"}),
        "{body}"
    );
}

/// The client's streaming pull retries an unreachable broker silently, so a worker cut off
/// from Pub/Sub used to say nothing at all. It now keeps
/// `scan_events_subscription_reachable` (and logs the change), and heals by itself.
#[tokio::test]
async fn a_worker_shows_when_its_subscription_cannot_be_reached_and_when_it_can_again() -> TestResult
{
    let s = set_up(5).await;
    let db = TestDb::new().await;
    let mut broker = Proxy::start(&emulator()).await?;
    let (_worker, addr) =
        worker_serving_metrics(&s, &db, &format!("127.0.0.1:{}", broker.port)).await;
    let client = reqwest::Client::new();
    let subscription = s.pubsub.subscription_path(&s.pubsub.subscription);
    let reachable = |value: &'static str| {
        let (client, line) = (
            client.clone(),
            format!(
                "scan_events_subscription_reachable{{subscription=\"{subscription}\"}} {value}"
            ),
        );
        move || {
            let (client, line) = (client.clone(), line.clone());
            async move {
                let text = client
                    .get(format!("http://{addr}/metrics"))
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                text.lines().any(|l| l == line).then_some(())
            }
        }
    };
    eventually("the subscription reachable", reachable("1")).await;
    broker.down().await;
    eventually("the subscription unreachable", reachable("0")).await;
    broker.up()?;
    eventually("the subscription reachable again", reachable("1")).await;
    Ok(())
}

/// A deployment whose workers consume (infra/terraform) runs `serve` with
/// `SCAN_EVENTS_CONSUMER=false`: its instances neither pull nor need the right to.
#[tokio::test]
async fn serve_with_the_consumer_turned_off_leaves_the_events_to_the_workers() -> TestResult {
    let s = set_up(5).await;
    let db = TestDb::new().await;
    let tag = seed_tags(&db.pool, 1).await.remove(0);
    let mut serve = common::testing::ChildGuard(
        std::process::Command::new(env!("CARGO_BIN_EXE_factory-service"))
            .arg("serve")
            .envs(common::testing::env_for(&db).vars())
            .env("PUBSUB_PROJECT_ID", &s.pubsub.project_id)
            .env("SCAN_EVENTS_TOPIC", &s.pubsub.topic)
            .env("SCAN_EVENTS_SUBSCRIPTION", &s.pubsub.subscription)
            .env("SCAN_EVENTS_DLQ_TOPIC", &s.pubsub.dlq_topic)
            .env("PUBSUB_EMULATOR_HOST", emulator())
            .env("SCAN_EVENTS_CONSUMER", "false")
            .env("BIND_ADDR", "127.0.0.1:0")
            .env(
                "JWT_SECRET",
                "an-integration-test-secret-of-48-bytes-0123456789",
            )
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "json")
            .stdout(std::process::Stdio::piped())
            .spawn()?,
    );
    let stdout = serve.0.stdout.take().ok_or("piped stdout")?;
    let addr =
        common::testing::logged_address(stdout, "factory-service listening on http://").await?;
    let client = reqwest::Client::new();
    let ready = common::testing::ready_within(&client, &format!("http://{addr}"), WAIT)
        .await
        .map_err(|e| format!("serve's /readyz: {e}"))?;
    // Pub/Sub is not one of its dependencies any more.
    assert_eq!(
        ready["checks"],
        serde_json::json!({"postgres": "ok", "redis": "ok"}),
        "{ready}"
    );

    // Published while serve is up: a consumer of its own would have its streams open by now
    // and take the event. The worker started after it gets it instead.
    publish_event(&s, &event(&tag, Utc::now())).await;
    let worker = Running::start(&s, db.pool.clone()).await;
    eventually("the scan to be counted", || async {
        (scan_state(&db.pool, &tag).await.0 == 1).then_some(())
    })
    .await;
    assert_eq!(worker.settled.load(Ordering::Relaxed), 1);
    worker.stop().await;
    Ok(())
}

#[tokio::test]
async fn dlq_list_and_replay_fail_when_pub_sub_is_unreachable_rather_than_showing_nothing() {
    let mut settings = settings(5);
    // A loopback port nobody listens on.
    let dead = common::testing::closed_port().unwrap();
    settings.pubsub.emulator_host = Some(format!("127.0.0.1:{dead}"));
    let listed = dlq::list(&settings, 100, QUICK).await;
    assert!(listed.is_err(), "an unreachable broker listed {listed:?}");
    let replayed = dlq::replay(&settings, &Selector::All, QUICK, |_| {}).await;
    assert!(
        replayed.is_err(),
        "an unreachable broker replayed {replayed:?}"
    );
    // A reachable broker without the DLQ's inspection subscription is an error too.
    let missing = dlq::list(&self::settings(5), 100, QUICK).await;
    assert!(
        missing.is_err(),
        "a missing subscription listed {missing:?}"
    );
}

/// `pubsub setup` with nothing listening at `PUBSUB_EMULATOR_HOST`: it gives up after the admin
/// clients' bounded retries (the library's default kept it silent for a minute), names the
/// address and how to start the emulator, and says each cause once (Google's errors repeat
/// their source in their own text, so the plain chain printed it four times).
#[test]
fn pubsub_setup_without_an_emulator_says_where_it_looked_once() {
    let dead = format!("127.0.0.1:{}", common::testing::closed_port().unwrap());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_factory-service"))
        .args(["pubsub", "setup"])
        .env("PUBSUB_EMULATOR_HOST", &dead)
        .env("SCAN_EVENTS_TOPIC", "unreachable-scan-events")
        .env("APP_ENV", "test")
        .env("RUST_LOG", "off")
        .output()
        .expect("run pubsub setup");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "nothing answers at PUBSUB_EMULATOR_HOST={dead}: is the Pub/Sub emulator running"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("make services-up"), "{stderr}");
    assert_eq!(
        stderr.matches("cannot connect to endpoint").count(),
        1,
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

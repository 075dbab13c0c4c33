//! `TestEnv` (a database, a Redis prefix, a topic and subscription of one test) and `TestApp`
//! (one running instance; a test may start several on one environment).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::config::{Env, PubSubConfig};
pub use common::testing::Proxy;
use common::testing::{TestDb, env_for};
use google_cloud_pubsub::subscriber::MessageStream;
use hmac::{Hmac, Mac as _};
use scan_service::events::EventQueue;
use scan_service::{Application, ScanConfig};
use secrecy::ExposeSecret as _;
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const PROJECT: &str = "voketag-test";
pub const IP_HASH_KEY: &str = "test-ip-hash-key-0123456789";
pub const EMULATOR: &str = "127.0.0.1:8085";

/// What one test shares between its app instances.
pub struct TestEnv {
    pub db: Arc<TestDb>,
    pub env: Env,
    pub prefix: String,
    pub topic: String,
    pub subscription: String,
    pub product_id: Uuid,
    pub batch_id: Uuid,
}

/// A running scan service.
pub struct TestApp {
    pub addr: SocketAddr,
    events: EventQueue,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestEnv {
    /// A fresh environment with a product, a batch, and a topic + subscription on the emulator.
    /// Rate limits are high and timing normalization is off unless a test sets them.
    pub async fn new() -> Self {
        let db = TestDb::new().await;
        let suffix = Uuid::new_v4().simple().to_string();
        let topic = format!("scan-events-{suffix}");
        let subscription = format!("scan-sub-{suffix}");
        let env = env_for(&db)
            .with("PUBSUB_PROJECT_ID", PROJECT)
            .with("SCAN_EVENTS_TOPIC", &topic)
            .with("SCAN_EVENTS_SUBSCRIPTION", &subscription)
            .with("IP_HASH_KEY", IP_HASH_KEY)
            .with("SCAN_MIN_RESPONSE_MS", "0")
            .with("SCAN_JITTER_MS", "0")
            .with("RATE_LIMIT_IP_PER_MINUTE", "1000000")
            .with("RATE_LIMIT_IP_BURST", "1000000")
            .with("RATE_LIMIT_KEY_PER_MINUTE", "1000000")
            .with("RATE_LIMIT_KEY_BURST", "1000000");
        let prefix = env.raw("REDIS_KEY_PREFIX").unwrap_or_default().to_owned();
        let pubsub = pubsub_config(EMULATOR, &topic, &subscription);
        create_topic_and_subscription(&pubsub).await;

        let product_id = Uuid::now_v7();
        let batch_id = Uuid::now_v7();
        sqlx::query("INSERT INTO products (id, name, sku) VALUES ($1, 'Gold Watch', $2)")
            .bind(product_id)
            .bind(format!("SKU-{suffix}"))
            .execute(&db.pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO batches (id, product_id, quantity) VALUES ($1, $2, 10)")
            .bind(batch_id)
            .bind(product_id)
            .execute(&db.pool)
            .await
            .unwrap();
        Self {
            db: Arc::new(db),
            env,
            prefix,
            topic,
            subscription,
            product_id,
            batch_id,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// The test database's URL, reached through `host_port` instead (a [`Proxy`]).
    pub fn database_url_via(&self, host_port: &str) -> String {
        let url = self.db.url.expose_secret();
        let (scheme_user, rest) = url.split_once('@').expect("user@host in the URL");
        let (_, path) = rest.split_once('/').expect("a database in the URL");
        // In clear: the tests' proxies stall on what they read (TLS is on by default where
        // the server offers it, as this machine kind's does).
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{scheme_user}@{host_port}/{path}{sep}sslmode=disable")
    }

    /// Starts an instance with these variables on top of the environment's.
    pub async fn spawn(&self, vars: &[(&str, &str)]) -> TestApp {
        let mut env = self.env.clone();
        for (k, v) in vars {
            env = env.with(k, v);
        }
        spawn_with(env).await
    }

    /// A new authentic tag; its id.
    pub async fn tag(&self) -> String {
        let tag_id = format!("tag_{}", Uuid::new_v4().simple());
        sqlx::query("INSERT INTO tags (tag_id, batch_id, product_id) VALUES ($1, $2, $3)")
            .bind(&tag_id)
            .bind(self.batch_id)
            .bind(self.product_id)
            .execute(self.pool())
            .await
            .unwrap();
        tag_id
    }

    /// A new API key in the factory's format; its id and the full key.
    pub async fn api_key(&self, rate_limit_per_minute: Option<i32>) -> (Uuid, String) {
        let id = Uuid::now_v7();
        let short = &Uuid::new_v4().simple().to_string()[..8];
        let prefix = format!("vt_{short}");
        let key = format!("{prefix}_{}", Uuid::new_v4().simple());
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        sqlx::query(
            "INSERT INTO api_keys (id, name, prefix, key_hash, rate_limit_per_minute) VALUES ($1, 'test', $2, $3, $4)",
        )
        .bind(id)
        .bind(&prefix)
        .bind(&hash[..])
        .bind(rate_limit_per_minute)
        .execute(self.pool())
        .await
        .unwrap();
        (id, key)
    }

    pub fn pubsub(&self) -> PubSubConfig {
        pubsub_config(EMULATOR, &self.topic, &self.subscription)
    }

    /// A stream on the test's subscription.
    pub async fn subscribe(&self) -> MessageStream {
        let cfg = self.pubsub();
        common::pubsub::subscriber(&cfg)
            .await
            .unwrap()
            .subscribe(cfg.subscription_path(&self.subscription))
            .build()
    }
}

pub async fn spawn_with(env: Env) -> TestApp {
    let config = ScanConfig::from_env(&env).expect("test configuration is valid");
    let app = Application::build(config).await.expect("app builds");
    let addr = app.local_addr();
    let events = app.events().clone();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        addr,
        events,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        shutdown,
        handle: Some(handle),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn scan(&self, tag_id: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/v1/scan/{tag_id}")))
            .send()
            .await
            .unwrap()
    }

    pub async fn scan_with_key(&self, tag_id: &str, key: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/v1/scan/{tag_id}")))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap()
    }

    /// Scans `tag_id` every 200 ms until it answers 200, failing after 15 s (a dependency that
    /// came back must be used again without a restart).
    pub async fn scan_until_ok(&self, tag_id: &str, why: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let status = self.scan(tag_id).await.status();
            if status == reqwest::StatusCode::OK {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still {status} {why}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn events(&self) -> &EventQueue {
        &self.events
    }

    /// `/readyz`: its status and JSON body.
    pub async fn readyz(&self) -> (reqwest::StatusCode, serde_json::Value) {
        let r = self.client.get(self.url("/readyz")).send().await.unwrap();
        (r.status(), r.json().await.unwrap())
    }

    /// The body of the first `/readyz` 200 within 30 s. Panics with the last answer.
    pub async fn ready(&self) -> serde_json::Value {
        common::testing::ready_within(&self.client, &self.url(""), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stops serving, drains, flushes events, and waits for all of it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }
}

pub fn pubsub_config(emulator: &str, topic: &str, subscription: &str) -> PubSubConfig {
    PubSubConfig {
        project_id: PROJECT.into(),
        emulator_host: Some(emulator.into()),
        topic: topic.into(),
        subscription: subscription.into(),
        dlq_topic: format!("{topic}-dlq"),
    }
}

pub async fn create_topic_and_subscription(cfg: &PubSubConfig) {
    common::pubsub::topic_admin(cfg)
        .await
        .unwrap()
        .create_topic()
        .set_name(cfg.topic_path(&cfg.topic))
        .send()
        .await
        .expect("create topic on the emulator (is it running? scripts/dev-services.sh up)");
    common::pubsub::subscription_admin(cfg)
        .await
        .unwrap()
        .create_subscription()
        .set_name(cfg.subscription_path(&cfg.subscription))
        .set_topic(cfg.topic_path(&cfg.topic))
        .set_ack_deadline_seconds(10)
        .send()
        .await
        .unwrap();
}

/// One received message: JSON body and attributes.
pub struct Received {
    pub body: serde_json::Value,
    pub attributes: HashMap<String, String>,
}

/// Receives `n` distinct events within `within`, acknowledging every message. Publishing is
/// at least once: a batch whose attempt was cut short (by shutdown, or a broker that answered
/// late) is sent again, and the consumer applies each `event_id` once. So a repeated
/// `event_id` is acknowledged and skipped here, and never counts twice.
pub async fn receive(stream: &mut MessageStream, n: usize, within: Duration) -> Vec<Received> {
    let mut got = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < n {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages within {within:?}", got.len()));
        let (message, handler) = next.expect("stream open").expect("message");
        handler.ack();
        let body: serde_json::Value = serde_json::from_slice(&message.data).expect("JSON body");
        if !seen.insert(body["event_id"].to_string()) {
            continue;
        }
        got.push(Received {
            body,
            attributes: message.attributes,
        });
    }
    got
}

/// The client-IP hash the service must put in events for `ip`.
pub fn expected_ip_hash(ip: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(IP_HASH_KEY.as_bytes()).unwrap();
    mac.update(ip.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    common::testing::closed_port().unwrap()
}

/// A TCP listener that accepts connections and never answers: a dependency that hangs (what a
/// Redis stuck in a long `DEBUG SLEEP` or a paused client looks like from outside), without
/// slowing the shared Redis that other tests run against in parallel.
pub async fn black_hole() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, handle)
}

/// A `redis-server` of a test's own, on a free port, that the test can stop and start.
pub struct OwnRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    pub async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
        };
        redis.up().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn up(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        for _ in 0..100 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("own redis-server did not start on port {}", self.port);
    }

    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.down();
    }
}

/// A connection to the shared Redis.
pub async fn shared_redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Reads the value of a metric line starting with `prefix` (name and labels).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

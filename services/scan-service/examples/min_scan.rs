//! A second reference point for the scan benchmark, between `lean_scan` and the service (run by
//! hand; see the eleventh look in docs/PERFORMANCE.md).
//!
//! The per-request work the contract asks of a scan of a known tag, with nothing around it: the
//! `EVALSHA` of `token_bucket.lua` on the client IP's bucket key, the tag's answer from an
//! in-process map that always hits, the rate-limit headers, a request id and the security
//! headers (`common::http::security_headers`), and one scan event (the service's own
//! `ScanEvent`, `IpHasher`, queue, worker and Pub/Sub publisher). Left out, as in `lean_scan`:
//! the service's layers (limits, timeout, CORS, metrics and spans, timing), its router,
//! its Redis and PostgreSQL tag caches, error handling and the API-key path. So the service's
//! cost beyond this route is that of its structure and caches, and this route's cost beyond
//! `lean_scan` that of the contract's per-scan work.
//!
//! `--no-event` and `--no-headers` leave out one part each. It prints the address it listens on
//! as its first line of output. It needs the bench's database (the tags it answers for) and the
//! topic on the Pub/Sub emulator.
//!
//!     cargo run --release -p scan-service --example min_scan -- \
//!         --database-url postgres://postgres@127.0.0.1:5432/voketag_bench_scan

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use clap::Parser;
use common::CircuitBreaker;
use common::config::{BreakerConfig, PubSubConfig};
use redis::aio::MultiplexedConnection;
use scan_service::events::{
    EventQueue, IpHasher, PubSubPublisher, ScanEvent, ScanResult, WorkerSettings, spawn_worker,
};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LUA: &str = include_str!("../src/ratelimit/token_bucket.lua");

static LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Limits that refuse nothing, as in the benchmark.
const UNLIMITED: u64 = 10_000_000;

#[derive(Parser)]
struct Cli {
    /// The database whose tags are answered (the first `--tags` by id).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// How many tags to answer for.
    #[arg(long, default_value_t = 1000)]
    tags: i64,
    /// Redis to decide in.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Bucket keys are `<prefix>:rl:{ip:<client ip>}`, as in the service.
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// The Pub/Sub emulator.
    #[arg(long, default_value = "127.0.0.1:8085")]
    emulator: String,
    /// Pub/Sub project.
    #[arg(long, default_value = "voketag-local")]
    project: String,
    /// Topic the events go to.
    #[arg(long, default_value = "bench-scan-events")]
    topic: String,
    /// Publish no scan events.
    #[arg(long)]
    no_event: bool,
    /// Add neither the rate-limit, request-id nor security headers.
    #[arg(long)]
    no_headers: bool,
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: String,
}

#[derive(Clone)]
struct Min {
    redis: MultiplexedConnection,
    script: &'static redis::Script,
    prefix: &'static str,
    tags: Arc<HashMap<String, Bytes>>,
    events: EventQueue,
    hasher: IpHasher,
    no_event: bool,
    no_headers: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let pool = sqlx::PgPool::connect(&cli.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    let rows: Vec<(String,)> = sqlx::query_as("SELECT tag_id FROM tags ORDER BY tag_id LIMIT $1")
        .bind(cli.tags)
        .fetch_all(&pool)
        .await?;
    // A body of the shape and size of a scan's answer.
    let tags = rows
        .into_iter()
        .map(|(tag_id,)| {
            let body = serde_json::json!({
                "tag_id": tag_id,
                "status": "authentic",
                "product": {"id": uuid::Uuid::nil(), "name": "Bench bag", "sku": "BENCH-1"},
                "batch_id": uuid::Uuid::nil(),
                "scan_count": 0,
                "first_scanned_at": null,
            });
            (tag_id, Bytes::from(body.to_string()))
        })
        .collect();
    let redis = redis::Client::open(cli.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let pubsub = PubSubConfig {
        project_id: cli.project,
        emulator_host: Some(cli.emulator),
        topic: cli.topic,
        subscription: String::new(),
        dlq_topic: String::new(),
    };
    let publisher = PubSubPublisher::connect(&pubsub).await?;
    let (events, rx) = EventQueue::bounded(scan_service::startup::EVENT_BUFFER);
    let breaker = BreakerConfig {
        threshold: 5,
        open_timeout: Duration::from_secs(30),
    };
    let _worker = spawn_worker(
        rx,
        publisher,
        CircuitBreaker::new("pubsub", breaker),
        WorkerSettings::default(),
        CancellationToken::new(),
    );
    let min = Min {
        redis,
        script: Box::leak(Box::new(redis::Script::new(LUA))),
        prefix: Box::leak(cli.prefix.into_boxed_str()),
        tags: Arc::new(tags),
        events,
        hasher: IpHasher::new("min-scan-ip-hash-key".to_owned().into()),
        no_event: cli.no_event,
        no_headers: cli.no_headers,
    };
    let app = Router::new()
        .route("/v1/scan/{tag_id}", get(scan))
        .with_state(min);
    let listener = tokio::net::TcpListener::bind(&cli.bind).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

async fn scan(
    State(min): State<Min>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(tag_id): Path<String>,
) -> Response {
    let ip = peer.ip();
    let mut redis = min.redis.clone();
    // `invoke_async` sends EVALSHA, and loads the script only if Redis answers NOSCRIPT.
    let decision: redis::RedisResult<(i64, i64, i64, i64)> = min
        .script
        .key(format!("{}:rl:{{ip:{ip}}}", min.prefix))
        .arg(UNLIMITED)
        .arg(UNLIMITED)
        .arg(1)
        .invoke_async(&mut redis)
        .await;
    let remaining_and_reset = match decision {
        Ok((1, remaining, reset, _)) => (remaining, reset),
        Ok(_) => return StatusCode::TOO_MANY_REQUESTS.into_response(),
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    };
    let Some(body) = min.tags.get(&tag_id).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !min.no_event {
        let event = ScanEvent::new(
            &tag_id,
            ScanResult::Authentic,
            min.hasher.hash(ip),
            None,
            None,
        );
        min.events.enqueue(event);
    }
    let mut response = (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if min.no_headers {
        return response;
    }
    let (remaining, reset) = remaining_and_reset;
    let headers = response.headers_mut();
    headers.reserve(12);
    headers.insert(LIMIT.clone(), HeaderValue::from(UNLIMITED));
    headers.insert(REMAINING.clone(), HeaderValue::from(remaining));
    headers.insert(RESET.clone(), HeaderValue::from(reset));
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    if let Ok(id) = HeaderValue::from_str(id) {
        headers.insert(REQUEST_ID.clone(), id);
    }
    common::http::security_headers::apply(response)
}

//! A reference point for the scan benchmark (used by `make bench`; not the service).
//!
//! The leanest HTTP path that still makes the scan's one Redis call: an axum route on
//! `GET /v1/scan/{tag_id}` that runs `token_bucket.lua` with `EVALSHA` on one multiplexed
//! connection and answers a small JSON body. No security headers, request ids, limits, metrics,
//! tag caches, database or scan events: everything the contract asks of the real route on top
//! of its rate-limit decision is missing here, so whatever the service costs beyond this is the
//! price of that.
//!
//! It runs on the same runtime and allocator as the service, and prints the address it listens
//! on as its first line of output.
//!
//!     cargo run --release -p scan-service --example lean_scan -- --redis-url redis://127.0.0.1:6379

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use redis::aio::MultiplexedConnection;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LUA: &str = include_str!("../src/ratelimit/token_bucket.lua");

#[derive(Parser)]
struct Cli {
    /// Redis to decide in.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The one bucket every request spends from (limits that refuse nothing).
    #[arg(long, default_value = "bench:rl:{ip:lean}")]
    bucket: String,
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: String,
}

#[derive(Clone)]
struct Lean {
    redis: MultiplexedConnection,
    script: &'static redis::Script,
    bucket: &'static str,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let redis = redis::Client::open(cli.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let lean = Lean {
        redis,
        script: Box::leak(Box::new(redis::Script::new(LUA))),
        bucket: Box::leak(cli.bucket.into_boxed_str()),
    };
    let app = Router::new()
        .route("/v1/scan/{tag_id}", get(scan))
        .with_state(lean);
    let listener = tokio::net::TcpListener::bind(&cli.bind).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn scan(State(lean): State<Lean>, Path(tag_id): Path<String>) -> Response {
    let mut redis = lean.redis.clone();
    // `invoke_async` sends EVALSHA, and loads the script only if Redis answers NOSCRIPT.
    let decision: redis::RedisResult<(i64, i64, i64, i64)> = lean
        .script
        .key(lean.bucket)
        .arg(10_000_000)
        .arg(10_000_000)
        .arg(1)
        .invoke_async(&mut redis)
        .await;
    match decision {
        Ok((1, ..)) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            format!(r#"{{"tag_id":"{tag_id}","status":"authentic"}}"#),
        )
            .into_response(),
        Ok(_) => StatusCode::TOO_MANY_REQUESTS.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

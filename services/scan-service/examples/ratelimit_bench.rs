//! Rate-limit decision latency (used by `make bench`; not a test).
//!
//! Drives the service's own [`RateLimiter`] (breaker, bounded Redis call, `EVALSHA` of
//! `token_bucket.lua`, metrics) against a real Redis, and times each `check` from the caller's
//! side. Three loads, each printed as one JSON line:
//!
//! - `closed`: `--concurrency` tasks, each making its next decision as soon as the last one
//!   answered, for `--decisions` decisions in all;
//! - `paced`: one decision every `1 / --rate` seconds from a single task (open loop), the way
//!   scans arrive at a quiet service: between decisions the process sleeps.
//!
//! Every task has its own bucket (its own client IP) with limits that refuse nothing, so each
//! decision is a full read-modify-write of a bucket in Redis.
//!
//!     cargo run --release -p scan-service --example ratelimit_bench -- --redis-url redis://127.0.0.1:6379

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use common::CircuitBreaker;
use common::config::BreakerConfig;
use scan_service::config::{BucketLimits, RateLimitConfig};
use scan_service::ratelimit::{Identity, RateLimiter, RedisBuckets};
use scan_service::redis_conn::RedisConn;
use secrecy::SecretString;

#[derive(Parser)]
struct Cli {
    /// Redis to decide in.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Key prefix of the buckets.
    #[arg(long, default_value = "bench-rl")]
    prefix: String,
    /// Decisions of each closed-loop run.
    #[arg(long, default_value_t = 20_000)]
    decisions: usize,
    /// Concurrent tasks of the closed-loop runs (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16])]
    concurrency: Vec<usize>,
    /// Decisions per second of the paced run.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds of the paced run.
    #[arg(long, default_value_t = 10)]
    paced_secs: u64,
}

const UNLIMITED: BucketLimits = BucketLimits {
    per_minute: 100_000_000,
    burst: 100_000_000,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let redis = Arc::new(
        RedisConn::new(
            &SecretString::from(cli.redis_url.clone()),
            Duration::from_millis(50),
            1,
        )
        .context("REDIS_URL")?,
    );
    redis.warm_up(Duration::from_secs(2)).await;
    let limiter = RateLimiter::new(
        RedisBuckets::new(redis),
        CircuitBreaker::new(
            "bench",
            BreakerConfig {
                threshold: 5,
                open_timeout: Duration::from_secs(5),
            },
        ),
        RateLimitConfig {
            ip: UNLIMITED,
            key: UNLIMITED,
            fail_closed: true,
        },
        &cli.prefix,
    );
    // Loads the script (the first call answers NOSCRIPT after a flush) and warms the connection.
    for n in 0..200u32 {
        decide(&limiter, n).await?;
    }
    for &concurrency in &cli.concurrency {
        closed(&limiter, concurrency.max(1), cli.decisions).await?;
    }
    paced(
        &limiter,
        cli.rate.max(1),
        Duration::from_secs(cli.paced_secs),
    )
    .await
}

/// One decision for client `n`, timed.
async fn decide(limiter: &RateLimiter, n: u32) -> anyhow::Result<Duration> {
    let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff)));
    let started = Instant::now();
    let verdict = limiter
        .check(Identity::Ip(ip), UNLIMITED)
        .await
        .map_err(|e| anyhow::anyhow!("no decision: {e}"))?;
    let took = started.elapsed();
    anyhow::ensure!(verdict.allowed, "an unlimited bucket refused a request");
    Ok(took)
}

async fn closed(limiter: &RateLimiter, concurrency: usize, decisions: usize) -> anyhow::Result<()> {
    let per_task = decisions.div_ceil(concurrency);
    let started = Instant::now();
    let tasks = (0..concurrency).map(|task| {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            let mut took = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                took.push(decide(&limiter, task as u32).await?);
            }
            anyhow::Ok(took)
        })
    });
    let mut all = Vec::with_capacity(per_task * concurrency);
    for task in futures::future::join_all(tasks).await {
        all.extend(task.context("a bench task panicked")??);
    }
    report("closed", concurrency, started.elapsed(), all);
    Ok(())
}

async fn paced(limiter: &RateLimiter, rate: u32, duration: Duration) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut all = Vec::new();
    while started.elapsed() < duration {
        tick.tick().await;
        all.push(decide(limiter, 0).await?);
    }
    report("paced", 1, started.elapsed(), all);
    Ok(())
}

fn report(mode: &str, concurrency: usize, elapsed: Duration, mut took: Vec<Duration>) {
    took.sort_unstable();
    let q = |p: f64| {
        let i = ((took.len() as f64 * p).ceil() as usize).clamp(1, took.len()) - 1;
        took[i].as_secs_f64() * 1000.0
    };
    println!(
        "{}",
        serde_json::json!({
            "mode": mode,
            "concurrency": concurrency,
            "decisions": took.len(),
            "per_sec": took.len() as f64 / elapsed.as_secs_f64(),
            "p50_ms": q(0.5),
            "p99_ms": q(0.99),
            "p999_ms": q(0.999),
            "max_ms": q(1.0),
        })
    );
}

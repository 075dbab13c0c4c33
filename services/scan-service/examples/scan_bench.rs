//! Load generator for the scan route (used by `make bench`; not a test).
//!
//! `throughput`: N concurrent keep-alive clients hit one URL for a while; prints requests per
//! second, p50 and p99 latency and the status mix.
//!
//! `ttest`: alternates requests to a known-tag and an unknown-tag URL (so drift affects both
//! alike), then prints Welch's t over the two sets of response times. With timing normalization
//! on, |t| must stay under 4.5.
//!
//!     cargo run --release -p scan-service --example scan_bench -- throughput --url URL -c 64 -d 10
//!     cargo run --release -p scan-service --example scan_bench -- ttest --known URL --unknown URL -n 5000

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Requests per second and latency at a fixed concurrency.
    Throughput {
        /// The URL to hit.
        #[arg(long)]
        url: String,
        /// Concurrent clients.
        #[arg(short, long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds to run (after one second of warm-up).
        #[arg(short, long, default_value_t = 10)]
        duration: u64,
        /// Send this `X-Forwarded-For` per client (`<base>.<client number>`), so each client is
        /// its own rate-limit identity when the service trusts the local proxy.
        #[arg(long)]
        forwarded_base: Option<String>,
    },
    /// Welch's t-test between known-tag and unknown-tag response times.
    Ttest {
        /// URL of a known tag.
        #[arg(long)]
        known: String,
        /// URL of an unknown tag.
        #[arg(long)]
        unknown: String,
        /// Samples of each.
        #[arg(short, default_value_t = 5000)]
        n: usize,
        /// Concurrent clients.
        #[arg(short, long, default_value_t = 8)]
        concurrency: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Throughput {
            url,
            concurrency,
            duration,
            forwarded_base,
        } => {
            throughput(
                url,
                concurrency,
                Duration::from_secs(duration),
                forwarded_base,
            )
            .await
        }
        Command::Ttest {
            known,
            unknown,
            n,
            concurrency,
        } => ttest(known, unknown, n, concurrency).await,
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")
}

async fn throughput(
    url: String,
    concurrency: usize,
    duration: Duration,
    forwarded_base: Option<String>,
) -> anyhow::Result<()> {
    let client = client()?;
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for n in 0..concurrency {
        let (client, url, measuring, stop) =
            (client.clone(), url.clone(), measuring.clone(), stop.clone());
        let forwarded = forwarded_base
            .as_ref()
            .map(|b| format!("{b}.{}", n % 250 + 1));
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                let mut request = client.get(&url);
                if let Some(f) = &forwarded {
                    request = request.header("x-forwarded-for", f);
                }
                let started = Instant::now();
                let Ok(response) = request.send().await else {
                    *statuses.entry(0).or_default() += 1;
                    continue;
                };
                let status = response.status().as_u16();
                let _ = response.bytes().await;
                if measuring.load(Ordering::Relaxed) {
                    latencies.push(started.elapsed());
                    *statuses.entry(status).or_default() += 1;
                }
            }
            (latencies, statuses)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for w in workers {
        let (l, s) = w.await?;
        latencies.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
    }
    latencies.sort();
    let count = latencies.len();
    let pct = |p: f64| {
        latencies
            .get(((count as f64 * p) as usize).min(count.saturating_sub(1)))
            .copied()
    };
    println!(
        "concurrency={concurrency} requests={count} rps={:.0} p50_ms={:.2} p99_ms={:.2} statuses={statuses:?}",
        count as f64 / elapsed.as_secs_f64(),
        pct(0.50).unwrap_or_default().as_secs_f64() * 1000.0,
        pct(0.99).unwrap_or_default().as_secs_f64() * 1000.0,
    );
    Ok(())
}

async fn ttest(known: String, unknown: String, n: usize, concurrency: usize) -> anyhow::Result<()> {
    let client = client()?;
    let per_worker = n.div_ceil(concurrency.max(1));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, known, unknown) = (client.clone(), known.clone(), unknown.clone());
        workers.push(tokio::spawn(async move {
            let mut a = Vec::with_capacity(per_worker);
            let mut b = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                for (url, into) in [(&known, &mut a), (&unknown, &mut b)] {
                    let started = Instant::now();
                    let response = client.get(url).send().await?;
                    let _ = response.bytes().await;
                    into.push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
            anyhow::Ok((a, b))
        }));
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for w in workers {
        let (x, y) = w.await??;
        a.extend(x);
        b.extend(y);
    }
    let t = welch_t(&a, &b);
    println!(
        "known n={} mean_ms={:.3} | unknown n={} mean_ms={:.3} | welch |t|={:.3} ({})",
        a.len(),
        mean(&a),
        b.len(),
        mean(&b),
        t.abs(),
        if t.abs() < 4.5 {
            "indistinguishable"
        } else {
            "DISTINGUISHABLE"
        }
    );
    Ok(())
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

fn variance(x: &[f64]) -> f64 {
    let m = mean(x);
    x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() as f64 - 1.0)
}

fn welch_t(a: &[f64], b: &[f64]) -> f64 {
    (mean(a) - mean(b)) / (variance(a) / a.len() as f64 + variance(b) / b.len() as f64).sqrt()
}

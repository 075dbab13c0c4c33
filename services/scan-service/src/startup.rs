//! Builds the scan service: connections, the event worker, routes, layers, and the listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use common::CircuitBreaker;
use common::health::{self, ReadinessCheck};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api_keys::ApiKeys;
use crate::cache::{self, Cache};
use crate::config::{ScanConfig, TimingWarning};
use crate::events::{EventQueue, IpHasher, PubSubPublisher, WorkerSettings, spawn_worker};
use crate::near_cache;
use crate::ratelimit::{RateLimiter, RedisBuckets};
use crate::redis_conn::RedisConn;
use crate::routes::{self, AppState};
use crate::scan::Scanner;
use crate::tags::TagLookup;
use crate::timing::TimingLayer;

/// Events the service holds while the broker is away before it starts dropping (and counting)
/// them. At about 300 bytes each this is ~30 MB at most.
pub const EVENT_BUFFER: usize = 100_000;

/// Multiplexed Redis connections on the request path. One: the commands of all concurrent
/// requests then share its writes and reads (automatic pipelining), which costs Redis and this
/// process far fewer system calls per decision than spreading them over several (measured:
/// ~1.7x the scan throughput of four connections at c=64).
const REDIS_CONNECTIONS: usize = 1;

/// The longest start-up waits for Redis connections (it starts without them).
const REDIS_WARM_UP: Duration = Duration::from_secs(1);

/// How often idle buckets of the fallback limiter and expired cache entries are freed.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A built scan service, bound to its listener and ready to serve.
pub struct Application {
    listener: TcpListener,
    router: Router,
    events: EventQueue,
    worker: JoinHandle<usize>,
    background: CancellationToken,
}

impl Application {
    /// Binds `BIND_ADDR` (port 0 picks a free port: tests do that), then connects (lazily) to
    /// the dependencies, starts the event worker and builds the routes.
    pub async fn build(config: ScanConfig) -> anyhow::Result<Self> {
        if config.ip_hash_key_generated {
            tracing::warn!(
                "IP_HASH_KEY is not set: using a random key for this process, so client IP hashes in \
                 scan events differ between instances and restarts"
            );
        }
        if config.ip_hash_key_short {
            tracing::warn!(
                "IP_HASH_KEY is shorter than {} characters: client IP hashes in scan events are \
                 easy to reverse by trying every address; use a random secret (openssl rand -hex 32)",
                crate::config::IP_HASH_KEY_MIN
            );
        }
        match config.timing_warning {
            Some(TimingWarning::JitterIgnored) => tracing::warn!(
                "SCAN_MIN_RESPONSE_MS is 0: timing normalization is off and SCAN_JITTER_MS is ignored"
            ),
            Some(TimingWarning::JitterClipped) => tracing::warn!(
                "SCAN_JITTER_MS is larger than SCAN_MIN_RESPONSE_MS: release times below no delay \
                 are cut to no delay, so response times are spread unevenly"
            ),
            None => {}
        }
        // Installs the metrics recorder before anything records (the breakers export their
        // state as they are created).
        common::telemetry::prometheus();
        let common = &config.common;
        // First: an address already in use is the likeliest start-up failure, and it should be
        // reported before anything connects or starts.
        let listener = TcpListener::bind(common.bind_addr)
            .await
            .with_context(|| format!("binding {}", common.bind_addr))?;
        let prefix = common.redis_key_prefix.as_str();
        let read_pool = common::db::service_pg_pool(
            &config.database_read_url,
            "voketag-scan",
            16,
            common.database_idle_tx_timeout,
            // Past the look-up's own bound, PostgreSQL drops the statement too.
            common::db::QueryBounds {
                statement: crate::lookup::LOOKUP_TIMEOUT * 2,
                lock: crate::lookup::LOOKUP_TIMEOUT,
            },
            common::db::Ping::IfIdleFor(crate::lookup::PING_IF_IDLE_FOR),
        )?;
        let redis = Arc::new(
            RedisConn::new(&common.redis_url, common.redis_timeout, REDIS_CONNECTIONS)
                .context("REDIS_URL is not a valid Redis URL")?,
        );
        redis.warm_up(REDIS_WARM_UP).await;
        let cache = Cache::new(
            redis.clone(),
            CircuitBreaker::new("redis-cache", common.breaker),
            cache::TTL,
            cache::Seal::derive(&config.ip_hash_key),
        );
        let limiter = RateLimiter::new(
            RedisBuckets::new(redis.clone()),
            CircuitBreaker::new("redis-ratelimit", common.breaker),
            config.rate_limit,
            prefix,
        );

        let background = CancellationToken::new();
        let publisher = PubSubPublisher::connect(&common.pubsub)
            .await
            .context("creating the Pub/Sub publisher")?;
        let (events, rx) = EventQueue::bounded(EVENT_BUFFER);
        let worker = spawn_worker(
            rx,
            publisher,
            CircuitBreaker::new("pubsub", common.breaker),
            WorkerSettings::default(),
            background.clone(),
        );
        // One breaker for both look-ups: they fail together when the read replica is away,
        // and while it is open a scan that needs the database answers 503 at once instead of
        // waiting out the pool's connect timeout.
        let database = CircuitBreaker::new("postgres", common.breaker);
        let scanner = Scanner {
            limiter,
            tags: TagLookup::new(read_pool.clone(), database.clone(), cache.clone(), prefix),
            api_keys: ApiKeys::new(
                read_pool.clone(),
                database,
                cache,
                prefix,
                config.rate_limit.ip,
            ),
            events: events.clone(),
            ip_hasher: IpHasher::new(config.ip_hash_key.clone()),
        };
        spawn_sweeper(scanner.clone(), background.clone());
        spawn_refresher(scanner.tags.clone(), background.clone());
        common::clock::spawn_watch(read_pool.clone(), background.clone());
        let state = AppState {
            scanner: Arc::new(scanner),
            requests: Arc::default(),
        };
        let topics = common::pubsub::ProbeClients::topics(&common.pubsub)
            .await
            .context("creating the Pub/Sub readiness client")?;
        let backlog = events.clone();
        let router =
            routes::router(state, TimingLayer::new(config.timing)).merge(health::routes_sampling(
                vec![
                    ReadinessCheck::postgres(read_pool),
                    redis_check(redis),
                    ReadinessCheck::pubsub_topic(
                        topics,
                        common.pubsub.topic_path(&common.pubsub.topic),
                    ),
                ],
                Some(Arc::new(move || backlog.export_backlog())),
            ));
        let router = common::http::harden(router, &common.http);
        Ok(Self {
            listener,
            router,
            events,
            worker,
            background,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The event queue (tests read its drop count).
    pub fn events(&self) -> &EventQueue {
        &self.events
    }

    /// Serves until `shutdown` is cancelled, drains in-flight requests, then flushes queued scan
    /// events (those enqueued by the drained requests included).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let served = common::server::serve(self.listener, self.router, shutdown)
            .await
            .context("serving HTTP");
        self.background.cancel();
        match self.worker.await {
            Ok(0) => {}
            Ok(lost) => tracing::error!(lost, "scan events lost at shutdown"),
            Err(e) => tracing::error!(error = %e, "the event worker failed"),
        }
        served
    }
}

/// Redis is ready when it answers a `PING` within the readiness bound. Not within
/// `REDIS_TIMEOUT_MS`: that is a scan's budget, which a busy machine can overrun while Redis
/// still answers (the scan then follows `RATE_LIMIT_FAIL_CLOSED`); taking the instance out of
/// rotation for it would move its load onto the others. The bound covers a reconnect too; it is
/// the same as `/readyz`'s own for every check, and is given here so that `REDIS_TIMEOUT_MS`
/// does not apply.
fn redis_check(redis: Arc<RedisConn>) -> ReadinessCheck {
    ReadinessCheck::new("redis", move || {
        let redis = redis.clone();
        async move {
            redis
                .run_within(health::CHECK_TIMEOUT, |mut conn| async move {
                    redis::cmd("PING").query_async::<String>(&mut conn).await
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
}

/// Renews the in-process cache's tags that are being scanned (see [`TagLookup::refresh`]).
fn spawn_refresher(tags: TagLookup, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(near_cache::REFRESH_EVERY);
        // After a slow refresh, the next one waits its full interval rather than following at once.
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    if let Err(e) = tags.refresh().await {
                        // The entries then expire and scans look their tags up one by one, which
                        // report the trouble (and feed the breaker) themselves.
                        tracing::debug!(error = %e, "tag refresh skipped");
                    }
                }
                () = stop.cancelled() => break,
            }
        }
    });
}

/// Frees idle buckets of the fallback limiter and expired entries of the in-process caches.
fn spawn_sweeper(scanner: Scanner, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    scanner.limiter.local().sweep();
                    scanner.tags.sweep();
                    scanner.api_keys.sweep();
                }
                () = stop.cancelled() => break,
            }
        }
    });
}

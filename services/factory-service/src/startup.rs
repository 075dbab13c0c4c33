//! Builds the factory service: pools, state, routes, layers, the listener, and the small
//! background jobs of the API (bootstrap admin, sweeping expired idempotency records and
//! refresh-token families).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use common::CircuitBreaker;
use common::health::{self, ReadinessCheck};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::AuditLog;
use crate::auth::{CsrfKey, EndedSessions, JwtKeys, RefreshLifetime, password};
use crate::catalog::bulk::BulkWork;
use crate::config::{BootstrapAdmin, FactoryConfig};
use crate::ratelimit::Buckets;
use crate::state::{AppState, LOGIN_PER_EMAIL_PER_MINUTE, LOGIN_PER_IP_PER_MINUTE, Redis};

/// How often expired idempotency records and refresh-token families are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// How long shutdown waits for the work answered requests left running
/// ([`AppState::after_answer`]).
const AFTER_ANSWER_GRACE: Duration = Duration::from_secs(1);

/// A built factory service, bound to its listener and ready to serve.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    state: AppState,
    /// For the background jobs (audit checkpointer and verifier, sweeps): without the API
    /// pool's statement bounds.
    jobs_pool: sqlx::PgPool,
    audit: crate::audit::AuditConfig,
    /// `SCANS_RETENTION_DAYS`, for the sweep.
    scans_retention_days: Option<u32>,
}

impl Application {
    /// Binds `BIND_ADDR` (port 0 picks a free port: tests do that), then connects (lazily) to
    /// the dependencies and builds the routes. Fails without an access-token secret outside
    /// development.
    pub async fn build(config: FactoryConfig) -> anyhow::Result<Self> {
        let (secret, generated) = config.jwt_secret()?;
        if generated {
            tracing::warn!(
                "JWT_SECRET and JWT_KEY_FILE are unset: signing with a random per-process secret \
                 (development only; sessions end when the process does)"
            );
        }
        // Installs the metrics recorder before anything records (the breaker exports its state
        // as it is created).
        common::telemetry::prometheus();
        // Before anything connects or the bootstrap admin is created: an address already in
        // use is the likeliest start-up failure.
        let listener = TcpListener::bind(config.common.bind_addr)
            .await
            .with_context(|| format!("binding {}", config.common.bind_addr))?;
        let request_timeout = config.common.http.request_timeout;
        let pool = common::db::service_pg_pool(
            &config.common.database_url,
            "voketag-factory-api",
            16,
            config.common.database_idle_tx_timeout,
            common::db::QueryBounds {
                // A streamed tag CSV is one statement that may outlast its request's head.
                statement: request_timeout + Duration::from_secs(30),
                // The audit chain's head is held from an append to its commit (milliseconds).
                lock: (request_timeout / 3).min(Duration::from_secs(10)),
            },
            // An admin request can spare the round trip; a restart then fails no request.
            common::db::Ping::EveryAcquire,
        )?;
        // The background jobs' own: reading the whole chain, or a sweep after a backlog, takes
        // as long as it takes, outside any request's bounds.
        // Three: the audit verifier's pass and the sweep can each hold one for a while, and
        // the checkpointer, every second, needs one too.
        let jobs_pool = common::db::pg_pool(
            &config.common.database_url,
            "voketag-factory-jobs",
            3,
            config.common.database_idle_tx_timeout,
        )?;
        let redis_pool =
            common::db::redis_pool(&config.common.redis_url, config.common.redis_timeout, 16)?;
        let limit = config.admin_rate_limit;
        let bulk_wait = (request_timeout / 3).min(Duration::from_secs(10));
        let state = AppState {
            pool: pool.clone(),
            redis: Redis {
                pool: redis_pool.clone(),
                prefix: Arc::from(config.common.redis_key_prefix.as_str()),
                timeout: config.common.redis_timeout,
                breaker: CircuitBreaker::new("redis", config.common.breaker),
            },
            audit: AuditLog::from_config(&config.audit),
            jwt: Arc::new(JwtKeys::new(&secret, config.auth.access_ttl)),
            csrf: Arc::new(CsrfKey::derive(&secret)),
            refresh: RefreshLifetime {
                token: config.auth.refresh_ttl,
                session: config.auth.refresh_session_max,
            },
            dummy_hash: Arc::from(password::dummy_hash().await?.as_str()),
            login_by_ip: Arc::new(Buckets::new(
                f64::from(LOGIN_PER_IP_PER_MINUTE) / 60.0,
                LOGIN_PER_IP_PER_MINUTE,
            )),
            login_by_email: Arc::new(Buckets::new(
                f64::from(LOGIN_PER_EMAIL_PER_MINUTE) / 60.0,
                LOGIN_PER_EMAIL_PER_MINUTE,
            )),
            admin_limiter: Arc::new(Buckets::new(f64::from(limit.rps), limit.burst)),
            ended_sessions: Arc::new(EndedSessions::default()),
            idempotency_ttl: config.idempotency_ttl,
            idempotency_lease: config.common.http.request_timeout + Duration::from_secs(30),
            body_limit: config.common.http.body_limit_bytes,
            after_answer: TaskTracker::new(),
            abandon: CancellationToken::new(),
            // As long as a lock may be waited for: a turn is a wait for the audit chain's head
            // (or the pool) that holds no connection.
            batch_creates: BulkWork::batch_creates(bulk_wait),
            tag_csv: BulkWork::tag_csv(bulk_wait),
        };
        if let Some(admin) = config.auth.bootstrap_admin.clone() {
            bootstrap(state.clone(), admin).await;
        }
        let mut checks = vec![
            ReadinessCheck::postgres(pool),
            ReadinessCheck::redis(redis_pool),
        ];
        // `serve` runs the scan-event consumer beside the API unless `SCAN_EVENTS_CONSUMER` is
        // off, and then its subscription is one of this process's dependencies too.
        if config.serve_consumer {
            checks.push(
                crate::events::readiness(&config.common.pubsub)
                    .await
                    .context("creating the Pub/Sub readiness client")?,
            );
        }
        let router = crate::routes::router(state.clone()).merge(health::routes(checks));
        // The admin console's pages (public; its API calls carry the bearer token).
        let router = router.merge(crate::admin::routes());
        let router = common::http::harden(router, &config.common.http);
        Ok(Self {
            listener,
            router,
            state,
            jobs_pool,
            audit: config.audit.clone(),
            scans_retention_days: config.scans_retention_days,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tokio::spawn(sweep_expired(
            self.jobs_pool.clone(),
            self.scans_retention_days,
            shutdown.clone(),
        ));
        common::clock::spawn_watch(self.jobs_pool.clone(), shutdown.clone());
        // Audit checkpointer and background chain verifier.
        crate::audit::job::spawn(
            self.jobs_pool,
            &self.audit,
            &self.state.audit,
            shutdown.clone(),
        );
        let served = common::server::serve_with_header_errors(
            self.listener,
            self.router,
            shutdown,
            crate::idempotency::HEADER_ERRORS,
        )
        .await
        .context("serving HTTP");
        // Mostly a few Redis calls each, every one bounded by `REDIS_TIMEOUT_MS`.
        let after_answer = self.state.after_answer;
        after_answer.close();
        let grace = || tokio::time::timeout(AFTER_ANSWER_GRACE, after_answer.wait());
        // Still running after the grace: writes whose clients left. Cut now, they give their
        // claims back (a few Redis calls) within a second more.
        if grace().await.is_err() && {
            self.state.abandon.cancel();
            grace().await.is_err()
        } {
            tracing::warn!(
                left = after_answer.len(),
                "work left by requests (idempotency results to store in Redis, claims to give \
                 back, batch creates and login attempts whose clients went away) unfinished \
                 at shutdown; it ends with the process (claims not given back expire with \
                 their leases)"
            );
        }
        served
    }
}

/// Creates the bootstrap admin if no user exists. A database that is not up yet must not stop
/// start-up (readiness reports it), so failures are retried in the background.
async fn bootstrap(state: AppState, admin: BootstrapAdmin) {
    let attempt = |state: AppState, admin: BootstrapAdmin| async move {
        match crate::users::bootstrap_admin(
            &state.pool,
            &state.audit,
            &admin.email,
            &admin.password,
        )
        .await
        {
            Ok(true) => {
                tracing::info!(email = %admin.email, "bootstrap admin created");
                true
            }
            Ok(false) => {
                // Said once, so that signing in with these credentials failing is explained.
                tracing::info!(
                    email = %admin.email,
                    "users exist already; BOOTSTRAP_ADMIN_EMAIL/BOOTSTRAP_ADMIN_PASSWORD not used"
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "bootstrap admin not created yet; retrying");
                false
            }
        }
    };
    if attempt(state.clone(), admin.clone()).await {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if attempt(state.clone(), admin.clone()).await {
                return;
            }
        }
    });
}

async fn sweep_expired(
    pool: sqlx::PgPool,
    scans_retention_days: Option<u32>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "sweep of expired records skipped");
                continue;
            }
        };
        match crate::idempotency::record::sweep(&mut conn).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "expired idempotency records deleted"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "idempotency sweep failed"),
        }
        match crate::auth::repo::delete_expired_families(&mut conn).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "expired refresh-token families deleted"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "refresh-token sweep failed"),
        }
        if let Some(days) = scans_retention_days {
            match crate::events::retention::sweep(&mut conn, days).await {
                Ok(n) if n >= crate::events::retention::MAX_PER_SWEEP => tracing::warn!(
                    deleted = n,
                    days,
                    "scans past retention deleted, as many as one sweep deletes: more may remain \
                     (one sweep every 10 minutes keeps up with about 1,600 scans a second)"
                ),
                Ok(n) if n > 0 => tracing::info!(deleted = n, days, "scans past retention deleted"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "scan retention sweep failed"),
            }
        }
    }
}

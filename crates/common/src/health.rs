//! `/healthz`, `/readyz` and `/metrics`: never rate limited, never behind auth.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use serde_json::json;

use crate::outage::{OutageLog, Report};

/// A dependency readiness probe: `Ok` when it answers.
pub type CheckFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// One named dependency check.
#[derive(Clone)]
pub struct ReadinessCheck {
    /// Name shown in `/readyz` (`postgres`, `redis`, ...).
    pub name: &'static str,
    /// The probe.
    pub check: CheckFn,
    /// When its failure was last logged: probes come every few seconds, so a failing one is
    /// logged once, again every 5 minutes while it fails, and once when it passes again.
    outage: Arc<Mutex<OutageLog>>,
}

impl ReadinessCheck {
    /// Wraps an async probe.
    pub fn new<F, Fut>(name: &'static str, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            name,
            check: Arc::new(move || Box::pin(f())),
            outage: Arc::default(),
        }
    }

    /// Probes PostgreSQL: it answers, and its schema has every migration this build knows
    /// (a database that was never migrated answers `SELECT 1` but fails every request).
    /// Migrations a newer release applied first are fine.
    pub fn postgres(pool: sqlx::PgPool) -> Self {
        let needed: Arc<[i64]> = crate::db::needed_migrations().into();
        let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
        Self::new("postgres", move || {
            let pool = pool.clone();
            let needed = needed.clone();
            let one_at_a_time = one_at_a_time.clone();
            async move {
                let applied = applied_migrations(&pool, &one_at_a_time)
                    .await
                    .map_err(|e| {
                        if crate::db::is_undefined_table(&e) {
                            format!("schema not migrated ({})", crate::db::MIGRATE_HINT)
                        } else {
                            e.to_string()
                        }
                    })?;
                let missing: Vec<i64> = needed
                    .iter()
                    .filter(|v| !applied.contains(v))
                    .copied()
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "schema lacks migrations {missing:?} ({})",
                        crate::db::MIGRATE_HINT
                    ))
                }
            }
        })
    }

    /// Probes Pub/Sub: the topic this process publishes to exists and the broker answers for it.
    /// `topic` is the full path (`projects/…/topics/…`).
    pub fn pubsub_topic(admin: google_cloud_pubsub::client::TopicAdmin, topic: String) -> Self {
        Self::new("pubsub", move || {
            let request = admin.get_topic().set_topic(topic.clone());
            let topic = topic.clone();
            async move { answered(&topic, request.send().await) }
        })
    }

    /// Probes Pub/Sub: the subscription this process pulls from exists and the broker answers
    /// for it. `subscription` is the full path (`projects/…/subscriptions/…`).
    pub fn pubsub_subscription(
        admin: google_cloud_pubsub::client::SubscriptionAdmin,
        subscription: String,
    ) -> Self {
        Self::new("pubsub", move || {
            let request = admin
                .get_subscription()
                .set_subscription(subscription.clone());
            let subscription = subscription.clone();
            async move { answered(&subscription, request.send().await) }
        })
    }

    /// Probes Redis with `PING`.
    pub fn redis(pool: deadpool_redis::Pool) -> Self {
        Self::new("redis", move || {
            let pool = pool.clone();
            async move {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
    }
}

/// The versions of the migrations applied to `pool`'s database, asked through the pool (which
/// reuses an idle connection, replaces one PostgreSQL has closed, and keeps its connection for
/// the next probe).
///
/// One case first: while PostgreSQL refuses connections (stopped, restarting), the pool retries
/// a refused connect until its acquire timeout (3 s), longer than a probe may take, so `/readyz`
/// would say "no answer within 2000 ms" two seconds later instead of the refusal at once. So
/// when the pool holds no connection at all (an instance with nothing to do, or PostgreSQL
/// away), one direct connection attempt first tells whether PostgreSQL takes connections;
/// `one_at_a_time` keeps a burst of probes to one such attempt at a time.
async fn applied_migrations(
    pool: &sqlx::PgPool,
    one_at_a_time: &tokio::sync::Mutex<()>,
) -> Result<Vec<i64>, sqlx::Error> {
    use sqlx::Connection as _;
    if pool.size() == 0 {
        let _turn = one_at_a_time.lock().await;
        if pool.size() == 0 {
            let conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
            let _ = conn.close().await;
        }
    }
    crate::db::applied_migrations(pool).await
}

/// A Pub/Sub probe's outcome: `Ok` when the broker answered for `resource`; a missing topic or
/// subscription fails the probe too (publishing or pulling would fail the same way).
fn answered<T>(resource: &str, outcome: google_cloud_pubsub::Result<T>) -> Result<(), String> {
    outcome
        .map(|_| ())
        .map_err(|e| format!("{resource}: {}", crate::report::Chain(&e)))
}

/// Sets gauges that are read rather than tracked (a queue's length), just before `/metrics`
/// renders.
pub type Sampler = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
struct HealthState {
    checks: Arc<Vec<ReadinessCheck>>,
    /// The latest probe of every dependency.
    running: Arc<Mutex<Option<Running>>>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    sample: Option<Sampler>,
}

/// One probe of every dependency, awaited by every `/readyz` request that came while it ran.
type Probe = Shared<BoxFuture<'static, Arc<Readiness>>>;

/// A probe, and whether it has finished (whether or not anyone awaited its end).
struct Running {
    probe: Probe,
    finished: Arc<AtomicBool>,
}

/// What a probe found: each check's outcome, and the names of those that failed.
struct Readiness {
    checks: serde_json::Map<String, serde_json::Value>,
    failing: Vec<&'static str>,
}

impl Readiness {
    /// Every check failed: what a probe that panicked says.
    fn all_failed(names: &[&'static str]) -> Self {
        Self {
            checks: names
                .iter()
                .map(|n| ((*n).to_owned(), json!("unavailable")))
                .collect(),
            failing: names.to_vec(),
        }
    }
}

impl HealthState {
    /// The probe running now, or a new one. However many requests ask at once, each
    /// dependency gets one probe at a time (a flood of `/readyz` would otherwise take the
    /// connections the service's own requests need), and every answer comes from a probe
    /// that started no earlier than the request before it finished: nothing is cached.
    fn probe(&self) -> Probe {
        // Nothing panics while holding it; a poisoned lock still holds a valid value.
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(latest) = running.as_ref()
            && !latest.finished.load(Ordering::Acquire)
        {
            return latest.probe.clone();
        }
        // On a task of its own, so it finishes (within CHECK_TIMEOUT) even when every request
        // waiting on it goes away, and says so: a request after that gets a new probe, neither
        // the old one half run nor its old answer.
        let checks = self.checks.clone();
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        let task = tokio::spawn(async move {
            let readiness = probe_all(&checks).await;
            done.store(true, Ordering::Release);
            readiness
        });
        let names: Vec<&'static str> = self.checks.iter().map(|c| c.name).collect();
        let probe =
            async move { Arc::new(task.await.unwrap_or_else(|_| Readiness::all_failed(&names))) }
                .boxed()
                .shared();
        *running = Some(Running {
            probe: probe.clone(),
            finished,
        });
        probe
    }
}

/// The three operational routes.
pub fn routes(checks: Vec<ReadinessCheck>) -> Router {
    routes_sampling(checks, None)
}

/// [`routes`], with `sample` run on every scrape of `/metrics` before it renders.
pub fn routes_sampling(checks: Vec<ReadinessCheck>, sample: Option<Sampler>) -> Router {
    let state = HealthState {
        checks: Arc::new(checks),
        running: Arc::new(Mutex::new(None)),
        metrics: crate::telemetry::prometheus(),
        sample,
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// How long `/readyz` waits for each check: a dependency that answers within it is ready.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

async fn readyz(State(state): State<HealthState>) -> Response {
    let readiness = state.probe().await;
    if readiness.failing.is_empty() {
        axum::Json(json!({"status": "ready", "checks": readiness.checks})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "error": "not_ready",
                "detail": format!("Unavailable dependencies: {}.", readiness.failing.join(", ")),
                "failing": readiness.failing,
                "checks": readiness.checks,
            })),
        )
            .into_response()
    }
}

/// Runs every check at once, each bounded by [`CHECK_TIMEOUT`].
async fn probe_all(checks: &[ReadinessCheck]) -> Readiness {
    let results = futures::future::join_all(checks.iter().map(|c| async move {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, (c.check)()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
        };
        let report = c
            .outage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(outcome.is_ok(), tokio::time::Instant::now().into_std());
        match (&report, &outcome) {
            // Logged in full here; the body names the dependency only.
            (Report::Warn, Err(e)) => tracing::warn!(
                dependency = c.name,
                error = %e,
                "readiness check failed (logged again every 5 minutes while it fails)"
            ),
            (Report::Back, _) => {
                tracing::info!(dependency = c.name, "readiness check passes again")
            }
            _ => {}
        }
        (c.name, outcome)
    }))
    .await;
    let mut failing = Vec::new();
    let mut checks = serde_json::Map::new();
    for (name, outcome) in results {
        match outcome {
            Ok(()) => {
                checks.insert(name.into(), json!("ok"));
            }
            Err(_) => {
                checks.insert(name.into(), json!("unavailable"));
                failing.push(name);
            }
        }
    }
    Readiness { checks, failing }
}

async fn metrics(State(state): State<HealthState>) -> Response {
    if let Some(sample) = &state.sample {
        sample();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;

    /// The health routes with one check that takes `delay`, and how many times it ran.
    fn slow_check(delay: Duration) -> (Router, Arc<AtomicUsize>) {
        let probes = Arc::new(AtomicUsize::new(0));
        let counted = probes.clone();
        let check = ReadinessCheck::new("slow", move || {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).map(Ok)
        });
        (routes(vec![check]), probes)
    }

    async fn readyz(app: &Router) -> Result<Response, std::convert::Infallible> {
        let request = Request::get("/readyz")
            .body(Body::empty())
            .unwrap_or_default();
        app.clone().oneshot(request).await
    }

    #[tokio::test]
    async fn concurrent_readiness_requests_share_one_probe_and_a_later_one_probes_again()
    -> Result<(), Box<dyn std::error::Error>> {
        let (app, probes) = slow_check(Duration::from_millis(300));
        let answers = futures::future::join_all((0..20).map(|_| readyz(&app))).await;
        for answer in answers {
            assert_eq!(answer?.status(), StatusCode::OK);
        }
        assert_eq!(probes.load(Ordering::SeqCst), 1);
        assert_eq!(readyz(&app).await?.status(), StatusCode::OK);
        assert_eq!(probes.load(Ordering::SeqCst), 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_probe_whose_requests_all_went_away_still_finishes() {
        let (app, probes) = slow_check(Duration::from_millis(200));
        // The only request gives up while its probe runs.
        let gave_up = tokio::time::timeout(Duration::from_millis(50), readyz(&app)).await;
        assert!(gave_up.is_err());
        tokio::time::sleep(Duration::from_millis(400)).await;
        // The next request gets a probe of its own, not the old one half run.
        let _ = readyz(&app).await;
        assert_eq!(probes.load(Ordering::SeqCst), 2);
    }
}

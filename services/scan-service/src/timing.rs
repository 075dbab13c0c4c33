//! Timing normalization (CONTRACT 2.3): a layer that releases the scan route's 200, 400, 401 and
//! 404 responses no earlier than `start + SCAN_MIN_RESPONSE_MS + U(-SCAN_JITTER_MS,
//! +SCAN_JITTER_MS)`, so known and unknown tags (cache hit or miss) cannot be told apart by
//! response time. 429 and 503 leave at once: delaying refusals would only hold resources for
//! callers we already turned away.
//!
//! Waiting is a timer (`sleep_until`), not a thread, so thousands of held responses cost only
//! their futures.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Request, StatusCode};
use axum::response::Response;
use rand::Rng as _;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::config::TimingConfig;

/// Adds the response-time floor to a route.
#[derive(Debug, Clone, Copy)]
pub struct TimingLayer {
    config: TimingConfig,
}

impl TimingLayer {
    /// A layer with this floor and jitter.
    pub fn new(config: TimingConfig) -> Self {
        // Exported at zero from the first scrape.
        metrics::counter!("scan_timing_overrun_total").increment(0);
        Self { config }
    }
}

impl<S> Layer<S> for TimingLayer {
    type Service = Timing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timing {
            inner,
            config: self.config,
        }
    }
}

/// The service of [`TimingLayer`].
#[derive(Debug, Clone)]
pub struct Timing<S> {
    inner: S,
    config: TimingConfig,
}

/// Whether a response with `status` is held until the release time.
pub fn is_normalized(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 400 | 401 | 404)
}

/// The release time of a request that started at `start`: the floor plus a jitter drawn from a
/// CSPRNG (`rand`'s thread-local ChaCha12, seeded and periodically reseeded from the operating
/// system), uniform over ±`jitter` at microsecond resolution. No system call per request.
pub fn release_at(start: Instant, config: TimingConfig) -> Instant {
    let jitter_us = i64::try_from(config.jitter.as_micros()).unwrap_or(i64::MAX);
    let offset_us = if jitter_us > 0 {
        rand::thread_rng().gen_range(-jitter_us..=jitter_us)
    } else {
        0
    };
    let target = if offset_us >= 0 {
        config.min_response + Duration::from_micros(offset_us.unsigned_abs())
    } else {
        config
            .min_response
            .saturating_sub(Duration::from_micros(offset_us.unsigned_abs()))
    };
    start + target
}

impl<S, B> Service<Request<B>> for Timing<S>
where
    S: Service<Request<B>, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let config = self.config;
        let off = config.min_response.is_zero() && config.jitter.is_zero();
        // Drawn before the work so the target does not depend on how the work went.
        let release = (!off).then(|| release_at(Instant::now(), config));
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            if let Some(release) = release
                && is_normalized(response.status())
            {
                if Instant::now() > release {
                    metrics::counter!("scan_timing_overrun_total").increment(1);
                } else {
                    tokio::time::sleep_until(release).await;
                }
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::Body;
    use tower::ServiceExt as _;

    use super::*;

    fn config(min: u64, jitter: u64) -> TimingConfig {
        TimingConfig {
            min_response: Duration::from_millis(min),
            jitter: Duration::from_millis(jitter),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_in_range_and_spans_it() {
        let start = Instant::now();
        let cfg = config(80, 10);
        let offsets: Vec<i128> = (0..5000)
            .map(|_| (release_at(start, cfg) - start).as_micros() as i128 - 80_000)
            .collect();
        assert!(offsets.iter().all(|o| (-10_000..=10_000).contains(o)));
        assert!(offsets.iter().any(|&o| o < -9_000), "low end never drawn");
        assert!(offsets.iter().any(|&o| o > 9_000), "high end never drawn");
        assert_eq!(
            release_at(start, config(80, 0)),
            start + Duration::from_millis(80)
        );
    }

    fn answering(
        status: StatusCode,
    ) -> impl Service<Request<Body>, Response = Response, Error = Infallible, Future: Send> + Clone + Send
    {
        tower::service_fn(move |_req: Request<Body>| async move {
            let mut r = Response::new(axum::body::Body::empty());
            *r.status_mut() = status;
            Ok::<_, Infallible>(r)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn holds_normalized_statuses_and_releases_refusals_at_once() {
        for (status, held) in [
            (StatusCode::OK, true),
            (StatusCode::BAD_REQUEST, true),
            (StatusCode::UNAUTHORIZED, true),
            (StatusCode::NOT_FOUND, true),
            (StatusCode::TOO_MANY_REQUESTS, false),
            (StatusCode::SERVICE_UNAVAILABLE, false),
        ] {
            let svc = TimingLayer::new(config(80, 0)).layer(answering(status));
            let start = Instant::now();
            let response = svc.oneshot(Request::new(Body::empty())).await.unwrap();
            assert_eq!(response.status(), status);
            let waited = start.elapsed();
            if held {
                assert_eq!(waited, Duration::from_millis(80), "{status}");
            } else {
                assert_eq!(waited, Duration::ZERO, "{status}");
            }
        }
    }
}

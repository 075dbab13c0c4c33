//! Per-request trace span and HTTP metrics. The span carries the route template (never the raw
//! path, which may hold tag ids), the request id, and the W3C `traceparent` parent when one came.
//!
//! A plain tower layer rather than a `from_fn` middleware: it sits on every request, and this way
//! neither its future nor the inner service is boxed or cloned per request. The metric handles
//! of each route, method and status are looked up once and then reused.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, Response};
use metrics::{Counter, Histogram};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::instrument::Instrumented;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::request_id::X_REQUEST_ID;
use crate::metric_handles::HandleCache;

/// The label of requests that matched no route.
const UNMATCHED: &str = "unmatched";

struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The route template of a request, `"unmatched"` when no route matched.
pub fn route_of(req: &Request) -> &str {
    req.extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
}

/// Layer: opens the request span, records `http_requests_total` and
/// `http_request_duration_seconds`, and logs one line per request.
#[derive(Clone, Default)]
pub struct ObserveLayer {
    metrics: Arc<HttpMetrics>,
}

impl ObserveLayer {
    /// A layer with its own cache of metric handles.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<HttpMetrics>,
}

impl<S, B> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let route = self.metrics.route(route_of(&req));
        let method = method_label(req.method());
        let span = request_span(&req, &route.name, req.method());
        ObserveFuture {
            inner: self.inner.call(req).instrument(span),
            done: Some(Done {
                route,
                method,
                started: Instant::now(),
            }),
        }
    }
}

/// The method as a label: the standard ones by name, any other as `_OTHER` (OpenTelemetry's
/// convention).
///
/// A client may send any token as a method. Labelled as sent, each new one would add series to
/// every scrape and a handle to the per-route cache, without end.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("_OTHER", |(_, label)| label)
}

fn request_span(req: &Request, route: &str, method: &Method) -> tracing::Span {
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %method,
        route = %route,
        trace_id = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    // Most requests carry no trace context: skip the global propagator (a lock) for them.
    if req.headers().contains_key("traceparent") {
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(req.headers()))
        });
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

struct Done {
    route: Arc<RouteMetrics>,
    method: &'static str,
    started: Instant,
}

impl Done {
    fn finish(self, span: &tracing::Span, status: u16) {
        let elapsed = self.started.elapsed().as_secs_f64();
        if !span.is_disabled() {
            span.record("status", status);
            span.in_scope(|| {
                tracing::info!(
                    latency_ms = elapsed * 1000.0,
                    "{} {} -> {}",
                    self.method,
                    self.route.name,
                    status
                );
            });
        }
        self.route.requests(self.method, status).increment(1);
        self.route.duration(self.method).record(elapsed);
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Observe`].
    pub struct ObserveFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        done: Option<Done>,
    }
}

impl<F, B, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let span = this.inner.span().clone();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(done)) = (&result, this.done.take()) {
            done.finish(&span, response.status().as_u16());
        }
        Poll::Ready(result)
    }
}

/// Metric handles per route, each looked up in the recorder once.
#[derive(Default)]
struct HttpMetrics {
    routes: HandleCache<String, Arc<RouteMetrics>>,
}

impl HttpMetrics {
    fn route(&self, name: &str) -> Arc<RouteMetrics> {
        self.routes.get_or(name, |name| {
            Arc::new(RouteMetrics {
                name: name.into(),
                requests: HandleCache::new(),
                durations: HandleCache::new(),
            })
        })
    }
}

struct RouteMetrics {
    name: Box<str>,
    requests: HandleCache<(&'static str, u16), Counter>,
    durations: HandleCache<&'static str, Histogram>,
}

impl RouteMetrics {
    fn requests(&self, method: &'static str, status: u16) -> Counter {
        self.requests.get_or(&(method, status), |(method, status)| {
            let labels = [
                ("route", self.name.to_string()),
                ("method", method.to_string()),
                ("status", status.to_string()),
            ];
            metrics::counter!("http_requests_total", &labels)
        })
    }

    fn duration(&self, method: &'static str) -> Histogram {
        self.durations.get_or(&method, |method| {
            let labels = [
                ("route", self.name.to_string()),
                ("method", method.to_string()),
            ];
            metrics::histogram!("http_request_duration_seconds", &labels)
        })
    }
}

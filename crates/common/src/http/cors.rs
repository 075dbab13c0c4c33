//! CORS for the exact origins in `CORS_ORIGINS`, with the contract's methods and headers.

use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, Request, Response, header};
use futures::future::Either;
use tower::{Layer, Service};
use tower_http::cors::{AllowCredentials, AllowOrigin, Cors, CorsLayer};

/// Request headers a browser may send cross-origin: exactly the contract's list (a same-origin
/// page such as the admin console needs no CORS to send `traceparent`).
pub const ALLOWED_HEADERS: [&str; 7] = [
    "authorization",
    "content-type",
    "x-api-key",
    "x-csrf-token",
    "x-device-id",
    "idempotency-key",
    "x-request-id",
];

/// Response headers a cross-origin script may read.
pub const EXPOSED_HEADERS: [&str; 6] = [
    "x-request-id",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
    "idempotent-replayed",
];

/// The CORS layer, or `None` when no origin is allowed (then no CORS header is ever sent).
pub fn layer(origins: &[String]) -> Option<PreflightsOnly> {
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if allowed.is_empty() {
        return None;
    }
    let for_credentials = allowed.clone();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(allowed))
            // Credentials only for a listed origin, never for anyone else.
            .allow_credentials(AllowCredentials::predicate(move |origin, _| {
                for_credentials.contains(origin)
            }))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
            .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
            .max_age(Duration::from_secs(600)),
    )
    .map(|cors| PreflightsOnly { cors })
}

/// tower-http's CORS layer answers every OPTIONS request as a preflight (200, empty). This one
/// hands it only real preflights, OPTIONS with `Origin` and `Access-Control-Request-Method`
/// (the Fetch standard's definition); any other OPTIONS goes on to the routes and gets their
/// JSON 405, as it does when `CORS_ORIGINS` is empty. Other methods go through CORS as before.
#[derive(Debug, Clone)]
pub struct PreflightsOnly {
    cors: CorsLayer,
}

impl<S> Layer<S> for PreflightsOnly {
    type Service = PreflightsOnlyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PreflightsOnlyService {
            cors: self.cors.layer(inner),
        }
    }
}

/// The service of [`PreflightsOnly`].
#[derive(Debug, Clone)]
pub struct PreflightsOnlyService<S> {
    cors: Cors<S>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for PreflightsOnlyService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<<Cors<S> as Service<Request<ReqBody>>>::Future, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readies the one inner service that either branch calls.
        self.cors.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if request.method() == Method::OPTIONS && !is_preflight(&request) {
            Either::Right(self.cors.get_mut().call(request))
        } else {
            Either::Left(self.cors.call(request))
        }
    }
}

fn is_preflight<B>(request: &Request<B>) -> bool {
    let headers = request.headers();
    headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Response mapper, outside the CORS layer: a response that does not allow its origin (one not
/// listed, or no `Origin` at all) carries no `Access-Control-*` header. tower-http's layer
/// leaves out only `Access-Control-Allow-Origin` then, and still sends the methods, headers and
/// max age of a preflight and the exposed headers of any response to anyone who asks.
pub fn only_for_allowed_origins<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        for name in [
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            headers.remove(name);
        }
    }
    response
}

//! CORS for the exact origins in `CORS_ORIGINS`, with the contract's methods and headers.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, Response, header};
use tower_http::cors::{AllowCredentials, AllowOrigin, CorsLayer};

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
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
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

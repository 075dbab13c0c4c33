//! CORS for the exact origins in `CORS_ORIGINS`, with the contract's methods and headers.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method};
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

//! The HTTP hardening stack both services put in front of their routes.

pub mod client_ip;
pub mod cors;
pub mod error;
pub mod json;
pub mod observe;
pub mod request_id;
pub mod security_headers;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::middleware;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;

pub use client_ip::{ClientIp, TrustedProxies};
pub use error::{ErrorBody, error_response};
pub use json::Json;

use crate::config::HttpConfig;

/// Wraps `router` (routes and fallback) in the hardening stack, outermost first: security
/// headers, request id, panic catcher, CORS, trace span and metrics, JSON errors, timeout, body
/// limit, client IP. Serve the result with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn harden(router: Router, config: &HttpConfig) -> Router {
    let trusted = TrustedProxies::new(config.trusted_proxies.clone());
    let router = router
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(trusted, client_ip::resolve))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(config.body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            config.request_timeout,
        ))
        .layer(middleware::map_response(error::json_errors))
        .layer(middleware::from_fn(observe::observe));
    let router = match cors::layer(&config.cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    // Outermost: every response, a caught panic's included, gets the headers and the request id.
    router.layer(
        ServiceBuilder::new()
            .layer(security_headers::layer())
            .map_request(request_id::drop_insane)
            .layer(SetRequestIdLayer::new(
                request_id::X_REQUEST_ID.clone(),
                request_id::MakeUuid,
            ))
            .layer(PropagateRequestIdLayer::new(
                request_id::X_REQUEST_ID.clone(),
            ))
            .layer(SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
                header::COOKIE,
                header::HeaderName::from_static("x-api-key"),
            ]))
            .layer(CatchPanicLayer::custom(|_| {
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "Something went wrong on our side.",
                )
            })),
    )
}

async fn fallback() -> axum::response::Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "No such resource.")
}

//! The HTTP hardening stack both services put in front of their routes.

pub mod body_deadline;
pub mod client_ip;
pub mod cors;
pub mod error;
pub mod json;
pub mod observe;
pub mod openapi;
pub mod request_id;
pub mod security_headers;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::Response;
use tower::ServiceBuilder;
use tower::util::MapResponseLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::propagate_header::PropagateHeaderLayer;
use tower_http::request_id::SetRequestIdLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;

pub use client_ip::{ClientIp, TrustedProxies};
pub use error::{ErrorBody, RateLimitedBody, default_error, error_response, rate_limited_response};
pub use json::Json;

use crate::config::HttpConfig;

/// Wraps `router` (routes and fallback) in the hardening stack, outermost first: security
/// headers, request id, CORS, trace span and metrics, panic catcher, JSON errors, body limit,
/// body deadline, timeout, client IP. Serve the result with [`crate::server::serve`], which gives every request
/// its peer address as `ConnectInfo<SocketAddr>`.
///
/// The stack is one tower service applied once: every `Router::layer` call would box and clone
/// the service per request again, and the request mappers here are plain functions.
pub fn harden(router: Router, config: &HttpConfig) -> Router {
    let trusted = TrustedProxies::new(config.trusted_proxies.clone());
    let body_timeout = body_deadline::body_timeout(config.request_timeout);
    let cors = cors::layer(&config.cors_origins);
    let cors_only_for_allowed = cors
        .is_some()
        .then(|| MapResponseLayer::new(cors::only_for_allowed_origins));
    router.fallback(fallback).layer(
        ServiceBuilder::new()
            // Outermost: every response, a caught panic's included, gets the headers and the
            // request id.
            .map_response(security_headers::apply)
            .map_request(request_id::drop_insane)
            .layer(SetRequestIdLayer::new(
                request_id::X_REQUEST_ID.clone(),
                request_id::MakeUuid,
            ))
            // Copies the request's id header (set just above) to the response. Unlike
            // `PropagateRequestIdLayer`, it does not also file the id in the response's
            // extensions, which nothing reads: three allocations per request.
            .layer(PropagateHeaderLayer::new(request_id::X_REQUEST_ID.clone()))
            .layer(SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
                header::COOKIE,
                header::HeaderName::from_static("x-api-key"),
            ]))
            .option_layer(cors_only_for_allowed)
            .option_layer(cors)
            .layer(observe::ObserveLayer::new())
            // Inside the span, the metrics and CORS: a panic's 500 is logged with the request
            // id, counted like any other answer, and readable by an allowed origin.
            .layer(CatchPanicLayer::custom(panicked))
            .map_response(error::json_errors)
            .layer(RequestBodyLimitLayer::new(config.body_limit_bytes))
            .map_request(move |req| body_deadline::bound(req, body_timeout))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                config.request_timeout,
            ))
            .layer(DefaultBodyLimit::disable())
            .map_request(move |req| client_ip::resolve(&trusted, req)),
    )
}

async fn fallback() -> axum::response::Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "No such resource.")
}

/// The answer to a request whose handling panicked; the panic is logged (the client sees none
/// of it). Also for handling run in a task of its own, whose panic the layer does not see.
pub fn panicked(payload: Box<dyn std::any::Any + Send>) -> Response {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "handling the request panicked");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "Something went wrong on our side.",
    )
}

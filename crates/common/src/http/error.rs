//! The contract's JSON error body, and the layer that makes every error response JSON.
//!
//! Handlers return their service's error enum, which renders through [`error_response`]. Errors
//! produced by the framework or by tower layers (unknown route, wrong method, body too large,
//! timeout) arrive as plain responses; [`json_errors`] rewrites any error response that is not
//! JSON yet, so nothing leaves the service without the contract's shape.

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The contract's error body: `{"error":"<snake_case code>","detail":"<human sentence>"}`
/// (`ApiError` in both services' OpenAPI documents).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(as = ApiError)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `invalid_tag_id`, `forbidden`, `validation_failed`.
    pub error: String,
    /// A sentence for humans.
    pub detail: String,
}

/// Builds an error response with the contract's JSON body.
pub fn error_response(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: code.to_owned(),
            detail: detail.into(),
        }),
    )
        .into_response()
}

/// CONTRACT 2.2's 429 body, its keys in the contract's order (`RateLimitedError` in the
/// OpenAPI documents).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = RateLimitedError)]
pub struct RateLimitedBody {
    /// Always `rate_limited`.
    #[schema(schema_with = rate_limited_code)]
    error: &'static str,
    /// `Rate limit exceeded. Try again in N seconds`.
    detail: String,
    /// N, the whole seconds to wait (at least 1), as in `Retry-After`.
    #[schema(minimum = 1)]
    retry_after: u64,
}

/// `RateLimitedError.error` in the OpenAPI documents: the one value it takes.
fn rate_limited_code() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(["rate_limited"]))
        .description(Some("Always `rate_limited`"))
        .build()
}

/// The contract's 429: `Retry-After` (whole seconds, at least 1) and
/// `{"error":"rate_limited","detail":"Rate limit exceeded. Try again in N seconds","retry_after":N}`.
pub fn rate_limited_response(retry_after_secs: u64) -> Response {
    let secs = retry_after_secs.max(1);
    let body = RateLimitedBody {
        error: "rate_limited",
        detail: format!("Rate limit exceeded. Try again in {secs} seconds"),
        retry_after: secs,
    };
    let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// The code and sentence used for a bare status.
pub fn default_error(status: StatusCode) -> (&'static str, &'static str) {
    match status.as_u16() {
        400 => ("bad_request", "The request is malformed."),
        401 => ("unauthorized", "Authentication is required."),
        403 => ("forbidden", "You are not allowed to do this."),
        404 => ("not_found", "No such resource."),
        405 => (
            "method_not_allowed",
            "This method is not allowed on this resource.",
        ),
        408 => ("request_timeout", "The request took too long."),
        409 => ("conflict", "The request conflicts with the current state."),
        413 => ("payload_too_large", "The request body is too large."),
        414 => (
            "uri_too_long",
            "The request's URI is too long (at most 65,534 bytes).",
        ),
        415 => (
            "unsupported_media_type",
            "Send the body as application/json.",
        ),
        422 => (
            "unprocessable_entity",
            "The request could not be processed.",
        ),
        429 => ("rate_limited", "Too many requests."),
        431 => (
            "request_header_fields_too_large",
            "The request's head is too large (at most 100 headers and about 400 KiB).",
        ),
        500 => ("internal_error", "Something went wrong on our side."),
        503 => (
            "service_unavailable",
            "The service is temporarily unavailable; try again shortly.",
        ),
        504 => ("timeout", "The request took too long."),
        s if s >= 500 => ("internal_error", "Something went wrong on our side."),
        _ => ("bad_request", "The request could not be handled."),
    }
}

fn is_json<B>(response: &axum::http::Response<B>) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.starts_with("application/json") || ct.starts_with("application/problem+json")
        })
}

/// Response mapper: an error status without a JSON body becomes the contract's JSON error,
/// keeping the status and headers (e.g. `Allow` on 405, `Retry-After`). A bare 503 (the
/// request timeout's) gets `Retry-After: 1`, like the services' own dependency-down answers.
pub fn json_errors<B>(response: axum::http::Response<B>) -> Response
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response.map(Body::new);
    }
    let (code, detail) = default_error(status);
    let (mut parts, _) = response.into_parts();
    let body = serde_json::to_vec(&ErrorBody {
        error: code.to_owned(),
        detail: detail.to_owned(),
    })
    .unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    if status == StatusCode::SERVICE_UNAVAILABLE && !parts.headers.contains_key(header::RETRY_AFTER)
    {
        parts
            .headers
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Response::from_parts(parts, Body::from(body))
}

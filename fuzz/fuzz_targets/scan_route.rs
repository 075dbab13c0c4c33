//! `GET /v1/scan/{tag_id}` through the real hardening stack (request id, client IP from
//! `X-Forwarded-For`, CORS, body limit, timeout, JSON errors, panic catcher) with arbitrary
//! paths and headers: never a 5xx. The scanner itself needs PostgreSQL and Redis, so the handler
//! stops where it would call it, after the same parsing and validation, answering with the
//! service's own errors.
#![no_main]

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::http::ClientIp;
use libfuzzer_sys::fuzz_target;
use scan_service::api_keys::is_plausible;
use scan_service::error::ScanError;
use scan_service::tags::is_valid_tag_id;
use voketag_fuzz::{FuzzRequest, assert_no_5xx, harden};

async fn scan(
    ClientIp(_): ClientIp,
    tag_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let tag_id = tag_id.map(|Path(t)| t).unwrap_or_default();
    let mut keys = headers.get_all("x-api-key").iter();
    let bad_key = match (keys.next(), keys.next()) {
        (None, _) => false,
        (Some(k), None) => !is_plausible(k.as_bytes()),
        (Some(_), Some(_)) => true,
    };
    if bad_key {
        return ScanError::InvalidApiKey.into_response();
    }
    if !is_valid_tag_id(&tag_id) {
        return ScanError::InvalidTagId.into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| harden(Router::new().route("/v1/scan/{tag_id}", get(scan))))
}

fuzz_target!(|input: FuzzRequest<'_>| {
    if let Some(request) = input.build("/v1/scan/") {
        assert_no_5xx(router(), request);
    }
});

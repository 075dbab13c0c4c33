//! `GET /v1/scan/{tag_id}`: parse, call the scanner, render.

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::handler::Handler as _;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::http::{ClientIp, default_error, error_response};
use common::metric_handles::HandleCache;
use metrics::Counter;

use super::AppState;
use super::openapi::{ApiError, RateLimitedError};
use crate::ratelimit::Verdict;
use crate::scan::{Found, ScanRequest};
use crate::tags::Tag;
use crate::timing::TimingLayer;

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const JSON: &str = "application/json";

/// Headers a scan answer ends up with beyond its content type (3 rate-limit, request id, 7
/// security headers, content length).
const RESPONSE_HEADERS: usize = 12;

/// The scan route, with timing normalization. An empty tag id (`/v1/scan/`) and one holding a
/// `/` (more segments, or a trailing slash) are malformed tag ids like any other: 400
/// `invalid_tag_id`, charged and normalized, rather than the router's 404.
pub fn router(timing: TimingLayer) -> Router<AppState> {
    // The layer wraps the handler itself (`Handler::layer`). On the method router
    // (`get(scan).layer(..)`) it nested a second boxed route around the handler's, and each
    // request cloned both boxes and boxed both futures.
    let scan = get(scan.layer(timing)).fallback(other_method);
    Router::new()
        .route("/v1/scan/{tag_id}", scan.clone())
        .route("/v1/scan/", scan.clone())
        // The catch-all below needs at least one character after the slash.
        .route("/v1/scan/{tag_id}/", scan.clone())
        .route("/v1/scan/{tag_id}/{*more}", scan)
}

/// Is this tag authentic?
///
/// The tag's status and product, or `unknown` for an id the brand never made.
// CONTRACT 2.1. The headers every answer carries are added to the document by `super::openapi`.
#[utoipa::path(
    get, path = "/v1/scan/{tag_id}", tag = "scan",
    params(
        ("tag_id" = String, Path, pattern = "^[A-Za-z0-9_-]{16,64}$",
         description = "The tag's id, as printed on it (matched after percent-decoding)"),
        ("X-API-Key" = Option<String>, Header,
         description = "A retailer's API key. Its requests are limited per key (the key's own \
             rate if it has one) instead of per client address"),
        ("X-Request-ID" = Option<String>, Header,
         description = "Echoed when it is one value of 1 to 128 characters of A-Z, a-z, \
             0-9 and - _ . :; otherwise a new UUID is answered"),
    ),
    responses(
        (status = 200, description = "A known tag: `authentic`, or `revoked` by the brand", body = Tag),
        (status = 400, description = "`invalid_tag_id`: not 16 to 64 characters of A-Z, a-z, 0-9, _ and -", body = ApiError),
        (status = 401, description = "`invalid_api_key`: the X-API-Key is unknown or revoked", body = ApiError),
        (status = 404, description = "An unknown tag: not made by the brand (a possible counterfeit)", body = UnknownTag),
        (status = 429, description = "`rate_limited`: over the bucket's limit; not delayed", body = RateLimitedError),
        (status = 503, description = "`service_unavailable`: a dependency is down (rate limiting \
             failing closed, or the database); not delayed", body = ApiError),
    )
)]
pub(super) async fn scan(
    State(state): State<AppState>,
    ClientIp(client_ip): ClientIp,
    tag_id: Result<Path<String>, PathRejection>,
    // The request itself rather than a `HeaderMap` extractor, which would copy every header.
    request: Request,
) -> Response {
    let headers = request.headers();
    // A segment that is not valid UTF-8 after percent-decoding is just another bad tag id, and
    // so are the empty and multi-segment ids of the other routes (no single segment) and an
    // id followed by a slash.
    let tag_id = match tag_id {
        Ok(Path(t)) if !request.uri().path().ends_with('/') => t,
        _ => String::new(),
    };
    let mut keys = headers.get_all(&X_API_KEY).iter();
    let api_key = match (keys.next(), keys.next()) {
        (None, _) => None,
        (Some(k), None) => Some(k.as_bytes()),
        // Two keys: which one counts would be a guess, so neither does.
        (Some(_), Some(_)) => Some(&b""[..]),
    };
    // Bytes outside ASCII (obs-text, legal in a header) are kept as replacement characters
    // rather than losing the whole value.
    let user_agent = headers
        .get(header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()));
    // Boxed: the scan's state machine is large, and every layer above would otherwise copy it
    // each time it moves the handler's future (memcpy showed in the profile).
    let outcome = Box::pin(state.scanner.scan(ScanRequest {
        tag_id: &tag_id,
        client_ip,
        api_key,
        user_agent: user_agent.as_deref(),
    }))
    .await;
    let mut response = match outcome.result {
        // The body is the tag's JSON as rendered for its cache entry, not once per scan.
        Ok(Found::Tag(tag)) => match tag.json() {
            Ok(body) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
                body,
            )
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, "tag not encodable as JSON");
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "Something went wrong on our side.",
                )
            }
        },
        // Exactly CONTRACT 2.1's body: an unknown tag is the scan's answer, not an error of the
        // request, so it does not take 3.6's `error`/`detail` shape as well.
        Ok(Found::Unknown(tag_id)) => (
            StatusCode::NOT_FOUND,
            axum::Json(UnknownTag {
                tag_id,
                status: "unknown",
            }),
        )
            .into_response(),
        Err(e) => e.into_response(),
    };
    // Room for everything still to come (rate limit, request id, the seven security headers,
    // content length) at once, instead of the map growing three times on the way out.
    response.headers_mut().reserve(RESPONSE_HEADERS);
    if let Some(verdict) = outcome.verdict {
        rate_limit_headers(response.headers_mut(), &verdict);
    }
    state.requests.get(response.status()).increment(1);
    response
}

/// Any method but GET (and HEAD) on a scan path: 405 with `Allow`, charged to the client
/// address like a scan (429 once its bucket is empty) and carrying the rate-limit headers, as
/// every scan response does. Not delayed: only 200, 400, 401 and 404 are normalized.
async fn other_method(State(state): State<AppState>, ClientIp(client_ip): ClientIp) -> Response {
    let (verdict, charged) = state.scanner.charge_address(client_ip).await;
    let mut response = match charged {
        Ok(()) => {
            let (code, detail) = default_error(StatusCode::METHOD_NOT_ALLOWED);
            let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, code, detail);
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
            response
        }
        Err(e) => e.into_response(),
    };
    rate_limit_headers(response.headers_mut(), &verdict);
    state.requests.get(response.status()).increment(1);
    response
}

/// The answer for a tag id the brand never made.
// CONTRACT 2.1's unknown-tag body, its keys in the contract's order.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct UnknownTag {
    /// The tag id asked for.
    tag_id: String,
    /// Always `unknown`.
    #[schema(schema_with = super::openapi::unknown_status)]
    status: &'static str,
}

/// `scan_requests_total{status}`, one handle per status answered.
#[derive(Debug, Default)]
pub struct RequestCounters(HandleCache<StatusCode, Counter>);

impl RequestCounters {
    /// The counter of `status`.
    pub fn get(&self, status: StatusCode) -> Counter {
        self.0.get_or(&status, |status| {
            metrics::counter!("scan_requests_total", "status" => status.as_str().to_owned())
        })
    }
}

fn rate_limit_headers(headers: &mut HeaderMap, verdict: &Verdict) {
    headers.insert(LIMIT.clone(), number(verdict.limit.into()));
    headers.insert(REMAINING.clone(), number(verdict.remaining));
    headers.insert(RESET.clone(), number(verdict.reset_unix));
}

/// `n` in decimal as a header value, in one allocation of its exact size. `HeaderValue::from`
/// an integer takes two (a buffer sized for the widest number, then the shared handle that its
/// `freeze` allocates), on every scan for each of the three headers.
fn number(n: u64) -> HeaderValue {
    HeaderValue::from_str(itoa::Buffer::new().format(n))
        .unwrap_or_else(|_| unreachable!("decimal digits are a valid header value"))
}

//! `POST /v1/auth/login`, `/refresh` and `/logout`.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::http::Json;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::ClientInfo;
use super::session::{self, Presented, Session};
use super::{cookies, password};
use crate::error::FactoryError;
use crate::state::AppState;

/// The auth routes (no bearer token; not idempotency-keyed).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
}

/// Login body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Email address.
    pub email: String,
    /// Password.
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
}

/// A new access token (the refresh and CSRF tokens come as cookies).
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// JWT access token.
    pub access_token: String,
    /// Always `Bearer`.
    #[schema(schema_with = crate::openapi::fields::token_type)]
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

const X_DEVICE_ID: &str = "x-device-id";
const X_CSRF_TOKEN: &str = "x-csrf-token";

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn presented(headers: &HeaderMap) -> Presented {
    Presented {
        refresh_token: cookies::get(headers, cookies::REFRESH_COOKIE).map(str::to_owned),
        csrf_header: header_str(headers, X_CSRF_TOKEN),
        csrf_cookie: cookies::get(headers, cookies::CSRF_COOKIE).map(str::to_owned),
        device_id: header_str(headers, X_DEVICE_ID),
    }
}

fn session_response(session: Session) -> Response {
    let body = TokenResponse {
        access_token: session.access_token,
        token_type: "Bearer".to_owned(),
        expires_in: session.expires_in,
    };
    let mut response = Json(body).into_response();
    for cookie in cookies::set(
        &session.refresh_token,
        &session.csrf_token,
        session.cookie_max_age,
    ) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// Signs in.
#[utoipa::path(
    post, path = "/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    params(("X-Device-ID" = String, Header, min_length = 16, max_length = 128, pattern = "^[\\x21-\\x7E]+$",
        description = "16 to 128 visible ASCII characters identifying this device")),
    responses(
        (status = 200, description = "Signed in; sets the __Host-vt_refresh and __Host-vt_csrf cookies", body = TokenResponse,
         headers(("Set-Cookie" = String, description = "Two cookies: `__Host-vt_refresh=<refresh token>; Path=/; Max-Age=<seconds>; HttpOnly; Secure; SameSite=Strict` and `__Host-vt_csrf=<CSRF token>; Path=/; Max-Age=<seconds>; Secure; SameSite=Strict` (not HttpOnly: the console's script reads it and echoes it in X-CSRF-Token)"))),
        (status = 400, description = "`invalid_device_id`: X-Device-ID missing or not 16 to 128 visible ASCII characters", body = crate::openapi::ApiError),
        (status = 401, description = "`invalid_credentials`", body = crate::openapi::ApiError),
        (status = 429, description = "`rate_limited`: too many attempts for this IP or email, or the client is over its limit; wait `Retry-After` seconds", body = crate::openapi::RateLimitedError),
        (status = 503, description = "`service_unavailable`: password checks are queued past their bound (at most 400 per core waiting, each at most 10 s); retry after `Retry-After`", body = crate::openapi::ApiError),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Json(body): Json<LoginRequest>,
) -> Result<Response, FactoryError> {
    let device_id = header_str(&headers, X_DEVICE_ID);
    let device_id = session::check_device_id(device_id.as_deref())?.to_owned();
    let mut attempt = session::begin_login(&state, &body.email, &client)?;
    attempt.look_up(&state).await?;
    // The wait for a turn at the password check belongs to the request: a client that leaves
    // meanwhile leaves the queue too (its attempt, undecided, gives its place in the limits
    // back, as does one refused a turn).
    let turn = password::turn().await?;
    // From its turn on, an attempt is decided, recorded and counted even when its client stops
    // waiting (a timeout shorter than the check, a dropped connection): cut off with the
    // request, a correct password spent the account's login budget without the refund a
    // success gives (a client retrying that way locked its own account out), and no attempt,
    // right or wrong, left an audit event.
    let tasks = state.after_answer.clone();
    let attempt = async move {
        session::login(&state, attempt, turn, body.password, &device_id, &client).await
    };
    match tasks
        .spawn(tracing::Instrument::in_current_span(attempt))
        .await
    {
        Ok(session) => Ok(session_response(session?)),
        Err(e) => Ok(crate::error::task_failed(e)),
    }
}

/// Exchanges the refresh cookie for a new access token; both cookies are rotated.
#[utoipa::path(
    post, path = "/v1/auth/refresh", tag = "auth",
    params(
        ("X-Device-ID" = String, Header, min_length = 16, max_length = 128, pattern = "^[\\x21-\\x7E]+$",
         description = "The device id given at login (any other value revokes the session: 401 `device_mismatch`)"),
        ("X-CSRF-Token" = String, Header, description = "The value of the __Host-vt_csrf cookie"),
        ("__Host-vt_refresh" = String, Cookie, description = "The refresh token (HttpOnly cookie set by login and refresh)"),
        ("__Host-vt_csrf" = String, Cookie, description = "The CSRF token, bound to the session; X-CSRF-Token must equal it"),
    ),
    responses(
        (status = 200, description = "New tokens; both cookies rotated", body = TokenResponse,
         headers(("Set-Cookie" = String, description = "Two cookies: `__Host-vt_refresh=<refresh token>; Path=/; Max-Age=<seconds>; HttpOnly; Secure; SameSite=Strict` and `__Host-vt_csrf=<CSRF token>; Path=/; Max-Age=<seconds>; Secure; SameSite=Strict` (not HttpOnly: the console's script reads it and echoes it in X-CSRF-Token)"))),
        (status = 401, description = "invalid_refresh_token, refresh_token_reused (family revoked) or device_mismatch (family revoked); when a refresh cookie was sent, both cookies are deleted", body = crate::openapi::ApiError,
         headers(("Set-Cookie" = String, description = "Only when a refresh cookie was sent: deletes both cookies (`__Host-vt_refresh=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict` and `__Host-vt_csrf=; Path=/; Max-Age=0; Secure; SameSite=Strict`)"))),
        (status = 403, description = "csrf_failed", body = crate::openapi::ApiError),
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
) -> Result<Response, FactoryError> {
    let presented = presented(&headers);
    let sent_cookie = presented.refresh_token.is_some();
    match session::refresh(&state, presented, &client).await {
        Ok(session) => Ok(session_response(session)),
        Err(e) => refused(e, sent_cookie),
    }
}

/// Signs out: revokes the session's refresh-token family and clears both cookies.
#[utoipa::path(
    post, path = "/v1/auth/logout", tag = "auth",
    params(
        ("X-CSRF-Token" = String, Header, description = "The value of the __Host-vt_csrf cookie"),
        ("__Host-vt_refresh" = String, Cookie, description = "The refresh token (HttpOnly cookie set by login and refresh)"),
        ("__Host-vt_csrf" = String, Cookie, description = "The CSRF token, bound to the session; X-CSRF-Token must equal it"),
    ),
    responses(
        (status = 204, description = "Signed out; cookies cleared",
         headers(("Set-Cookie" = String, description = "Deletes both cookies: `__Host-vt_refresh=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict` and `__Host-vt_csrf=; Path=/; Max-Age=0; Secure; SameSite=Strict`"))),
        (status = 401, description = "invalid_refresh_token; when a refresh cookie was sent, both cookies are deleted", body = crate::openapi::ApiError,
         headers(("Set-Cookie" = String, description = "Only when a refresh cookie was sent: deletes both cookies (`__Host-vt_refresh=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict` and `__Host-vt_csrf=; Path=/; Max-Age=0; Secure; SameSite=Strict`)"))),
        (status = 403, description = "csrf_failed", body = crate::openapi::ApiError),
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
) -> Result<Response, FactoryError> {
    let presented = presented(&headers);
    let sent_cookie = presented.refresh_token.is_some();
    match session::logout(&state, presented, &client).await {
        Ok(()) => Ok(with_cookies_cleared(StatusCode::NO_CONTENT.into_response())),
        Err(e) => refused(e, sent_cookie),
    }
}

/// The answer to a refresh or logout that failed. A 401 for a refresh cookie that was sent
/// means the cookie is dead (unknown, expired, past its session's end, reused or from another
/// device, the family then revoked), and the browser cannot delete an HttpOnly cookie itself:
/// the answer deletes both cookies. Nothing is deleted when no cookie came (a cross-site form
/// cannot send a SameSite=Strict cookie, and must not be able to sign anybody out) or on a 403
/// for CSRF.
fn refused(e: FactoryError, sent_cookie: bool) -> Result<Response, FactoryError> {
    match e {
        FactoryError::Unauthorized { .. } if sent_cookie => {
            Ok(with_cookies_cleared(e.into_response()))
        }
        e => Err(e),
    }
}

/// `response` with both session cookies deleted.
fn with_cookies_cleared(mut response: Response) -> Response {
    for cookie in cookies::clear() {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

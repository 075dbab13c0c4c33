//! Who is calling: the bearer token is checked once per request by [`identify`], and its
//! session by [`confirm_session`]; handlers ask for a [`Principal`] or an [`Authorized`] role
//! policy, and get 401 or 403 otherwise.

use std::marker::PhantomData;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use common::http::ClientIp;
use uuid::Uuid;

use super::jwt::TokenRejection;
use super::repo;
use crate::audit::Actor;
use crate::error::FactoryError;
use crate::state::AppState;
use crate::users::Role;

/// A signed-in user, from a valid access token of a session that still lasts.
#[derive(Debug, Clone)]
pub struct Principal {
    /// User id (the token's subject).
    pub id: Uuid,
    /// The session (refresh-token family) the token was issued in.
    pub session_id: Uuid,
    /// When the access token expires (Unix seconds).
    pub token_expires_at: u64,
    /// Email (the account's, once [`confirm_session`] has run).
    pub email: String,
    /// Role (the account's, once [`confirm_session`] has run).
    pub role: Role,
}

impl Principal {
    /// The audit actor for this user.
    pub fn actor(&self) -> Actor {
        Actor::User {
            id: self.id,
            email: self.email.clone(),
        }
    }
}

/// What the request's bearer token claims: its signature and expiry checked by [`identify`],
/// its session not yet. The admin rate limit keys on it; only [`confirm_session`] turns it into
/// the [`Identity`] that handlers and the idempotency layer rely on.
#[derive(Debug, Clone)]
pub struct Claimed(Result<Principal, Missing>);

impl Claimed {
    /// The principal the token names, when it is well signed and not expired.
    pub fn principal(&self) -> Option<&Principal> {
        self.0.as_ref().ok()
    }
}

/// Who is calling, once [`confirm_session`] has checked the token's session; kept in the
/// request extensions. A route outside that middleware has none, and its extractors refuse.
#[derive(Debug, Clone)]
pub struct Identity(Result<Principal, Missing>);

#[derive(Debug, Clone, Copy)]
enum Missing {
    NoToken,
    Expired,
    Invalid,
    SessionEnded,
}

impl Identity {
    /// The principal, when the token was valid and its session lasts.
    pub fn principal(&self) -> Option<&Principal> {
        self.0.as_ref().ok()
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Middleware: checks the bearer token (if any) and stores what it [`Claimed`]. Two
/// `Authorization` headers are an invalid token: which one counts would be a guess, and a
/// proxy in front may have guessed the other way.
pub async fn identify(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let several = req
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some();
    let claimed = match bearer(req.headers()) {
        _ if several => Err(Missing::Invalid),
        None => Err(Missing::NoToken),
        Some(token) => state
            .jwt
            .verify(token)
            .map(|c| Principal {
                id: c.sub,
                session_id: c.sid,
                token_expires_at: c.exp,
                email: c.email,
                role: c.role,
            })
            .map_err(|r| match r {
                TokenRejection::Expired => Missing::Expired,
                TokenRejection::Invalid => Missing::Invalid,
            }),
    };
    req.extensions_mut().insert(Claimed(claimed));
    next.run(req).await
}

/// How long [`confirm_session`] waits for PostgreSQL (a connection included) before answering
/// 503: as long as the pool's own acquire timeout, so a connection that hangs mid-query does
/// not hold the request until the HTTP timeout.
const SESSION_LOOKUP_TIMEOUT: Duration = common::db::ACQUIRE_TIMEOUT;

/// Middleware, inside [`identify`] and the admin rate limit: stores the [`Identity`]. A valid
/// access token acts only while its session lasts, with the account's role and email as they
/// are now. So signing out, a refresh token's reuse or a device mismatch (each revokes the
/// session) and disabling the user end the session's access tokens at once, not when they
/// expire, and a role change applies to the next request. One look-up by primary key (the
/// session and its user) per request that carries a valid token; PostgreSQL unusable is 503,
/// as for the routes themselves. A session found ended is remembered ([`super::EndedSessions`]), so
/// its tokens cost no query after the first.
///
/// The admin limit charged the request to the user the token names. A token whose session has
/// ended (a thief's, say) is charged to the client's address instead, and its answer shows
/// that bucket's figures: it must neither use up nor see the budget of the user's live
/// sessions.
pub async fn confirm_session(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let claimed = req
        .extensions()
        .get::<Claimed>()
        .map_or(Err(Missing::NoToken), |c| c.0.clone());
    let mut address_decision = None;
    let identity = match claimed {
        Err(missing) => Err(missing),
        Ok(principal) => match session_of(&state, principal.clone()).await {
            Ok(SessionState::Live(principal)) => Ok(principal),
            Ok(SessionState::Ended) => {
                state.ended_sessions.insert(
                    principal.session_id,
                    principal.id,
                    principal.token_expires_at,
                    jsonwebtoken::get_current_timestamp(),
                );
                let ip = req.extensions().get::<ClientIp>();
                match crate::ratelimit::recharge_to_address(&state, &principal, ip) {
                    Ok(decision) => address_decision = Some(decision),
                    Err(retry_after) => {
                        return common::http::rate_limited_response(retry_after);
                    }
                }
                Err(Missing::SessionEnded)
            }
            Err(e) => return e.into_response(),
        },
    };
    req.extensions_mut().insert(Identity(identity));
    let mut response = next.run(req).await;
    if let Some(decision) = address_decision {
        crate::ratelimit::add_headers(
            response.headers_mut(),
            state.admin_limiter.per_minute(),
            &decision,
        );
    }
    response
}

/// Whether an access token's session still lasts.
enum SessionState {
    /// It does: the principal with the account's current email and role.
    Live(Principal),
    /// Signed out, revoked, swept after its tokens expired, or the user is disabled.
    Ended,
}

async fn session_of(state: &AppState, claimed: Principal) -> Result<SessionState, FactoryError> {
    if state
        .ended_sessions
        .contains(claimed.session_id, claimed.id)
    {
        return Ok(SessionState::Ended);
    }
    let lookup = repo::live_session(&state.pool, claimed.session_id, claimed.id);
    let found = tokio::time::timeout(SESSION_LOOKUP_TIMEOUT, lookup)
        .await
        .map_err(|_| FactoryError::Unavailable("postgres"))??;
    let Some(holder) = found else {
        return Ok(SessionState::Ended);
    };
    let role = holder
        .role
        .parse()
        .map_err(|e: String| FactoryError::Internal(format!("user {}: {e}", claimed.id)))?;
    Ok(SessionState::Live(Principal {
        email: holder.email,
        role,
        ..claimed
    }))
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = FactoryError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Identity>().map(|i| &i.0) {
            Some(Ok(p)) => Ok(p.clone()),
            Some(Err(Missing::Expired)) => Err(FactoryError::unauthorized(
                "token_expired",
                "The access token has expired; refresh it.",
            )),
            Some(Err(Missing::Invalid)) => Err(FactoryError::unauthorized(
                "invalid_token",
                "The access token is not valid.",
            )),
            Some(Err(Missing::SessionEnded)) => Err(FactoryError::unauthorized(
                "session_ended",
                "The access token's session has ended (signed out or revoked); sign in again.",
            )),
            Some(Err(Missing::NoToken)) => Err(FactoryError::unauthorized(
                "unauthorized",
                "Send an access token as `Authorization: Bearer <token>`.",
            )),
            // A route wired outside `confirm_session`: refuse rather than trust an unchecked token.
            None => Err(FactoryError::Internal(
                "no Identity: the route is not behind auth::confirm_session".to_owned(),
            )),
        }
    }
}

/// A set of roles allowed on a route group.
pub trait Policy: Send + Sync + 'static {
    /// The roles allowed.
    const ROLES: &'static [Role];
}

/// Admins only (API keys, audit).
#[derive(Debug)]
pub struct AdminOnly;
impl Policy for AdminOnly {
    const ROLES: &'static [Role] = &[Role::Admin];
}

/// Admins and operators (catalog changes).
#[derive(Debug)]
pub struct CatalogWriter;
impl Policy for CatalogWriter {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Operator];
}

/// Any signed-in user (reads).
#[derive(Debug)]
pub struct AnyRole;
impl Policy for AnyRole {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Operator, Role::Viewer];
}

/// A principal whose role `P` allows; 401 without a valid token, 403 with the wrong role.
#[derive(Debug)]
pub struct Authorized<P: Policy>(pub Principal, pub PhantomData<P>);

impl<S: Send + Sync, P: Policy> FromRequestParts<S> for Authorized<P> {
    type Rejection = FactoryError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if P::ROLES.contains(&principal.role) {
            Ok(Self(principal, PhantomData))
        } else {
            Err(FactoryError::Forbidden)
        }
    }
}

/// The client's IP and user agent, for the audit log.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// Client IP address.
    pub ip: Option<String>,
    /// `User-Agent`, cut to 512 characters.
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ClientIp>()
            .map(|ClientIp(ip)| ip.to_string());
        // Bytes outside ASCII (obs-text, legal in a header) become replacement characters
        // rather than losing the whole value.
        let user_agent = parts.headers.get(header::USER_AGENT).map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(512)
                .collect()
        });
        Ok(Self { ip, user_agent })
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, Request};

    use super::*;

    async fn client_info(user_agent: HeaderValue) -> ClientInfo {
        let (mut parts, ()) = Request::builder()
            .header(header::USER_AGENT, user_agent)
            .body(())
            .unwrap()
            .into_parts();
        let Ok(info) = ClientInfo::from_request_parts(&mut parts, &()).await;
        info
    }

    #[tokio::test]
    async fn a_user_agent_is_kept_whatever_its_bytes_and_cut_at_512_characters() {
        let odd = client_info(HeaderValue::from_bytes(b"Caf\xe9Admin/1").unwrap()).await;
        assert_eq!(odd.user_agent.as_deref(), Some("Caf\u{fffd}Admin/1"));
        let long = client_info(HeaderValue::from_str(&"a".repeat(600)).unwrap()).await;
        assert_eq!(long.user_agent.map(|ua| ua.len()), Some(512));
    }
}

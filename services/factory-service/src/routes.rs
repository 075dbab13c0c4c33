//! The admin API's router: each resource module brings its routes, merged here, behind the
//! layers every route shares.

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::get;

use crate::state::AppState;
use crate::{api_keys, auth, catalog, openapi, ratelimit};

/// Every API route (health routes are added separately and are never limited).
///
/// Layers, outermost first: the bearer token is checked once (`auth::identify`), the
/// per-client token bucket is charged (`ratelimit::admin_limit`), the token's session is
/// confirmed to last (`auth::confirm_session`, after the limit so a flood of requests cannot
/// reach PostgreSQL beyond it), and for POST and DELETE
/// outside `/v1/auth` the idempotency layer runs. Roles are enforced per handler by the
/// `Authorized<Policy>` extractor.
pub fn router(state: AppState) -> Router {
    // Each resource puts the idempotency layer on its POST and DELETE routes with who may write
    // there (the handlers' own policy), so that a stored result is never replayed to a role
    // that could not have made the request (`idempotency::idempotent`).
    Router::new()
        .merge(auth::routes::router())
        .merge(api_keys::routes::router(&state))
        .merge(catalog::routes::router(&state))
        // /v1/audit/events and /v1/audit/verify for admins, /v1/audit/checkpoint for anyone.
        .merge(crate::audit::routes::router::<
            crate::auth::Authorized<crate::auth::AdminOnly>,
            AppState,
        >(state.pool.clone(), state.audit.clone()))
        .route("/openapi.json", get(openapi::serve))
        .layer(from_fn_with_state(state.clone(), auth::confirm_session))
        .layer(from_fn_with_state(state.clone(), ratelimit::admin_limit))
        .layer(from_fn_with_state(state.clone(), auth::identify))
        .with_state(state)
}

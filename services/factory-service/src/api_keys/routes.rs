//! `POST /v1/api-keys`, `GET /v1/api-keys`, `DELETE /v1/api-keys/{id}` (admin).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get};
use common::http::Json;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{ApiKeySummary, CreatedApiKey, NewApiKey, RevokedApiKey};
use crate::auth::{AdminOnly, Authorized, ClientInfo};
use crate::error::FactoryError;
use crate::idempotency::{Idempotency, idempotent};
use crate::path::Path;
use crate::state::AppState;

/// The API key routes.
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/api-keys",
            idempotent::<AdminOnly>(state, get(list).post(create)),
        )
        .route(
            "/v1/api-keys/{id}",
            idempotent::<AdminOnly>(state, delete(revoke)),
        )
}

/// The list of keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    /// Keys, newest first.
    pub items: Vec<ApiKeySummary>,
}

/// Creates a key; the answer is the only place the key appears.
#[utoipa::path(
    post, path = "/v1/api-keys", tag = "api-keys",
    request_body = NewApiKey,
    responses(
        (status = 201, body = CreatedApiKey),
        (status = 400, description = "`validation_failed`: name not 1 to 200 characters once trimmed or not one line of text, or rate_limit_per_minute not 1 to 1000000", body = crate::openapi::ApiError),
        (status = 401, body = crate::openapi::ApiError),
        (status = 403, body = crate::openapi::ApiError),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    Authorized(by, _): Authorized<AdminOnly>,
    client: ClientInfo,
    idem: Idempotency,
    Json(input): Json<NewApiKey>,
) -> Result<Response, FactoryError> {
    let mut tx = state.pool.begin().await?;
    let created = super::create(&mut tx, &state.audit, &by, &client, input).await?;
    idem.commit(tx, state.idempotency_ttl, StatusCode::CREATED, &created)
        .await
}

/// Lists keys (never their secrets).
#[utoipa::path(
    get, path = "/v1/api-keys", tag = "api-keys",
    responses((status = 200, body = ApiKeyList), (status = 401, body = crate::openapi::ApiError), (status = 403, body = crate::openapi::ApiError)),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    _: Authorized<AdminOnly>,
) -> Result<Json<ApiKeyList>, FactoryError> {
    let mut conn = state.pool.acquire().await?;
    let items = super::repo::list(&mut conn).await?;
    Ok(Json(ApiKeyList { items }))
}

/// Revokes a key; the scan service refuses it within 5 s.
#[utoipa::path(
    delete, path = "/v1/api-keys/{id}", tag = "api-keys",
    params(
        ("id" = Uuid, Path, description = "The key's id"),
    ),
    responses(
        (status = 200, description = "Revoked (revoking a revoked key answers its revocation again)", body = RevokedApiKey),
        (status = 404, description = "`not_found`: no such key", body = crate::openapi::ApiError),
        (status = 403, body = crate::openapi::ApiError),
    ),
    security(("bearer" = []))
)]
pub async fn revoke(
    State(state): State<AppState>,
    Authorized(by, _): Authorized<AdminOnly>,
    client: ClientInfo,
    idem: Idempotency,
    Path(id): Path<Uuid>,
) -> Result<Response, FactoryError> {
    let mut tx = state.pool.begin().await?;
    let revoked = super::revoke(&mut tx, &state.audit, &by, &client, id).await?;
    let response = idem
        .commit(tx, state.idempotency_ttl, StatusCode::OK, &revoked)
        .await?;
    crate::scan_cache::invalidate(
        &state.redis,
        state.redis.api_key_cache_key(&revoked.key_hash),
    )
    .await;
    Ok(response)
}

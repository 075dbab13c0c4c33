//! The idempotency middleware: claim in Redis, run once, store or replay.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use common::http::error_response;
use sha2::{Digest, Sha256};

use super::store::{self, Claim, StoredResponse};
use super::{IdempotencyKey, is_valid_key, mark_replayed};
use crate::auth::Identity;
use crate::error::FactoryError;
use crate::state::{AppState, Redis};

/// Largest response kept for replay; every idempotent route answers a small JSON document.
const MAX_STORED_RESPONSE: usize = 1024 * 1024;

/// Middleware for POST and DELETE routes; see the module docs of [`crate::idempotency`].
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::POST | Method::DELETE) {
        return next.run(req).await;
    }
    let mut values = req.headers().get_all("idempotency-key").iter();
    let Some(raw) = values.next() else {
        return next.run(req).await;
    };
    if values.next().is_some() || !is_valid_key(raw.as_bytes()) {
        return FactoryError::InvalidIdempotencyKey.into_response();
    }
    let key_hash: [u8; 32] = Sha256::digest(raw.as_bytes()).into();
    // Keys are scoped to the caller; without a valid token the handler answers 401 anyway.
    let Some(user_id) = req
        .extensions()
        .get::<Identity>()
        .and_then(Identity::principal)
        .map(|p| p.id)
    else {
        return next.run(req).await;
    };

    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, state.body_limit).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "The request body is too large.",
            );
        }
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str().as_bytes());
    hasher.update(b"\n");
    hasher.update(
        parts
            .uri
            .path_and_query()
            .map_or("", |p| p.as_str())
            .as_bytes(),
    );
    hasher.update(b"\n");
    hasher.update(&bytes);
    let key = IdempotencyKey {
        user_id,
        key_hash,
        fingerprint: hasher.finalize().into(),
    };
    let fingerprint = hex::encode(key.fingerprint);

    let outcome = store::claim(&state.redis, &key, state.idempotency_lease).await;
    let (label, claimed) = match outcome {
        Err(e) => {
            tracing::warn!(error = %e, "idempotency claim failed; refusing rather than risking a duplicate");
            (
                "unavailable",
                Err(FactoryError::Unavailable("redis").into_response()),
            )
        }
        Ok(Claim::Acquired(value)) => ("claimed", Ok(value)),
        Ok(Claim::InFlight(fp)) if fp == fingerprint => (
            "in_use",
            Err(FactoryError::IdempotencyKeyInUse.into_response()),
        ),
        Ok(Claim::Done(fp, stored)) if fp == fingerprint => ("replayed", Err(replay(stored))),
        Ok(Claim::InFlight(_) | Claim::Done(..)) => (
            "reused",
            Err(FactoryError::IdempotencyKeyReused.into_response()),
        ),
    };
    metrics::counter!("idempotency_requests_total", "outcome" => label).increment(1);
    let claim_value = match claimed {
        Ok(value) => value,
        Err(response) => return response,
    };

    let mut guard = ClaimGuard(Some((state.redis.clone(), key.clone(), claim_value)));
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(key.clone());
    let response = next.run(req).await;

    if response.status().is_server_error() {
        guard.release().await;
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let body = match to_bytes(body, MAX_STORED_RESPONSE).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "idempotent response could not be buffered");
            guard.release().await;
            return FactoryError::Internal("response body unreadable".to_owned()).into_response();
        }
    };
    guard.0 = None;
    let stored = StoredResponse {
        status: parts.status.as_u16(),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.to_vec(),
    };
    if let Err(e) = store::complete(&state.redis, &key, &stored, state.idempotency_ttl).await {
        // The claim's lease runs out by itself; a retry then replays from PostgreSQL.
        tracing::warn!(error = %e, "idempotent result not stored in Redis");
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// Holds our claim while the handler runs. If the request is abandoned (client gone, request
/// timeout) the claim is given back in the background instead of blocking retries with 409
/// until its lease runs out. That is always safe: the handler's transaction either rolled back
/// (the retry must run) or committed together with its idempotency record (the retry replays).
struct ClaimGuard(Option<(Redis, IdempotencyKey, String)>);

impl ClaimGuard {
    /// Gives the claim back now (after a 5xx), so a retry runs the request again.
    async fn release(&mut self) {
        if let Some((redis, key, claim)) = self.0.take() {
            release(&redis, &key, &claim).await;
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some((redis, key, claim)) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move { release(&redis, &key, &claim).await });
        }
    }
}

async fn release(redis: &Redis, key: &IdempotencyKey, claim_value: &str) {
    if let Err(e) = store::release(redis, key, claim_value).await {
        tracing::warn!(error = %e, "idempotency claim not released; it expires with its lease");
    }
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    let content_type = stored
        .content_type
        .and_then(|ct| HeaderValue::from_str(&ct).ok())
        .unwrap_or(HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    mark_replayed(&mut response);
    response
}

//! Idempotency keys (CONTRACT 3.4) on every POST and DELETE except auth.
//!
//! Two parts work together:
//! * [`layer`]: middleware in front of the handlers. Without a signed-in caller it steps
//!   aside (the handler answers 401, whatever the header holds). Otherwise it validates the
//!   header, fingerprints the request (SHA-256 of method, path and body), claims the key in
//!   Redis (SET NX with a lease), answers 409/422 or replays a finished result (from
//!   PostgreSQL when a claim is still held for a run that committed there), runs the handler
//!   in a task of its own that the client's leaving does not cancel, and after the handler
//!   stores the response if its claim still holds the key: a success after it is
//!   answered (PostgreSQL has it already; shutdown waits for that store), a 4xx before. A 4xx gives way to a record PostgreSQL
//!   holds for the key (another run of it committed before or while this one ran; 503 if
//!   PostgreSQL cannot say). Not stored (the claim is released instead): 5xx,
//!   401/403/415/429 (refused before the handler acted, for reasons outside the
//!   fingerprint) and the 409/422 [`Idempotency`] answers when another run's record is already
//!   in PostgreSQL (that record is the key's result). Redis unusable: 503 before any side
//!   effect.
//! * [`Idempotency`]: what the handler gets. It records the result in PostgreSQL in the same
//!   transaction as the side effect, so if the process dies after the commit but before Redis
//!   learns the result, the retry finds the record and replays it instead of acting twice: when
//!   it saves its own (its repeated side effect then rolls back), or, for a side effect too
//!   costly to repeat, before it acts ([`Idempotency::recorded`]).
//!
//! Both stores keep a result sealed with a key only the caller holds ([`seal`]): a new API key
//! in a result is no more readable there than in the `api_keys` table.

pub mod layer;
pub mod record;
pub mod seal;
pub mod store;

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use serde::Serialize;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::auth::Policy;
use crate::error::FactoryError;
use crate::state::AppState;

pub use layer::layer;
pub use seal::SealKey;

/// `route` with the idempotency [`layer`] for write policy `P`, on the methods `route` has
/// only. A request with another method gets the route's 405 without the layer: through it, a
/// 405 was judged by its key (400 for a bad one), stored and replayed, and used the key up.
pub fn idempotent<P: Policy + 'static>(
    state: &AppState,
    route: MethodRouter<AppState>,
) -> MethodRouter<AppState> {
    route.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        layer::<P>,
    ))
}

/// The response header marking a replayed result.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// CONTRACT 3.4's answer to a key that is not 1 to 255 visible ASCII characters.
pub const INVALID_KEY: (&str, &str) = (
    "invalid_idempotency_key",
    "Idempotency-Key must be 1 to 255 visible ASCII characters.",
);

/// A key holding a control character never reaches [`layer`]: hyper refuses the whole request
/// head. The server answers it with the key's own error all the same.
pub const HEADER_ERRORS: &[common::server::HeaderError] = &[common::server::HeaderError {
    name: "idempotency-key",
    error: INVALID_KEY.0,
    detail: INVALID_KEY.1,
}];

/// An idempotency key scoped to its caller, with the fingerprint of the request using it.
/// Put in the request extensions by [`layer`].
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The caller (the access token's subject).
    pub user_id: Uuid,
    /// SHA-256 of the header value.
    pub key_hash: [u8; 32],
    /// SHA-256 of method, path and body.
    pub fingerprint: [u8; 32],
    /// Seals this request's result (derived from the header value, which is not kept).
    pub seal: SealKey,
}

impl IdempotencyKey {
    /// `body` sealed for storage, bound to this request's fingerprint.
    pub fn seal_body(&self, body: &[u8]) -> Result<Vec<u8>, FactoryError> {
        self.seal
            .seal(&self.fingerprint, body)
            .map_err(|_| FactoryError::Internal("sealing an idempotent result failed".to_owned()))
    }

    /// A body [`IdempotencyKey::seal_body`] sealed for this request; `None` if it does not
    /// open (tampered with, or sealed for another request).
    pub fn open_body(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        self.seal.open(&self.fingerprint, sealed)
    }
}

/// The request's idempotency key, if it sent one. Handlers finish with [`Idempotency::commit`];
/// one whose side effect is costly to repeat calls [`Idempotency::recorded`] before it too.
#[derive(Debug, Clone, Default)]
pub struct Idempotency(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for Idempotency {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<IdempotencyKey>().cloned()))
    }
}

/// Marks a response as a replay.
pub fn mark_replayed(response: &mut Response) {
    response
        .headers_mut()
        .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
}

impl Idempotency {
    /// A result an earlier run with this key committed, as its response.
    pub async fn recorded(
        &self,
        conn: &mut PgConnection,
    ) -> Result<Option<Response>, FactoryError> {
        let Some(key) = &self.0 else { return Ok(None) };
        let Some(found) = record::find(conn, key).await? else {
            return Ok(None);
        };
        if found.fingerprint != key.fingerprint {
            return Err(FactoryError::IdempotencyKeyReused);
        }
        let status = StatusCode::from_u16(found.status as u16).unwrap_or(StatusCode::OK);
        let body = match (found.sealed_body, found.body) {
            (Some(sealed), _) => key.open_body(&sealed).ok_or_else(|| {
                FactoryError::Internal("a recorded idempotent result does not open".to_owned())
            })?,
            // Recorded in clear before results were sealed.
            (None, Some(plain)) => serde_json::to_vec(&plain)
                .map_err(|e| FactoryError::Internal(format!("recorded body: {e}")))?,
            (None, None) => {
                return Err(FactoryError::Internal(
                    "a recorded idempotent result has no body".to_owned(),
                ));
            }
        };
        let mut response = json_response(status, body);
        mark_replayed(&mut response);
        Ok(Some(response))
    }

    /// Records `body` under the key (when there is one) in `tx`, commits, and answers with
    /// `status` and `body`. If another run of the key committed first, nothing is committed (`tx`
    /// rolls back, side effect and all) and that run's result is the answer: replayed, or the
    /// 422 if it was another request.
    ///
    /// Most handlers do not look for a record before acting: the layer's claim in Redis keeps
    /// two runs of a key apart, and when it was lost (the process died after its commit, the
    /// lease ran out, Redis failed over) the record is found here, at the latest, and the
    /// repeated side effect is rolled back. That saves every keyed request a round trip to
    /// PostgreSQL. A side effect too costly to repeat (a batch of up to 100,000 tags, holding
    /// the audit chain's head meanwhile) looks first with [`Idempotency::recorded`].
    pub async fn commit<T: Serialize>(
        &self,
        mut tx: Transaction<'_, Postgres>,
        ttl: Duration,
        status: StatusCode,
        body: &T,
    ) -> Result<Response, FactoryError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| FactoryError::Internal(format!("response body: {e}")))?;
        if let Some(key) = &self.0
            && !record::save(&mut tx, key, ttl, status.as_u16(), &key.seal_body(&body)?).await?
        {
            let recorded = self.recorded(&mut tx).await;
            // Now, rather than when the connection goes back to the pool: the repeated side
            // effect holds locks (the audit chain's head among them).
            tx.rollback().await?;
            return recorded?.ok_or(FactoryError::IdempotencyKeyInUse);
        }
        tx.commit().await?;
        Ok(json_response(status, body))
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Whether a header value is an acceptable key: 1 to 255 visible ASCII characters.
pub fn is_valid_key(value: &[u8]) -> bool {
    (1..=255).contains(&value.len()) && value.iter().all(u8::is_ascii_graphic)
}

#[cfg(test)]
mod tests {
    use super::is_valid_key;

    #[test]
    fn key_rules() {
        assert!(is_valid_key(b"a"));
        assert!(is_valid_key(&[b'x'; 255]));
        assert!(!is_valid_key(b""));
        assert!(!is_valid_key(&[b'x'; 256]));
        assert!(!is_valid_key(b"has space"));
        assert!(!is_valid_key("é".as_bytes()));
    }
}

//! Path parameters whose rejection is the contract's JSON error rather than axum's text.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::FactoryError;

/// Like `axum::extract::Path`, but a malformed parameter (an id that is not a UUID) answers
/// 400 `{"error":"invalid_id"}`.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = FactoryError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(_) => Err(FactoryError::BadRequest {
                code: "invalid_id",
                detail: "The id in the path is not a valid UUID.".to_owned(),
            }),
        }
    }
}

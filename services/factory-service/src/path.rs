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

/// A tag id from the path (`/v1/tags/{tag_id}`). One whose percent-decoded bytes are not UTF-8
/// answers 400 `{"error":"invalid_tag_id"}`, as the scan service answers the same path; the
/// catalog checks the rest of the form (`catalog::tags::check_tag_id`).
#[derive(Debug)]
pub struct TagIdPath(pub String);

impl<S> FromRequestParts<S> for TagIdPath
where
    S: Send + Sync,
{
    type Rejection = FactoryError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(id)) => Ok(Self(id)),
            Err(_) => Err(crate::catalog::tags::invalid_tag_id()),
        }
    }
}

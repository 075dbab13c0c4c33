//! The scan service's errors and their contract JSON (CONTRACT 2.1, 2.2, 3.6), in one place.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::BreakerError;
use common::http::{error_response, rate_limited_response};

/// Why a scan was not answered with a tag.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The tag id does not match `^[A-Za-z0-9_-]{16,64}$`.
    #[error("invalid tag id")]
    InvalidTagId,
    /// `X-API-Key` was sent but is unknown, revoked or malformed.
    #[error("invalid API key")]
    InvalidApiKey,
    /// The caller's bucket is empty.
    #[error("rate limited for {retry_after_secs} s")]
    RateLimited {
        /// Whole seconds until a token is back (at least 1).
        retry_after_secs: u64,
    },
    /// Redis is unusable and `RATE_LIMIT_FAIL_CLOSED=true`.
    #[error("rate limiter unavailable")]
    RateLimiterUnavailable {
        /// Whole seconds to wait (at least 1).
        retry_after_secs: u64,
    },
    /// The database did not answer the look-up.
    #[error("database: {0}")]
    Database(#[from] LookupError),
}

/// Why a look-up in the database gave no answer. Cheap to clone: every scan waiting for the
/// same look-up gets its answer (see [`crate::lookup::Joined`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// The query failed (the database is unreachable, or it refused).
    #[error(transparent)]
    Query(Arc<sqlx::Error>),
    /// No answer within the look-up bound (a database that accepts but does not answer, or a
    /// pool with no connection to give): counted by the breaker like any failure.
    #[error("no answer from the database within {0:?}")]
    TimedOut(Duration),
    /// Recent look-ups failed and the database's breaker is open: not tried.
    #[error("database breaker open; retry after {0:?}")]
    BreakerOpen(Duration),
}

impl From<sqlx::Error> for LookupError {
    fn from(e: sqlx::Error) -> Self {
        Self::Query(Arc::new(e))
    }
}

impl From<BreakerError<LookupError>> for LookupError {
    fn from(e: BreakerError<LookupError>) -> Self {
        match e {
            BreakerError::Inner(e) => e,
            BreakerError::Rejected { retry_after } => Self::BreakerOpen(retry_after),
        }
    }
}

impl ScanError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidTagId => StatusCode::BAD_REQUEST,
            Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::RateLimiterUnavailable { .. } | Self::Database(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

impl IntoResponse for ScanError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Bodies are typed (`ErrorBody` and the 429's), so their keys come out in the
        // contract's order: `error`, `detail`, then `retry_after`.
        let (code, detail, retry_after) = match &self {
            Self::InvalidTagId => (
                "invalid_tag_id",
                "The tag id must be 16 to 64 characters of A-Z, a-z, 0-9, _ and -.",
                None,
            ),
            Self::InvalidApiKey => (
                "invalid_api_key",
                "The API key is unknown or has been revoked.",
                None,
            ),
            Self::RateLimited { retry_after_secs } => {
                return rate_limited_response(*retry_after_secs);
            }
            Self::RateLimiterUnavailable { retry_after_secs } => (
                "service_unavailable",
                "Rate limiting is temporarily unavailable; try again shortly.",
                Some(*retry_after_secs),
            ),
            Self::Database(e) => {
                // Logged here in full; the caller learns only that a dependency is down. While
                // the breaker is open, every look-up would log the same line: debug only.
                let retry_after = match e {
                    LookupError::Query(_) | LookupError::TimedOut(_) => {
                        tracing::error!(error = %e, "tag or key look-up failed");
                        1
                    }
                    LookupError::BreakerOpen(wait) => {
                        tracing::debug!("database breaker open; look-up not tried");
                        wait.as_secs_f64().ceil() as u64
                    }
                };
                (
                    "service_unavailable",
                    "The service is temporarily unavailable; try again shortly.",
                    Some(retry_after),
                )
            }
        };
        let mut response = error_response(status, code, detail);
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

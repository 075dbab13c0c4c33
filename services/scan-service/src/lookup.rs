//! Database look-ups on the request path (tags and API keys), bounded in time.
//!
//! Without a bound, a read replica that accepts connections but stops answering mid-query (a
//! network partition, a stalled proxy) would hold every scan that needs it until the request
//! timeout (`REQUEST_TIMEOUT_SEC`, 30 s) ended it with a 503: the pool's acquire timeout covers
//! only getting a connection, and a look-up cut off by the request timeout is never seen by
//! the breaker. With the bound, such a look-up fails after [`LOOKUP_TIMEOUT`], the breaker
//! counts the failure, and after `CIRCUIT_BREAKER_THRESHOLD` of them scans answer 503 at once
//! until a probe finds the database answering again.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt as _;

use crate::error::LookupError;

/// The longest one look-up may take, waiting for a connection included. A look-up by primary
/// key takes about a millisecond; this leaves room for a burst of cold-cache scans queueing for
/// the pool's connections, and is well under the 3 s the pool alone would wait for a connection.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

/// `query`, failing with [`LookupError::TimedOut`] if it has not answered within
/// [`LOOKUP_TIMEOUT`].
pub fn bounded<T>(
    query: impl Future<Output = Result<T, sqlx::Error>>,
) -> impl Future<Output = Result<T, LookupError>> {
    tokio::time::timeout(LOOKUP_TIMEOUT, query).map(|result| match result {
        Ok(answer) => answer.map_err(LookupError::Query),
        Err(_) => Err(LookupError::TimedOut(LOOKUP_TIMEOUT)),
    })
}

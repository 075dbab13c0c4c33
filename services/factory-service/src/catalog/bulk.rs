//! How many batch creates run at once in an instance.
//!
//! A batch create is one transaction of up to 100,000 tags with its audit event, on a connection
//! of the API pool, for a second or more. Creates take the audit chain's head from their event
//! to their commit, so they run one after another whatever their number; but each waited for
//! its turn on a connection of its own, and 16 of them (one operator, 0.6 requests a second,
//! far under the admin rate limit) took all of the pool's, and every other request, sign-ins
//! included, waited for one and got 503. Now one create runs at a time per instance; the others
//! wait for their turn without a connection, up to [`BulkWrites::new`]'s bound, then get 503
//! with `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::FactoryError;

/// The turns of batch creates in this instance.
#[derive(Debug, Clone)]
pub struct BulkWrites {
    turns: Arc<Semaphore>,
    wait: Duration,
}

impl BulkWrites {
    /// One create at a time; a create waits at most `wait` for its turn.
    pub fn new(wait: Duration) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(1)),
            wait,
        }
    }

    /// Waits for this create's turn, which lasts until the permit is dropped; 503 when it
    /// does not come within the bound.
    pub async fn turn(&self) -> Result<OwnedSemaphorePermit, FactoryError> {
        match tokio::time::timeout(self.wait, Arc::clone(&self.turns).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // Never closed; taken as busy all the same.
            Ok(Err(_)) | Err(_) => {
                metrics::counter!("batch_creates_refused_total").increment(1);
                Err(FactoryError::Busy("batch creation"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_create_waits_for_its_turn_and_is_refused_past_the_bound() {
        let bulk = BulkWrites::new(Duration::from_millis(50));
        let first = bulk.turn().await.expect("the first turn");
        assert!(matches!(
            bulk.turn().await,
            Err(FactoryError::Busy("batch creation"))
        ));
        let waiting = tokio::spawn({
            let bulk = bulk.clone();
            async move { bulk.turn().await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(first);
        assert!(
            waiting.await.expect("the waiter"),
            "the next turn once the first ends"
        );
    }
}

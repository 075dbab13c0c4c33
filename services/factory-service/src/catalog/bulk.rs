//! How many batch creates, and how many tag CSV downloads, run at once in an instance.
//!
//! A tag CSV download holds a connection of the API pool while PostgreSQL sorts up to 100,000
//! ids and while the client reads them; one viewer asking for them again and again (16 at a
//! time, within the admin rate limit) slowed every admin request to seconds. Two run at once;
//! the others wait their turn the same way.
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

/// Turns at one kind of bulk work in this instance.
#[derive(Debug, Clone)]
pub struct BulkWork {
    turns: Arc<Semaphore>,
    wait: Duration,
    /// What it is, for the 503 (`busy with other …`) and the log.
    what: &'static str,
    /// `…_refused_total`, counted when a turn does not come.
    refused: metrics::Counter,
}

impl BulkWork {
    /// `at_once` at a time; each waits at most `wait` for its turn.
    pub fn new(
        at_once: usize,
        wait: Duration,
        what: &'static str,
        refused: metrics::Counter,
    ) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(at_once)),
            wait,
            what,
            refused,
        }
    }

    /// Batch creates: one at a time (they hold the audit chain's head, so they would run one
    /// after another anyway); `batch_creates_refused_total`.
    pub fn batch_creates(wait: Duration) -> Self {
        Self::new(
            1,
            wait,
            "batch creation",
            metrics::counter!("batch_creates_refused_total"),
        )
    }

    /// Tag CSV downloads: two at a time; `tag_csv_refused_total`.
    pub fn tag_csv(wait: Duration) -> Self {
        Self::new(
            2,
            wait,
            "tag downloads",
            metrics::counter!("tag_csv_refused_total"),
        )
    }

    /// Waits for a turn, which lasts until the permit is dropped; 503 when it does not come
    /// within the bound.
    pub async fn turn(&self) -> Result<OwnedSemaphorePermit, FactoryError> {
        match tokio::time::timeout(self.wait, Arc::clone(&self.turns).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // Never closed; taken as busy all the same.
            Ok(Err(_)) | Err(_) => {
                self.refused.increment(1);
                Err(FactoryError::Busy(self.what))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_create_waits_for_its_turn_and_is_refused_past_the_bound() {
        let bulk = BulkWork::batch_creates(Duration::from_millis(50));
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

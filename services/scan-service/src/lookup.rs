//! Database look-ups on the request path (tags and API keys), bounded in time.
//!
//! Without a bound, a read replica that accepts connections but stops answering mid-query (a
//! network partition, a stalled proxy) would hold every scan that needs it until the request
//! timeout (`REQUEST_TIMEOUT_SEC`, 30 s) ended it with a 503: the pool's acquire timeout covers
//! only getting a connection, and a look-up cut off by the request timeout is never seen by
//! the breaker. With the bound, such a look-up fails after [`LOOKUP_TIMEOUT`], the breaker
//! counts the failure, and after `CIRCUIT_BREAKER_THRESHOLD` of them scans answer 503 at once
//! until a probe finds the database answering again.
//!
//! Concurrent look-ups of the same key are joined ([`Joined`]): when a tag's cache entries
//! expire while it is being scanned from many connections at once, the database answers once
//! for all of them instead of once per scan.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::OnceCell;

use crate::error::LookupError;

/// The longest one look-up may take, waiting for a connection included. A look-up by primary
/// key takes about a millisecond; this leaves room for a burst of cold-cache scans queueing for
/// the pool's connections, and is well under the 3 s the pool alone would wait for a connection.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

/// The read pool pings a connection before a look-up only when it sat idle this long
/// (`common::db::Ping::IfIdleFor`): a ping before every look-up is a second round trip.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// `query`, failing with [`LookupError::TimedOut`] if it has not answered within
/// [`LOOKUP_TIMEOUT`].
pub fn bounded<T>(
    query: impl Future<Output = Result<T, sqlx::Error>>,
) -> impl Future<Output = Result<T, LookupError>> {
    tokio::time::timeout(LOOKUP_TIMEOUT, query).map(|result| match result {
        Ok(answer) => answer.map_err(LookupError::from),
        Err(_) => Err(LookupError::TimedOut(LOOKUP_TIMEOUT)),
    })
}

/// One look-up's answer, shared by everyone waiting for it.
type Answer<V> = Arc<OnceCell<Result<V, LookupError>>>;

/// Joins concurrent look-ups of the same key: the first caller's look-up runs, and the callers
/// that ask for the key meanwhile wait for its answer (an error included) instead of sending
/// their own. Once answered, the key is let go, so the next look-up asks the database again.
///
/// A caller that goes away (its request cancelled) does not leave the others waiting on nothing:
/// if it was the one looking up, the next waiter runs the look-up itself. A key whose every
/// caller went away before the answer keeps an empty entry until [`Joined::sweep`].
#[derive(Debug)]
pub struct Joined<K, V> {
    in_flight: Mutex<HashMap<K, Answer<V>>>,
}

impl<K, V> Default for Joined<K, V> {
    fn default() -> Self {
        Self {
            in_flight: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Joined<K, V> {
    /// The answer of `load` for `key`, or of the look-up of `key` already running.
    pub async fn get<F, Fut>(&self, key: &K, load: F) -> Result<V, LookupError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, LookupError>>,
    {
        let answer = self.lock().entry(key.clone()).or_default().clone();
        let result = answer.get_or_init(load).await.clone();
        let mut in_flight = self.lock();
        // The first of the waiters to get here lets the key go; a later look-up of it may
        // already have its own entry, which stays.
        if in_flight
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(current, &answer))
        {
            in_flight.remove(key);
        }
        result
    }

    /// Drops the entries nobody waits for any more (all their callers went away unanswered).
    pub fn sweep(&self) {
        self.lock()
            .retain(|_, answer| Arc::strong_count(answer) > 1);
    }

    /// Keys with a look-up running or left unanswered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no look-up is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // Never held across an await: a poisoned map is still a valid map.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Answer<V>>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A look-up that takes `ms` and counts its runs.
    async fn slow(runs: &AtomicUsize, ms: u64, answer: u32) -> Result<u32, LookupError> {
        runs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(answer)
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_look_ups_of_a_key_run_once_and_share_the_answer() {
        let joined = Joined::<String, u32>::default();
        let runs = &AtomicUsize::new(0);
        let key = "tag".to_owned();
        let answers =
            futures::future::join_all((0..50).map(|n| joined.get(&key, move || slow(runs, 10, n))))
                .await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "one look-up for fifty callers"
        );
        assert!(answers.iter().all(|a| matches!(a, Ok(0))), "{answers:?}");
        assert!(joined.is_empty(), "the key is let go once answered");
        // The next look-up asks again.
        assert_eq!(
            joined.get(&key, move || slow(runs, 10, 7)).await.unwrap(),
            7
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn different_keys_are_not_joined_and_errors_are_shared() {
        let joined = Joined::<u8, u32>::default();
        let runs = AtomicUsize::new(0);
        let failing = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err::<u32, _>(LookupError::TimedOut(Duration::from_secs(1)))
        };
        let (a, b, c) = tokio::join!(
            joined.get(&1, failing),
            joined.get(&1, failing),
            joined.get(&2, || slow(&runs, 10, 2)),
        );
        assert!(matches!(a, Err(LookupError::TimedOut(_))));
        assert!(matches!(b, Err(LookupError::TimedOut(_))));
        assert_eq!(c.unwrap(), 2);
        assert_eq!(runs.load(Ordering::SeqCst), 2, "one per key");
    }

    /// A look-up of key 1 by [`slow`], in a task of its own (so that it can be aborted).
    fn in_a_task(
        joined: &Arc<Joined<u8, u32>>,
        runs: &Arc<AtomicUsize>,
        ms: u64,
        answer: u32,
    ) -> tokio::task::JoinHandle<Result<u32, LookupError>> {
        let (joined, runs) = (joined.clone(), runs.clone());
        tokio::spawn(async move { joined.get(&1, || slow(&runs, ms, answer)).await })
    }

    #[tokio::test(start_paused = true)]
    async fn when_the_caller_looking_up_goes_away_a_waiter_takes_over() {
        let joined = Arc::new(Joined::<u8, u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let first = in_a_task(&joined, &runs, 1000, 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let second = in_a_task(&joined, &runs, 10, 2);
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.abort();
        let answer = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the waiter is not left waiting")
            .unwrap();
        assert_eq!(answer.unwrap(), 2, "it ran the look-up itself");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(joined.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_whose_callers_all_went_away_is_swept() {
        let joined = Arc::new(Joined::<u8, u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let only = in_a_task(&joined, &runs, 1000, 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        only.abort();
        let _ = only.await;
        assert_eq!(joined.len(), 1, "left unanswered");
        joined.sweep();
        assert!(joined.is_empty());
    }
}

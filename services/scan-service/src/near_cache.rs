//! The in-process tier in front of the Redis cache: answers a repeated look-up without a
//! second Redis round trip, so a cached scan costs exactly one Redis call (the rate-limit
//! decision).
//!
//! Entries live [`TTL`] (1 s). Stacked on the Redis tier's 2 s, a revoked tag or key is seen
//! within 3 s, inside the contract's 5 s, without any invalidation message between processes.
//! Memory is bounded: expired entries are swept periodically, and a map still over its limit
//! after a sweep starts afresh (guessed tag ids must not grow it without end).

use std::borrow::Borrow;
use std::hash::Hash;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// How long an entry is believed.
pub const TTL: Duration = Duration::from_secs(1);

/// A bounded map of values that expire `ttl` after they were stored.
#[derive(Debug)]
pub struct NearCache<K: Eq + Hash, V> {
    map: DashMap<K, (Instant, V)>,
    ttl: Duration,
    max_entries: usize,
}

impl<K: Eq + Hash, V: Clone> NearCache<K, V> {
    /// A cache keeping entries `ttl`, holding about `max_entries` at most.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            map: DashMap::new(),
            ttl,
            max_entries: max_entries.max(1),
        }
    }

    /// The value at `key` if it is younger than the TTL.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let entry = self.map.get(key)?;
        let (stored, value) = entry.value();
        (stored.elapsed() < self.ttl).then(|| value.clone())
    }

    /// Stores `value` at `key`, making room first when the map is full.
    pub fn insert(&self, key: K, value: V) {
        if self.map.len() >= self.max_entries {
            self.sweep();
            if self.map.len() >= self.max_entries {
                self.map.clear();
            }
        }
        self.map.insert(key, (Instant::now(), value));
    }

    /// Frees expired entries.
    pub fn sweep(&self) {
        let ttl = self.ttl;
        self.map.retain(|_, (stored, _)| stored.elapsed() < ttl);
    }

    /// Entries held (expired ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = NearCache::<String, u32>::new(Duration::from_millis(30), 10);
        cache.insert("a".to_owned(), 1);
        assert_eq!(cache.get("a"), Some(1));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get("a"), None, "an expired entry is never served");
        cache.sweep();
        assert!(cache.is_empty(), "the sweep frees expired entries");
    }

    #[test]
    fn memory_stays_bounded_under_many_distinct_keys() {
        let cache = NearCache::<String, u32>::new(Duration::from_secs(60), 1000);
        for i in 0..100_000 {
            cache.insert(format!("guess-{i}"), i);
            assert!(cache.len() <= 1000);
        }
        assert_eq!(cache.get("guess-99999"), Some(99_999));
    }
}

//! The in-process tier in front of the Redis cache: answers a repeated look-up without a
//! second Redis round trip, so a cached scan costs exactly one Redis call (the rate-limit
//! decision).
//!
//! Entries live [`TTL`] (1 s). Stacked on the Redis tier's 2 s, a revoked tag or key is seen
//! within 3 s, inside the contract's 5 s, without any invalidation message between processes.
//! Memory is bounded: expired entries are swept periodically, and a map still over its limit
//! after a sweep starts afresh (guessed tag ids must not grow it without end).
//!
//! An entry read since the last [`NearCache::take_hot`] is marked hot. The owner may re-read hot
//! entries from their source in one batch and renew them with [`NearCache::refresh`]
//! (the tag look-up does, every [`REFRESH_EVERY`]), so a tag scanned all the time stays in this
//! tier, always at most a TTL behind the database, instead of expiring every second and being
//! fetched again one by one.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// How long an entry is believed.
pub const TTL: Duration = Duration::from_secs(1);

/// How often an owner that refreshes hot entries should do so: half the TTL, so an entry read
/// all the time is renewed before it expires even when a refresh is slow.
pub const REFRESH_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct Entry<V> {
    /// When the value was stored, or for a refreshed one when its source was read: it is
    /// believed until `stored + ttl`.
    stored: Instant,
    value: V,
    /// Read since the last `take_hot`.
    hot: AtomicBool,
}

impl<V> Entry<V> {
    fn new(stored: Instant, value: V) -> Self {
        Self {
            stored,
            value,
            hot: AtomicBool::new(false),
        }
    }
}

/// A bounded map of values that expire `ttl` after they were stored.
#[derive(Debug)]
pub struct NearCache<K: Eq + Hash, V> {
    map: DashMap<K, Entry<V>>,
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

    /// The value at `key` if it is younger than the TTL (the entry is then marked hot until the
    /// next [`Self::take_hot`]).
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let entry = self.map.get(key)?;
        if entry.stored.elapsed() >= self.ttl {
            return None;
        }
        // Only the first read after a refresh writes, so reads of a hot entry from many threads
        // do not keep taking its cache line from each other.
        if !entry.hot.load(Ordering::Relaxed) {
            entry.hot.store(true, Ordering::Relaxed);
        }
        Some(entry.value.clone())
    }

    /// Stores `value` at `key`, making room first when the map is full.
    pub fn insert(&self, key: K, value: V) {
        if self.map.len() >= self.max_entries {
            self.sweep();
            if self.map.len() >= self.max_entries {
                self.map.clear();
            }
        }
        self.map.insert(key, Entry::new(Instant::now(), value));
    }

    /// The keys (at most `limit`) of the live entries read since the last call, their marks
    /// cleared: what is worth reading again before it expires.
    pub fn take_hot(&self, limit: usize) -> Vec<K>
    where
        K: Clone,
    {
        let mut hot = Vec::new();
        for entry in self.map.iter() {
            if hot.len() >= limit {
                break;
            }
            if entry.hot.swap(false, Ordering::Relaxed) && entry.stored.elapsed() < self.ttl {
                hot.push(entry.key().clone());
            }
        }
        hot
    }

    /// Renews the entry at `key` with `value`, read from the source at `read_at` (taken before
    /// the read was sent): it is then believed until `read_at + ttl`. An entry meanwhile stored
    /// from a later read is kept, and a key no longer held is not added back. An unchanged
    /// value is kept as it is (with anything it has computed, such as a tag's rendered JSON).
    pub fn refresh<Q>(&self, key: &Q, value: V, read_at: Instant)
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
        V: PartialEq,
    {
        if let Some(mut entry) = self.map.get_mut(key)
            && entry.stored <= read_at
        {
            entry.stored = read_at;
            if entry.value != value {
                entry.value = value;
            }
        }
    }

    /// Frees expired entries.
    pub fn sweep(&self) {
        let ttl = self.ttl;
        self.map.retain(|_, entry| entry.stored.elapsed() < ttl);
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

    #[test]
    fn only_entries_read_since_the_last_take_are_hot() {
        let cache = NearCache::<String, u32>::new(Duration::from_secs(60), 10);
        cache.insert("read".to_owned(), 1);
        cache.insert("unread".to_owned(), 2);
        assert!(cache.take_hot(10).is_empty(), "storing is not reading");
        cache.get("read");
        cache.get("read");
        assert_eq!(cache.take_hot(10), ["read"]);
        assert!(cache.take_hot(10).is_empty(), "taking clears the marks");
        cache.get("read");
        cache.get("unread");
        assert_eq!(cache.take_hot(1).len(), 1, "no more than the limit");
    }

    #[test]
    fn an_expired_entry_is_not_hot() {
        let cache = NearCache::<String, u32>::new(Duration::from_millis(30), 10);
        cache.insert("a".to_owned(), 1);
        cache.get("a");
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.take_hot(10).is_empty());
    }

    #[test]
    fn a_refresh_renews_and_replaces_but_never_with_an_older_read() {
        let cache = NearCache::<String, u32>::new(Duration::from_secs(1), 10);
        let before = Instant::now();
        cache.insert("a".to_owned(), 1);
        // A read that started before the entry was stored does not replace it.
        cache.refresh("a", 0, before);
        assert_eq!(cache.get("a"), Some(1));
        std::thread::sleep(Duration::from_millis(600));
        cache.refresh("a", 2, Instant::now());
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(
            cache.get("a"),
            Some(2),
            "renewed: 1.2 s after it was stored, 0.6 s after the refresh"
        );
        cache.refresh("gone", 3, Instant::now());
        assert_eq!(cache.get("gone"), None, "a refresh adds nothing");
    }
}

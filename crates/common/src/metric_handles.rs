//! Metric handles kept per label value, so a hot path registers each series with the recorder
//! once instead of building and hashing its key (and allocating its labels) on every event.

use std::borrow::Borrow;
use std::sync::RwLock;

/// Handles by key. Meant for small key sets (routes, a route's methods and statuses, an
/// outcome): the lookup is a scan of a short list under a read lock, by a borrowed key, so a
/// hit allocates nothing.
#[derive(Debug)]
pub struct HandleCache<K, H> {
    entries: RwLock<Vec<(K, H)>>,
}

impl<K, H> Default for HandleCache<K, H> {
    fn default() -> Self {
        Self {
            entries: RwLock::new(Vec::new()),
        }
    }
}

impl<K, H: Clone> HandleCache<K, H> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle at `key`, made by `make` (and kept under an owned copy of `key`) on first use.
    pub fn get_or<Q>(&self, key: &Q, make: impl FnOnce(&Q) -> H) -> H
    where
        K: Borrow<Q>,
        Q: PartialEq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some((_, h)) = self.read().iter().find(|(k, _)| k.borrow() == key) {
            return h.clone();
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some((_, h)) = entries.iter().find(|(k, _)| k.borrow() == key) {
            return h.clone();
        }
        let handle = make(key);
        entries.push((key.to_owned(), handle.clone()));
        handle
    }

    /// How many handles are kept.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether none is kept yet.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    // Held only to find or add a handle: a poisoned lock still holds usable handles.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<(K, H)>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_is_made_once() {
        let cache = HandleCache::<u16, String>::new();
        let mut made = 0;
        for status in [200, 404, 200, 200, 404, 500] {
            let h = cache.get_or(&status, |s| {
                made += 1;
                format!("handle-{s}")
            });
            assert_eq!(h, format!("handle-{status}"));
        }
        assert_eq!(made, 3, "one registration per distinct key");
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn string_keys_are_looked_up_by_str() {
        let cache = HandleCache::<String, usize>::new();
        assert_eq!(cache.get_or("/v1/scan/{tag_id}", str::len), 17);
        assert_eq!(
            cache.get_or("/v1/scan/{tag_id}", |_| 0),
            17,
            "kept, not made again"
        );
        assert_eq!(cache.get_or("/healthz", str::len), 8);
        assert_eq!(cache.len(), 2);
    }
}

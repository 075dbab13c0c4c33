//! Metric handles kept per label value, so a hot path registers each series with the recorder
//! once instead of building and hashing its key (and allocating its labels) on every event.

use std::sync::RwLock;

/// Handles by key. Meant for small key sets (a route's methods and statuses, an outcome): the
/// lookup is a scan of a short list under a read lock.
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

impl<K: PartialEq, H: Clone> HandleCache<K, H> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle at `key`, made by `make` (and kept) on first use.
    pub fn get_or(&self, key: K, make: impl FnOnce(&K) -> H) -> H {
        if let Some((_, h)) = self.read().iter().find(|(k, _)| *k == key) {
            return h.clone();
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some((_, h)) = entries.iter().find(|(k, _)| *k == key) {
            return h.clone();
        }
        let handle = make(&key);
        entries.push((key, handle.clone()));
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
            let h = cache.get_or(status, |s| {
                made += 1;
                format!("handle-{s}")
            });
            assert_eq!(h, format!("handle-{status}"));
        }
        assert_eq!(made, 3, "one registration per distinct key");
        assert_eq!(cache.len(), 3);
    }
}

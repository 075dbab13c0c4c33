//! Sessions this instance has found ended. An ended session never comes back (revocation is
//! final, a swept session is gone, disabling a user revokes theirs), so a token of one is
//! refused from here on without asking PostgreSQL again: a revoked token sent in a loop costs
//! a map look-up, not a query.

use std::collections::HashMap;
use std::sync::Mutex;

use uuid::Uuid;

/// Most sessions remembered at once (about 40 bytes each).
const MAX_SESSIONS: usize = 100_000;

/// Session ids known to have ended, each kept until the last of its access tokens seen here
/// expires (after that the token is refused as expired before the session matters).
#[derive(Debug)]
pub struct EndedSessions {
    ended: Mutex<HashMap<Uuid, u64>>,
    max: usize,
}

impl Default for EndedSessions {
    fn default() -> Self {
        Self::with_max(MAX_SESSIONS)
    }
}

impl EndedSessions {
    /// Remembers at most `max` sessions.
    pub fn with_max(max: usize) -> Self {
        Self {
            ended: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    /// Whether `session` is known to have ended.
    pub fn contains(&self, session: Uuid) -> bool {
        self.lock().contains_key(&session)
    }

    /// Remembers that `session` has ended, until `token_expires_at` (Unix seconds) at least.
    /// When full, entries whose tokens have all expired (by `now`) are dropped first, and if
    /// none has, everything is: a forgotten session is only asked about again.
    pub fn insert(&self, session: Uuid, token_expires_at: u64, now: u64) {
        let mut ended = self.lock();
        if ended.len() >= self.max && !ended.contains_key(&session) {
            ended.retain(|_, until| *until > now);
            if ended.len() >= self.max {
                ended.clear();
            }
        }
        let until = ended.entry(session).or_insert(token_expires_at);
        *until = (*until).max(token_expires_at);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, u64>> {
        // Only map operations happen under the lock: a poisoned map is still consistent.
        self.ended.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_ended_sessions_and_stays_bounded() {
        let ended = EndedSessions::with_max(2);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        ended.insert(a, 100, 10);
        ended.insert(b, 200, 10);
        assert!(ended.contains(a) && ended.contains(b) && !ended.contains(c));
        // Full at 150: a's tokens have expired, so it makes room for c.
        ended.insert(c, 300, 150);
        assert!(!ended.contains(a) && ended.contains(b) && ended.contains(c));
        // Full and nothing expired: it starts afresh rather than grow.
        let d = Uuid::new_v4();
        ended.insert(d, 400, 150);
        assert!(ended.contains(d) && !ended.contains(b) && !ended.contains(c));
    }
}

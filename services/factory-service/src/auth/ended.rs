//! Sessions this instance has found ended. An ended session never comes back (revocation is
//! final, a swept session is gone, disabling a user revokes theirs), so a token of one is
//! refused from here on without asking PostgreSQL again: a revoked token sent in a loop costs
//! a map look-up, not a query.
//!
//! A session is remembered with the user the token named, because that pair is what the
//! database was asked about: a token naming one user and another user's session finds no live
//! session, and must not end the other user's (it would, if only the session were kept).

use std::collections::HashMap;
use std::sync::Mutex;

use uuid::Uuid;

/// Most sessions remembered at once (about 40 bytes each).
const MAX_SESSIONS: usize = 100_000;

/// (session, user) pairs known to have no live session, each kept until the last of its access
/// tokens seen here expires (after that the token is refused as expired before the session
/// matters).
#[derive(Debug)]
pub struct EndedSessions {
    ended: Mutex<HashMap<(Uuid, Uuid), u64>>,
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

    /// Whether `user`'s `session` is known to have ended.
    pub fn contains(&self, session: Uuid, user: Uuid) -> bool {
        self.lock().contains_key(&(session, user))
    }

    /// Remembers that `user` has no live `session`, until `token_expires_at` (Unix seconds) at
    /// least. When full, entries whose tokens have all expired (by `now`) are dropped first,
    /// and if none has, everything is: a forgotten session is only asked about again.
    pub fn insert(&self, session: Uuid, user: Uuid, token_expires_at: u64, now: u64) {
        let key = (session, user);
        let mut ended = self.lock();
        if ended.len() >= self.max && !ended.contains_key(&key) {
            ended.retain(|_, until| *until > now);
            if ended.len() >= self.max {
                ended.clear();
            }
        }
        let until = ended.entry(key).or_insert(token_expires_at);
        *until = (*until).max(token_expires_at);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Uuid, Uuid), u64>> {
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
        let u = Uuid::new_v4();
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        ended.insert(a, u, 100, 10);
        ended.insert(b, u, 200, 10);
        assert!(ended.contains(a, u) && ended.contains(b, u) && !ended.contains(c, u));
        // Full at 150: a's tokens have expired, so it makes room for c.
        ended.insert(c, u, 300, 150);
        assert!(!ended.contains(a, u) && ended.contains(b, u) && ended.contains(c, u));
        // Full and nothing expired: it starts afresh rather than grow.
        let d = Uuid::new_v4();
        ended.insert(d, u, 400, 150);
        assert!(ended.contains(d, u) && !ended.contains(b, u) && !ended.contains(c, u));
    }

    #[test]
    fn a_session_ended_for_one_user_is_not_ended_for_another() {
        let ended = EndedSessions::default();
        let (session, owner, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        // A token naming `other` with `owner`'s session finds no live session...
        ended.insert(session, other, u64::MAX, 10);
        assert!(ended.contains(session, other));
        // ...which says nothing about `owner`'s own tokens of that session.
        assert!(!ended.contains(session, owner));
    }
}

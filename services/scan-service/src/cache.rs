//! A short-lived Redis cache of JSON values, in front of PostgreSQL look-ups.
//!
//! Entries live `ttl` (2 s), so a revocation in the database is seen within 5 s without any
//! invalidation message. The cache is an optimisation only: a Redis error or an open breaker
//! means a miss, and writes happen off the request path.
//!
//! Entries are sealed ([`Seal`]): whoever can write to Redis but does not hold `IP_HASH_KEY`
//! cannot make the service answer `authentic` for a tag that was never issued, nor accept a
//! made-up API key, nor keep an old answer alive past its time. An entry that does not open is
//! a miss, counted in `scan_cache_rejected_total{reason}`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::CircuitBreaker;
use hmac::{Hmac, Mac as _};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;

use crate::redis_conn::RedisConn;

/// How long a cached look-up is believed.
pub const TTL: Duration = Duration::from_secs(2);

/// Bytes of the MAC that starts a sealed entry.
const MAC_LEN: usize = 32;
/// Bytes of the expiry (Unix milliseconds, big-endian) that follows it.
const EXPIRY_LEN: usize = 8;

/// Seals cache entries: `MAC ‖ expiry ‖ JSON`, the MAC an HMAC-SHA256 over the Redis key, the
/// expiry and the JSON, under a key derived from `IP_HASH_KEY` (which every scan instance of a
/// deployment shares). The Redis key is bound so that an entry cannot be copied to another key
/// (a valid API key's entry to a made-up key's hash); the expiry so that an entry cannot be
/// kept or put back past its time (revocations are seen within 5 s whatever Redis holds).
#[derive(Clone)]
pub struct Seal {
    /// The MAC already keyed: cloning it per entry skips the key schedule.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seal(<redacted>)")
    }
}

/// Why a cached entry was not believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Too short, or its MAC does not verify: not written by an instance holding the key.
    Forged,
    /// Sealed by an instance holding the key, but past its expiry.
    Expired,
    /// Sealed by an instance holding the key, but expiring later than an entry written now
    /// could: its writer's clock runs ahead of this one's. Believed, it would keep its answer
    /// (a tag since revoked) for as long as that clock is ahead, to whoever puts it back.
    Future,
}

impl Rejected {
    /// The `reason` label of `scan_cache_rejected_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Forged => "forged",
            Self::Expired => "expired",
            Self::Future => "future",
        }
    }
}

impl Seal {
    /// The sealing key of the deployment whose `IP_HASH_KEY` is `secret`: HMAC-SHA256 of a
    /// fixed label under it, so that the cache's MAC and the client-IP hash never share a key.
    pub fn derive(secret: &SecretString) -> Self {
        let key = Self::keyed(secret.expose_secret().as_bytes())
            .chain_update(b"voketag scan cache seal v1")
            .finalize()
            .into_bytes();
        Self {
            keyed: Self::keyed(&key),
        }
    }

    fn keyed(key: &[u8]) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
    }

    fn mac(&self, redis_key: &str, expiry: [u8; EXPIRY_LEN], json: &[u8]) -> Hmac<Sha256> {
        // The key's length first: else the MAC of an entry at one key would also be that of
        // an entry at a key it starts with, its last bytes moved into the expiry.
        let key_len = u64::try_from(redis_key.len()).unwrap_or(u64::MAX);
        self.keyed
            .clone()
            .chain_update(key_len.to_be_bytes())
            .chain_update(redis_key.as_bytes())
            .chain_update(expiry)
            .chain_update(json)
    }

    /// The entry to store at `redis_key`: `json`, believed until `expires_ms` (Unix ms).
    pub fn seal(&self, redis_key: &str, expires_ms: u64, json: &[u8]) -> Vec<u8> {
        let expiry = expires_ms.to_be_bytes();
        let mac = self.mac(redis_key, expiry, json).finalize().into_bytes();
        let mut entry = Vec::with_capacity(MAC_LEN + EXPIRY_LEN + json.len());
        entry.extend_from_slice(&mac);
        entry.extend_from_slice(&expiry);
        entry.extend_from_slice(json);
        entry
    }

    /// The JSON of `entry` read at `redis_key`, if this deployment sealed it there, it has not
    /// expired by `now_ms` (Unix ms) and it expires no later than `latest_ms` (what an entry
    /// written now would, and a little). The MAC is compared in constant time.
    pub fn open<'a>(
        &self,
        redis_key: &str,
        entry: &'a [u8],
        now_ms: u64,
        latest_ms: u64,
    ) -> Result<&'a [u8], Rejected> {
        if entry.len() < MAC_LEN + EXPIRY_LEN {
            return Err(Rejected::Forged);
        }
        let (mac, rest) = entry.split_at(MAC_LEN);
        let (expiry, json) = rest.split_at(EXPIRY_LEN);
        let expiry: [u8; EXPIRY_LEN] = expiry.try_into().map_err(|_| Rejected::Forged)?;
        self.mac(redis_key, expiry, json)
            .verify_slice(mac)
            .map_err(|_| Rejected::Forged)?;
        let expiry = u64::from_be_bytes(expiry);
        if expiry <= now_ms {
            return Err(Rejected::Expired);
        }
        if expiry > latest_ms {
            return Err(Rejected::Future);
        }
        Ok(json)
    }
}

/// How far ahead of this instance's clock a writer's may run before its entries are not
/// believed ([`Rejected::Future`]).
const CLOCK_ALLOWANCE_MS: u64 = 2_000;

/// Milliseconds since the Unix epoch (0 for a clock before it).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A JSON cache in Redis.
#[derive(Debug, Clone)]
pub struct Cache {
    redis: Arc<RedisConn>,
    breaker: CircuitBreaker,
    ttl: Duration,
    seal: Seal,
}

impl Cache {
    /// A cache on `redis` behind `breaker`, entries kept `ttl` and sealed with `seal`.
    pub fn new(redis: Arc<RedisConn>, breaker: CircuitBreaker, ttl: Duration, seal: Seal) -> Self {
        for reason in [Rejected::Forged, Rejected::Expired, Rejected::Future] {
            metrics::counter!("scan_cache_rejected_total", "reason" => reason.label()).increment(0);
        }
        Self {
            redis,
            breaker,
            ttl,
            seal,
        }
    }

    /// The cached value at `key`, `None` on a miss, an unreadable entry or any Redis trouble.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        // An entry written now expires a lifetime from now; a writer whose clock is up to
        // `CLOCK_ALLOWANCE` ahead is still believed.
        let latest = self.ttl_ms().saturating_add(CLOCK_ALLOWANCE_MS);
        let raw = self
            .breaker
            .call(self.redis.run(|mut conn| async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
            }))
            .await;
        let now = unix_ms();
        match raw {
            Ok(Some(entry)) => match self.seal.open(key, &entry, now, now.saturating_add(latest)) {
                Ok(json) => serde_json::from_slice(json).ok(),
                Err(rejected) => {
                    metrics::counter!("scan_cache_rejected_total", "reason" => rejected.label())
                        .increment(1);
                    tracing::debug!(reason = rejected.label(), "cache entry not believed");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "cache read skipped");
                None
            }
        }
    }

    /// An entry's lifetime in milliseconds (at least 1).
    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Stores `value` at `key` in the background, so the caller never waits for the write.
    pub fn put<T: Serialize>(&self, key: String, value: &T) {
        let Ok(json) = serde_json::to_vec(value) else {
            return;
        };
        let ttl_ms = self.ttl_ms();
        let bytes = self
            .seal
            .seal(&key, unix_ms().saturating_add(ttl_ms), &json);
        let this = self.clone();
        tokio::spawn(async move {
            let written = this
                .breaker
                .call(this.redis.run(|mut conn| async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(bytes)
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async::<()>(&mut conn)
                        .await
                }))
                .await;
            if let Err(e) = written {
                tracing::debug!(error = %e, "cache write skipped");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(secret: &str) -> Seal {
        Seal::derive(&SecretString::from(secret.to_owned()))
    }

    #[test]
    fn an_entry_opens_only_at_its_key_before_its_expiry_under_the_same_secret() {
        let s = seal("a deployment's IP_HASH_KEY");
        let entry = s.seal("p:tag:{A}", 2_000, br#"{"status":"authentic"}"#);
        assert_eq!(
            s.open("p:tag:{A}", &entry, 1_999, u64::MAX),
            Ok(&br#"{"status":"authentic"}"#[..])
        );
        // Past its expiry, even if Redis still holds it.
        assert_eq!(
            s.open("p:tag:{A}", &entry, 2_000, u64::MAX),
            Err(Rejected::Expired)
        );
        // Copied to another key.
        assert_eq!(
            s.open("p:tag:{B}", &entry, 1_000, u64::MAX),
            Err(Rejected::Forged)
        );
        // Sealed under another secret.
        assert_eq!(
            seal("another deployment").open("p:tag:{A}", &entry, 1_000, u64::MAX),
            Err(Rejected::Forged)
        );
        // Any byte changed: the MAC, the expiry (pushed later) or the JSON.
        for at in [0, MAC_LEN + 1, entry.len() - 3] {
            let mut changed = entry.clone();
            changed[at] ^= 0x20;
            assert_eq!(
                s.open("p:tag:{A}", &changed, 1_000, u64::MAX),
                Err(Rejected::Forged)
            );
        }
        // Plain JSON, as an unsealed writer would put it, and short entries.
        assert_eq!(
            s.open(
                "p:tag:{A}",
                br#"{"status":"authentic","tag_id":"A"}"#,
                1_000,
                u64::MAX
            ),
            Err(Rejected::Forged)
        );
        assert_eq!(
            s.open("p:tag:{A}", b"", 1_000, u64::MAX),
            Err(Rejected::Forged)
        );
    }

    /// An entry expiring later than one written now could (its writer's clock an hour ahead)
    /// is not believed: put back in Redis after the tag was revoked, it answered `authentic`
    /// for that hour.
    #[test]
    fn an_entry_from_a_writer_whose_clock_runs_ahead_is_not_believed() {
        let s = seal("k");
        let entry = s.seal("p:tag:{A}", 3_600_000 + 2_000, b"{}");
        assert_eq!(
            s.open("p:tag:{A}", &entry, 1_000, 1_000 + 4_000),
            Err(Rejected::Future)
        );
        // Within the allowance, believed.
        let entry = s.seal("p:tag:{A}", 1_000 + 3_500, b"{}");
        assert_eq!(
            s.open("p:tag:{A}", &entry, 1_000, 1_000 + 4_000),
            Ok(&b"{}"[..])
        );
    }

    #[test]
    fn an_entry_cannot_be_moved_to_a_key_it_starts_with() {
        let s = seal("k");
        let entry = s.seal("p:x{ab}", 5_000, b"{}");
        // The same MAC over "p:x{ab" + "}" + expiry + JSON, read at "p:x{ab" with the "}"
        // and the expiry's first 7 bytes as its expiry, and the last byte as its JSON's first.
        let (mac, rest) = entry.split_at(MAC_LEN);
        let mut moved = mac.to_vec();
        moved.push(b'}');
        moved.extend_from_slice(rest);
        assert_eq!(s.open("p:x{ab", &moved, 0, u64::MAX), Err(Rejected::Forged));
    }
}

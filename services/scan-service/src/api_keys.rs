//! API key check: the `X-API-Key` value is hashed with SHA-256 and looked up by that hash, so
//! the key itself is never stored, cached or logged. Answers (valid or not) are cached 2 s, so a
//! revoked key is refused within 5 s.
//!
//! Keys are issued by the factory as `vt_<8-char prefix>_<secret>`, and `api_keys.key_hash` is
//! the SHA-256 of that whole string. The scan service does not parse the parts: any value is
//! hashed and looked up, which keeps it correct if the issued format changes.
//!
//! A key neither cache knows costs a database query, before any rate limit can apply (the
//! answer decides which bucket pays). A bad key is charged to its client's IP bucket only after
//! that query, so a client sending a new made-up key with every request would reach the
//! database every time, however throttled. So bad keys also spend an in-process budget of the
//! client network's ([`bad_key_budget`]: ten times the IP rate and five times its burst, at
//! least 100): once a look-up comes back unknown or revoked with the budget spent, that
//! network's look-ups of keys neither cache knows are refused with 429, without a query, until
//! a token is back. Valid keys never spend it; one of them from a network so refused waits with
//! it (keys the caches hold are not affected).
//!
//! A network that spent its budget in the last minute ([`SUSPECT_FOR`]) pays before each
//! look-up instead, whatever the key turns out to be. Paying only after the answer let every
//! request in flight when a block ended reach the database (20 at a time made about six times
//! the budget's rate).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use common::CircuitBreaker;
use metrics::Counter;

use crate::cache::Cache;
use crate::config::BucketLimits;
use crate::error::LookupError;
use crate::lookup::{self, Joined};
use crate::near_cache::{self, NearCache};
use crate::ratelimit::Verdict;
use crate::ratelimit::local::LocalBuckets;

const FIND_API_KEY: &str = include_str!("sql/find_api_key.sql");

/// Longest `X-API-Key` value looked at; longer ones are refused without a look-up.
pub const MAX_KEY_LEN: usize = 256;

/// A valid API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// The key's id (its rate-limit identity, and `api_key_id` in events).
    pub id: Uuid,
    /// Its own rate, overriding `RATE_LIMIT_KEY_PER_MINUTE`.
    pub rate_limit_per_minute: Option<u32>,
}

#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    id: Uuid,
    rate_limit_per_minute: Option<i32>,
}

/// SHA-256 of the presented key, as stored in `api_keys.key_hash`.
pub fn hash_key(presented: &str) -> [u8; 32] {
    Sha256::digest(presented.as_bytes()).into()
}

/// Whether a header value can be a key at all: 1 to 256 visible ASCII characters.
pub fn is_plausible(presented: &[u8]) -> bool {
    (1..=MAX_KEY_LEN).contains(&presented.len()) && presented.iter().all(|b| b.is_ascii_graphic())
}

/// Presented keys the in-process tier holds at most.
const NEAR_ENTRIES: usize = 50_000;

/// Client networks whose bad-key budgets (and blocks) are tracked before they start afresh.
const LOOKUP_BUDGET_CLIENTS: usize = 200_000;

/// How long a network that spent its budget pays for each look-up before it is made.
const SUSPECT_FOR: Duration = Duration::from_secs(60);

/// What is known of a presented key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// Checked: the key, or `None` when it is unknown, revoked or malformed.
    Checked(Option<ApiKey>),
    /// Not checked: neither cache knew it, and the client network has spent its budget of
    /// bad keys (the verdict is that budget's, for the 429's headers).
    LookupsExhausted(Verdict),
}

/// Checks API keys.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    pool: PgPool,
    breaker: CircuitBreaker,
    near: Arc<NearCache<[u8; 32], Option<ApiKey>>>,
    cache: Cache,
    prefix: String,
    /// Database look-ups in flight, joined by key hash.
    loading: Arc<Joined<[u8; 32], Option<ApiKey>>>,
    /// `scan_db_lookups_total{kind="api_key"}`.
    loads: Counter,
    /// Each client network's budget of bad keys looked up.
    budgets: Arc<LocalBuckets>,
    budget_limits: BucketLimits,
    /// How long a token of it takes to come back.
    token_every: Duration,
    /// Networks that spent it, for a token's time: the budget's refusal and when it ends.
    blocked: Arc<NearCache<String, (Verdict, Instant)>>,
    /// Networks that spent it lately ([`SUSPECT_FOR`]): they pay before each look-up.
    suspect: Arc<NearCache<String, ()>>,
    /// `scan_api_key_lookups_refused_total`.
    refused: Counter,
}

impl ApiKeys {
    /// Look-ups on `pool` through `breaker`, behind `cache`; keys start with `prefix`. Each
    /// client network may have bad keys looked up within [`bad_key_budget`] of `ip` (the IP
    /// limits).
    pub fn new(
        pool: PgPool,
        breaker: CircuitBreaker,
        cache: Cache,
        prefix: &str,
        ip: BucketLimits,
    ) -> Self {
        let budget = bad_key_budget(ip);
        let token_every = Duration::from_secs_f64(60.0 / f64::from(budget.per_minute));
        Self {
            pool,
            breaker,
            near: Arc::new(NearCache::new(near_cache::TTL, NEAR_ENTRIES)),
            cache,
            prefix: prefix.to_owned(),
            loading: Arc::default(),
            loads: metrics::counter!("scan_db_lookups_total", "kind" => "api_key"),
            budgets: Arc::new(LocalBuckets::new(LOOKUP_BUDGET_CLIENTS)),
            budget_limits: budget,
            token_every,
            blocked: Arc::new(NearCache::new(token_every, LOOKUP_BUDGET_CLIENTS)),
            suspect: Arc::new(NearCache::new(SUSPECT_FOR, LOOKUP_BUDGET_CLIENTS)),
            refused: metrics::counter!("scan_api_key_lookups_refused_total"),
        }
    }

    /// Frees expired entries of the in-process tier, look-ups nobody waits for any more, the
    /// budgets of clients idle long enough to have them full again, and ended blocks.
    pub fn sweep(&self) {
        self.near.sweep();
        self.loading.sweep();
        self.budgets.sweep();
        self.blocked.sweep();
        self.suspect.sweep();
    }

    /// Checks the key `presented` by a client whose network is named by `client` (asked only
    /// when the database has to be asked).
    pub async fn authenticate(
        &self,
        presented: &[u8],
        client: impl FnOnce() -> String,
    ) -> Result<KeyCheck, LookupError> {
        if !is_plausible(presented) {
            return Ok(KeyCheck::Checked(None));
        }
        let Ok(presented) = std::str::from_utf8(presented) else {
            return Ok(KeyCheck::Checked(None));
        };
        let hash = hash_key(presented);
        if let Some(known) = self.near.get(&hash) {
            return Ok(KeyCheck::Checked(known));
        }
        let cache_key = format!("{}:apikey:{{{}}}", self.prefix, hex::encode(hash));
        if let Some(cached) = self.cache.get::<Option<ApiKey>>(&cache_key).await {
            self.near.insert(hash, cached);
            return Ok(KeyCheck::Checked(cached));
        }
        let network = client();
        if let Some((refusal, until)) = self.blocked.get(&network) {
            return Ok(self.refuse(refusal, until));
        }
        let prepaid = self.suspect.get(&network).is_some();
        if prepaid {
            let budget = self.budgets.take(&network, self.budget_limits);
            if !budget.allowed {
                return Ok(self.refuse(budget, self.block(&network, budget)));
            }
        }
        // Concurrent requests with the same key wait for one query and share its answer.
        self.loading
            .get(&hash, || self.query(hash, cache_key, network, prepaid))
            .await
            .map(KeyCheck::Checked)
    }

    /// The budget's refusal `refusal`, its wait counted from now to `until`.
    fn refuse(&self, refusal: Verdict, until: Instant) -> KeyCheck {
        self.refused.increment(1);
        let wait = until.saturating_duration_since(Instant::now());
        KeyCheck::LookupsExhausted(Verdict {
            retry_after_secs: (wait.as_secs_f64().ceil() as u64).max(1),
            ..refusal
        })
    }

    /// Blocks `network`, which spent its budget (`refusal`), for a token's time, and makes it
    /// pay before its look-ups for a while; returns when the block ends.
    fn block(&self, network: &str, refusal: Verdict) -> Instant {
        let until = Instant::now() + self.token_every;
        self.blocked.insert(network.to_owned(), (refusal, until));
        self.suspect.insert(network.to_owned(), ());
        until
    }

    /// Looks the key up in the database for a request from `network`, which pays for it if
    /// the key is bad (unless it `prepaid`).
    async fn query(
        &self,
        hash: [u8; 32],
        cache_key: String,
        network: String,
        prepaid: bool,
    ) -> Result<Option<ApiKey>, LookupError> {
        // A look-up of this key that finished after the caller missed the in-process tier, and
        // before it got here, has filled the tier: its answer is as fresh as a hit.
        if let Some(known) = self.near.get(&hash) {
            return Ok(known);
        }
        self.loads.increment(1);
        let key = self
            .breaker
            .call(lookup::bounded(
                sqlx::query_as::<_, ApiKeyRow>(FIND_API_KEY)
                    .bind(&hash[..])
                    .fetch_optional(&self.pool),
            ))
            .await?
            .map(|row| ApiKey {
                id: row.id,
                rate_limit_per_minute: row
                    .rate_limit_per_minute
                    .and_then(|r| u32::try_from(r).ok()),
            });
        self.cache.put(cache_key, &key);
        self.near.insert(hash, key);
        if key.is_none() && !prepaid {
            let budget = self.budgets.take(&network, self.budget_limits);
            if !budget.allowed {
                self.block(&network, budget);
            }
        }
        Ok(key)
    }
}

/// The budget of bad keys a client network may have looked up, from the IP limits `ip`: ten
/// times the rate and five times the burst (at least 100). Bad keys are charged to the IP
/// bucket too, so a client within its IP limits never comes near it; only one that goes on
/// making keys up once refused does.
pub fn bad_key_budget(ip: BucketLimits) -> BucketLimits {
    BucketLimits {
        per_minute: ip.per_minute.saturating_mul(10),
        burst: ip.burst.saturating_mul(5).max(100),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sha256_of_the_whole_key() {
        assert_eq!(
            hex::encode(hash_key("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_bad_key_budget_is_ten_times_the_ip_rate_and_at_least_a_burst_of_100() {
        let budget = |per_minute, burst| bad_key_budget(BucketLimits { per_minute, burst });
        assert_eq!(
            budget(60, 20),
            BucketLimits {
                per_minute: 600,
                burst: 100
            }
        );
        assert_eq!(
            budget(1, 30),
            BucketLimits {
                per_minute: 10,
                burst: 150
            }
        );
        assert_eq!(budget(u32::MAX, u32::MAX).per_minute, u32::MAX);
    }

    #[test]
    fn plausibility() {
        assert!(is_plausible(b"vt_abcdefgh_secret"));
        assert!(!is_plausible(b""));
        assert!(!is_plausible(b"has space"));
        assert!(!is_plausible(&[b'a'; 257]));
        assert!(!is_plausible("caf\u{e9}".as_bytes()));
    }
}

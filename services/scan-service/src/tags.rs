//! Tag look-up: PostgreSQL (`DATABASE_READ_URL`) behind the short-lived Redis cache, which keeps
//! unknown tags too so guessing ids does not reach the database every time, and an in-process
//! tier in front of both. Tags scanned all the time are renewed in that tier from the database
//! in batches ([`TagLookup::refresh`]) rather than fetched again one by one as they expire.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use common::CircuitBreaker;
use metrics::Counter;

use crate::cache::Cache;
use crate::error::LookupError;
use crate::lookup::{self, Joined};
use crate::near_cache::{self, NearCache};

const FIND_TAG: &str = concat!(include_str!("sql/tag_select.sql"), "WHERE t.tag_id = $1");
const FIND_TAGS: &str = concat!(
    include_str!("sql/tag_select.sql"),
    "WHERE t.tag_id = ANY($1)"
);

/// Tag ids renewed per query by [`TagLookup::refresh`].
const REFRESH_BATCH: usize = 1000;

/// Whether a tag is still good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TagStatus {
    /// Issued and not revoked.
    Authentic,
    /// Revoked by an operator.
    Revoked,
}

/// The product a tag belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Product {
    /// Product id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Stock-keeping unit.
    pub sku: String,
}

/// A known tag, as the scan route reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tag {
    /// The tag id.
    pub tag_id: String,
    /// Authentic or revoked.
    pub status: TagStatus,
    /// Its product.
    pub product: Product,
    /// The batch it was made in.
    pub batch_id: Uuid,
    /// Scans recorded by the factory's event consumer (eventually consistent).
    pub scan_count: i64,
    /// First recorded scan (the `scanned_at` of its event, in the same form: RFC 3339 UTC with
    /// milliseconds); null before the first.
    #[serde(default, with = "common::timestamp::millis_opt")]
    #[schema(
        value_type = Option<String>,
        format = DateTime,
        required = true,
        examples("2026-11-01T10:00:00.000Z")
    )]
    pub first_scanned_at: Option<DateTime<Utc>>,
    /// The tag's JSON, rendered once (see [`Tag::json`]).
    #[serde(skip)]
    json: JsonOnce,
}

impl Tag {
    /// The tag's JSON (its `Serialize` form), the body of a scan's answer. A cached tag is
    /// shared by every scan of it until its cache entry expires, so it is rendered on the first
    /// of those scans and the others share the bytes.
    pub fn json(&self) -> Result<Bytes, serde_json::Error> {
        if let Some(body) = self.json.0.get() {
            return Ok(body.clone());
        }
        let body = Bytes::from(serde_json::to_vec(self)?);
        Ok(self.json.0.get_or_init(|| body).clone())
    }
}

/// A value's rendered JSON, kept beside it. Not part of the value: it always compares equal,
/// is left out of (de)serialization, shows in `Debug` only as rendered or not, and a clone
/// starts unrendered (a changed copy of a tag must not answer with the original's body).
#[derive(Default)]
struct JsonOnce(OnceLock<Bytes>);

impl Clone for JsonOnce {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for JsonOnce {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for JsonOnce {}

impl std::fmt::Debug for JsonOnce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "rendered"
        } else {
            "not rendered"
        })
    }
}

#[derive(sqlx::FromRow)]
struct TagRow {
    tag_id: String,
    status: String,
    batch_id: Uuid,
    scan_count: i64,
    first_scanned_at: Option<DateTime<Utc>>,
    product_id: Uuid,
    product_name: String,
    product_sku: String,
}

impl From<TagRow> for Tag {
    fn from(row: TagRow) -> Self {
        Self {
            tag_id: row.tag_id,
            // The schema allows only the two values; anything else is treated as not authentic.
            status: if row.status == "authentic" {
                TagStatus::Authentic
            } else {
                TagStatus::Revoked
            },
            product: Product {
                id: row.product_id,
                name: row.product_name,
                sku: row.product_sku,
            },
            batch_id: row.batch_id,
            scan_count: row.scan_count,
            first_scanned_at: row.first_scanned_at,
            json: JsonOnce::default(),
        }
    }
}

/// What the cache holds for a tag id: the tag, or the fact that there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached(pub Option<Arc<Tag>>);

/// Tag ids the in-process tier holds at most (about 500 bytes each once a scan has rendered
/// the tag's JSON: 25 MB at most).
const NEAR_ENTRIES: usize = 50_000;

/// Finds tags.
#[derive(Debug, Clone)]
pub struct TagLookup {
    pool: PgPool,
    breaker: CircuitBreaker,
    near: Arc<NearCache<String, Cached>>,
    cache: Cache,
    prefix: String,
    /// Database look-ups in flight, joined by tag id.
    loading: Arc<Joined<String, Option<Arc<Tag>>>>,
    /// `scan_db_lookups_total{kind="tag"}`.
    loads: Counter,
}

/// Whether `tag_id` has the form of CONTRACT 2.1: `^[A-Za-z0-9_-]{16,64}$`.
pub fn is_valid_tag_id(tag_id: &str) -> bool {
    (16..=64).contains(&tag_id.len())
        && tag_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl TagLookup {
    /// Look-ups on `pool` (the read replica) through `breaker`, behind `cache`; keys start
    /// with `prefix`.
    pub fn new(pool: PgPool, breaker: CircuitBreaker, cache: Cache, prefix: &str) -> Self {
        Self {
            pool,
            breaker,
            near: Arc::new(NearCache::new(near_cache::TTL, NEAR_ENTRIES)),
            cache,
            prefix: prefix.to_owned(),
            loading: Arc::default(),
            loads: metrics::counter!("scan_db_lookups_total", "kind" => "tag"),
        }
    }

    fn cache_key(&self, tag_id: &str) -> String {
        format!("{}:tag:{{{tag_id}}}", self.prefix)
    }

    /// The answer the in-process tier holds for `tag_id`, if it is fresh: no I/O at all.
    pub fn near(&self, tag_id: &str) -> Option<Cached> {
        self.near.get(tag_id)
    }

    /// The answer the Redis tier holds for `tag_id`, if any (run alongside the rate-limit
    /// decision so that a hit costs no extra round trip). A hit fills the in-process tier.
    pub async fn cached(&self, tag_id: &str) -> Option<Cached> {
        let cached: Cached = self.cache.get(&self.cache_key(tag_id)).await?;
        self.near.insert(tag_id.to_owned(), cached.clone());
        Some(cached)
    }

    /// Frees expired entries of the in-process tier, and look-ups nobody waits for any more.
    pub fn sweep(&self) {
        self.near.sweep();
        self.loading.sweep();
    }

    /// Reads the in-process tier's tags scanned since the last refresh from the database again,
    /// [`REFRESH_BATCH`] per query, and renews their entries: a tag scanned all the time then
    /// costs the database one row per refresh instead of a query every time its entry expires,
    /// and its answer is never more than the tier's TTL behind the database (a revocation shows
    /// sooner than through the Redis tier). Tags it leaves out (the rest of a batch after a
    /// failure, any beyond the tier's size) simply expire and are looked up as before.
    pub async fn refresh(&self) -> Result<(), LookupError> {
        let hot = self.near.take_hot(NEAR_ENTRIES);
        for ids in hot.chunks(REFRESH_BATCH) {
            let read_at = Instant::now();
            let rows = self
                .breaker
                .call(lookup::bounded(
                    sqlx::query_as::<_, TagRow>(FIND_TAGS)
                        .bind(ids)
                        .fetch_all(&self.pool),
                ))
                .await?;
            let mut found: HashMap<String, Tag> = rows
                .into_iter()
                .map(|row| (row.tag_id.clone(), Tag::from(row)))
                .collect();
            for id in ids {
                let cached = Cached(found.remove(id).map(Arc::new));
                self.near.refresh(id.as_str(), cached, read_at);
            }
        }
        Ok(())
    }

    /// The tag from the database, caching the answer (found or not). Concurrent loads of the
    /// same tag are one query: the scans that ask while it runs wait for its answer.
    pub async fn load(&self, tag_id: &str) -> Result<Option<Arc<Tag>>, LookupError> {
        self.loading
            .get(&tag_id.to_owned(), || self.query(tag_id))
            .await
    }

    async fn query(&self, tag_id: &str) -> Result<Option<Arc<Tag>>, LookupError> {
        // A look-up of this tag that finished after the caller missed the in-process tier, and
        // before it got here, has filled the tier: its answer is as fresh as a hit.
        if let Some(Cached(tag)) = self.near.get(tag_id) {
            return Ok(tag);
        }
        self.loads.increment(1);
        let tag = self
            .breaker
            .call(lookup::bounded(
                sqlx::query_as::<_, TagRow>(FIND_TAG)
                    .bind(tag_id)
                    .fetch_optional(&self.pool),
            ))
            .await?
            .map(|row| Arc::new(Tag::from(row)));
        let cached = Cached(tag);
        self.cache.put(self.cache_key(tag_id), &cached);
        self.near.insert(tag_id.to_owned(), cached.clone());
        Ok(cached.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_answers_with_its_json_and_a_changed_copy_with_its_own() {
        let tag = Tag::from(TagRow {
            tag_id: "abcdefghijklmnop".into(),
            status: "authentic".into(),
            batch_id: Uuid::nil(),
            scan_count: 3,
            first_scanned_at: None,
            product_id: Uuid::nil(),
            product_name: "Bag".into(),
            product_sku: "B-1".into(),
        });
        let body = tag.json().expect("JSON");
        assert_eq!(body, serde_json::to_vec(&tag).expect("JSON"));
        assert_eq!(tag.json().expect("JSON"), body, "the same bytes again");
        let mut changed = tag.clone();
        changed.scan_count = 4;
        changed.status = TagStatus::Revoked;
        let v: serde_json::Value = serde_json::from_slice(&changed.json().expect("JSON")).unwrap();
        assert_eq!(v["scan_count"], 4);
        assert_eq!(v["status"], "revoked");
    }

    #[test]
    fn tag_id_pattern() {
        assert!(is_valid_tag_id("abcdEFGH1234_-xy"));
        assert!(is_valid_tag_id(&"a".repeat(64)));
        assert!(!is_valid_tag_id(&"a".repeat(15)));
        assert!(!is_valid_tag_id(&"a".repeat(65)));
        assert!(!is_valid_tag_id("abcdefgh12345678!"));
        assert!(!is_valid_tag_id("abcdefgh1234567\u{e9}"));
        assert!(!is_valid_tag_id("abcdefgh 12345678"));
    }
}

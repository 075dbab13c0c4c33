//! The scan use case: who is asking, may they, what is the tag, and the event that records it.
//! Knows nothing of HTTP beyond the outcome it returns.

use std::net::IpAddr;
use std::sync::Arc;

use uuid::Uuid;

use crate::api_keys::{ApiKeys, KeyCheck};
use crate::error::ScanError;
use crate::events::{EventQueue, IpHasher, ScanEvent, ScanResult};
use crate::ratelimit::{Identity, RateLimiter, Verdict};
use crate::tags::{Tag, TagLookup, TagStatus, is_valid_tag_id};

/// One scan request, already taken apart.
#[derive(Debug)]
pub struct ScanRequest<'a> {
    /// The path segment (unvalidated).
    pub tag_id: &'a str,
    /// The resolved client IP.
    pub client_ip: IpAddr,
    /// `X-API-Key`: `None` when absent, `Some(bytes)` when present (possibly empty or garbage).
    pub api_key: Option<&'a [u8]>,
    /// `User-Agent`, when it is readable text.
    pub user_agent: Option<&'a str>,
}

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A known tag (shared with the caches that hold it, so a hit copies no strings).
    Tag(Arc<Tag>),
    /// No such tag.
    Unknown(String),
}

/// A scan's answer and the rate-limit verdict behind it (for the headers).
#[derive(Debug)]
pub struct ScanOutcome {
    /// The rate-limit figures for the headers: the decision, or when the limiter is unavailable
    /// and the service fails closed, the caller's limit with no tokens to spend.
    pub verdict: Option<Verdict>,
    /// The answer.
    pub result: Result<Found, ScanError>,
}

/// Everything a scan needs.
#[derive(Debug, Clone)]
pub struct Scanner {
    /// Rate limiter.
    pub limiter: RateLimiter,
    /// Tag look-up.
    pub tags: TagLookup,
    /// API key check.
    pub api_keys: ApiKeys,
    /// Event hand-off.
    pub events: EventQueue,
    /// Client IP hashing for events.
    pub ip_hasher: IpHasher,
}

impl Scanner {
    /// Runs one scan.
    ///
    /// Every scan costs a token, malformed ones included. A request with a bad API key is
    /// charged to its IP, so guessing keys is rate limited like anything else anonymous.
    pub async fn scan(&self, req: ScanRequest<'_>) -> ScanOutcome {
        // A request whose key is bad, or cannot be checked because the database is away, is
        // charged to its IP like any anonymous one, so its answer still carries rate-limit
        // headers and guessing keys costs tokens.
        let (identity, limits, key_id, refusal) = match req.api_key {
            None => (
                Identity::Ip(req.client_ip),
                self.limiter.ip_limits(),
                None,
                None,
            ),
            Some(presented) => match self
                .api_keys
                .authenticate(presented, || {
                    self.limiter.bucket_key(Identity::Ip(req.client_ip))
                })
                .await
            {
                // A client making up a new key for every request: refused before the database
                // is asked, with its look-up budget's figures (not delayed, like every 429).
                Ok(KeyCheck::LookupsExhausted(budget)) => {
                    return ScanOutcome {
                        verdict: Some(budget),
                        result: Err(ScanError::RateLimited {
                            retry_after_secs: budget.retry_after_secs.max(1),
                        }),
                    };
                }
                Ok(KeyCheck::Checked(Some(key))) => (
                    Identity::ApiKey(key.id),
                    self.limiter.key_limits(key.rate_limit_per_minute),
                    Some(key.id),
                    None,
                ),
                Ok(KeyCheck::Checked(None)) => (
                    Identity::Ip(req.client_ip),
                    self.limiter.ip_limits(),
                    None,
                    Some(ScanError::InvalidApiKey),
                ),
                Err(e) => (
                    Identity::Ip(req.client_ip),
                    self.limiter.ip_limits(),
                    None,
                    Some(ScanError::Database(e)),
                ),
            },
        };
        let refused = refusal.is_some();
        let valid = is_valid_tag_id(req.tag_id);

        // A tag the in-process tier knows costs one Redis call, the decision. Otherwise the
        // decision and the Redis cache read go out together and share a round trip.
        let near = if valid && !refused {
            self.tags.near(req.tag_id)
        } else {
            None
        };
        let (decision, cached) = if valid && !refused && near.is_none() {
            tokio::join!(
                self.limiter.check(identity, limits),
                self.tags.cached(req.tag_id)
            )
        } else {
            (self.limiter.check(identity, limits).await, near)
        };
        let verdict = match decision {
            Ok(v) => v,
            Err(unavailable) => {
                // Failing closed, the answer still carries the rate-limit headers.
                return ScanOutcome {
                    verdict: Some(unavailable.verdict()),
                    result: Err(ScanError::RateLimiterUnavailable {
                        retry_after_secs: unavailable.retry_after_secs,
                    }),
                };
            }
        };
        let outcome = |result| ScanOutcome {
            verdict: Some(verdict),
            result,
        };
        if !verdict.allowed {
            return outcome(Err(ScanError::RateLimited {
                retry_after_secs: verdict.retry_after_secs.max(1),
            }));
        }
        if let Some(refusal) = refusal {
            return outcome(Err(refusal));
        }
        if !valid {
            return outcome(Err(ScanError::InvalidTagId));
        }
        let tag = match cached {
            Some(cached) => cached.0,
            None => match self.tags.load(req.tag_id).await {
                Ok(tag) => tag,
                Err(e) => return outcome(Err(ScanError::Database(e))),
            },
        };
        let result = match &tag {
            Some(t) if t.status == TagStatus::Authentic => ScanResult::Authentic,
            Some(_) => ScanResult::Revoked,
            None => ScanResult::Unknown,
        };
        self.record(req.tag_id, result, req.client_ip, key_id, req.user_agent);
        outcome(Ok(match tag {
            Some(tag) => Found::Tag(tag),
            None => Found::Unknown(req.tag_id.to_owned()),
        }))
    }

    /// Charges one token to the client address for a request the scan route does not serve
    /// (another method than GET), so that such requests are limited like scans and their
    /// answers carry the same rate-limit figures. `Ok` when the token was there.
    pub async fn charge_address(&self, client_ip: IpAddr) -> (Verdict, Result<(), ScanError>) {
        match self
            .limiter
            .check(Identity::Ip(client_ip), self.limiter.ip_limits())
            .await
        {
            Ok(verdict) if verdict.allowed => (verdict, Ok(())),
            Ok(verdict) => (
                verdict,
                Err(ScanError::RateLimited {
                    retry_after_secs: verdict.retry_after_secs.max(1),
                }),
            ),
            Err(unavailable) => (
                unavailable.verdict(),
                Err(ScanError::RateLimiterUnavailable {
                    retry_after_secs: unavailable.retry_after_secs,
                }),
            ),
        }
    }

    fn record(
        &self,
        tag_id: &str,
        result: ScanResult,
        ip: IpAddr,
        key_id: Option<Uuid>,
        user_agent: Option<&str>,
    ) {
        let event = ScanEvent::new(tag_id, result, self.ip_hasher.hash(ip), key_id, user_agent);
        self.events.enqueue(event);
    }
}

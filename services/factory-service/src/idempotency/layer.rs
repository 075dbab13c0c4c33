//! The idempotency middleware: claim in Redis, run once, store or replay.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use common::http::body_deadline::unreadable_body;
use sha2::{Digest, Sha256};

use super::store::{self, Claim, StoredResponse};
use super::{Idempotency, IdempotencyKey, REPLAYED_HEADER, SealKey, is_valid_key, mark_replayed};
use crate::auth::{Identity, Policy};
use crate::error::FactoryError;
use crate::state::{AppState, Redis};

/// Largest response kept for replay; every idempotent route answers a small JSON document.
const MAX_STORED_RESPONSE: usize = 1024 * 1024;

/// Middleware for POST and DELETE routes whose writes role policy `P` allows; see the module
/// docs of [`crate::idempotency`].
pub async fn layer<P: Policy>(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::POST | Method::DELETE) {
        return next.run(req).await;
    }
    let mut values = req.headers().get_all("idempotency-key").iter();
    let Some(raw) = values.next() else {
        return next.run(req).await;
    };
    // Keys are scoped to the caller. Without a valid token the handler answers 401, and it
    // does so before anything about the key is judged: an anonymous caller learns nothing
    // from the header.
    let Some(principal) = req
        .extensions()
        .get::<Identity>()
        .and_then(Identity::principal)
    else {
        return next.run(req).await;
    };
    // The handler checks the role too, but a stored result is replayed without running it: a
    // user whose role no longer allows the write (an admin made a viewer) must get 403, not
    // the result (an API key's secret) kept from when it did. Refused before the key is
    // judged, and not stored, as the handler's own refusal would be.
    if !P::ROLES.contains(&principal.role) {
        return FactoryError::Forbidden.into_response();
    }
    let user_id = principal.id;
    if values.next().is_some() || !is_valid_key(raw.as_bytes()) {
        return FactoryError::InvalidIdempotencyKey.into_response();
    }
    let key_hash: [u8; 32] = Sha256::digest(raw.as_bytes()).into();

    let Ok(seal) = SealKey::derive(raw.as_bytes(), user_id) else {
        return FactoryError::Internal("deriving an idempotency seal failed".to_owned())
            .into_response();
    };

    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, state.body_limit).await {
        Ok(b) => b,
        Err(e) => return unreadable_body(&e),
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str().as_bytes());
    hasher.update(b"\n");
    hasher.update(
        parts
            .uri
            .path_and_query()
            .map_or("", |p| p.as_str())
            .as_bytes(),
    );
    hasher.update(b"\n");
    hasher.update(&bytes);
    let key = IdempotencyKey {
        user_id,
        key_hash,
        fingerprint: hasher.finalize().into(),
        seal,
    };
    let fingerprint = hex::encode(key.fingerprint);

    let outcome = match claim(&state, &key).await {
        Ok(outcome) => outcome,
        Err(e) => return crate::error::task_failed(e),
    };
    let (label, response) = match outcome {
        Err(e) => {
            // While the breaker is open every keyed write is refused without a call, and the
            // breaker logged when it opened: a warning each would flood an outage's logs.
            if matches!(e, common::db::RedisCallError::BreakerOpen(_)) {
                tracing::debug!(error = %e, "idempotency claim refused; refusing the write");
            } else {
                tracing::warn!(error = %e, "idempotency claim failed; refusing rather than risking a duplicate");
            }
            ("unavailable", crate::error::unavailable_response())
        }
        Ok(Claimed::Ours(guard)) => {
            let req = Request::from_parts(parts, Body::from(bytes));
            return detached(state, key, guard, req, next).await;
        }
        Ok(Claimed::InFlight(fp)) if fp == fingerprint => match recorded(&state, &key).await {
            Lookup::Found(record) => (found_outcome(&record), record),
            Lookup::None | Lookup::Unknown => {
                ("in_use", FactoryError::IdempotencyKeyInUse.into_response())
            }
        },
        Ok(Claimed::Done(fp, stored)) if fp == fingerprint => ("replayed", replay(stored)),
        Ok(Claimed::InFlight(_) | Claimed::Done(..)) => {
            ("reused", FactoryError::IdempotencyKeyReused.into_response())
        }
    };
    drop(CountOnDrop(label));
    response
}

/// What claiming a key found ([`Claim`], with a granted claim held by its guard).
enum Claimed {
    /// Ours: the request runs.
    Ours(ClaimGuard),
    /// Another run holds the key (the fingerprint of its request).
    InFlight(String),
    /// A run finished: its request's fingerprint and its result.
    Done(String, StoredResponse),
}

/// Claims `key` in a task of its own, which hands a granted claim over in a [`ClaimGuard`].
/// Awaited in the request, a claim that Redis granted after the request was dropped (its client
/// went away while the `SET` was on its way) had nobody to run or release it, and every retry
/// got 409 until its lease ran out (soak: 69 of 1,270 keyed writes whose clients timed out).
/// Now the task ends anyway, and its guard, dropped unread with its output, gives the claim
/// back: the run never began, so the retry runs it.
async fn claim(
    state: &AppState,
    key: &IdempotencyKey,
) -> Result<Result<Claimed, common::db::RedisCallError>, tokio::task::JoinError> {
    let (redis, key, lease) = (state.redis.clone(), key.clone(), state.idempotency_lease);
    let tasks = state.after_answer.clone();
    let claiming = async move {
        let claim = store::claim(&redis, &key, lease).await?;
        Ok(match claim {
            Claim::Acquired(value) => Claimed::Ours(ClaimGuard {
                claim: Some((redis, key, value)),
                tasks,
            }),
            Claim::InFlight(fp) => Claimed::InFlight(fp),
            Claim::Done(fp, stored) => Claimed::Done(fp, stored),
        })
    };
    state
        .after_answer
        .spawn(tracing::Instrument::in_current_span(claiming))
        .await
}

/// Counts `idempotency_requests_total{outcome}` when dropped.
struct CountOnDrop(&'static str);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        metrics::counter!("idempotency_requests_total", "outcome" => self.0).increment(1);
    }
}

/// Runs a request whose key this process claimed ([`run_claimed`]) in a task of its own, which
/// the request's answer waits for but its abandonment does not end: a run that has begun runs
/// to its end, and keeps the claim until then. Cancelled when the client went away (a timeout
/// shorter than the work, a dropped connection) or the request timeout cut it, a run gave its
/// claim back at once, while PostgreSQL still carried out the statement it had sent (a wait on
/// a lock, say) on one of the pool's connections. A client retrying after each of its timeouts
/// then started one more copy of the same work each time, and with a lock held for a few
/// seconds took every connection of the pool for one request. Now a retry meanwhile gets 409
/// `idempotency_key_in_use` (CONTRACT 3.4: "while the first is still running"), and once the
/// run ends, its result. A run is bounded by the claim's lease, so the claim still lapses only
/// when its process died.
async fn detached(
    state: AppState,
    key: IdempotencyKey,
    guard: ClaimGuard,
    req: Request,
    next: Next,
) -> Response {
    let tasks = state.after_answer.clone();
    let abandon = state.abandon.clone();
    let run = async move {
        // Counted when the run ends, however it ends (a panic, the lease's bound or shutdown
        // drops it here, and counts as `claimed`).
        let mut counted = CountOnDrop("claimed");
        // The claim's lease began before this task did (the claim's round trip): the run ends
        // a little before it, so the claim outlasts the run.
        let bound = state.idempotency_lease.saturating_sub(LEASE_MARGIN);
        let run = tokio::time::timeout(bound, run_claimed(&state, key, guard, req, next));
        tokio::select! {
            ran = run => match ran {
                Ok((label, response)) => {
                    counted.0 = label;
                    response
                }
                Err(_) => {
                    tracing::error!(
                        bound_secs = bound.as_secs(),
                        "an idempotent request ran as long as its claim's lease; cut, its claim given back"
                    );
                    crate::error::unavailable_response()
                }
            },
            () = abandon.cancelled() => {
                tracing::warn!(
                    "an idempotent request still running at shutdown; cut, its claim given back"
                );
                crate::error::unavailable_response()
            }
        }
    };
    match tasks.spawn(tracing::Instrument::in_current_span(run)).await {
        Ok(response) => response,
        Err(e) => crate::error::task_failed(e),
    }
}

/// How long before its claim's lease a keyed run is cut.
const LEASE_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs a request whose key this process claimed, and stores its result if the claim still
/// holds the key. Returns the response and its `idempotency_requests_total` outcome:
/// `claimed` when the request ran, or what it found when [`super::Idempotency`] or the 4xx
/// check came upon another run's record of the key (`replayed`, `reused`, `in_use`).
async fn run_claimed(
    state: &AppState,
    key: IdempotencyKey,
    mut guard: ClaimGuard,
    mut req: Request,
    next: Next,
) -> (&'static str, Response) {
    req.extensions_mut().insert(key.clone());
    let response = next.run(req).await;

    if response.status().is_server_error() || is_refused_before_running(response.status()) {
        guard.release().await;
        return ("claimed", response);
    }
    let (mut parts, body) = response.into_parts();
    let body = match to_bytes(body, MAX_STORED_RESPONSE).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "idempotent response could not be buffered");
            guard.release().await;
            let response =
                FactoryError::Internal("response body unreadable".to_owned()).into_response();
            return ("claimed", response);
        }
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Some(outcome) = idempotency_refusal(parts.status, &body) {
        // `Idempotency::commit` found another run's record for a different request (422), or
        // none it could read (409): that record, not this refusal, is the key's result. Give
        // the claim back; a retry answers from the record.
        guard.release().await;
        return (outcome, Response::from_parts(parts, Body::from(body)));
    }
    if parts.status.is_client_error() {
        // A 4xx is kept in Redis only, and it may be this run's answer to what another run of
        // the key did: a duplicate SKU, say, because that run committed before this one ran
        // (its claim was lost: the process died after its commit, the lease ran out, Redis
        // failed over or evicted it) or while it ran. PostgreSQL's record is then the key's
        // result. If PostgreSQL cannot say, the 4xx is not kept for the key: a retry asks again.
        match recorded(state, &key).await {
            Lookup::None => {}
            Lookup::Found(record) => {
                guard.release().await;
                return (found_outcome(&record), record);
            }
            Lookup::Unknown => {
                guard.release().await;
                return (
                    "claimed",
                    FactoryError::Unavailable("postgres").into_response(),
                );
            }
        }
    }
    // `Idempotency::commit` found another run's record of this very request and answered it.
    let outcome = if parts.headers.contains_key(REPLAYED_HEADER) {
        "replayed"
    } else {
        "claimed"
    };
    let Some((redis, _, claim_value)) = guard.claim.take() else {
        return (outcome, Response::from_parts(parts, Body::from(body)));
    };
    let stored = StoredResponse {
        status: parts.status.as_u16(),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.to_vec(),
    };
    let ttl = state.idempotency_ttl;
    let complete = async move {
        match store::complete(&redis, &key, &claim_value, &stored, ttl).await {
            Ok(true) => {}
            // Our lease ran out meanwhile; whatever holds the key now stays. A retry replays
            // from PostgreSQL if this run committed.
            Ok(false) => tracing::warn!("idempotency claim lapsed before the result was stored"),
            // Our claim stays until its lease runs out; a retry meanwhile finds this run's
            // record in PostgreSQL behind the claim and replays it (see `recorded`).
            Err(e) => tracing::warn!(error = %e, "idempotent result not stored in Redis"),
        }
    };
    if parts.status.is_success() {
        // A success is recorded in PostgreSQL with its side effect, so the answer need not wait
        // for Redis: a retry that comes first finds the claim and replays the record from
        // PostgreSQL (see `recorded`). That takes a round trip to Redis off every keyed write.
        state
            .after_answer
            .spawn(tracing::Instrument::in_current_span(complete));
    } else {
        // A 4xx is kept in Redis only: stored before it is answered, so a retry replays it.
        complete.await;
    }
    (outcome, Response::from_parts(parts, Body::from(body)))
}

/// The result PostgreSQL holds for `key`, as a replay (or the 422 when it holds another
/// request's), looked up in a statement of its own. Used while Redis still shows a claim on
/// the key: the claim's run may have committed and then failed to store its result in Redis
/// (Redis failing at that moment, or the process dying), and without this, retries would get
/// 409 until the claim's lease ran out. And after a 4xx, which another run's committed record
/// may explain. With no record, or none that could be read: a 409 for a claim (a run is then
/// really in flight, or may be); after a 4xx, the 4xx itself when there is none, and a 503 when
/// PostgreSQL could not say (the 4xx is then not kept for the key).
async fn recorded(state: &AppState, key: &IdempotencyKey) -> Lookup {
    let found = async {
        let mut conn = state.pool.acquire().await?;
        Idempotency(Some(key.clone())).recorded(&mut conn).await
    };
    match tokio::time::timeout(RECORD_LOOKUP_TIMEOUT, found).await {
        Ok(Ok(Some(found))) => Lookup::Found(found),
        Ok(Ok(None)) => Lookup::None,
        // PostgreSQL holds another request's result for the key.
        Ok(Err(e @ FactoryError::IdempotencyKeyReused)) => Lookup::Found(e.into_response()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "idempotency record not readable; answering without it");
            Lookup::Unknown
        }
        Err(_) => {
            tracing::warn!("idempotency record look-up timed out; answering without it");
            Lookup::Unknown
        }
    }
}

/// What [`recorded`] found in PostgreSQL for a key.
enum Lookup {
    /// Another run's result for the key, as a replay (or the 422 for another request).
    Found(Response),
    /// No record.
    None,
    /// PostgreSQL did not say in time.
    Unknown,
}

/// How long [`recorded`] looks for a committed record before the answer goes without it (409
/// for a claim, 503 after a 4xx): with PostgreSQL away, the pool would otherwise wait out its
/// 3 s acquire timeout. A keyed 4xx pays this look-up, so with PostgreSQL away such an answer
/// can come up to this much later.
const RECORD_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Responses that refuse the request before the handler acted, for reasons outside the
/// request's fingerprint (the token's role, the rate limit, the `Content-Type` header): a
/// retry with the same key after the cause went away must run, not replay the refusal.
fn is_refused_before_running(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::TOO_MANY_REQUESTS
            | StatusCode::UNSUPPORTED_MEDIA_TYPE
    )
}

/// The 409 `idempotency_key_in_use` / 422 `idempotency_key_reused` that [`super::Idempotency`]
/// answers when PostgreSQL already holds another run's record for the key, as its outcome
/// (`in_use`, `reused`). Only the idempotency code produces these error codes.
fn idempotency_refusal(status: StatusCode, body: &[u8]) -> Option<&'static str> {
    let (expected, outcome) = match status {
        StatusCode::CONFLICT => ("idempotency_key_in_use", "in_use"),
        StatusCode::UNPROCESSABLE_ENTITY => ("idempotency_key_reused", "reused"),
        _ => return None,
    };
    let body = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    (body.get("error")?.as_str()? == expected).then_some(outcome)
}

/// The outcome of answering a record [`recorded`] found: its replay, or the 422 for another
/// request's.
fn found_outcome(record: &Response) -> &'static str {
    if record.headers().contains_key(REPLAYED_HEADER) {
        "replayed"
    } else {
        "reused"
    }
}

/// Holds our claim while the handler runs. If the run is dropped (a panic, the lease's bound in
/// [`detached`], the runtime shutting down) the claim is given back in the background instead
/// of blocking retries with 409 until its lease runs out. The handler's transaction then rolls
/// back (the retry must run) or commits together with its idempotency record (the retry
/// replays). It may still be committing: a COMMIT already sent is carried out. A retry
/// overlapping it either waits on the record and backs out (`idempotency_key_in_use`), or fails
/// on the side effect (a 4xx) and replays the record instead (see the 4xx check above).
struct ClaimGuard {
    claim: Option<(Redis, IdempotencyKey, String)>,
    /// Where a release from `drop` runs ([`AppState::after_answer`]).
    tasks: tokio_util::task::TaskTracker,
}

impl ClaimGuard {
    /// Gives the claim back now (after a 5xx or a refusal), so a retry runs the request again.
    async fn release(&mut self) {
        if let Some((redis, key, claim)) = self.claim.take() {
            release(&redis, &key, &claim).await;
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some((redis, key, claim)) = self.claim.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            self.tasks
                .spawn_on(async move { release(&redis, &key, &claim).await }, &runtime);
        }
    }
}

async fn release(redis: &Redis, key: &IdempotencyKey, claim_value: &str) {
    if let Err(e) = store::release(redis, key, claim_value).await {
        tracing::warn!(error = %e, "idempotency claim not released; it expires with its lease");
    }
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    let content_type = stored
        .content_type
        .and_then(|ct| HeaderValue::from_str(&ct).ok())
        .unwrap_or(HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    mark_replayed(&mut response);
    response
}

//! The audit API: `GET /v1/audit/events` and `GET /v1/audit/verify` (admins), and
//! `GET /v1/audit/checkpoint` (public: anyone may keep a copy of the newest signed checkpoint).
//! Handlers only parse, call the domain, and map the result.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::http::{Json, error_response};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::error::AuditError;
use super::record::{AuditRecord, COLUMNS, EventView};
use super::{AuditLog, checkpoint};

/// Largest page of `GET /v1/audit/events`.
pub const MAX_PAGE: i64 = 1000;
/// Default page size.
pub const DEFAULT_PAGE: i64 = 100;

/// What the audit handlers need.
#[derive(Clone)]
pub struct AuditRoutes {
    /// PostgreSQL.
    pub pool: PgPool,
    /// The audit log (its key is the service's verification key).
    pub audit: AuditLog,
}

/// The audit routes. `Admin` is the extractor that admits admins only (it rejects everyone
/// else with the contract's 401/403); the checkpoint route takes no credentials.
pub fn router<Admin, S>(pool: PgPool, audit: AuditLog) -> Router<S>
where
    Admin: FromRequestParts<AuditRoutes> + Send + 'static,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/v1/audit/events", get(events::<Admin>))
        .route("/v1/audit/verify", get(verify_chain::<Admin>))
        .route("/v1/audit/checkpoint", get(latest_checkpoint))
        .with_state(AuditRoutes { pool, audit })
}

/// `?after_seq=N&limit=M`.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// Only events with a greater seq (default 0: from the start).
    pub after_seq: Option<i64>,
    /// At most this many (default 100); a limit over 1000 gives a page of 1000.
    pub limit: Option<i64>,
}

/// A page of `GET /v1/audit/events`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = AuditEventPage)]
pub struct EventsPage {
    /// Events in `seq` order.
    pub items: Vec<EventView>,
}

async fn events<Admin>(
    _admin: Admin,
    State(state): State<AuditRoutes>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<EventsPage>, Response> {
    let Query(query) = query.map_err(|rejection| {
        // "Failed to deserialize query string: limit: invalid digit found in string"
        let text = rejection.body_text();
        let problem = text
            .rsplit_once("query string: ")
            .map_or(text.as_str(), |(_, p)| p);
        invalid_query(&format!(
            "The query is not valid ({problem}); after_seq and limit are whole numbers, each given once."
        ))
    })?;
    let after_seq = query.after_seq.unwrap_or(0);
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if after_seq < 0 {
        return Err(invalid_query("after_seq must be 0 or more."));
    }
    if limit < 1 {
        return Err(invalid_query("limit must be 1 or more."));
    }
    // A larger page is served as the largest one; `after_seq` of its last item continues.
    let limit = limit.min(MAX_PAGE);
    let sql = format!("SELECT {COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2");
    let rows = sqlx::query_as::<_, AuditRecord>(&sql)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&state.pool)
        .await;
    let items = match rows {
        Ok(rows) => rows.into_iter().map(EventView::from).collect(),
        // A page holding an event whose details cannot be read (see `verify`, which reports
        // it as a break) is still served, that event with its stored text.
        Err(e) if super::record::unreadable_details(&e) => {
            page_with_unreadable_details(&state.pool, after_seq, limit)
                .await
                .map_err(|e| failure(e.into()))?
        }
        Err(e) => return Err(failure(e.into())),
    };
    Ok(Json(EventsPage { items }))
}

/// A row whose `details` comes as text, parsed here.
#[derive(sqlx::FromRow)]
struct DetailsAsText {
    #[sqlx(flatten)]
    record: AuditRecord,
    details_text: String,
}

/// The page read with `details` as text: what parses is served as usual, what does not as
/// `details_unreadable`.
async fn page_with_unreadable_details(
    pool: &PgPool,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<EventView>, sqlx::Error> {
    let columns = COLUMNS.replace(", details,", ", 'null'::jsonb AS details,");
    let sql = format!(
        "SELECT {columns}, details::text AS details_text FROM audit_events \
         WHERE seq > $1 ORDER BY seq LIMIT $2"
    );
    let rows: Vec<DetailsAsText> = sqlx::query_as(&sql)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let mut record = row.record;
            match serde_json::from_str(&row.details_text) {
                Ok(details) => {
                    record.details = details;
                    EventView::from(record)
                }
                Err(_) => EventView {
                    details_unreadable: Some(row.details_text),
                    ..EventView::from(record)
                },
            }
        })
        .collect())
}

async fn verify_chain<Admin>(
    _admin: Admin,
    State(state): State<AuditRoutes>,
) -> Result<Response, Response> {
    let result = state
        .audit
        .verify(&state.pool)
        .await
        .map_err(|e| failure_of(&e))?;
    // 200 either way: the request succeeded, and `ok` says whether the chain is intact.
    Ok(Json(result.report()).into_response())
}

async fn latest_checkpoint(State(state): State<AuditRoutes>) -> Result<Response, Response> {
    match checkpoint::latest(&state.pool).await.map_err(failure)? {
        Some(cp) => Ok(Json(cp.to_json()).into_response()),
        None => Err(error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "No audit checkpoint has been written yet.",
        )),
    }
}

fn invalid_query(detail: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, "invalid_query", detail)
}

/// 503 when the database is unreachable, else 500; never the SQL or its error text.
fn failure(e: AuditError) -> Response {
    failure_of(&e)
}

fn failure_of(e: &AuditError) -> Response {
    match e {
        AuditError::Database(
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed,
        ) => {
            tracing::warn!(error = %e, "audit route: database unavailable");
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "The database is temporarily unavailable; try again shortly.",
            )
        }
        _ => {
            tracing::error!(error = %e, "audit route failed");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Something went wrong on our side.",
            )
        }
    }
}

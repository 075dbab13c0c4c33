//! The one error type of the factory service, rendered as the contract's JSON error.
//!
//! Internal failures are logged here with their cause and leave the service as a bare
//! `internal_error`: never SQL text, a stack trace or a secret.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::http::{error_response, rate_limited_response};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FactoryError {
    /// The input is malformed or out of range (400).
    #[error("bad request ({code}): {detail}")]
    BadRequest {
        /// Machine-readable code, e.g. `validation_failed`.
        code: &'static str,
        /// What is wrong, for a human.
        detail: String,
    },
    /// Not signed in, or the credentials or tokens are not acceptable (401).
    #[error("unauthorized ({code})")]
    Unauthorized {
        /// e.g. `invalid_credentials`, `invalid_token`, `refresh_token_reused`.
        code: &'static str,
        /// What happened, for a human.
        detail: &'static str,
    },
    /// Signed in, but the role does not allow this (403).
    #[error("forbidden")]
    Forbidden,
    /// The CSRF token is missing, differs from its cookie or belongs to another session (403).
    #[error("csrf check failed")]
    CsrfFailed,
    /// No such resource (404).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request conflicts with existing data (409).
    #[error("conflict ({code}): {detail}")]
    Conflict {
        /// Machine-readable code.
        code: &'static str,
        /// What conflicts, for a human.
        detail: String,
    },
    /// The idempotency key is malformed (400).
    #[error("invalid idempotency key")]
    InvalidIdempotencyKey,
    /// A request with this idempotency key is still running (409).
    #[error("idempotency key in use")]
    IdempotencyKeyInUse,
    /// The idempotency key was used for a different request (422).
    #[error("idempotency key reused")]
    IdempotencyKeyReused,
    /// Too many requests; try again after this many seconds (429).
    #[error("rate limited")]
    RateLimited {
        /// Whole seconds, at least 1.
        retry_after: u64,
    },
    /// A dependency is down (503).
    #[error("{0} unavailable")]
    Unavailable(&'static str),
    /// This instance runs as much of this work as it takes at once, and a turn did not come in
    /// time (503 with `Retry-After`).
    #[error("busy with {0}")]
    Busy(&'static str),
    /// A database failure: the caller's bad values 400, their duplicates 409, PostgreSQL unable
    /// to serve for now 503, the rest 500.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Anything else that is our fault (500).
    #[error("internal: {0}")]
    Internal(String),
}

impl FactoryError {
    /// A 400 `validation_failed` with this sentence.
    pub fn validation(detail: impl Into<String>) -> Self {
        Self::BadRequest {
            code: "validation_failed",
            detail: detail.into(),
        }
    }

    /// A 401 with the given code.
    pub fn unauthorized(code: &'static str, detail: &'static str) -> Self {
        Self::Unauthorized { code, detail }
    }
}

/// The answer to a request whose handling ran in a task of its own (a keyed write, a batch
/// create, a login attempt) and did not end: a panic is answered and logged as the
/// catch-panic layer does for the others.
pub fn task_failed(e: tokio::task::JoinError) -> Response {
    match e.try_into_panic() {
        Ok(payload) => common::http::panicked(payload),
        Err(e) => FactoryError::Internal(format!("request task: {e}")).into_response(),
    }
}

/// The 503 of [`FactoryError::Unavailable`], for a caller that has logged the failure with its
/// cause already (one line per refused request, not two).
pub fn unavailable_response() -> Response {
    let mut response = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
        "A dependency is temporarily unavailable; try again shortly.",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

impl IntoResponse for FactoryError {
    fn into_response(self) -> Response {
        match self {
            Self::BadRequest { code, detail } => {
                error_response(StatusCode::BAD_REQUEST, code, detail)
            }
            Self::Unauthorized { code, detail } => {
                let mut response = error_response(StatusCode::UNAUTHORIZED, code, detail);
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
            Self::Forbidden => error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Your role does not allow this action.",
            ),
            Self::CsrfFailed => error_response(
                StatusCode::FORBIDDEN,
                "csrf_failed",
                "The CSRF token is missing or does not match this session.",
            ),
            Self::NotFound(what) => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("No such {what}."),
            ),
            Self::Conflict { code, detail } => error_response(StatusCode::CONFLICT, code, detail),
            Self::InvalidIdempotencyKey => error_response(
                StatusCode::BAD_REQUEST,
                crate::idempotency::INVALID_KEY.0,
                crate::idempotency::INVALID_KEY.1,
            ),
            Self::IdempotencyKeyInUse => {
                // The first request is running: a retry after a moment either replays its
                // result or, if it failed, runs again.
                let mut response = error_response(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_use",
                    "A request with this Idempotency-Key is still being processed.",
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            Self::IdempotencyKeyReused => error_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "This Idempotency-Key was used for a different request.",
            ),
            Self::RateLimited { retry_after } => rate_limited_response(retry_after),
            Self::Unavailable(dependency) => {
                tracing::warn!(dependency, "dependency unavailable");
                unavailable_response()
            }
            Self::Busy(work) => {
                // Counted by its own metric; one line each would flood the logs of the very
                // flood it sheds.
                tracing::debug!(work, "refused: no turn in time");
                let mut response = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    format!("Busy with other {work}; try again shortly."),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
                response
            }
            Self::Database(e) => database_error(e),
            Self::Internal(cause) => {
                tracing::error!(cause = %cause, "internal error");
                internal()
            }
        }
    }
}

fn internal() -> Response {
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "Something went wrong on our side.",
    )
}

fn database_error(e: sqlx::Error) -> Response {
    if postgres_unusable(&e) {
        // This line, with the cause, is the request's one: not the generic warning too.
        tracing::error!(error = %e, "database unavailable");
        return unavailable_response();
    }
    if let Some(db) = e.as_database_error() {
        // Constraint violations are the caller's doing; say which rule, never the SQL.
        match db.code().as_deref() {
            // A duplicate the caller chose (a SKU, an email) is their conflict. Any other
            // unique violation is ours (every other key is generated here, or is the audit
            // chain's sequence): a 500 and an error log, never a 409 that blames the client.
            Some("23505") => {
                return match conflict_detail(db.constraint()) {
                    Some(detail) => error_response(StatusCode::CONFLICT, "conflict", detail),
                    None => {
                        tracing::error!(
                            constraint = db.constraint().unwrap_or_default(),
                            "unexpected duplicate key"
                        );
                        internal()
                    }
                };
            }
            Some("23503") => {
                return error_response(
                    StatusCode::CONFLICT,
                    "conflict",
                    "The request refers to something that does not exist or is still in use.",
                );
            }
            // Check, too long, not null; NUL or a character the encoding cannot hold (text
            // and jsonb): all the caller's input.
            Some("23514" | "22001" | "23502" | "22021" | "22P05") => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "validation_failed",
                    "A value is out of range or has the wrong form.",
                );
            }
            _ => {}
        }
    }
    tracing::error!(error = %e, "database error");
    internal()
}

/// Whether PostgreSQL is unusable for now, whatever the request: no connection to be had
/// (pool time-out, socket error, pool closed), or the server says it is going away or out of
/// connections or resources. (A retry of a write is safe with an Idempotency-Key: a connection
/// ended while a commit waited on replication may have committed.)
fn postgres_unusable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
        _ => e
            .as_database_error()
            .and_then(|db| db.code())
            .is_some_and(|code| server_unavailable(&code)),
    }
}

/// SQLSTATEs that mean PostgreSQL cannot serve the request now, whatever it was: the
/// connection failed or was lost (08000, 08001, 08003, 08004, 08006), the server is short of
/// connections, disk or memory (53000, 53100, 53200, 53300), or it is shutting down or starting
/// (57P01 to 57P03), or it cancelled a statement that ran or waited for a lock past the
/// pool's bounds (57014, 55P03: `common::db::QueryBounds`). Codes that point at a bug of ours
/// (a protocol violation, a deadlock, any other configured limit a query of ours hit) stay
/// 500s with an error log.
fn server_unavailable(code: &str) -> bool {
    matches!(
        code,
        "08000"
            | "08001"
            | "08003"
            | "08004"
            | "08006"
            | "53000"
            | "53100"
            | "53200"
            | "53300"
            | "57P01"
            | "57P02"
            | "57P03"
            | "57014"
            | "55P03"
    )
}

/// The sentence for a duplicate of a value the caller chose; `None` for any other constraint.
fn conflict_detail(constraint: Option<&str>) -> Option<&'static str> {
    match constraint? {
        "products_sku_key" => Some("A product with this SKU already exists."),
        "users_email_key" => Some("A user with this email already exists."),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use sqlx::{Connection, PgConnection};

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    async fn assert_unavailable(e: sqlx::Error) -> TestResult {
        let response = FactoryError::from(e).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let body = to_bytes(response.into_body(), 4096).await?;
        let body: serde_json::Value = serde_json::from_slice(&body)?;
        assert_eq!(body["error"], "service_unavailable");
        Ok(())
    }

    /// Real PostgreSQL ending a connection in the middle of a query (what a restart or a
    /// failover does): 503 with `Retry-After`, not 500.
    #[tokio::test]
    async fn a_query_the_server_ends_is_503() -> TestResult {
        let url = common::testing::admin_url();
        let mut victim = PgConnection::connect(&url).await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut victim)
            .await?;
        let running = tokio::spawn(async move {
            sqlx::query("SELECT pg_sleep(30)")
                .execute(&mut victim)
                .await
                .map(drop)
        });
        let mut admin = PgConnection::connect(&url).await?;
        for _ in 0..500 {
            let active: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
                 WHERE pid = $1 AND state = 'active' AND query LIKE '%pg_sleep%')",
            )
            .bind(pid)
            .fetch_one(&mut admin)
            .await?;
            if active {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&mut admin)
            .await?;
        let e = running.await?.err().ok_or("the query was not ended")?;
        assert_eq!(
            e.as_database_error().and_then(|d| d.code()).as_deref(),
            Some("57P01"),
            "{e}"
        );
        assert_unavailable(e).await
    }

    /// Real PostgreSQL out of connection slots (SQLSTATE 53300, here for a role allowed none):
    /// 503, not 500. This checks the mapping: in the service the pool retries a connection
    /// refused so and gives up with a pool timeout, already a 503; the other codes of class 53
    /// (disk full, out of memory) come on a connection in use, and take this path.
    #[tokio::test]
    async fn no_connection_slot_is_503() -> TestResult {
        let url = common::testing::admin_url();
        let mut admin = PgConnection::connect(&url).await?;
        let role = format!("voketag_t_{}", uuid::Uuid::new_v4().simple());
        // With a password, so the slot check is reached under password authentication too.
        sqlx::query(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'no-slot-test' CONNECTION LIMIT 0"
        ))
        .execute(&mut admin)
        .await?;
        let options: sqlx::postgres::PgConnectOptions = url.parse()?;
        let options = options.username(&role).password("no-slot-test");
        let refused = PgConnection::connect_with(&options).await.map(drop);
        sqlx::query(&format!("DROP ROLE {role}"))
            .execute(&mut admin)
            .await?;
        let e = refused.err().ok_or("the role got a connection")?;
        assert_eq!(
            e.as_database_error().and_then(|d| d.code()).as_deref(),
            Some("53300"),
            "{e}"
        );
        assert_unavailable(e).await
    }

    /// PostgreSQL unusable is logged once per refused request, with its cause: it was two lines
    /// (the error, then the 503's generic warning), doubling the log volume of an outage.
    #[test]
    fn postgres_unusable_logs_one_line_with_its_cause() {
        let lines = common::testing::CapturedLogs::default();
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let response = FactoryError::from(sqlx::Error::PoolTimedOut).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let text = lines.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("database unavailable"), "{text}");
        assert!(text.contains("pool timed out"), "{text}");
    }
}

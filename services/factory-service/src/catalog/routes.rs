//! Catalog routes: products, batches, the streamed tag CSV, tag look-up and revocation.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::http::Json;
use futures::{StreamExt as _, TryStreamExt as _};
use uuid::Uuid;

use super::batches::{self, Batch, NewBatch};
use super::products::{self, NewProduct, Product};
use super::repo;
use super::tags::{self, RevokeTag, RevokedTag, Tag};
use crate::auth::{AnyRole, Authorized, CatalogWriter, ClientInfo};
use crate::error::FactoryError;
use crate::idempotency::{Idempotency, idempotent};
use crate::path::{Path, TagIdPath};
use crate::state::AppState;

/// Rows per chunk of the CSV stream: big enough to keep syscalls few, small enough to keep
/// memory flat however large the batch.
const CSV_ROWS_PER_CHUNK: usize = 1000;

/// The catalog routes.
pub fn router(state: &AppState) -> Router<AppState> {
    let writes = |route| idempotent::<CatalogWriter>(state, route);
    Router::new()
        .route("/v1/products", writes(post(create_product)))
        .route("/v1/products/{id}", get(get_product))
        .route("/v1/batches", writes(post(create_batch)))
        .route("/v1/batches/{id}/tags", get(batch_tags_csv))
        .route("/v1/tags/{tag_id}", get(get_tag))
        .route("/v1/tags/{tag_id}/revoke", writes(post(revoke_tag)))
}

/// Creates a product.
#[utoipa::path(
    post, path = "/v1/products", tag = "catalog",
    request_body = NewProduct,
    responses(
        (status = 201, body = Product),
        (status = 400, description = "`validation_failed`: name or sku not 1 to 200 (name) or 1 to 100 (sku) characters once trimmed, or not one line of text", body = crate::openapi::ApiError),
        (status = 409, description = "`conflict`: a product with this SKU exists", body = crate::openapi::ApiError),
    ),
    security(("bearer" = []))
)]
pub async fn create_product(
    State(state): State<AppState>,
    Authorized(by, _): Authorized<CatalogWriter>,
    client: ClientInfo,
    idem: Idempotency,
    Json(input): Json<NewProduct>,
) -> Result<Response, FactoryError> {
    let mut tx = state.pool.begin().await?;
    let product = products::create(&mut tx, &state.audit, &by, &client, input).await?;
    idem.commit(tx, state.idempotency_ttl, StatusCode::CREATED, &product)
        .await
}

/// A product.
#[utoipa::path(
    get, path = "/v1/products/{id}", tag = "catalog",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Product), (status = 404, body = crate::openapi::ApiError)),
    security(("bearer" = []))
)]
pub async fn get_product(
    State(state): State<AppState>,
    _: Authorized<AnyRole>,
    Path(id): Path<Uuid>,
) -> Result<Json<Product>, FactoryError> {
    let mut conn = state.pool.acquire().await?;
    repo::find_product(&mut conn, id)
        .await?
        .map(Json)
        .ok_or(FactoryError::NotFound("product"))
}

/// Creates a batch of `quantity` tags (up to 100000) in one request.
#[utoipa::path(
    post, path = "/v1/batches", tag = "catalog",
    request_body = NewBatch,
    responses(
        (status = 201, body = Batch),
        (status = 400, description = "`validation_failed`: quantity not 1 to 100000", body = crate::openapi::ApiError),
        (status = 404, description = "`not_found`: no such product", body = crate::openapi::ApiError),
        (status = 503, description = "`service_unavailable`: batch creates take turns in an instance, and this one's turn did not come in time (a third of the request timeout, at most 10 s); retry after `Retry-After`", body = crate::openapi::ApiError),
    ),
    security(("bearer" = []))
)]
pub async fn create_batch(
    State(state): State<AppState>,
    Authorized(by, _): Authorized<CatalogWriter>,
    client: ClientInfo,
    idem: Idempotency,
    Json(input): Json<NewBatch>,
) -> Result<Response, FactoryError> {
    let turn = state.batch_creates.turn().await?;
    // Runs to its end in a task of its own, holding its turn: cancelled with its request (a
    // client's timeout), a create gave its turn up while PostgreSQL still carried out its
    // statement on a connection of the pool, and the next create took the turn and another
    // connection. With a key, the idempotency layer runs it so already (and cuts it at
    // shutdown, which a task of its own here would outlive).
    let keyed = idem.0.is_some();
    let tasks = state.after_answer.clone();
    let create = async move {
        let _turn = turn;
        let mut tx = state.pool.begin().await?;
        // Looked for first, unlike the other writes: repeating this side effect (up to
        // 100,000 tags, the audit chain's head held meanwhile) only to roll it back would
        // stall every audited write.
        if let Some(replay) = idem.recorded(&mut tx).await? {
            return Ok(replay);
        }
        let batch = batches::create(&mut tx, &state.audit, &by, &client, input).await?;
        idem.commit(tx, state.idempotency_ttl, StatusCode::CREATED, &batch)
            .await
    };
    if keyed {
        return create.await;
    }
    tasks
        .spawn(tracing::Instrument::in_current_span(create))
        .await
        .unwrap_or_else(|e| Ok(crate::error::task_failed(e)))
}

/// The batch's tag ids as CSV, one `tag_id` per line and no header line (CONTRACT 3.3), streamed
/// from the database.
#[utoipa::path(
    get, path = "/v1/batches/{id}/tags", tag = "catalog",
    params(("id" = Uuid, Path)),
    responses((status = 200, description = "CSV: one tag id per line, no header line", content_type = "text/csv", body = String), (status = 404, body = crate::openapi::ApiError),
        (status = 503, description = "`service_unavailable`: tag downloads take turns, two at a time in an instance, and this one's turn did not come in time (a third of the request timeout, at most 10 s); retry after `Retry-After`", body = crate::openapi::ApiError)),
    security(("bearer" = []))
)]
pub async fn batch_tags_csv(
    State(state): State<AppState>,
    _: Authorized<AnyRole>,
    Path(id): Path<Uuid>,
) -> Result<Response, FactoryError> {
    // Held while the database is read (`catalog::bulk`), not while the client reads: two
    // clients that stopped reading would otherwise hold every turn of the instance.
    let turn = state.tag_csv.turn().await?;
    let mut conn = state.pool.acquire().await?;
    if !repo::batch_exists(&mut conn, id).await? {
        return Err(FactoryError::NotFound("batch"));
    }
    // Read whole (at most 100,000 ids, about 2.3 MB), in chunks of rows, and only then
    // answered: the connection and the turn are free again before the first byte goes out, a
    // database error is a clean 503 rather than a broken body, and the client, however slow,
    // holds only its own chunks.
    let chunks: Vec<Bytes> = repo::batch_tag_ids(&mut conn, id)
        .chunks(CSV_ROWS_PER_CHUNK)
        .map(|rows| {
            let mut buf = String::with_capacity(rows.len() * 23);
            for tag_id in rows {
                buf.push_str(&tag_id?);
                buf.push('\n');
            }
            Ok::<_, sqlx::Error>(Bytes::from(buf))
        })
        .try_collect()
        .await?;
    drop(conn);
    drop(turn);
    let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(disposition) =
        HeaderValue::from_str(&format!("attachment; filename=\"batch-{id}-tags.csv\""))
    {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    Ok(response)
}

/// A tag with its status, product and scan statistics.
#[utoipa::path(
    get, path = "/v1/tags/{tag_id}", tag = "catalog",
    params(("tag_id" = String, Path, pattern = "^[A-Za-z0-9_-]{16,64}$")),
    responses(
        (status = 200, body = Tag),
        (status = 400, description = "`invalid_tag_id`: not 16 to 64 characters of A-Z, a-z, 0-9, _ and -", body = crate::openapi::ApiError),
        (status = 404, description = "`not_found`: no such tag", body = crate::openapi::ApiError),
    ),
    security(("bearer" = []))
)]
pub async fn get_tag(
    State(state): State<AppState>,
    _: Authorized<AnyRole>,
    TagIdPath(tag_id): TagIdPath,
) -> Result<Json<Tag>, FactoryError> {
    let mut conn = state.pool.acquire().await?;
    Ok(Json(tags::find(&mut conn, &tag_id).await?))
}

/// Revokes a tag; the scan service answers `revoked` within 5 s.
#[utoipa::path(
    post, path = "/v1/tags/{tag_id}/revoke", tag = "catalog",
    request_body = RevokeTag,
    params(
        ("tag_id" = String, Path, pattern = "^[A-Za-z0-9_-]{16,64}$"),
    ),
    responses(
        (status = 200, description = "Revoked (revoking a revoked tag answers its revocation again)", body = RevokedTag),
        (status = 400, description = "`invalid_tag_id`: not 16 to 64 characters of A-Z, a-z, 0-9, _ and -; `validation_failed`: reason not 1 to 500 characters once trimmed, with nothing visible, or holding control, bidirectional-control or noncharacter code points", body = crate::openapi::ApiError),
        (status = 404, description = "`not_found`: no such tag", body = crate::openapi::ApiError),
    ),
    security(("bearer" = []))
)]
pub async fn revoke_tag(
    State(state): State<AppState>,
    Authorized(by, _): Authorized<CatalogWriter>,
    client: ClientInfo,
    idem: Idempotency,
    TagIdPath(tag_id): TagIdPath,
    Json(input): Json<RevokeTag>,
) -> Result<Response, FactoryError> {
    let mut tx = state.pool.begin().await?;
    let revoked = tags::revoke(&mut tx, &state.audit, &by, &client, &tag_id, input).await?;
    let response = idem
        .commit(tx, state.idempotency_ttl, StatusCode::OK, &revoked)
        .await?;
    // After a replay too: the first run may have died between its commit and the cache drop.
    crate::scan_cache::invalidate_tag(&state.redis, &tag_id).await;
    Ok(response)
}

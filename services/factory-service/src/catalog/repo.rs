//! SQL for products, batches and tags.

use futures::Stream;
use sqlx::PgConnection;
use uuid::Uuid;

use super::batches::Batch;
use super::products::Product;
use super::tags::{ProductRef, RevokedTag, Tag};

/// Inserts a product.
pub async fn insert_product(
    conn: &mut PgConnection,
    id: Uuid,
    name: &str,
    sku: &str,
) -> Result<Product, sqlx::Error> {
    sqlx::query_as("INSERT INTO products (id, name, sku) VALUES ($1, $2, $3) RETURNING id, name, sku, created_at")
        .bind(id)
        .bind(name)
        .bind(sku)
        .fetch_one(conn)
        .await
}

/// One product.
pub async fn find_product(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Product>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, sku, created_at FROM products WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Whether the product exists; locks it against deletion until the transaction ends.
pub async fn product_exists_for_share(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM products WHERE id = $1 FOR SHARE")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(found.is_some())
}

/// Inserts a batch row.
pub async fn insert_batch(
    conn: &mut PgConnection,
    id: Uuid,
    product_id: Uuid,
    quantity: i32,
    created_by: Uuid,
) -> Result<Batch, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO batches (id, product_id, quantity, created_by) VALUES ($1, $2, $3, $4) \
         RETURNING id, product_id, quantity, created_at",
    )
    .bind(id)
    .bind(product_id)
    .bind(quantity)
    .bind(created_by)
    .fetch_one(conn)
    .await
}

/// Inserts all `ids` as tags of the batch in one statement; returns how many were inserted
/// (an id that already exists is skipped).
pub async fn insert_tags(
    conn: &mut PgConnection,
    batch_id: Uuid,
    product_id: Uuid,
    ids: &[String],
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(include_str!("sql/insert_tags.sql"))
        .bind(ids)
        .bind(batch_id)
        .bind(product_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Whether the batch exists.
pub async fn batch_exists(conn: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM batches WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(found.is_some())
}

/// The batch's tag ids, in id order, as a stream of rows read from the server as they are
/// consumed.
pub fn batch_tag_ids(
    conn: &mut PgConnection,
    batch_id: Uuid,
) -> impl Stream<Item = Result<String, sqlx::Error>> + '_ {
    sqlx::query_scalar("SELECT tag_id FROM tags WHERE batch_id = $1 ORDER BY tag_id")
        .bind(batch_id)
        .fetch(conn)
}

#[derive(sqlx::FromRow)]
struct TagRow {
    tag_id: String,
    status: String,
    batch_id: Uuid,
    scan_count: i64,
    first_scanned_at: Option<chrono::DateTime<chrono::Utc>>,
    revoked_at: Option<chrono::DateTime<chrono::Utc>>,
    revoked_reason: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    product_id: Uuid,
    product_name: String,
    product_sku: String,
}

/// A tag with its product.
pub async fn find_tag(conn: &mut PgConnection, tag_id: &str) -> Result<Option<Tag>, sqlx::Error> {
    let row: Option<TagRow> = sqlx::query_as(
        "SELECT t.tag_id, t.status, t.batch_id, t.scan_count, t.first_scanned_at, t.revoked_at, \
                t.revoked_reason, t.created_at, p.id AS product_id, p.name AS product_name, p.sku AS product_sku \
         FROM tags t JOIN products p ON p.id = t.product_id WHERE t.tag_id = $1",
    )
    .bind(tag_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| Tag {
        tag_id: r.tag_id,
        status: r.status,
        product: ProductRef {
            id: r.product_id,
            name: r.product_name,
            sku: r.product_sku,
        },
        batch_id: r.batch_id,
        scan_count: r.scan_count,
        first_scanned_at: r.first_scanned_at,
        revoked_at: r.revoked_at,
        revoked_reason: r.revoked_reason,
        created_at: r.created_at,
    }))
}

/// Revokes an authentic tag; `None` when it does not exist or is already revoked.
pub async fn revoke_tag(
    conn: &mut PgConnection,
    tag_id: &str,
    reason: &str,
) -> Result<Option<RevokedTag>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE tags SET status = 'revoked', revoked_at = now(), revoked_reason = $2 \
         WHERE tag_id = $1 AND status = 'authentic' \
         RETURNING tag_id, status, revoked_at, revoked_reason",
    )
    .bind(tag_id)
    .bind(reason)
    .fetch_optional(conn)
    .await
}

//! Products.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::repo;
use crate::audit::{AuditLog, NewEvent};
use crate::auth::{ClientInfo, Principal};
use crate::error::FactoryError;

/// Body of `POST /v1/products`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// Display name (1 to 200 characters).
    pub name: String,
    /// Stock-keeping unit, unique (1 to 100 characters).
    pub sku: String,
}

/// A product.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Product {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// SKU.
    pub sku: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Creates a product (audited as `product.created`); a taken SKU is a 409.
pub async fn create(
    conn: &mut PgConnection,
    audit: &AuditLog,
    by: &Principal,
    client: &ClientInfo,
    input: NewProduct,
) -> Result<Product, FactoryError> {
    let name = input.name.trim();
    let sku = input.sku.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(FactoryError::validation(
            "`name` must be 1 to 200 characters.",
        ));
    }
    if sku.is_empty() || sku.chars().count() > 100 {
        return Err(FactoryError::validation(
            "`sku` must be 1 to 100 characters.",
        ));
    }
    let product = repo::insert_product(conn, Uuid::now_v7(), name, sku).await?;
    let event = NewEvent::new("product.created", by.actor())
        .target("product", product.id)
        .client(client.ip.clone(), client.user_agent.clone())
        .details(serde_json::json!({"sku": product.sku}));
    audit.append(conn, event).await?;
    Ok(product)
}

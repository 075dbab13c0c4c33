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
use crate::text;

/// Body of `POST /v1/products`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// Display name: 1 to 200 characters (Unicode code points) once surrounding whitespace is
    /// trimmed, one line; a value with nothing visible (whitespace only, zero-width characters) is
    /// refused, as are control, bidirectional-control and noncharacter code points. Stored trimmed.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Stock-keeping unit, unique and case-sensitive: 1 to 100 characters (Unicode code points)
    /// once surrounding whitespace is trimmed, one line; a value with nothing visible is refused, as
    /// are control, format (zero-width, byte-order mark, soft hyphen, bidirectional control) and
    /// noncharacter code points. Stored trimmed in Unicode normalization form C, so one written with
    /// combining accents is the same SKU as one written with composed letters.
    #[schema(min_length = 1, max_length = 100)]
    pub sku: String,
}

impl NewProduct {
    /// The trimmed name and the stored form of the SKU, or the 400 the route answers when
    /// either breaks its rules ([`crate::text`]).
    pub fn validate(&self) -> Result<(&str, String), FactoryError> {
        let name = text::line("name", &self.name, 200)?;
        let sku = text::identifier("sku", &self.sku, 100)?;
        Ok((name, sku))
    }
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
    let (name, sku) = input.validate()?;
    let product = repo::insert_product(conn, Uuid::now_v7(), name, &sku).await?;
    let event = NewEvent::new("product.created", by.actor())
        .target("product", product.id)
        .client(client.ip.clone(), client.user_agent.clone())
        .details(serde_json::json!({"sku": product.sku}));
    audit.append(conn, event).await?;
    Ok(product)
}

#[cfg(test)]
mod tests {
    use super::NewProduct;

    fn product(name: &str, sku: &str) -> NewProduct {
        NewProduct {
            name: name.to_owned(),
            sku: sku.to_owned(),
        }
    }

    #[test]
    fn validation_trims_and_counts_characters() {
        assert_eq!(
            product(" Bag ", "\tSKU-1\n").validate().unwrap(),
            ("Bag", "SKU-1".to_owned())
        );
        // 200 two-byte characters are 200 characters, not 400.
        assert!(product(&"\u{e9}".repeat(200), "s").validate().is_ok());
        assert!(product(&"a".repeat(201), "s").validate().is_err());
        assert!(product("   ", "s").validate().is_err());
        assert!(product("n", &"s".repeat(101)).validate().is_err());
        assert!(product("n", "").validate().is_err());
    }
}

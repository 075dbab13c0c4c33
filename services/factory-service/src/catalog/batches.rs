//! Batches: one request creates up to 100000 tags with set-based inserts in one transaction.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{repo, tag_id};
use crate::audit::{AuditLog, NewEvent};
use crate::auth::{ClientInfo, Principal};
use crate::error::FactoryError;

/// Most tags one batch may hold.
pub const MAX_QUANTITY: i64 = 100_000;

/// Body of `POST /v1/batches`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBatch {
    /// The product the tags belong to.
    pub product_id: Uuid,
    /// How many tags to create (1 to 100000).
    #[schema(minimum = 1, maximum = 100000)]
    pub quantity: i64,
}

impl NewBatch {
    /// The quantity, or the 400 the route answers when it is not 1 to [`MAX_QUANTITY`].
    pub fn validate(&self) -> Result<i32, FactoryError> {
        if !(1..=MAX_QUANTITY).contains(&self.quantity) {
            return Err(FactoryError::validation(format!(
                "`quantity` must be 1 to {MAX_QUANTITY}."
            )));
        }
        // In range, so it fits.
        Ok(self.quantity as i32)
    }
}

/// A batch.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Batch {
    /// Id.
    pub id: Uuid,
    /// Product.
    pub product_id: Uuid,
    /// Number of tags.
    pub quantity: i32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Creates a batch and its tags (audited as `batch.created`).
pub async fn create(
    conn: &mut PgConnection,
    audit: &AuditLog,
    by: &Principal,
    client: &ClientInfo,
    input: NewBatch,
) -> Result<Batch, FactoryError> {
    let quantity = input.validate()?;
    if !repo::product_exists_for_share(conn, input.product_id).await? {
        return Err(FactoryError::NotFound("product"));
    }
    let batch = repo::insert_batch(conn, Uuid::now_v7(), input.product_id, quantity, by.id).await?;
    // 128-bit ids practically never collide; if one ever does, it is skipped by the insert
    // and drawn again, so the batch still gets exactly `quantity` tags.
    let mut missing = quantity as usize;
    for _ in 0..5 {
        if missing == 0 {
            break;
        }
        let ids = tag_id::generate_many(missing);
        let inserted = repo::insert_tags(conn, batch.id, batch.product_id, &ids).await?;
        missing -= inserted as usize;
    }
    if missing != 0 {
        return Err(FactoryError::Internal(format!(
            "{missing} tag ids could not be placed"
        )));
    }
    let event = NewEvent::new("batch.created", by.actor())
        .target("batch", batch.id)
        .client(client.ip.clone(), client.user_agent.clone())
        .details(serde_json::json!({"product_id": batch.product_id, "quantity": batch.quantity}));
    audit.append(conn, event).await?;
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::{MAX_QUANTITY, NewBatch};

    #[test]
    fn quantity_bounds() {
        let batch = |quantity| NewBatch {
            product_id: Uuid::nil(),
            quantity,
        };
        assert_eq!(batch(1).validate().unwrap(), 1);
        assert_eq!(batch(MAX_QUANTITY).validate().unwrap(), 100_000);
        for bad in [0, -1, MAX_QUANTITY + 1, i64::MAX, i64::MIN] {
            assert!(batch(bad).validate().is_err(), "{bad}");
        }
    }
}

//! Pieces both services' OpenAPI documents describe alike.

use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::{ObjectBuilder, Type};

/// A response header whose value is a whole number of at least `minimum` (the rate-limit
/// figures, `Retry-After`).
pub fn integer_header(description: &str, minimum: i64) -> Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(minimum)),
        )
        .description(Some(description))
        .build()
}

//! Field schemas for `#[schema(schema_with = ...)]`: string fields the serializer only ever
//! writes from a fixed set of values.

use utoipa::openapi::{Object, ObjectBuilder, Type};

fn one_of(values: &[&str], description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .description(Some(description))
        .build()
}

/// `Tag.status` (the column's CHECK allows only these two).
pub fn tag_status() -> Object {
    one_of(&["authentic", "revoked"], "`authentic`, or `revoked`")
}

/// `RevokedTag.status`.
pub fn revoked_status() -> Object {
    one_of(&["revoked"], "Always `revoked`")
}

/// `TokenResponse.token_type`.
pub fn token_type() -> Object {
    one_of(&["Bearer"], "Always `Bearer`")
}

#[cfg(test)]
mod tests {
    use crate::openapi::test_support::{doc, nullable, required};

    /// Fix 5: fields as tight as the contract and the serializers.
    #[test]
    fn fields_are_as_tight_as_the_server() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        let property = |schema: &str, field: &str| schemas[schema]["properties"][field].clone();
        assert_eq!(
            property("Tag", "status")["enum"],
            serde_json::json!(["authentic", "revoked"])
        );
        assert_eq!(
            property("RevokedTag", "status")["enum"],
            serde_json::json!(["revoked"])
        );
        assert_eq!(
            property("TokenResponse", "token_type")["enum"],
            serde_json::json!(["Bearer"])
        );
        let tag = required(&schemas["Tag"]);
        for field in ["first_scanned_at", "revoked_at", "revoked_reason", "status"] {
            assert!(tag.contains(&field), "Tag.{field}");
        }
        assert!(nullable(&property("Tag", "first_scanned_at")));
        assert!(required(&schemas["RevokedTag"]).contains(&"revoked_at"));
        assert_eq!(property("RevokedTag", "revoked_at")["type"], "string");
        assert!(required(&schemas["ApiKeySummary"]).contains(&"revoked_at"));
        assert!(nullable(&property("ApiKeySummary", "revoked_at")));
    }
}

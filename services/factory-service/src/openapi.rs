//! The OpenAPI document of the factory API, generated from the handlers' annotations and
//! served at `/openapi.json`.

use std::sync::LazyLock;

use axum::Json;
use serde::Serialize;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, Required, ResponseBuilder, Type};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::{api_keys, auth, catalog};

/// The contract's error body: `{"error":"<snake_case code>","detail":"<sentence>"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    /// Machine-readable code, e.g. `forbidden`, `validation_failed`, `rate_limited`.
    pub error: String,
    /// A sentence for humans.
    pub detail: String,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The audit log's routes (CONTRACT 3.5). Their handlers live in `crate::audit` without
/// annotations, so they are described here, by hand, from the contract.
struct AuditPaths;

impl Modify for AuditPaths {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error = |d: &str| ResponseBuilder::new().description(d).build();
        let ok = |d: &str| ResponseBuilder::new().description(d).build();
        let integer_query = |name: &str, description: &str| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(description))
                .schema(Some(ObjectBuilder::new().schema_type(Type::Integer)))
                .build()
        };
        let bearer = || SecurityRequirement::new("bearer", Vec::<String>::new());
        let events = OperationBuilder::new()
            .tag("audit")
            .summary(Some("Audit events in `seq` order (admin)"))
            .description(Some(
                "`{\"items\":[...]}`: events after `after_seq`, at most `limit`.",
            ))
            .parameter(integer_query(
                "after_seq",
                "Return events with a larger seq",
            ))
            .parameter(integer_query("limit", "Largest number of events returned"))
            .response("200", ok("`{\"items\":[event, ...]}`"))
            .response("401", error("Not signed in"))
            .response("403", error("Not an admin"))
            .security(bearer());
        let verify = OperationBuilder::new()
            .tag("audit")
            .summary(Some("Verify the hash chain and signatures (admin)"))
            .description(Some(
                "`{\"ok\",\"events_checked\",\"legacy_events\",\"head\":{\"seq\",\"hash\"},\"first_bad_seq\",\"reason\"}`; \
                 the format is in docs/AUDIT_FORMAT.md.",
            ))
            .response("200", ok("The verification report"))
            .response("401", error("Not signed in"))
            .response("403", error("Not an admin"))
            .security(bearer());
        let checkpoint = OperationBuilder::new()
            .tag("audit")
            .summary(Some("The newest signed checkpoint (no auth)"))
            .description(Some(
                "`{\"seq\",\"hash\",\"signed_at\",\"key_id\",\"signature\"}`",
            ))
            .response("200", ok("The checkpoint"))
            .response("404", error("No checkpoint yet"));
        openapi
            .paths
            .add_path_operation("/v1/audit/events", vec![HttpMethod::Get], events);
        openapi
            .paths
            .add_path_operation("/v1/audit/verify", vec![HttpMethod::Get], verify);
        openapi
            .paths
            .add_path_operation("/v1/audit/checkpoint", vec![HttpMethod::Get], checkpoint);
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "VokeTag factory API",
        version = "1",
        description = "Admin API. Every route answers errors as `{\"error\",\"detail\"}`. Every \
            route is rate limited per client (token subject, else IP) with X-RateLimit-Limit \
            (per minute), X-RateLimit-Remaining and X-RateLimit-Reset; over the limit: 429 with \
            Retry-After. POST and DELETE routes outside /v1/auth accept an Idempotency-Key \
            header: a finished request is replayed with `Idempotent-Replayed: true`; 409 \
            idempotency_key_in_use while it runs; 422 idempotency_key_reused for a different \
            request; 400 invalid_idempotency_key; 503 when the idempotency store is down."
    ),
    paths(
        auth::routes::login,
        auth::routes::refresh,
        auth::routes::logout,
        api_keys::routes::create,
        api_keys::routes::list,
        api_keys::routes::revoke,
        catalog::routes::create_product,
        catalog::routes::get_product,
        catalog::routes::create_batch,
        catalog::routes::batch_tags_csv,
        catalog::routes::get_tag,
        catalog::routes::revoke_tag,
    ),
    components(schemas(ApiError)),
    modifiers(&BearerAuth, &AuditPaths),
    tags(
        (name = "auth", description = "Sign-in with rotating, device-bound refresh tokens"),
        (name = "api-keys", description = "Scan API keys (admin)"),
        (name = "catalog", description = "Products, batches and tags (admin, operator; viewers read)"),
        (name = "audit", description = "The tamper-evident audit log"),
    )
)]
pub struct ApiDoc;

static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);

/// `GET /openapi.json`.
pub async fn serve() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(&DOCUMENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", serde_json::Value::String(r)) => out.push(r.clone()),
                        _ => refs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = serde_json::to_value(&*DOCUMENT).unwrap();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let name = r
                .strip_prefix("#/components/schemas/")
                .expect("a schema reference");
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{r} is defined"
            );
        }
    }

    #[test]
    fn bodies_are_described() {
        let doc = serde_json::to_value(&*DOCUMENT).unwrap();
        let schemas = &doc["components"]["schemas"];
        for name in [
            "LoginRequest",
            "TokenResponse",
            "NewApiKey",
            "CreatedApiKey",
            "ApiKeyList",
            "NewProduct",
            "Product",
            "NewBatch",
            "Batch",
            "Tag",
            "RevokeTag",
            "RevokedTag",
            "ApiError",
        ] {
            assert!(schemas[name].is_object(), "{name}");
        }
        // The key's hash is never part of a response.
        assert!(
            schemas["RevokedApiKey"]["properties"]
                .get("key_hash")
                .is_none()
        );
    }
}

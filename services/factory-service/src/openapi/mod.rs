//! The OpenAPI document of the factory API, generated from the handlers' annotations and
//! served at `/openapi.json`.

use std::sync::LazyLock;

use axum::Json;
use utoipa::OpenApi;

use crate::{api_keys, auth, catalog};

mod audit;
pub mod fields;
mod headers;
mod responses;
mod security;
#[cfg(test)]
mod test_support;

use audit::AuditPaths;
use headers::SharedHeaders;
use responses::CommonResponses;
use security::BearerAuth;

/// The contract's error bodies, as both services answer them.
pub use common::http::{ErrorBody as ApiError, RateLimitedBody as RateLimitedError};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "VokeTag factory API",
        version = "1",
        description = "Admin API. Every route answers errors as `{\"error\",\"detail\"}`. Every \
            route is rate limited per client (token subject, else IP) with X-RateLimit-Limit \
            (per minute), X-RateLimit-Remaining and X-RateLimit-Reset; over the limit: 429 with \
            Retry-After. The X-RateLimit headers are on every answer except those given \
            outside the per-client limiter: a 413 refused by its Content-Length, the request \
            timeout's 503, and a 429 of the login-attempt limit or of the address limit an \
            ended session's token is charged to. Every answer carries X-Request-ID. POST and DELETE routes outside /v1/auth accept an Idempotency-Key \
            header: a finished request is replayed with `Idempotent-Replayed: true`; 409 \
            idempotency_key_in_use while it runs; 422 idempotency_key_reused for a different \
            request (another method, path with its query, or body: the body is compared byte \
            for byte, so a retry must resend exactly the same bytes); 400 \
            invalid_idempotency_key; 503 when the idempotency store is down."
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
    components(schemas(
        ApiError,
        RateLimitedError,
        crate::audit::record::EventView,
        crate::audit::routes::EventsPage,
        crate::audit::verify::HeadView,
        crate::audit::verify::VerifyReport,
        crate::audit::checkpoint::CheckpointJson,
    )),
    modifiers(
        &BearerAuth,
        &AuditPaths,
        &CommonResponses,
        &SharedHeaders
    ),
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
    use super::test_support::{doc, each_operation, idempotent, parameter};
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

    /// Fix 3: the limits the server enforces are in the schemas.
    #[test]
    fn validation_limits_are_described() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        let quantity = &schemas["NewBatch"]["properties"]["quantity"];
        assert_eq!(
            (&quantity["minimum"], &quantity["maximum"]),
            (&1.into(), &100_000.into())
        );
        for (schema, field, max) in [
            ("NewProduct", "name", 200),
            ("NewProduct", "sku", 100),
            ("NewApiKey", "name", 200),
            ("RevokeTag", "reason", 500),
        ] {
            let property = &schemas[schema]["properties"][field];
            assert_eq!(property["minLength"], 1, "{schema}.{field}");
            assert_eq!(property["maxLength"], max, "{schema}.{field}");
            let text = property["description"].as_str().unwrap();
            assert!(
                text.contains("trimmed") && text.contains("refused"),
                "{schema}.{field}: {text}"
            );
        }
        let device = parameter(&doc["paths"]["/v1/auth/login"]["post"], "X-Device-ID");
        assert_eq!(device["required"], true);
        assert_eq!(device["schema"]["type"], "string");
        assert_eq!(
            (
                &device["schema"]["minLength"],
                &device["schema"]["maxLength"]
            ),
            (&16.into(), &128.into())
        );
        let mut keyed = 0;
        for (path, method, operation) in each_operation(&doc) {
            let key = parameter(&operation, "Idempotency-Key");
            if !idempotent(&path, &method) {
                assert!(key.is_null(), "{method} {path}");
                continue;
            }
            keyed += 1;
            assert_eq!(key["in"], "header");
            assert_eq!(key["required"], false, "{method} {path}");
            assert_eq!(
                key["schema"],
                serde_json::json!({
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": "^[\\x21-\\x7E]+$"
                }),
                "{method} {path}"
            );
        }
        assert_eq!(keyed, 5);
    }
}

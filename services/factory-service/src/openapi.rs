//! The OpenAPI document of the factory API, generated from the handlers' annotations and
//! served at `/openapi.json`.

use std::sync::LazyLock;

use axum::Json;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, Required, ResponseBuilder, Type};
use utoipa::{Modify, OpenApi};

use crate::{api_keys, auth, catalog};

/// The contract's error body, as both services answer it.
pub use common::http::ErrorBody as ApiError;

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
            .parameter(integer_query("limit", "Largest number of events returned: 1 or more, default 100; a limit over 1000 gives a page of 1000 (page on with after_seq set to the last seq received)"))
            .response("200", ok("`{\"items\":[event, ...]}`"))
            .response(
                "400",
                error("`invalid_query`: after_seq or limit is not a whole number, or is negative (limit 0)"),
            )
            .response("401", error("Not signed in"))
            .response("403", error("Not an admin"))
            .security(bearer());
        let verify = OperationBuilder::new()
            .tag("audit")
            .summary(Some("Verify the hash chain and signatures (admin)"))
            .description(Some(
                "`{\"ok\",\"events_checked\",\"legacy_events\",\"head\":{\"seq\",\"hash\"},\"first_bad_seq\",\"reason\"}`, \
                 plus `signatures_checked`, `signatures_unchecked` and `unchecked_key_ids` \
                 (event signatures by key ids the service has no key for, not checked) and a \
                 human-readable `detail`; the format is in docs/AUDIT_FORMAT.md.",
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

/// The responses the shared layers give, added to every operation that can get them (and does
/// not describe them itself), so the document says what the service does: 429 and 503 on every
/// route; 401 on authenticated ones, and 403 on those a viewer may not use (every write, the
/// API keys); 400 for a malformed path parameter; 400, 413 and 415 where a JSON body is read;
/// and the idempotency layer's 400, 409 and 422 on POST and DELETE outside `/v1/auth`.
struct CommonResponses;

impl CommonResponses {
    fn error(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ApiError")))
                    .build(),
            )
            .build()
            .into()
    }

    fn add(operation: &mut Operation, status: &str, description: &str) {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| Self::error(description));
    }
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in &mut openapi.paths.paths {
            let idempotent = !path.starts_with("/v1/auth/");
            let operations = [
                (&mut item.post, true),
                (&mut item.delete, true),
                (&mut item.get, false),
            ];
            for (operation, writes) in operations {
                let Some(operation) = operation.as_mut() else {
                    continue;
                };
                Self::add(operation, "429", "Rate limited: wait `Retry-After` seconds");
                Self::add(
                    operation,
                    "503",
                    "A dependency (PostgreSQL or Redis) is unavailable",
                );
                let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                if secured {
                    Self::add(
                        operation,
                        "401",
                        "Not signed in (`unauthorized`), or the access token expired \
                         (`token_expired`), is not valid (`invalid_token`) or belongs to a \
                         session that has ended (`session_ended`: signed out, revoked, past its \
                         maximum lifetime, or the user disabled)",
                    );
                    if writes || path.starts_with("/v1/api-keys") {
                        Self::add(
                            operation,
                            "403",
                            "`forbidden`: the signed-in role may not do this",
                        );
                    }
                }
                // One 400 naming every cause the layers and extractors have for it.
                let mut bad_request = Vec::new();
                if path.contains("{id}") || path.contains("{batch_id}") {
                    bad_request.push("`invalid_id`: the id in the path is not a UUID");
                }
                if operation.request_body.is_some() {
                    bad_request.push("malformed JSON, or a field is missing or wrong");
                    Self::add(operation, "413", "The body is too large");
                    Self::add(
                        operation,
                        "415",
                        "The body is not `application/json` in UTF-8",
                    );
                }
                if writes && idempotent {
                    bad_request.push("`invalid_idempotency_key`");
                }
                if !bad_request.is_empty() {
                    Self::add(operation, "400", &bad_request.join("; "));
                }
                if writes && idempotent {
                    Self::add(
                        operation,
                        "409",
                        "`idempotency_key_in_use`: a request with this key is still running",
                    );
                    Self::add(
                        operation,
                        "422",
                        "`idempotency_key_reused`: this key was used for a different request (method, \
                         path with its query, or body bytes)",
                    );
                }
            }
        }
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
    components(schemas(ApiError)),
    modifiers(&BearerAuth, &AuditPaths, &CommonResponses),
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
    fn shared_layers_responses_are_described() {
        let doc = serde_json::to_value(&*DOCUMENT).unwrap();
        let codes = |path: &str, method: &str| -> Vec<String> {
            doc["paths"][path][method]["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path}"))
                .keys()
                .cloned()
                .collect()
        };
        for (path, method) in [("/v1/api-keys", "post"), ("/v1/api-keys/{id}", "delete")] {
            let c = codes(path, method);
            for code in ["400", "401", "409", "422", "429", "503"] {
                assert!(
                    c.contains(&code.to_owned()),
                    "{method} {path}: {code} in {c:?}"
                );
            }
        }
        let login = codes("/v1/auth/login", "post");
        assert!(login.contains(&"415".to_owned()) && login.contains(&"429".to_owned()));
        assert!(
            !login.contains(&"409".to_owned()),
            "auth is outside the idempotency layer"
        );
        let checkpoint = codes("/v1/audit/checkpoint", "get");
        assert!(
            !checkpoint.contains(&"401".to_owned()),
            "the checkpoint needs no auth"
        );
        assert!(codes("/v1/audit/verify", "get").contains(&"401".to_owned()));
        // Roles: a viewer may read the catalog, nothing else.
        for (path, method) in [
            ("/v1/products", "post"),
            ("/v1/batches", "post"),
            ("/v1/tags/{tag_id}/revoke", "post"),
            ("/v1/api-keys", "get"),
            ("/v1/audit/events", "get"),
        ] {
            assert!(
                codes(path, method).contains(&"403".to_owned()),
                "{method} {path}"
            );
        }
        assert!(!codes("/v1/products/{id}", "get").contains(&"403".to_owned()));
        // Malformed path ids and audit queries are 400s.
        assert!(codes("/v1/products/{id}", "get").contains(&"400".to_owned()));
        assert!(codes("/v1/audit/events", "get").contains(&"400".to_owned()));
        let revoke_400 = &doc["paths"]["/v1/api-keys/{id}"]["delete"]["responses"]["400"];
        let text = revoke_400.to_string();
        assert!(
            text.contains("invalid_id") && text.contains("invalid_idempotency_key"),
            "{text}"
        );
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

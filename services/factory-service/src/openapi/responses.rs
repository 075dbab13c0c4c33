//! The responses the shared layers give (rate limiting, authentication, body extraction,
//! idempotency), added to every operation, and the error bodies they carry.

use std::collections::btree_map::Entry;

use utoipa::Modify;
use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

/// A JSON response whose body is the component schema `schema`.
pub(super) fn json_response(description: &str, schema: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build(),
        )
        .build()
        .into()
}

/// The methods the document describes, with whether each writes (POST and DELETE).
pub(super) fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = (&mut Operation, bool)> {
    [
        (item.post.as_mut(), true),
        (item.delete.as_mut(), true),
        (item.get.as_mut(), false),
    ]
    .into_iter()
    .filter_map(|(operation, writes)| operation.map(|o| (o, writes)))
}

/// Whether a path's POST and DELETE go through the idempotency layer (all but `/v1/auth`).
pub(super) fn idempotent_path(path: &str) -> bool {
    !path.starts_with("/v1/auth/")
}

/// The responses the shared layers give, added to every operation that can get them, so the
/// document says what the service does: 429 and 503 on every route; 401 on authenticated ones,
/// and 403 on those a viewer may not use (every write, the API keys); 400 for a malformed path
/// parameter; 400, 408, 413 and 415 where a JSON body is read; and the idempotency layer's 400, 409
/// and 422 on POST and DELETE outside `/v1/auth`. Where the handler describes a status itself,
/// the shared causes of its 400, 401, 403, 409 and 422 are added to its description (a
/// handler's 409 must not hide `idempotency_key_in_use`). Every error response gets the JSON
/// body it has: `RateLimitedError` for 429, `ApiError` otherwise.
pub(super) struct CommonResponses;

impl CommonResponses {
    fn add(operation: &mut Operation, status: &str, description: &str) {
        let schema = if status == "429" {
            "RateLimitedError"
        } else {
            "ApiError"
        };
        match operation.responses.responses.entry(status.to_owned()) {
            Entry::Vacant(entry) => {
                entry.insert(json_response(description, schema));
            }
            Entry::Occupied(mut entry) => {
                let RefOr::T(response) = entry.get_mut() else {
                    return;
                };
                let merge = matches!(status, "400" | "401" | "403" | "409" | "422");
                if response.description.is_empty() {
                    description.clone_into(&mut response.description);
                } else if merge && !response.description.contains(description) {
                    response.description = format!("{}; {description}", response.description);
                }
            }
        }
    }

    /// The JSON error body on every 4xx and 5xx that does not name one.
    fn error_bodies(operation: &mut Operation) {
        for (status, response) in &mut operation.responses.responses {
            let RefOr::T(response) = response else {
                continue;
            };
            let error = status.starts_with('4') || status.starts_with('5');
            if error && response.content.is_empty() {
                let schema = if status == "429" {
                    "RateLimitedError"
                } else {
                    "ApiError"
                };
                response.content.insert(
                    "application/json".to_owned(),
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(schema)))
                        .build(),
                );
            }
        }
    }
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in &mut openapi.paths.paths {
            let idempotent = idempotent_path(path);
            for (operation, writes) in operations(item) {
                Self::add(
                    operation,
                    "429",
                    "`rate_limited`: over the client's limit; wait `Retry-After` seconds",
                );
                Self::add(
                    operation,
                    "503",
                    "`service_unavailable`: a dependency (PostgreSQL or Redis) is unavailable",
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
                    Self::add(
                        operation,
                        "408",
                        "`request_timeout`: the body did not arrive in time",
                    );
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
                Self::error_bodies(operation);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::openapi::DOCUMENT;
    use crate::openapi::test_support::{body_ref, doc, each_operation, idempotent};

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

    /// Fix 2: login's own 429 has the rate-limit body, whose `error` is the one constant.
    #[test]
    fn login_429_has_a_body() {
        let doc = doc();
        let login = &doc["paths"]["/v1/auth/login"]["post"]["responses"]["429"];
        assert_eq!(body_ref(login), "#/components/schemas/RateLimitedError");
        assert_eq!(login["headers"]["Retry-After"]["schema"]["minimum"], 1);
        let body = &doc["components"]["schemas"]["RateLimitedError"];
        assert_eq!(
            body["properties"]["error"]["enum"],
            serde_json::json!(["rate_limited"])
        );
        assert_eq!(body["properties"]["retry_after"]["minimum"], 1);
        // Every 429 is that body; every other error the contract's.
        for (path, method, operation) in each_operation(&doc) {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let expected = match status.as_str() {
                    "429" => "#/components/schemas/RateLimitedError",
                    s if s.starts_with('4') || s.starts_with('5') => {
                        "#/components/schemas/ApiError"
                    }
                    _ => continue,
                };
                assert_eq!(body_ref(response), expected, "{method} {path} {status}");
            }
        }
    }

    /// Fix 7: a handler's own 400, 409 or 422 keeps naming the idempotency layer's codes.
    #[test]
    fn own_responses_keep_the_shared_codes() {
        let doc = doc();
        let product_409 = doc["paths"]["/v1/products"]["post"]["responses"]["409"]["description"]
            .as_str()
            .unwrap();
        assert!(
            product_409.contains("`conflict`") && product_409.contains("idempotency_key_in_use"),
            "{product_409}"
        );
        for (path, method, operation) in each_operation(&doc) {
            if !idempotent(&path, &method) {
                continue;
            }
            for (status, code) in [
                ("400", "invalid_idempotency_key"),
                ("409", "idempotency_key_in_use"),
                ("422", "idempotency_key_reused"),
            ] {
                let text = operation["responses"][status]["description"]
                    .as_str()
                    .unwrap_or_default();
                assert!(text.contains(code), "{method} {path} {status}: {text}");
            }
        }
    }
}

//! The OpenAPI document of the scan API, generated from the route's annotation and served at
//! `/openapi.json`.

use std::sync::LazyLock;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use common::http::error_response;
use common::http::openapi::integer_header;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::{Object, ObjectBuilder, RefOr, Type};
use utoipa::{Modify, OpenApi};

use crate::tags::{Product, Tag, TagStatus};

/// The contract's error bodies, as both services answer them.
pub use common::http::{ErrorBody as ApiError, RateLimitedBody as RateLimitedError};

/// The schema of `UnknownTag.status` (`#[schema(schema_with = ...)]`): always `unknown`.
pub(super) fn unknown_status() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["unknown"]))
        .description(Some("Always `unknown`"))
        .build()
}

/// The headers on every answer of every route in the document, and `Retry-After` on 429 and
/// 503: written once here rather than on each response.
struct AnswerHeaders;

impl Modify for AnswerHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let integer = |description: &str| integer_header(description, 0);
        let every = [
            (
                "X-RateLimit-Limit",
                integer("The bucket's rate, requests per minute"),
            ),
            (
                "X-RateLimit-Remaining",
                integer("Whole requests left in the bucket"),
            ),
            (
                "X-RateLimit-Reset",
                integer("Unix seconds when the bucket will be full again"),
            ),
            (
                "X-Request-ID",
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::String))
                    .description(Some("The caller's id if sane, else a new UUID"))
                    .build(),
            ),
        ];
        let retry_after = integer_header("Whole seconds to wait, at least 1", 1);
        for item in openapi.paths.paths.values_mut() {
            for operation in [&mut item.get, &mut item.post, &mut item.delete]
                .into_iter()
                .flatten()
            {
                for (status, response) in operation.responses.responses.iter_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    for (name, header) in &every {
                        response.headers.insert((*name).to_owned(), header.clone());
                    }
                    if status == "429" || status == "503" {
                        response
                            .headers
                            .insert("Retry-After".to_owned(), retry_after.clone());
                    }
                }
            }
        }
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "VokeTag scan API",
        version = "1",
        description = "Is this tag authentic? Public, no sign-in. Every answer is rate limited \
            per client address, or per API key when a valid X-API-Key is given, and carries \
            X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset. Answers 200, 400, \
            401 and 404 are released a fixed time after the request arrived plus or minus a \
            random jitter (80 ms ± 10 ms by default; later if the work took longer), so known \
            and unknown tags cannot be told apart by timing; 429 and 503 are immediate. Errors are JSON \
            `{\"error\",\"detail\"}`. Also served: /healthz, /readyz and /metrics (not rate \
            limited)."
    ),
    paths(super::scan::scan),
    components(schemas(Tag, TagStatus, Product, super::scan::UnknownTag, ApiError, RateLimitedError)),
    modifiers(&AnswerHeaders),
    tags((name = "scan", description = "Tag authenticity look-ups")),
)]
pub struct ApiDoc;

/// The document as served, serialized once.
static DOCUMENT: LazyLock<Result<Bytes, String>> = LazyLock::new(|| {
    serde_json::to_vec(&ApiDoc::openapi())
        .map(Bytes::from)
        .map_err(|e| e.to_string())
});

/// `GET /openapi.json`.
pub async fn serve() -> Response {
    match &*DOCUMENT {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "OpenAPI document not serializable");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Something went wrong on our side.",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> serde_json::Value {
        serde_json::to_value(ApiDoc::openapi()).unwrap()
    }

    /// The served bytes are the document.
    #[test]
    fn served_document_is_the_document() {
        let served: serde_json::Value = serde_json::from_slice(DOCUMENT.as_ref().unwrap()).unwrap();
        assert_eq!(served, doc());
    }

    /// Fix 6: `Retry-After` is at least 1 on 429 and 503; the rate-limit headers and
    /// X-Request-ID are on every answer.
    #[test]
    fn retry_after_is_at_least_one() {
        let doc = doc();
        let responses = doc["paths"]["/v1/scan/{tag_id}"]["get"]["responses"]
            .as_object()
            .unwrap()
            .clone();
        assert!(responses.len() >= 6);
        for (status, response) in &responses {
            let headers = &response["headers"];
            for name in [
                "X-Request-ID",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
            ] {
                assert!(headers[name]["schema"].is_object(), "{status} {name}");
            }
            let retry = &headers["Retry-After"];
            if status == "429" || status == "503" {
                assert_eq!(retry["schema"]["type"], "integer", "{status}");
                assert_eq!(retry["schema"]["minimum"], 1, "{status}");
            } else {
                assert!(retry.is_null(), "{status}");
            }
        }
    }

    /// Fix 5 (scan): the constant strings are enums.
    #[test]
    fn constant_fields_are_enums() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["UnknownTag"]["properties"]["status"]["enum"],
            serde_json::json!(["unknown"])
        );
        assert_eq!(
            schemas["RateLimitedError"]["properties"]["error"]["enum"],
            serde_json::json!(["rate_limited"])
        );
        assert_eq!(
            schemas["RateLimitedError"]["properties"]["retry_after"]["minimum"],
            1
        );
        assert_eq!(
            schemas["TagStatus"]["enum"],
            serde_json::json!(["authentic", "revoked"])
        );
    }

    /// Fix 8: examples use the OpenAPI 3.1 `examples` array, not the deprecated `example`.
    #[test]
    fn examples_not_example() {
        fn has_example(value: &serde_json::Value) -> bool {
            match value {
                serde_json::Value::Object(map) => {
                    // A property named `example` is data, not the keyword.
                    map.iter()
                        .any(|(k, v)| (k == "example" && !v.is_object()) || has_example(v))
                }
                serde_json::Value::Array(items) => items.iter().any(has_example),
                _ => false,
            }
        }
        let doc = doc();
        assert!(!has_example(&doc), "a deprecated `example` is left");
        assert_eq!(
            doc["components"]["schemas"]["Tag"]["properties"]["first_scanned_at"]["examples"],
            serde_json::json!(["2026-11-01T10:00:00.000Z"])
        );
    }
}

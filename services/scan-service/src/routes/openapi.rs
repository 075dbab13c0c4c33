//! The OpenAPI document of the scan API, generated from the route's annotation and served at
//! `/openapi.json`.

use std::sync::LazyLock;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use common::http::error_response;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::{ObjectBuilder, RefOr, Type};
use utoipa::{Modify, OpenApi};

use crate::tags::{Product, Tag, TagStatus};

/// The contract's error bodies, as both services answer them.
pub use common::http::{ErrorBody as ApiError, RateLimitedBody as RateLimitedError};

/// The headers on every answer of every route in the document, and `Retry-After` on 429 and
/// 503: written once here rather than on each response.
struct AnswerHeaders;

impl Modify for AnswerHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let integer = |description: &str| {
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                )
                .description(Some(description))
                .build()
        };
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
        let retry_after = integer("Whole seconds to wait, at least 1");
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

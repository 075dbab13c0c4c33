//! The headers the shared layers put on every answer, and the request headers every route
//! reads.

use common::http::openapi::integer_header;
use utoipa::Modify;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
use utoipa::openapi::{Object, ObjectBuilder, RefOr, Required, Type};

use super::responses::{idempotent_path, operations};

/// The headers the shared layers put on answers, and the request headers they read:
/// `X-Request-ID` and the rate-limit figures on every response, `Retry-After` on 429 and 503
/// (and on the idempotency layer's 409), `Idempotent-Replayed` on the 2xx of idempotent
/// routes, the optional `X-Request-ID` request header on every operation, and the optional
/// `Idempotency-Key` on every idempotent one. Runs after
/// [`CommonResponses`], so that every response it added gets them too; headers a handler
/// declares itself (`Set-Cookie`) are kept.
///
/// [`CommonResponses`]: super::responses::CommonResponses
pub(super) struct SharedHeaders;

impl SharedHeaders {
    fn string(schema: Object, description: &str) -> Header {
        HeaderBuilder::new()
            .schema(schema)
            .description(Some(description))
            .build()
    }
}

impl Modify for SharedHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        // The few answers given outside the per-client limiter are listed in the API's
        // description.
        const LIMITER: &str = " (absent on the answers the API description lists)";
        let request_id = Self::string(
            ObjectBuilder::new().schema_type(Type::String).build(),
            "The request's id: the caller's X-Request-ID when it is 1 to 128 characters of \
             A-Z, a-z, 0-9 and - _ . :, else a new UUID",
        );
        let every = [
            ("X-Request-ID", request_id),
            (
                "X-RateLimit-Limit",
                integer_header(
                    &format!("The client's rate, requests per minute{LIMITER}"),
                    0,
                ),
            ),
            (
                "X-RateLimit-Remaining",
                integer_header(&format!("Whole requests left in the bucket{LIMITER}"), 0),
            ),
            (
                "X-RateLimit-Reset",
                integer_header(
                    &format!("Unix seconds when the bucket will be full again{LIMITER}"),
                    0,
                ),
            ),
        ];
        let retry_after = integer_header("Whole seconds to wait before retrying, at least 1", 1);
        let retry_after_audit = integer_header(
            "Whole seconds to wait before retrying, at least 1; not sent when the audit query \
             itself finds PostgreSQL unavailable",
            1,
        );
        let retry_after_in_use = integer_header(
            "With `idempotency_key_in_use`: 1, the seconds to wait before retrying",
            1,
        );
        let replayed = Self::string(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["true"]))
                .build(),
            "`true` when this is the stored answer of an earlier request with the same \
             Idempotency-Key (a stored 4xx answer is replayed with it too); absent on a first \
             run",
        );
        let idempotency_key_param = ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "1 to 255 visible ASCII characters, scoped to the caller; a finished request \
                 with the same key and request is replayed",
            ))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(255))
                    .pattern(Some("^[\\x21-\\x7E]+$")),
            ))
            .build();
        let request_id_param = ParameterBuilder::new()
            .name("X-Request-ID")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "Echoed when it is one value of 1 to 128 characters of A-Z, a-z, 0-9 and \
                 - _ . :; otherwise a new UUID is answered",
            ))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .build();
        for (path, item) in &mut openapi.paths.paths {
            let idempotent = idempotent_path(path);
            let audit = path.starts_with("/v1/audit/");
            for (operation, writes) in operations(item) {
                let parameters = operation.parameters.get_or_insert_with(Vec::new);
                if writes && idempotent {
                    parameters.push(idempotency_key_param.clone());
                }
                if !parameters.iter().any(|p| p.name == "X-Request-ID") {
                    parameters.push(request_id_param.clone());
                }
                for (status, response) in &mut operation.responses.responses {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    let headers = &mut response.headers;
                    for (name, header) in &every {
                        headers
                            .entry((*name).to_owned())
                            .or_insert_with(|| header.clone());
                    }
                    let retry = match status.as_str() {
                        "429" => Some(&retry_after),
                        "503" if audit => Some(&retry_after_audit),
                        "503" => Some(&retry_after),
                        "409" if writes && idempotent => Some(&retry_after_in_use),
                        _ => None,
                    };
                    if let Some(retry) = retry {
                        headers
                            .entry("Retry-After".to_owned())
                            .or_insert_with(|| retry.clone());
                    }
                    if writes && idempotent && status.starts_with('2') {
                        headers
                            .entry("Idempotent-Replayed".to_owned())
                            .or_insert_with(|| replayed.clone());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::openapi::test_support::{doc, each_operation, idempotent, parameter};

    /// Fix 4: response headers and cookies, request headers and cookies.
    #[test]
    fn headers_and_cookies_are_described() {
        let doc = doc();
        for (path, method, operation) in each_operation(&doc) {
            let request_id = parameter(&operation, "X-Request-ID");
            assert_eq!(request_id["in"], "header", "{method} {path}");
            assert_eq!(request_id["required"], false, "{method} {path}");
            for (status, response) in operation["responses"].as_object().unwrap() {
                let headers = &response["headers"];
                let at = format!("{method} {path} {status}");
                assert_eq!(headers["X-Request-ID"]["schema"]["type"], "string", "{at}");
                for name in [
                    "X-RateLimit-Limit",
                    "X-RateLimit-Remaining",
                    "X-RateLimit-Reset",
                ] {
                    assert_eq!(headers[name]["schema"]["type"], "integer", "{at} {name}");
                }
                let retry = &headers["Retry-After"];
                if status == "429" || status == "503" {
                    assert_eq!(retry["schema"]["type"], "integer", "{at}");
                    assert_eq!(retry["schema"]["minimum"], 1, "{at}");
                }
                let replayed = &headers["Idempotent-Replayed"];
                if idempotent(&path, &method) && status.starts_with('2') {
                    assert_eq!(
                        replayed["schema"],
                        serde_json::json!({"type": "string", "enum": ["true"]}),
                        "{at}"
                    );
                } else {
                    assert!(replayed.is_null(), "{at}");
                }
            }
        }
        let auth = |path: &str| doc["paths"][path]["post"].clone();
        for (path, status) in [
            ("/v1/auth/login", "200"),
            ("/v1/auth/refresh", "200"),
            ("/v1/auth/logout", "204"),
            ("/v1/auth/refresh", "401"),
            ("/v1/auth/logout", "401"),
        ] {
            let cookie = auth(path)["responses"][status]["headers"]["Set-Cookie"]["description"]
                .as_str()
                .unwrap_or_else(|| panic!("{path} {status}"))
                .to_owned();
            for part in [
                "__Host-vt_refresh=",
                "__Host-vt_csrf=",
                "HttpOnly",
                "Secure",
                "SameSite=Strict",
                "Path=/",
            ] {
                assert!(cookie.contains(part), "{path} {status}: {part}");
            }
            let clears = cookie.contains("Max-Age=0");
            assert_eq!(clears, status != "200", "{path} {status}");
        }
        for path in ["/v1/auth/refresh", "/v1/auth/logout"] {
            let operation = auth(path);
            for (name, place) in [
                ("__Host-vt_refresh", "cookie"),
                ("__Host-vt_csrf", "cookie"),
                ("X-CSRF-Token", "header"),
            ] {
                assert_eq!(parameter(&operation, name)["in"], place, "{path} {name}");
            }
        }
    }
}

//! The OpenAPI document of the factory API, generated from the handlers' annotations and
//! served at `/openapi.json`.

use std::collections::btree_map::Entry;
use std::sync::LazyLock;

use axum::Json;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, Object, ObjectBuilder, Ref, RefOr, Required, ResponseBuilder, Type,
};
use utoipa::{Modify, OpenApi};

use crate::{api_keys, auth, catalog};

/// The contract's error bodies, as both services answer them.
pub use common::http::{ErrorBody as ApiError, RateLimitedBody as RateLimitedError};

/// Field schemas for `#[schema(schema_with = ...)]`: string fields the serializer only ever
/// writes from a fixed set of values.
pub mod fields {
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
}

/// `RateLimitedError.error` is always `rate_limited` (the struct lives in `common`, whose field
/// type is a plain string).
struct RateLimitedCode;

impl Modify for RateLimitedCode {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        if let Some(RefOr::T(Schema::Object(body))) = components.schemas.get_mut("RateLimitedError")
        {
            body.properties.insert(
                "error".to_owned(),
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["rate_limited"]))
                    .description(Some("Always `rate_limited`"))
                    .into(),
            );
        }
    }
}

/// Bodies of the audit routes, whose handlers serialize types without schemas
/// (`crate::audit::record::EventView`, `crate::audit::verify::VerifyReport`,
/// `crate::audit::checkpoint::CheckpointJson`). Only for the document; a unit test keeps their
/// keys equal to what those types serialize.
#[allow(dead_code)]
mod audit_schemas {
    use utoipa::ToSchema;
    use uuid::Uuid;

    /// One audit event: hashes in lower-case hex, signatures in standard base64, timestamps
    /// exactly as hashed (docs/AUDIT_FORMAT.md).
    #[derive(ToSchema)]
    pub struct AuditEvent {
        /// Position in the log, gap-free from 1.
        #[schema(minimum = 1)]
        pub seq: i64,
        /// Format version: 1 (legacy, no chain fields) or 2.
        #[schema(minimum = 1, maximum = 2)]
        pub version: i16,
        /// Unique id of the event (UUID v7).
        pub event_id: Uuid,
        /// When it happened: `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds).
        #[schema(format = DateTime)]
        pub occurred_at: String,
        /// The acting user, if any.
        #[schema(required = true)]
        pub actor_id: Option<Uuid>,
        /// The acting user's email, `system` for the service itself, or for someone not signed
        /// in the address of the account they tried to act as (null when none matched).
        #[schema(required = true)]
        pub actor_email: Option<String>,
        /// What happened, e.g. `api_key.created`.
        pub action: String,
        /// The kind of thing acted on.
        #[schema(required = true)]
        pub target_type: Option<String>,
        /// Its id.
        #[schema(required = true)]
        pub target_id: Option<String>,
        /// The client's IP address.
        #[schema(required = true)]
        pub client_ip: Option<String>,
        /// The client's user agent.
        #[schema(required = true)]
        pub user_agent: Option<String>,
        /// Free-form details (null when `details_unreadable` is given).
        pub details: serde_json::Value,
        /// Hex hash of the previous version-2 event (64 zeros for the first); null for a
        /// version-1 event.
        #[schema(required = true)]
        pub prev_hash: Option<String>,
        /// Hex SHA-256 of `prev_hash` and the event's canonical bytes; null for a version-1
        /// event.
        #[schema(required = true)]
        pub hash: Option<String>,
        /// Base64 RSASSA-PKCS1-v1_5/SHA-256 signature of `hash`; null when events are not
        /// signed.
        #[schema(required = true)]
        pub signature: Option<String>,
        /// The signing key's id; null when unsigned.
        #[schema(required = true)]
        pub key_id: Option<String>,
        /// Only for an event whose stored `details` cannot be read as JSON numbers the service
        /// writes: the stored text, with `details` null. Absent otherwise.
        #[schema(nullable = false)]
        pub details_unreadable: Option<String>,
    }

    /// A page of `GET /v1/audit/events`.
    #[derive(ToSchema)]
    pub struct AuditEventPage {
        /// Events in `seq` order.
        pub items: Vec<AuditEvent>,
    }

    /// The last verified event.
    #[derive(ToSchema)]
    pub struct AuditHead {
        /// Its seq (0: nothing verified).
        #[schema(minimum = 0)]
        pub seq: i64,
        /// Its hex hash; null while only legacy (version-1) events, or none, were seen.
        #[schema(required = true)]
        pub hash: Option<String>,
    }

    /// The verification report: CONTRACT 3.5's keys, then the signature counts and `detail`.
    #[derive(ToSchema)]
    pub struct AuditVerifyReport {
        /// Whether the chain is intact.
        pub ok: bool,
        /// Version-2 events whose hash (and link) were checked.
        pub events_checked: u64,
        /// Legacy events (format version 1) before the chain.
        pub legacy_events: u64,
        /// The last verified event.
        pub head: AuditHead,
        /// The first bad seq (for a gap or a cut tail, the first missing one); null when `ok`.
        #[schema(required = true)]
        pub first_bad_seq: Option<i64>,
        /// Why, when broken: `hash_mismatch`, `broken_link`, `seq_gap`, `bad_signature`,
        /// `unknown_key`, `tail_truncated`, `checkpoint_mismatch` or `head_mismatch`; null when
        /// `ok`.
        #[schema(required = true)]
        pub reason: Option<String>,
        /// Event signatures checked.
        pub signatures_checked: u64,
        /// Event signatures by key ids the service has no key for, not checked (their hashes
        /// were).
        pub signatures_unchecked: u64,
        /// Those key ids.
        pub unchecked_key_ids: Vec<String>,
        /// A sentence with the specifics when broken; null when `ok`.
        #[schema(required = true)]
        pub detail: Option<String>,
    }

    /// A checkpoint of the chain head. `key_id` and `signature` are null when the service has
    /// no audit signing key configured (an unsigned checkpoint).
    #[derive(ToSchema)]
    pub struct AuditCheckpoint {
        /// The head's seq.
        #[schema(minimum = 1)]
        pub seq: i64,
        /// Lower-case hex hash of the event at `seq`.
        #[schema(pattern = "^[0-9a-f]{64}$")]
        pub hash: String,
        /// When it was signed: `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds).
        #[schema(format = DateTime)]
        pub signed_at: String,
        /// The signing key's id; null when no signing key is configured.
        #[schema(required = true)]
        pub key_id: Option<String>,
        /// Standard base64 (padded) RSASSA-PKCS1-v1_5/SHA-256 signature of the checkpoint's JCS
        /// form; null when no signing key is configured.
        #[schema(required = true)]
        pub signature: Option<String>,
    }
}

pub use audit_schemas::{
    AuditCheckpoint, AuditEvent, AuditEventPage, AuditHead, AuditVerifyReport,
};

/// A JSON response whose body is the component schema `schema`.
fn json_response(description: &str, schema: &str) -> RefOr<utoipa::openapi::Response> {
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
/// annotations, so they are described here, by hand (their 401, 429 and 503 come from
/// [`CommonResponses`]).
struct AuditPaths;

impl Modify for AuditPaths {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error = |d: &str| json_response(d, "ApiError");
        let integer_query = |name: &str, description: &str, minimum: i64, default: i64| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(description))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                            utoipa::openapi::KnownFormat::Int64,
                        )))
                        .minimum(Some(minimum))
                        .default(Some(default.into())),
                ))
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
                "Return events with a larger seq (0 or more; default 0: from the start)",
                0,
                0,
            ))
            .parameter(integer_query("limit", "Largest number of events returned: 1 or more, default 100; a limit over 1000 gives a page of 1000 (page on with after_seq set to the last seq received)", 1, 100))
            .response("200", json_response("The page of events", "AuditEventPage"))
            .response(
                "400",
                error("`invalid_query`: after_seq or limit is not a whole number, or is negative (limit 0)"),
            )
            .response("403", error("`forbidden`: not an admin"))
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
            .response(
                "200",
                json_response(
                    "The verification report; 200 whether or not the chain is intact (`ok` says)",
                    "AuditVerifyReport",
                ),
            )
            .response("403", error("`forbidden`: not an admin"))
            .security(bearer());
        let checkpoint = OperationBuilder::new()
            .tag("audit")
            .summary(Some("The newest signed checkpoint (no auth)"))
            .description(Some(
                "`{\"seq\",\"hash\",\"signed_at\",\"key_id\",\"signature\"}`",
            ))
            .response(
                "200",
                json_response(
                    "The newest checkpoint. `key_id` and `signature` are null when the service \
                     has no audit signing key configured (the checkpoint is then unsigned)",
                    "AuditCheckpoint",
                ),
            )
            .response("404", error("`not_found`: no checkpoint yet"));
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

/// The methods the document describes, with whether each writes (POST and DELETE).
fn operations(
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
fn idempotent_path(path: &str) -> bool {
    !path.starts_with("/v1/auth/")
}

/// The responses the shared layers give, added to every operation that can get them, so the
/// document says what the service does: 429 and 503 on every route; 401 on authenticated ones,
/// and 403 on those a viewer may not use (every write, the API keys); 400 for a malformed path
/// parameter; 400, 413 and 415 where a JSON body is read; and the idempotency layer's 400, 409
/// and 422 on POST and DELETE outside `/v1/auth`. Where the handler describes a status itself,
/// the shared causes of its 400, 401, 403, 409 and 422 are added to its description (a
/// handler's 409 must not hide `idempotency_key_in_use`). Every error response gets the JSON
/// body it has: `RateLimitedError` for 429, `ApiError` otherwise.
struct CommonResponses;

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

/// The headers the shared layers put on answers, and the request headers every route reads:
/// `X-Request-ID` and the rate-limit figures on every response, `Retry-After` on 429 and 503
/// (and on the idempotency layer's 409), `Idempotent-Replayed` on the 2xx of idempotent
/// routes, and the optional `X-Request-ID` request header on every operation. Runs after
/// [`CommonResponses`], so that every response it added gets them too; headers a handler
/// declares itself (`Set-Cookie`) are kept.
struct SharedHeaders;

impl SharedHeaders {
    fn integer(description: &str, minimum: i64) -> Header {
        HeaderBuilder::new()
            .schema(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(minimum)),
            )
            .description(Some(description))
            .build()
    }

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
                Self::integer(
                    &format!("The client's rate, requests per minute{LIMITER}"),
                    0,
                ),
            ),
            (
                "X-RateLimit-Remaining",
                Self::integer(&format!("Whole requests left in the bucket{LIMITER}"), 0),
            ),
            (
                "X-RateLimit-Reset",
                Self::integer(
                    &format!("Unix seconds when the bucket will be full again{LIMITER}"),
                    0,
                ),
            ),
        ];
        let retry_after = Self::integer("Whole seconds to wait before retrying, at least 1", 1);
        let retry_after_audit = Self::integer(
            "Whole seconds to wait before retrying, at least 1; not sent when the audit query \
             itself finds PostgreSQL unavailable",
            1,
        );
        let retry_after_in_use = Self::integer(
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
        AuditEvent,
        AuditEventPage,
        AuditHead,
        AuditVerifyReport,
        AuditCheckpoint,
    )),
    modifiers(
        &BearerAuth,
        &RateLimitedCode,
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

    fn doc() -> serde_json::Value {
        serde_json::to_value(&*DOCUMENT).unwrap()
    }

    /// Every described operation as (path, method, operation).
    fn each_operation(doc: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
        let mut found = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                found.push((path.clone(), method.clone(), operation.clone()));
            }
        }
        assert!(found.len() >= 15, "{}", found.len());
        found
    }

    fn idempotent(path: &str, method: &str) -> bool {
        matches!(method, "post" | "delete") && !path.starts_with("/v1/auth/")
    }

    fn nullable(schema: &serde_json::Value) -> bool {
        schema["type"]
            .as_array()
            .is_some_and(|t| t.contains(&"null".into()))
            || schema["oneOf"]
                .as_array()
                .is_some_and(|o| o.iter().any(|s| s["type"] == "null"))
    }

    fn required(schema: &serde_json::Value) -> Vec<&str> {
        schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default()
    }

    fn body_ref(response: &serde_json::Value) -> &str {
        response["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap_or_default()
    }

    fn parameter<'a>(operation: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        operation["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .unwrap_or(&serde_json::Value::Null)
    }

    /// Fix 1: the audit routes' 200s have bodies with the contract's keys, their errors
    /// `ApiError`.
    #[test]
    fn audit_responses_have_bodies() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        let audit = |path: &str| doc["paths"][path]["get"]["responses"].clone();
        assert_eq!(
            body_ref(&audit("/v1/audit/events")["200"]),
            "#/components/schemas/AuditEventPage"
        );
        assert_eq!(
            schemas["AuditEventPage"]["properties"]["items"]["items"]["$ref"],
            "#/components/schemas/AuditEvent"
        );
        assert_eq!(
            body_ref(&audit("/v1/audit/verify")["200"]),
            "#/components/schemas/AuditVerifyReport"
        );
        let report = &schemas["AuditVerifyReport"];
        let keys = required(report);
        for key in [
            "ok",
            "events_checked",
            "legacy_events",
            "head",
            "first_bad_seq",
            "reason",
            "signatures_checked",
            "signatures_unchecked",
            "unchecked_key_ids",
            "detail",
        ] {
            assert!(keys.contains(&key), "{key} in {keys:?}");
        }
        assert_eq!(report["properties"]["ok"]["type"], "boolean");
        assert_eq!(report["properties"]["events_checked"]["type"], "integer");
        for key in ["first_bad_seq", "reason", "detail"] {
            assert!(nullable(&report["properties"][key]), "{key} is nullable");
        }
        let head = &schemas["AuditHead"];
        assert_eq!(required(head), ["seq", "hash"]);
        assert_eq!(head["properties"]["seq"]["type"], "integer");
        let checkpoint = audit("/v1/audit/checkpoint");
        assert_eq!(
            body_ref(&checkpoint["200"]),
            "#/components/schemas/AuditCheckpoint"
        );
        assert!(
            checkpoint["200"]["description"]
                .as_str()
                .unwrap()
                .contains("null when the service has no audit signing key")
        );
        let cp = &schemas["AuditCheckpoint"];
        assert_eq!(
            required(cp),
            ["seq", "hash", "signed_at", "key_id", "signature"]
        );
        assert!(nullable(&cp["properties"]["key_id"]) && nullable(&cp["properties"]["signature"]));
        for path in [
            "/v1/audit/events",
            "/v1/audit/verify",
            "/v1/audit/checkpoint",
        ] {
            for (status, response) in audit(path).as_object().unwrap() {
                if ["400", "401", "403", "404", "503"].contains(&status.as_str()) {
                    assert_eq!(
                        body_ref(response),
                        "#/components/schemas/ApiError",
                        "{path} {status}"
                    );
                }
            }
        }
        let events = &doc["paths"]["/v1/audit/events"]["get"];
        assert_eq!(parameter(events, "limit")["schema"]["minimum"], 1);
        assert_eq!(parameter(events, "after_seq")["schema"]["minimum"], 0);
    }

    /// The hand-written audit schemas name exactly the keys the handlers' types serialize,
    /// and require those always sent.
    #[test]
    fn audit_schemas_match_what_the_server_serializes() {
        use crate::audit::checkpoint::CheckpointJson;
        use crate::audit::record::{AuditRecord, EventView};
        use crate::audit::verify::{ChainState, Verification};

        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        let check = |name: &str, value: serde_json::Value, optional: &[&str]| {
            let mut sent: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
            let mut documented: Vec<String> = schemas[name]["properties"]
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| !optional.contains(&k.as_str()))
                .cloned()
                .collect();
            let mut required: Vec<String> = required(&schemas[name])
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            sent.sort();
            documented.sort();
            required.sort();
            assert_eq!(sent, documented, "{name}: properties");
            assert_eq!(sent, required, "{name}: required");
        };
        let report = Verification {
            state: ChainState::default(),
            broken: None,
            checkpoints_compared: 0,
        }
        .report();
        let report = serde_json::to_value(report).unwrap();
        check("AuditHead", report["head"].clone(), &[]);
        check("AuditVerifyReport", report, &[]);
        let checkpoint = CheckpointJson {
            seq: 1,
            hash: "00".repeat(32),
            signed_at: "2026-01-01T00:00:00.000000Z".to_owned(),
            key_id: None,
            signature: None,
        };
        check(
            "AuditCheckpoint",
            serde_json::to_value(checkpoint).unwrap(),
            &[],
        );
        let event = EventView::from(AuditRecord {
            seq: 1,
            version: 2,
            event_id: uuid::Uuid::nil(),
            occurred_at: chrono::Utc::now(),
            actor_id: None,
            actor_email: None,
            action: "x".to_owned(),
            target_type: None,
            target_id: None,
            client_ip: None,
            user_agent: None,
            details: serde_json::json!({}),
            prev_hash: None,
            hash: None,
            signature: None,
            key_id: None,
        });
        let event = serde_json::to_value(event).unwrap();
        assert!(event.get("details_unreadable").is_none());
        check("AuditEvent", event, &["details_unreadable"]);
        assert!(!nullable(
            &schemas["AuditEvent"]["properties"]["details_unreadable"]
        ));
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

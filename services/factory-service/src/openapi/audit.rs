//! The audit log's part of the document: the schemas of its bodies and its routes, both
//! written by hand.

use utoipa::Modify;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{ObjectBuilder, Required, Type};

use super::responses::json_response;

/// Bodies of the audit routes, whose handlers serialize types without schemas
/// (`crate::audit::record::EventView`, `crate::audit::verify::VerifyReport`,
/// `crate::audit::checkpoint::CheckpointJson`). Only for the document; a unit test keeps their
/// keys equal to what those types serialize.
#[allow(dead_code)]
mod schemas {
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

pub use schemas::{AuditCheckpoint, AuditEvent, AuditEventPage, AuditHead, AuditVerifyReport};

/// The audit log's routes (CONTRACT 3.5). Their handlers live in `crate::audit` without
/// annotations, so they are described here, by hand (their 401, 429 and 503 come from
/// [`CommonResponses`]).
///
/// [`CommonResponses`]: super::responses::CommonResponses
pub(super) struct AuditPaths;

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

#[cfg(test)]
mod tests {
    use crate::openapi::test_support::{body_ref, doc, nullable, parameter, required};

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
}

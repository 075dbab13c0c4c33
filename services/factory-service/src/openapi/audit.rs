//! The audit log's part of the document: its routes, written by hand (their bodies' schemas
//! are derived on the types the handlers serialize, in `crate::audit`).

use utoipa::Modify;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{ObjectBuilder, Required, Type};

use super::responses::json_response;

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
                 (signatures of events and checkpoints by key ids the service has no key for, not checked) and a \
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

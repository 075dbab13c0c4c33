use serde_json::json;

use super::*;

fn attrs() -> HashMap<String, String> {
    HashMap::from([
        ("event_type".to_owned(), "scan".to_owned()),
        ("schema_version".to_owned(), "1".to_owned()),
    ])
}

fn body() -> Value {
    json!({
        "event_id": "0192b7a0-7c1e-7d3e-9a4f-1b2c3d4e5f60",
        "tag_id": "AbCdEfGhIjKlMnOp_-12",
        "result": "authentic",
        "scanned_at": "2026-11-25T06:00:00.123Z",
        "client_ip_hash": "ABCDEF0123",
        "api_key_id": null,
        "user_agent": "curl/8"
    })
}

fn parse_value(attributes: &HashMap<String, String>, v: &Value) -> Result<ScanEvent, Poison> {
    parse(attributes, v.to_string().as_bytes())
}

fn reason(v: Value) -> PoisonReason {
    parse_value(&attrs(), &v).unwrap_err().reason
}

#[test]
fn a_valid_event_parses() {
    let e = parse_value(&attrs(), &body()).unwrap();
    assert_eq!(e.result, ScanResult::Authentic);
    assert_eq!(e.client_ip_hash, "abcdef0123");
    assert_eq!(e.api_key_id, None);
    assert_eq!(e.user_agent.as_deref(), Some("curl/8"));
    assert_eq!(e.scanned_at.timestamp_subsec_millis(), 123);
}

#[test]
fn nullable_fields_may_be_absent() {
    let mut v = body();
    v.as_object_mut().unwrap().remove("api_key_id");
    v.as_object_mut().unwrap().remove("user_agent");
    assert!(parse_value(&attrs(), &v).is_ok());
}

#[test]
fn absent_attributes_are_taken_as_the_contract_values() {
    // A valid body without attributes is a v1 scan event, not poison.
    let e = parse_value(&HashMap::new(), &body()).unwrap();
    assert_eq!(e, parse_value(&attrs(), &body()).unwrap());
    // The body is still checked field by field.
    let mut v = body();
    v.as_object_mut().unwrap().remove("tag_id");
    assert_eq!(
        parse_value(&HashMap::new(), &v).unwrap_err().reason,
        PoisonReason::MissingField
    );
}

#[test]
fn attributes_are_checked() {
    let mut a = attrs();
    a.insert("schema_version".into(), "2".into());
    let e = parse_value(&a, &body()).unwrap_err();
    assert_eq!(e.reason, PoisonReason::UnknownSchemaVersion);
    let mut a = attrs();
    a.insert("event_type".into(), "refund".into());
    assert_eq!(
        parse_value(&a, &body()).unwrap_err().reason,
        PoisonReason::UnknownEventType
    );
}

#[test]
fn bad_json_is_poison() {
    assert_eq!(
        parse(&attrs(), b"{not json").unwrap_err().reason,
        PoisonReason::BadJson
    );
    assert_eq!(
        parse(&attrs(), b"[1,2]").unwrap_err().reason,
        PoisonReason::BadJson
    );
}

#[test]
fn missing_and_invalid_fields_are_poison() {
    for field in [
        "event_id",
        "tag_id",
        "result",
        "scanned_at",
        "client_ip_hash",
    ] {
        let mut v = body();
        v.as_object_mut().unwrap().remove(field);
        let e = parse_value(&attrs(), &v).unwrap_err();
        assert_eq!(e.reason, PoisonReason::MissingField, "{field}");
        assert!(e.detail.contains(field));
    }
    let cases = [
        ("event_id", json!("nope")),
        ("tag_id", json!("short")),
        ("result", json!("fake")),
        ("scanned_at", json!("yesterday")),
        // Implausible dates would stay in `first_scanned_at` for good.
        ("scanned_at", json!("0001-01-01T00:00:00.000Z")),
        ("scanned_at", json!("2023-12-31T23:59:59.999Z")),
        ("scanned_at", json!("9999-12-31T23:59:59.999Z")),
        ("client_ip_hash", json!("xyz")),
        ("api_key_id", json!(42)),
    ];
    for (field, value) in cases {
        let mut v = body();
        v[field] = value;
        assert_eq!(reason(v), PoisonReason::InvalidField, "{field}");
    }
}

#[test]
fn scanned_at_may_be_a_little_ahead_of_this_clock_not_more() {
    let at = |t: chrono::DateTime<Utc>| {
        let mut v = body();
        v["scanned_at"] = json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        parse_value(&attrs(), &v).map(|e| e.scanned_at)
    };
    let now = Utc::now();
    assert!(at(now + chrono::Duration::minutes(4)).is_ok());
    assert_eq!(
        at(now + chrono::Duration::minutes(6)).unwrap_err().reason,
        PoisonReason::InvalidField
    );
}

#[test]
fn user_agent_is_cleaned_and_cut() {
    let mut v = body();
    v["user_agent"] = json!(format!("a\u{0}b{}", "x".repeat(1000)));
    let e = parse_value(&attrs(), &v).unwrap();
    let ua = e.user_agent.unwrap();
    assert_eq!(ua.chars().count(), MAX_USER_AGENT_CHARS);
    assert!(ua.starts_with("a\u{FFFD}b"));
}

#[test]
fn every_poison_reason_is_listed_once() {
    // Adding a variant fails this match until it is listed in `ALL` too.
    let position = |reason: PoisonReason| match reason {
        PoisonReason::BadJson => 0,
        PoisonReason::UnknownSchemaVersion => 1,
        PoisonReason::UnknownEventType => 2,
        PoisonReason::MissingField => 3,
        PoisonReason::InvalidField => 4,
        PoisonReason::Rejected => 5,
    };
    let positions: Vec<usize> = PoisonReason::ALL.into_iter().map(position).collect();
    assert_eq!(positions, (0..PoisonReason::ALL.len()).collect::<Vec<_>>());
}

//! The factory's parser of scan events (contract 2.4): attributes and body in, a valid event or
//! a poison classification out, never a panic; what it accepts meets the contract.
#![no_main]

use std::collections::HashMap;

use chrono::Datelike as _;

use factory_service::events::schema::{self, MAX_USER_AGENT_CHARS};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    schema_version: Option<Attr<'a>>,
    event_type: Option<Attr<'a>>,
    data: &'a [u8],
}

/// Mostly the right attribute (so the body is reached), sometimes anything.
#[derive(Debug, Arbitrary)]
enum Attr<'a> {
    Expected,
    Other(&'a str),
}

fuzz_target!(|input: Input<'_>| {
    let mut attributes = HashMap::new();
    for (name, attr, expected) in [
        (
            "schema_version",
            &input.schema_version,
            schema::SCHEMA_VERSION,
        ),
        ("event_type", &input.event_type, schema::EVENT_TYPE),
    ] {
        match attr {
            Some(Attr::Expected) => attributes.insert(name.to_owned(), expected.to_owned()),
            Some(Attr::Other(v)) => attributes.insert(name.to_owned(), (*v).to_owned()),
            None => None,
        };
    }
    check(&attributes, input.data);
});

fn check(attributes: &HashMap<String, String>, data: &[u8]) {
    let Ok(event) = schema::parse(attributes, data) else {
        return;
    };
    assert_eq!(attributes["schema_version"], schema::SCHEMA_VERSION);
    assert_eq!(attributes["event_type"], schema::EVENT_TYPE);
    assert!(!event.event_id.is_nil());
    // The scan service produces ids with its own check: both sides agree on the form.
    assert!(scan_service::tags::is_valid_tag_id(&event.tag_id));
    assert!(!event.client_ip_hash.is_empty() && event.client_ip_hash.len() <= 128);
    assert!(
        event
            .client_ip_hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    if let Some(ua) = &event.user_agent {
        // PostgreSQL text holds no NUL.
        assert!(ua.chars().count() <= MAX_USER_AGENT_CHARS && !ua.contains('\0'));
    }
    // PostgreSQL timestamptz: 4713 BC to 294276 AD.
    let year = event.scanned_at.year();
    assert!((-4713..=294_276).contains(&year), "scanned_at year {year}");
}

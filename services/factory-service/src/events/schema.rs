//! The scan event, version 1 (contract 2.4): parsing, validation, and the classification of
//! messages that can never succeed (poison).
//!
//! Required: `event_id` (a UUID), `tag_id` (`^[A-Za-z0-9_-]{16,64}$`), `result`
//! (`authentic`, `revoked` or `unknown`), `scanned_at` (RFC 3339), `client_ip_hash` (hex).
//! `api_key_id` and `user_agent` may be null or absent. Unknown fields are ignored so that
//! producers can add fields within a version. Attributes must say `event_type=scan` and
//! `schema_version=1`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The only schema version this consumer understands.
pub const SCHEMA_VERSION: &str = "1";
/// The event type of scan events.
pub const EVENT_TYPE: &str = "scan";
/// Longest user agent kept; longer ones are cut (they are informational).
pub const MAX_USER_AGENT_CHARS: usize = 512;
const MAX_IP_HASH_CHARS: usize = 128;

/// What a scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanResult {
    /// A known, valid tag.
    Authentic,
    /// A known, revoked tag.
    Revoked,
    /// No such tag.
    Unknown,
}

impl ScanResult {
    /// The wire and database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authentic => "authentic",
            Self::Revoked => "revoked",
            Self::Unknown => "unknown",
        }
    }
}

/// A valid scan event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEvent {
    /// The producer's id of the event; applying is idempotent on it.
    pub event_id: Uuid,
    /// The scanned tag id.
    pub tag_id: String,
    /// What the scan answered.
    pub result: ScanResult,
    /// When the scan happened.
    pub scanned_at: DateTime<Utc>,
    /// Keyed hash of the client IP.
    pub client_ip_hash: String,
    /// The API key used, if any.
    pub api_key_id: Option<Uuid>,
    /// The client's user agent, if any (cut to [`MAX_USER_AGENT_CHARS`]).
    pub user_agent: Option<String>,
}

/// Why a message is poison. The spelling is the DLQ `dlq_reason` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoisonReason {
    /// The body is not a JSON object.
    BadJson,
    /// `schema_version` is absent or not one this consumer knows.
    UnknownSchemaVersion,
    /// `event_type` is absent or not `scan`.
    UnknownEventType,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong type or form.
    InvalidField,
    /// The database refused the event as data (a constraint or data error).
    Rejected,
}

impl PoisonReason {
    /// Every reason (a test checks the list against the enum).
    pub const ALL: [Self; 6] = [
        Self::BadJson,
        Self::UnknownSchemaVersion,
        Self::UnknownEventType,
        Self::MissingField,
        Self::InvalidField,
        Self::Rejected,
    ];

    /// The attribute and metric label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::UnknownSchemaVersion => "unknown_schema_version",
            Self::UnknownEventType => "unknown_event_type",
            Self::MissingField => "missing_field",
            Self::InvalidField => "invalid_field",
            Self::Rejected => "rejected",
        }
    }
}

/// A message that can never be applied, with a human explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Poison {
    /// The class of problem.
    pub reason: PoisonReason,
    /// What exactly is wrong (field names, never field values).
    pub detail: String,
}

impl Poison {
    fn new(reason: PoisonReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Parses and validates a message's attributes and body.
///
/// An attribute that is absent is taken as the contract's value (`schema_version=1`,
/// `event_type=scan`): the body is validated field by field either way, and dead-lettering a
/// valid scan only because a publisher left the attributes out would lose it from `scan_count`.
/// An attribute that is present must match.
pub fn parse(attributes: &HashMap<String, String>, data: &[u8]) -> Result<ScanEvent, Poison> {
    parse_at(attributes, data, Utc::now())
}

/// [`parse`], with `scanned_at` judged against `now` (the time the broker took the message:
/// see [`crate::events`]'s delivery, so that the consumer's own clock does not decide).
pub fn parse_at(
    attributes: &HashMap<String, String>,
    data: &[u8],
    now: DateTime<Utc>,
) -> Result<ScanEvent, Poison> {
    match attributes.get("schema_version").map(String::as_str) {
        None | Some(SCHEMA_VERSION) => {}
        Some(other) => {
            return Err(Poison::new(
                PoisonReason::UnknownSchemaVersion,
                format!("schema_version {other:?} is not supported (expected {SCHEMA_VERSION})"),
            ));
        }
    }
    if attributes
        .get("event_type")
        .is_some_and(|t| t.as_str() != EVENT_TYPE)
    {
        return Err(Poison::new(
            PoisonReason::UnknownEventType,
            "the event_type attribute is not \"scan\"",
        ));
    }
    let body: Value = serde_json::from_slice(data)
        .map_err(|e| Poison::new(PoisonReason::BadJson, format!("body is not JSON: {e}")))?;
    let Value::Object(body) = body else {
        return Err(Poison::new(
            PoisonReason::BadJson,
            "body is not a JSON object",
        ));
    };
    Ok(ScanEvent {
        event_id: uuid_field(required_str(&body, "event_id")?, "event_id")?,
        tag_id: tag_id(required_str(&body, "tag_id")?)?,
        result: result(required_str(&body, "result")?)?,
        scanned_at: scanned_at(required_str(&body, "scanned_at")?, now)?,
        client_ip_hash: ip_hash(required_str(&body, "client_ip_hash")?)?,
        api_key_id: optional_str(&body, "api_key_id")?
            .map(|v| uuid_field(v, "api_key_id"))
            .transpose()?,
        user_agent: optional_str(&body, "user_agent")?.map(user_agent),
    })
}

fn required_str<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a str, Poison> {
    optional_str(body, field)?.ok_or_else(|| {
        Poison::new(
            PoisonReason::MissingField,
            format!("required field {field} is missing"),
        )
    })
}

/// A string field that may be absent or null.
fn optional_str<'a>(body: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, Poison> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(field, "is not a string")),
    }
}

fn invalid(field: &str, problem: &str) -> Poison {
    Poison::new(PoisonReason::InvalidField, format!("{field} {problem}"))
}

fn uuid_field(value: &str, field: &str) -> Result<Uuid, Poison> {
    match Uuid::parse_str(value) {
        Ok(id) if !id.is_nil() => Ok(id),
        _ => Err(invalid(field, "is not a UUID")),
    }
}

fn tag_id(value: &str) -> Result<String, Poison> {
    let well_formed = (16..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if well_formed {
        Ok(value.to_owned())
    } else {
        Err(invalid("tag_id", "does not match ^[A-Za-z0-9_-]{16,64}$"))
    }
}

fn result(value: &str) -> Result<ScanResult, Poison> {
    match value {
        "authentic" => Ok(ScanResult::Authentic),
        "revoked" => Ok(ScanResult::Revoked),
        "unknown" => Ok(ScanResult::Unknown),
        _ => Err(invalid("result", "is not authentic, revoked or unknown")),
    }
}

/// No scan is older than this (2024-01-01T00:00:00Z; the platform dates from 2026). A tag keeps
/// the earliest `scanned_at` it is given as `first_scanned_at` for good, so one event dated
/// 0001-01-01 (a scanner's clock never set, or a forgery) would show that date forever.
const EARLIEST_SCAN_SECS: i64 = 1_704_067_200;

/// How far ahead of the broker's clock (when it took the message) a scanning instance's clock
/// may be.
const CLOCK_AHEAD: chrono::Duration = chrono::Duration::minutes(5);

fn scanned_at(value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Poison> {
    let at = DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| invalid("scanned_at", "is not an RFC 3339 timestamp"))?;
    if at.timestamp() < EARLIEST_SCAN_SECS {
        return Err(invalid(
            "scanned_at",
            "is before 2024-01-01, earlier than any scan",
        ));
    }
    if at > now + CLOCK_AHEAD {
        return Err(invalid(
            "scanned_at",
            "is more than 5 minutes in the future",
        ));
    }
    Ok(at)
}

fn ip_hash(value: &str) -> Result<String, Poison> {
    let well_formed = (1..=MAX_IP_HASH_CHARS).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_hexdigit());
    if well_formed {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(invalid("client_ip_hash", "is not a hex string"))
    }
}

/// PostgreSQL text cannot hold NUL, and a user agent is only informational, so it is cleaned
/// rather than refused.
fn user_agent(value: &str) -> String {
    value
        .chars()
        .take(MAX_USER_AGENT_CHARS)
        .map(|c| {
            if c == '\0' {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;

//! Timestamps in JSON as RFC 3339 UTC with exactly three fractional digits
//! (`2026-12-01T10:00:00.000Z`), the form of a scan event's `scanned_at` (CONTRACT 2.4).
//!
//! A tag's `first_scanned_at` is the `scanned_at` of the event it came from, and both services
//! answer with it: in this form it reads exactly as the event does. chrono's default form drops
//! trailing zero digits (`…T10:00:00Z`, `…T10:00:00.250Z`), so the same instant would read
//! differently from one scan to the next.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize as _, Deserializer, Serializer};

/// The text of `t` in this form.
pub fn millis(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `#[serde(default, with = "common::timestamp::millis_opt")]` on an `Option<DateTime<Utc>>`:
/// written in this form (or null), read in any RFC 3339 form (`default`: a missing field reads
/// as `None`, as it does without `with`).
pub mod millis_opt {
    use super::*;

    /// Writes `t` with exactly three fractional digits, or null.
    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&millis(t)),
            None => s.serialize_none(),
        }
    }

    /// Reads any RFC 3339 timestamp, or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<DateTime<Utc>>::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct At {
        #[serde(default, with = "millis_opt")]
        at: Option<DateTime<Utc>>,
    }

    #[test]
    fn always_three_digits_and_back() {
        for (given, written) in [
            ("2026-12-01T10:00:00Z", "2026-12-01T10:00:00.000Z"),
            ("2026-12-01T10:00:00.250Z", "2026-12-01T10:00:00.250Z"),
            ("2026-12-01T11:00:00.123+01:00", "2026-12-01T10:00:00.123Z"),
        ] {
            let at: DateTime<Utc> = given.parse().unwrap();
            let json = serde_json::to_string(&At { at: Some(at) }).unwrap();
            assert_eq!(json, format!(r#"{{"at":"{written}"}}"#));
            assert_eq!(serde_json::from_str::<At>(&json).unwrap().at, Some(at));
        }
        assert_eq!(
            serde_json::to_string(&At { at: None }).unwrap(),
            r#"{"at":null}"#
        );
        assert_eq!(
            serde_json::from_str::<At>(r#"{"at":null}"#).unwrap().at,
            None
        );
    }
}

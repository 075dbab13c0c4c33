//! The canonical bytes of events and checkpoints: RFC 8785 JSON Canonicalization Scheme (JCS).
//!
//! A third party must reproduce these bytes from a database dump, so everything here is specified
//! in docs/AUDIT_FORMAT.md: object keys sorted by UTF-16 code units, no whitespace, strings
//! escaped minimally, numbers in ECMAScript `Number.prototype.toString` form, timestamps as
//! strings with exactly six fractional digits (PostgreSQL stores microseconds).

use chrono::{DateTime, Datelike as _, Timelike as _, Utc};
use serde_json::{Map, Number, Value};

use super::record::AuditRecord;

/// The format version this code writes.
pub const FORMAT_VERSION: i16 = 2;

/// Integers up to 2^53 are exact in an IEEE 754 double, so JCS writes them as plain digits.
const MAX_SAFE_INTEGER: u64 = 1 << 53;

/// A timestamp as it is hashed and served: `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds).
pub fn timestamp(t: &DateTime<Utc>) -> String {
    let mut out = Vec::with_capacity(27);
    write_timestamp(t, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// [`timestamp`] written into `out`. Digit by digit rather than through chrono's format
/// machinery: the verifier does this for every event.
fn write_timestamp(t: &DateTime<Utc>, out: &mut Vec<u8>) {
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Outside four-digit years chrono's %Y spelling (sign, more digits) is the definition.
        out.extend_from_slice(t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string().as_bytes());
        return;
    }
    // A leap second (nanosecond >= 1e9) is shown as second 60 like chrono does.
    let nanos = t.nanosecond();
    let (second, micros) = if nanos >= 1_000_000_000 {
        (t.second() + 1, (nanos - 1_000_000_000) / 1000)
    } else {
        (t.second(), nanos / 1000)
    };
    let fields: [(u32, u32, u8); 7] = [
        (year.unsigned_abs(), 4, b'-'),
        (t.month(), 2, b'-'),
        (t.day(), 2, b'T'),
        (t.hour(), 2, b':'),
        (t.minute(), 2, b':'),
        (second, 2, b'.'),
        (micros, 6, b'Z'),
    ];
    for (value, width, separator) in fields {
        for i in (0..width).rev() {
            out.push(b'0' + u8::try_from(value / 10u32.pow(i) % 10).unwrap_or(0));
        }
        out.push(separator);
    }
}

/// Writes a UUID as a JSON string, lower-case and hyphenated, without allocating.
fn write_uuid(id: &uuid::Uuid, out: &mut Vec<u8>) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push(b'"');
    out.extend_from_slice(id.hyphenated().encode_lower(&mut buf).as_bytes());
    out.push(b'"');
}

/// Appends the canonical bytes of a version-2 event to `out`: the JCS form of the object with
/// exactly the keys `action`, `actor_email`, `actor_id`, `client_ip`, `details`, `event_id`,
/// `occurred_at`, `seq`, `target_id`, `target_type`, `user_agent`, `version` (absent values are
/// `null`). Written field by field rather than through a [`Map`] because the verifier runs this
/// for every row and the keys are fixed (their order is checked against [`jcs`] in a test).
///
/// The bytes are [`event_prefix`], the timestamp, `","seq":`, the seq in decimal, then
/// [`event_suffix`]: the appender sends prefix and suffix to PostgreSQL, which fills in the
/// middle under the chain-head lock (`sql/append_event.sql`).
pub fn event_bytes(event: &AuditRecord, out: &mut Vec<u8>) {
    event_prefix(event, out);
    write_timestamp(&event.occurred_at, out);
    out.extend_from_slice(SEQ_KEY);
    write_integer(event.seq, out);
    event_suffix(event, out);
}

/// What separates the `occurred_at` value from the `seq` value in [`event_bytes`].
pub const SEQ_KEY: &[u8] = b"\",\"seq\":";

/// The canonical bytes of an event before the `occurred_at` value: every field up to and
/// including `"occurred_at":"`. Independent of `seq` and `occurred_at`.
pub fn event_prefix(event: &AuditRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"action\":");
    write_string(&event.action, out);
    out.extend_from_slice(b",\"actor_email\":");
    write_opt_string(event.actor_email.as_deref(), out);
    out.extend_from_slice(b",\"actor_id\":");
    match &event.actor_id {
        Some(id) => write_uuid(id, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"client_ip\":");
    write_opt_string(event.client_ip.as_deref(), out);
    out.extend_from_slice(b",\"details\":");
    write_value(&event.details, out);
    out.extend_from_slice(b",\"event_id\":");
    write_uuid(&event.event_id, out);
    out.extend_from_slice(b",\"occurred_at\":\"");
}

/// The canonical bytes of an event after the `seq` value: from `,"target_id":` to the closing
/// brace. Independent of `seq` and `occurred_at`.
pub fn event_suffix(event: &AuditRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"target_id\":");
    write_opt_string(event.target_id.as_deref(), out);
    out.extend_from_slice(b",\"target_type\":");
    write_opt_string(event.target_type.as_deref(), out);
    out.extend_from_slice(b",\"user_agent\":");
    write_opt_string(event.user_agent.as_deref(), out);
    out.extend_from_slice(b",\"version\":");
    write_integer(i64::from(event.version), out);
    out.push(b'}');
}

/// Writes an integer in decimal without allocating.
fn write_integer(n: i64, out: &mut Vec<u8>) {
    if n < 0 {
        out.push(b'-');
    }
    let mut digits = [0u8; 20];
    let mut rest = n.unsigned_abs();
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// The RFC 8785 canonical form of any JSON value.
pub fn jcs(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map, out),
    }
}

fn write_object(map: &Map<String, Value>, out: &mut Vec<u8>) {
    // JCS orders keys by their UTF-16 code units, which differs from byte order only for
    // characters outside the Basic Multilingual Plane versus U+E000..U+FFFF.
    let mut entries: Vec<(Vec<u16>, &String, &Value)> = map
        .iter()
        .map(|(k, v)| (k.encode_utf16().collect(), k, v))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    out.push(b'{');
    for (i, (_, key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        write_value(value, out);
    }
    out.push(b'}');
}

fn write_opt_string(s: Option<&str>, out: &mut Vec<u8>) {
    match s {
        Some(s) => write_string(s, out),
        None => out.extend_from_slice(b"null"),
    }
}

/// JCS strings: only `"`, `\` and C0 controls are escaped (the short forms where JSON has one,
/// else `\u00xx` in lower-case hex); everything else is the raw UTF-8.
fn write_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x0d => out.extend_from_slice(b"\\r"),
            0x00..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// JCS numbers are IEEE 754 doubles written as ECMAScript does. Integers within ±2^53 are exact
/// doubles, so they are written directly; larger ones go through `f64` like any JCS
/// implementation would (details should keep to I-JSON's safe integer range).
fn write_number(n: &Number, out: &mut Vec<u8>) {
    if let Some(i) = n.as_i64()
        && i.unsigned_abs() <= MAX_SAFE_INTEGER
    {
        write_integer(i, out);
        return;
    }
    if let Some(u) = n.as_u64()
        && u <= MAX_SAFE_INTEGER
    {
        out.extend_from_slice(u.to_string().as_bytes());
        return;
    }
    // Without serde_json's arbitrary_precision every number has an f64 value.
    write_f64(n.as_f64().unwrap_or(0.0), out);
}

/// ECMAScript `Number.prototype.toString` (ECMA-262 7.1.12.1) for a finite double.
fn write_f64(f: f64, out: &mut Vec<u8>) {
    if f == 0.0 || !f.is_finite() {
        // -0 is written as 0; JSON cannot hold NaN or infinities, so they never reach here.
        out.push(b'0');
        return;
    }
    if f < 0.0 {
        out.push(b'-');
    }
    // Rust's `{:e}` gives the shortest digits that round-trip, which is what ECMAScript asks
    // for: `d[.ddd]e<exp>`.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let digits = break_tie_to_even(f.abs(), digits, exp);
    let k = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    let n = exp + 1;
    let zeros = |count: i32| "0".repeat(usize::try_from(count).unwrap_or(0));
    let text = if k <= n && n <= 21 {
        format!("{digits}{}", zeros(n - k))
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(usize::try_from(n).unwrap_or(0));
        format!("{int}.{frac}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", zeros(-n))
    } else {
        let sign = if n > 0 { '+' } else { '-' };
        let e = (n - 1).abs();
        if k == 1 {
            format!("{digits}e{sign}{e}")
        } else {
            format!("{}.{}e{sign}{e}", &digits[..1], &digits[1..])
        }
    };
    out.extend_from_slice(text.as_bytes());
}

/// ECMAScript picks, among equally short digit strings that round-trip, the one closest to the
/// exact value, and on an exact tie the even one; Rust's shortest formatting rounds such ties
/// up. A tie means the exact binary value's decimal expansion is the shortest digits' truncation
/// followed by exactly `5`.
fn break_tie_to_even(f: f64, digits: String, exp: i32) -> String {
    // Every double has a finite decimal expansion of at most 767 significant digits.
    let exact = format!("{f:.800e}");
    let (exact_mantissa, exact_exp) = exact.split_once('e').unwrap_or((exact.as_str(), "0"));
    if exact_exp.parse::<i32>().ok() != Some(exp) {
        return digits;
    }
    let exact_digits: Vec<u8> = exact_mantissa.bytes().filter(|b| *b != b'.').collect();
    let k = digits.len();
    let tie =
        exact_digits.get(k) == Some(&b'5') && exact_digits[k + 1..].iter().all(|d| *d == b'0');
    if !tie {
        return digits;
    }
    let truncated = String::from_utf8_lossy(&exact_digits[..k]).into_owned();
    let candidate = if truncated.as_bytes()[k - 1].is_multiple_of(2) {
        truncated
    } else {
        match increment(&truncated) {
            Some(up) => up,
            None => return digits,
        }
    };
    let parsed: Option<f64> = format!("{}.{}e{exp}", &candidate[..1], &candidate[1..])
        .parse()
        .ok();
    if parsed == Some(f) { candidate } else { digits }
}

/// Adds one in the last place of a decimal digit string; `None` when it would get longer.
fn increment(digits: &str) -> Option<String> {
    let mut bytes = digits.as_bytes().to_vec();
    for b in bytes.iter_mut().rev() {
        if *b == b'9' {
            *b = b'0';
        } else {
            *b += 1;
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn num(bits: u64) -> String {
        let mut out = Vec::new();
        write_f64(f64::from_bits(bits), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_follow_rfc8785_appendix_b() {
        let cases = [
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for (bits, want) in cases {
            assert_eq!(num(bits), want, "bits {bits:#018x}");
        }
    }

    #[test]
    fn timestamps_have_six_fractional_digits_like_chrono() {
        for micros in [
            0,
            1,
            1_764_057_600_000_000,
            1_764_057_600_123_456,
            253_402_300_799_999_999,
        ] {
            let t = DateTime::from_timestamp_micros(micros).unwrap();
            assert_eq!(
                timestamp(&t),
                t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
            );
        }
        let mut out = Vec::new();
        for n in [0, 7, -7, 42, i64::MAX, i64::MIN] {
            out.clear();
            write_integer(n, &mut out);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn integers_and_big_integers() {
        assert_eq!(jcs(&json!(42)), b"42");
        assert_eq!(jcs(&json!(-7)), b"-7");
        assert_eq!(jcs(&json!(1.0)), b"1");
        assert_eq!(jcs(&json!(u64::MAX)), b"18446744073709552000");
    }

    #[test]
    fn objects_sort_keys_by_utf16_and_strings_escape_minimally() {
        // RFC 8785 section 3.2.3's sorting example.
        let v = json!({"\u{20ac}": "Euro Sign", "\r": "Carriage Return", "\u{fb33}": "Hebrew Letter Dalet With Dagesh", "1": "One", "\u{1f600}": "Emoji: Grinning Face", "\u{0080}": "Control", "\u{00f6}": "Latin Small Letter O With Diaeresis"});
        let s = String::from_utf8(jcs(&v)).unwrap();
        let positions: Vec<usize> = [
            "Carriage", "One", "Control", "Latin", "Euro", "Emoji", "Hebrew",
        ]
        .iter()
        .map(|w| s.find(w).unwrap())
        .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
        assert_eq!(
            jcs(&json!({"b": [1, "x\u{1}\"\\/\n"], "a": null, "c": {"z": true, "y": false}})),
            br#"{"a":null,"b":[1,"x\u0001\"\\/\n"],"c":{"y":false,"z":true}}"#
        );
    }

    #[test]
    fn event_bytes_equal_the_jcs_of_the_event_object() {
        let event = AuditRecord {
            seq: 7,
            version: FORMAT_VERSION,
            event_id: uuid::Uuid::nil(),
            occurred_at: DateTime::from_timestamp_micros(1_764_052_807_123_456).unwrap(),
            actor_id: Some(uuid::Uuid::max()),
            actor_email: Some("a@b.c".into()),
            action: "api_key.created".into(),
            target_type: None,
            target_id: Some("x".into()),
            client_ip: None,
            user_agent: Some("ua \"q\"".into()),
            details: json!({"n": 1.5, "a": [true]}),
            prev_hash: None,
            hash: None,
            signature: None,
            key_id: None,
        };
        let object = json!({
            "version": 2, "seq": 7, "event_id": uuid::Uuid::nil().to_string(),
            "occurred_at": "2025-11-25T06:40:07.123456Z", "actor_id": uuid::Uuid::max().to_string(),
            "actor_email": "a@b.c", "action": "api_key.created", "target_type": null,
            "target_id": "x", "client_ip": null, "user_agent": "ua \"q\"",
            "details": {"n": 1.5, "a": [true]},
        });
        let mut bytes = Vec::new();
        event_bytes(&event, &mut bytes);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            String::from_utf8(jcs(&object)).unwrap()
        );
    }
}

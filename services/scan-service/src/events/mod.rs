//! Scan events (CONTRACT 2.4): built on the request path, handed to a bounded queue without
//! waiting, and published to Pub/Sub by a background worker.

pub mod publisher;
pub mod queue;
pub mod worker;

use std::io::Write as _;
use std::net::IpAddr;

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac as _};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

pub use self::publisher::{PubSubPublisher, PublishError, Publisher};
pub use self::queue::{EventQueue, EventReceiver};
pub use self::worker::{WorkerSettings, spawn_worker};

/// What a scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanResult {
    /// A known, authentic tag.
    Authentic,
    /// A known, revoked tag.
    Revoked,
    /// No such tag.
    Unknown,
}

/// One scan event, the message body on `SCAN_EVENTS_TOPIC`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScanEvent {
    /// UUID v7 (time-ordered); the consumer's idempotency key.
    pub event_id: Uuid,
    /// The scanned tag id.
    pub tag_id: String,
    /// What the scan found.
    pub result: ScanResult,
    /// RFC 3339 UTC with milliseconds.
    pub scanned_at: String,
    /// HMAC-SHA256 of the client IP under `IP_HASH_KEY` (hex in the JSON).
    pub client_ip_hash: IpHash,
    /// The API key used, if any.
    pub api_key_id: Option<Uuid>,
    /// The caller's `User-Agent`, if readable.
    pub user_agent: Option<String>,
}

/// The attributes every scan event carries.
pub const ATTRIBUTES: [(&str, &str); 2] = [("event_type", "scan"), ("schema_version", "1")];

/// Longest user agent kept in an event.
const MAX_USER_AGENT: usize = 512;

impl ScanEvent {
    /// A new event for a scan happening now.
    pub fn new(
        tag_id: &str,
        result: ScanResult,
        client_ip_hash: IpHash,
        api_key_id: Option<Uuid>,
        user_agent: Option<&str>,
    ) -> Self {
        Self::at(
            Utc::now(),
            tag_id,
            result,
            client_ip_hash,
            api_key_id,
            user_agent,
        )
    }

    /// A new event for a scan at `when`.
    pub fn at(
        when: DateTime<Utc>,
        tag_id: &str,
        result: ScanResult,
        client_ip_hash: IpHash,
        api_key_id: Option<Uuid>,
        user_agent: Option<&str>,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            tag_id: tag_id.to_owned(),
            result,
            scanned_at: when.to_rfc3339_opts(SecondsFormat::Millis, true),
            client_ip_hash,
            api_key_id,
            // An empty (or blank) header says no more than a missing one: both are `null`.
            user_agent: user_agent
                .map(str::trim)
                .filter(|ua| !ua.is_empty())
                .map(|ua| common::text::truncated(ua, MAX_USER_AGENT).to_owned()),
        }
    }
}

/// Hashes client IPs for events, so the factory can count distinct scanners without learning
/// addresses.
#[derive(Clone)]
pub struct IpHasher {
    /// The MAC already keyed with `IP_HASH_KEY`: cloning it per hash skips the key schedule.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for IpHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IpHasher(<redacted>)")
    }
}

impl IpHasher {
    /// A hasher keyed with `IP_HASH_KEY`.
    pub fn new(key: SecretString) -> Self {
        // HMAC takes keys of any length, so this cannot fail.
        let keyed = Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        Self { keyed }
    }

    /// HMAC-SHA256 of the IP's text form.
    pub fn hash(&self, ip: IpAddr) -> IpHash {
        let mut mac = self.keyed.clone();
        // The text goes through a buffer on the stack, not a `String`: this runs on every scan.
        let mut text = [0u8; IP_TEXT_MAX];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        match write!(cursor, "{ip}") {
            Ok(()) => {
                let len = usize::try_from(cursor.position()).unwrap_or(IP_TEXT_MAX);
                mac.update(&text[..len]);
            }
            // Cannot happen: no address's text is longer than the buffer. Should one be, its
            // text is hashed from a `String` instead.
            Err(_) => mac.update(ip.to_string().as_bytes()),
        }
        IpHash(mac.finalize().into_bytes().into())
    }
}

/// The longest text of an IP address: `INET6_ADDRSTRLEN` less its NUL, for an IPv6 address
/// with an IPv4 tail. Rust writes at most 39 characters.
const IP_TEXT_MAX: usize = 45;

/// A client IP's HMAC-SHA256 ([`IpHasher::hash`]), written as 64 lowercase hex digits.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct IpHash([u8; 32]);

impl IpHash {
    /// The hex digits, written into `buf`.
    fn hex<'b>(&self, buf: &'b mut [u8; 64]) -> &'b str {
        // Through a buffer: `hex::encode` collects its output one `char` at a time. Neither
        // step can fail: the buffer has the exact length, and hex digits are ASCII.
        if hex::encode_to_slice(self.0, buf).is_err() {
            return "";
        }
        std::str::from_utf8(buf).unwrap_or_default()
    }
}

impl std::fmt::Display for IpHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.hex(&mut [0; 64]))
    }
}

impl std::fmt::Debug for IpHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Serialize for IpHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.hex(&mut [0; 64]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_contract_shape() {
        let when = DateTime::parse_from_rfc3339("2026-11-25T10:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let e = ScanEvent::at(
            when,
            "abcdefghijklmnop",
            ScanResult::Unknown,
            IpHash::default(),
            None,
            None,
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["scanned_at"], "2026-11-25T10:00:00.123Z");
        assert_eq!(v["result"], "unknown");
        assert!(v["api_key_id"].is_null());
        assert!(v["user_agent"].is_null());
        assert_eq!(e.event_id.get_version_num(), 7);
        assert_eq!(v.as_object().unwrap().len(), 7);
    }

    #[test]
    fn ip_hash_is_keyed_hmac() {
        let a = IpHasher::new(SecretString::from("k1k1k1k1k1k1k1k1"));
        let b = IpHasher::new(SecretString::from("k2k2k2k2k2k2k2k2"));
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        // Lowercase hex of HMAC-SHA256(key, "203.0.113.7"), as Python's hmac module gives it.
        let want = "8188d0c975bd1fe3335be4a82674c6c070b0e6880184859b05017afdc8469e6f";
        assert_eq!(a.hash(ip).to_string(), want);
        assert_eq!(serde_json::to_value(a.hash(ip)).unwrap(), want);
        assert_eq!(a.hash(ip), a.hash(ip));
        assert_ne!(a.hash(ip), b.hash(ip));
        // The longest text Rust writes for an address is hashed whole: HMAC(key, that text).
        let v6: IpAddr = "1111:2222:3333:4444:5555:6666:7777:8888".parse().unwrap();
        assert!(v6.to_string().len() <= IP_TEXT_MAX, "{v6}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k1k1k1k1k1k1k1k1").unwrap();
        mac.update(v6.to_string().as_bytes());
        assert_eq!(a.hash(v6), IpHash(mac.finalize().into_bytes().into()));
    }

    #[test]
    fn a_blank_user_agent_is_null_and_a_padded_one_is_trimmed() {
        let event = |ua| {
            ScanEvent::new(
                "abcdefghijklmnop",
                ScanResult::Unknown,
                IpHash::default(),
                None,
                Some(ua),
            )
        };
        assert_eq!(event("").user_agent, None);
        assert_eq!(event(" \t ").user_agent, None);
        assert_eq!(event(" curl/8.5 ").user_agent.as_deref(), Some("curl/8.5"));
    }

    #[test]
    fn long_user_agents_are_cut_on_a_char_boundary() {
        let ua = "é".repeat(400);
        let e = ScanEvent::new(
            "abcdefghijklmnop",
            ScanResult::Authentic,
            IpHash::default(),
            None,
            Some(&ua),
        );
        let kept = e.user_agent.unwrap();
        assert!(kept.len() <= MAX_USER_AGENT);
        assert!(ua.starts_with(&kept));
    }
}

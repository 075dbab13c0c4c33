//! The format of dead-lettered scan events.
//!
//! A dead-lettered message keeps the original body and attributes and adds `dlq_*` attributes:
//! `dlq_reason` (a [`PoisonReason`](super::schema::PoisonReason) spelling or `max_attempts`),
//! `dlq_error` (what went wrong), `dlq_original_message_id`, `dlq_delivery_attempt`,
//! `dlq_subscription` and `dlq_dead_lettered_at` (RFC 3339). Messages that Pub/Sub forwarded by
//! itself (the subscription's dead-letter policy, when the consumer could not publish) carry
//! Pub/Sub's `CloudPubSubDeadLetter*` attributes instead and show as reason `delivery_limit`.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use google_cloud_pubsub::model::Message;

/// Attribute: why the message was dead-lettered.
pub const REASON: &str = "dlq_reason";
/// Attribute: the last error, or what is wrong with the message.
pub const ERROR: &str = "dlq_error";
/// Attribute: the message id on the main topic.
pub const ORIGINAL_MESSAGE_ID: &str = "dlq_original_message_id";
/// Attribute: the delivery attempt that gave up.
pub const DELIVERY_ATTEMPT: &str = "dlq_delivery_attempt";
/// Attribute: the subscription the message was consumed from.
pub const SUBSCRIPTION: &str = "dlq_subscription";
/// Attribute: when it was dead-lettered.
pub const DEAD_LETTERED_AT: &str = "dlq_dead_lettered_at";
/// Reason of a message that failed on its last allowed attempt.
pub const MAX_ATTEMPTS: &str = "max_attempts";
/// Reason shown for messages Pub/Sub dead-lettered by itself.
pub const DELIVERY_LIMIT: &str = "delivery_limit";

const OUR_PREFIX: &str = "dlq_";
const PUBSUB_PREFIX: &str = "CloudPubSubDeadLetter";
const PUBSUB_DELIVERY_COUNT: &str = "CloudPubSubDeadLetterSourceDeliveryCount";
/// Attribute values are bounded by Pub/Sub (1024 bytes); errors are cut well below that, at a
/// character boundary.
const MAX_ERROR_BYTES: usize = 900;

/// Why and where a message is being dead-lettered.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// The reason attribute.
    pub reason: &'static str,
    /// The error or problem, in words.
    pub error: String,
    /// The delivery attempt, when Pub/Sub reported it.
    pub delivery_attempt: Option<i32>,
    /// The subscription it came from.
    pub subscription: &'a str,
}

/// The message to publish on the DLQ topic for `original`.
pub fn to_dlq_message(original: &Message, letter: &DeadLetter<'_>, now: DateTime<Utc>) -> Message {
    let mut attributes = original_attributes(&original.attributes);
    attributes.insert(REASON.into(), letter.reason.into());
    attributes.insert(
        ERROR.into(),
        common::text::truncated(&letter.error, MAX_ERROR_BYTES).into(),
    );
    attributes.insert(ORIGINAL_MESSAGE_ID.into(), original.message_id.clone());
    if let Some(attempt) = letter.delivery_attempt {
        attributes.insert(DELIVERY_ATTEMPT.into(), attempt.to_string());
    }
    attributes.insert(SUBSCRIPTION.into(), letter.subscription.into());
    attributes.insert(
        DEAD_LETTERED_AT.into(),
        now.to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    Message::new()
        .set_data(original.data.clone())
        .set_attributes(attributes)
}

/// The message to publish on the main topic to replay `dead`: its body and its producer's
/// attributes, without any dead-letter bookkeeping.
pub fn to_replay_message(dead: &Message) -> Message {
    Message::new()
        .set_data(dead.data.clone())
        .set_attributes(original_attributes(&dead.attributes))
}

/// The producer's attributes: everything but dead-letter bookkeeping.
fn original_attributes(attributes: &HashMap<String, String>) -> HashMap<String, String> {
    attributes
        .iter()
        .filter(|(k, _)| !k.starts_with(OUR_PREFIX) && !k.starts_with(PUBSUB_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What `dlq list` shows about one dead-lettered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqEntry {
    /// The message id on the DLQ topic.
    pub message_id: String,
    /// The message id on the main topic, when known.
    pub original_message_id: Option<String>,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The last error, when recorded.
    pub error: Option<String>,
    /// Delivery attempts made, when known.
    pub attempts: Option<i32>,
    /// When it reached the DLQ topic.
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// The body, whole (callers cut it for display).
    pub body: String,
}

impl DlqEntry {
    /// Reads the bookkeeping of a message taken from the DLQ.
    pub fn from_message(m: &Message) -> Self {
        let attr = |k: &str| m.attributes.get(k).cloned();
        let attempts = attr(DELIVERY_ATTEMPT)
            .or_else(|| attr(PUBSUB_DELIVERY_COUNT))
            .and_then(|a| a.parse().ok());
        let reason = attr(REASON).unwrap_or_else(|| DELIVERY_LIMIT.to_owned());
        let dead_lettered_at = m
            .publish_time
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.seconds(), t.nanos().max(0) as u32));
        Self {
            message_id: m.message_id.clone(),
            original_message_id: attr(ORIGINAL_MESSAGE_ID),
            reason,
            error: attr(ERROR),
            attempts,
            dead_lettered_at,
            body: String::from_utf8_lossy(&m.data).into_owned(),
        }
    }

    /// Whether `id` names this message, by its DLQ id or its original id.
    pub fn is_named(&self, id: &str) -> bool {
        self.message_id == id || self.original_message_id.as_deref() == Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original() -> Message {
        let mut m = Message::new().set_data("{}").set_attributes([
            ("event_type", "scan"),
            ("schema_version", "1"),
            ("dlq_reason", "stale"),
        ]);
        m.message_id = "42".into();
        m
    }

    /// Pub/Sub bounds attribute values in bytes: an error in another script (three bytes a
    /// character here) was cut to 900 characters, 2,700 bytes, and the DLQ publish refused.
    #[test]
    fn the_error_attribute_is_cut_in_bytes_at_a_character_boundary() {
        let letter = DeadLetter {
            reason: MAX_ATTEMPTS,
            error: "\u{30a8}".repeat(1000),
            delivery_attempt: None,
            subscription: "projects/p/subscriptions/s",
        };
        let m = to_dlq_message(&original(), &letter, Utc::now());
        let error = &m.attributes[ERROR];
        assert!(error.len() <= MAX_ERROR_BYTES, "{} bytes", error.len());
        assert_eq!(error.chars().count(), MAX_ERROR_BYTES / 3);
    }

    #[test]
    fn dead_letter_keeps_body_and_producer_attributes() {
        let letter = DeadLetter {
            reason: MAX_ATTEMPTS,
            error: "x".repeat(2000),
            delivery_attempt: Some(3),
            subscription: "projects/p/subscriptions/s",
        };
        let m = to_dlq_message(&original(), &letter, Utc::now());
        assert_eq!(&m.data[..], b"{}");
        assert_eq!(m.attributes["event_type"], "scan");
        assert_eq!(m.attributes[REASON], MAX_ATTEMPTS);
        assert_eq!(m.attributes[ORIGINAL_MESSAGE_ID], "42");
        assert_eq!(m.attributes[DELIVERY_ATTEMPT], "3");
        assert_eq!(m.attributes[ERROR].len(), MAX_ERROR_BYTES);

        let mut dead = m.clone();
        dead.message_id = "77".into();
        dead.attributes
            .insert(PUBSUB_DELIVERY_COUNT.into(), "5".into());
        let entry = DlqEntry::from_message(&dead);
        assert_eq!(entry.reason, MAX_ATTEMPTS);
        assert_eq!(entry.attempts, Some(3));
        assert!(entry.is_named("42") && entry.is_named("77") && !entry.is_named("1"));

        let replay = to_replay_message(&dead);
        let mut keys: Vec<_> = replay.attributes.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["event_type", "schema_version"]);
    }

    #[test]
    fn pubsub_forwarded_messages_show_as_delivery_limit() {
        let m = Message::new()
            .set_data("{}")
            .set_attributes([(PUBSUB_DELIVERY_COUNT, "5")]);
        let entry = DlqEntry::from_message(&m);
        assert_eq!(entry.reason, DELIVERY_LIMIT);
        assert_eq!(entry.attempts, Some(5));
    }
}

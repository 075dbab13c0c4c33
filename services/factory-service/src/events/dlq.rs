//! `dlq list` and `dlq replay`: read the DLQ inspection subscription.
//!
//! There is no unary pull in the client, so both read a short streaming pull: they take what
//! arrives until the stream has been quiet for a moment. Messages they do not consume are held
//! until the end, so the same message is not shown twice in one run, and then given back: the
//! stream is closed and they are nacked. Pub/Sub makes them visible again at once; the emulator
//! ignores a nack from a closed stream, so there they come back when their lease of
//! [`READ_LEASE`] runs out, and the default first wait of a read is longer than that.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior};
use sha2::{Digest as _, Sha256};

use super::dead_letter::{self, DlqEntry};
use super::{EventsError, EventsSettings};

const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `dlq list`/`replay` wait for the broker to answer before giving up: longer than
/// the admin clients' own retries, so that their error (which says what failed) comes first.
const REACH_TIMEOUT: Duration =
    Duration::from_secs(common::pubsub::ADMIN_RETRY_LIMIT.as_secs() + 2);
/// The lease a read takes on what it sees (Pub/Sub's minimum), so that a message it could not
/// give back is visible again soon.
pub const READ_LEASE: Duration = Duration::from_secs(10);

/// How long a read waits for messages before concluding it has seen what there is.
#[derive(Debug, Clone, Copy)]
pub struct ReadWindow {
    /// Wait for the first message (opening the stream takes a moment).
    pub first: Duration,
    /// Wait for each further message.
    pub idle: Duration,
}

impl Default for ReadWindow {
    fn default() -> Self {
        Self {
            first: READ_LEASE + Duration::from_secs(2),
            idle: Duration::from_secs(2),
        }
    }
}

/// Which dead letters to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every message in the DLQ while the replay reads, those arriving meanwhile included,
    /// except one holding what the run already republished (its replay failing again).
    All,
    /// The one with this DLQ message id or original message id.
    MessageId(String),
}

/// Up to `limit` dead letters, oldest first as the service delivers them, without consuming
/// any of them.
pub async fn list(
    settings: &EventsSettings,
    limit: usize,
    window: ReadWindow,
) -> Result<Vec<DlqEntry>, EventsError> {
    let mut reader = Reader::open(settings, limit).await?;
    let mut entries = Vec::new();
    while entries.len() < limit {
        let Some((message, handler)) = reader.next(window).await? else {
            break;
        };
        if reader.first_sight(&message) {
            entries.push(DlqEntry::from_message(&message));
        }
        reader.hold(handler);
    }
    reader.close().await;
    Ok(entries)
}

/// Republishes the selected dead letters to the main topic and acks each from the DLQ once the
/// main topic has it. A dead letter holding what this run already republished (the replay
/// failing again, or a copy) is left alone, so a message that fails again is not replayed in a
/// loop. Returns what was replayed.
///
/// That used to be told by time: dead letters dated after this machine's clock at the start
/// were left. Their dates are the dead-lettering consumer's clock, so run from a machine whose
/// clock was behind, `--all` replayed nothing, and said only "0 replayed".
///
/// `on_replayed` is told of each message as soon as the main topic has it, so that a long
/// replay shows its progress, and what went through before an error or an interruption is
/// known.
pub async fn replay(
    settings: &EventsSettings,
    selector: &Selector,
    window: ReadWindow,
    mut on_replayed: impl FnMut(&DlqEntry),
) -> Result<Vec<DlqEntry>, EventsError> {
    let topic = &settings.pubsub.topic;
    let publisher = common::pubsub::publisher(&settings.pubsub, topic).await?;
    let mut reader = Reader::open(settings, 1000).await?;
    let mut replayed = Vec::new();
    let mut republished = HashSet::new();
    while let Some((message, handler)) = reader.next(window).await? {
        let entry = DlqEntry::from_message(&message);
        let replay = dead_letter::to_replay_message(&message);
        let content = fingerprint(&replay);
        let wanted = match selector {
            Selector::All => reader.first_sight(&message) && !republished.contains(&content),
            Selector::MessageId(id) => entry.is_named(id),
        };
        if !wanted {
            reader.hold(handler);
            continue;
        }
        let publish = publisher.publish(replay);
        let outcome = tokio::time::timeout(PUBLISH_TIMEOUT, publish).await;
        match outcome {
            Ok(Ok(_)) => {
                republished.insert(content);
                handler.ack();
                on_replayed(&entry);
                replayed.push(entry);
            }
            Ok(Err(source)) => {
                handler.nack();
                reader.close().await;
                return Err(EventsError::Publish {
                    topic: topic.clone(),
                    source,
                });
            }
            Err(_) => {
                handler.nack();
                reader.close().await;
                return Err(EventsError::PublishTimeout {
                    topic: topic.clone(),
                });
            }
        }
        if matches!(selector, Selector::MessageId(_)) {
            break;
        }
    }
    reader.close().await;
    Ok(replayed)
}

/// SHA-256 of what a replay publishes: the body and the attributes, in key order.
fn fingerprint(message: &Message) -> [u8; 32] {
    let mut attributes: Vec<_> = message.attributes.iter().collect();
    attributes.sort();
    let mut hash = Sha256::new();
    for part in [&message.data[..]].into_iter().chain(
        attributes
            .iter()
            .flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()]),
    ) {
        hash.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// A short-lived streaming pull on the inspection subscription.
struct Reader {
    stream: MessageStream,
    held: Vec<Handler>,
    seen: HashSet<String>,
    started: bool,
}

impl Reader {
    async fn open(settings: &EventsSettings, max_outstanding: usize) -> Result<Self, EventsError> {
        let ps = &settings.pubsub;
        let name = ps.subscription_path(&settings.inspect_subscription());
        // A streaming pull keeps reconnecting to a broker it cannot reach and just stays
        // quiet, which would read as an empty DLQ. Ask for the subscription first, so an
        // unreachable broker (or a missing subscription) is an error, not "0 messages".
        let operation = format!("reading subscription {name}");
        let admin = common::pubsub::subscription_admin(ps).await?;
        tokio::time::timeout(
            REACH_TIMEOUT,
            admin
                .get_subscription()
                .set_subscription(name.clone())
                .send(),
        )
        .await
        .map_err(|_| EventsError::Timeout {
            operation: operation.clone(),
            seconds: REACH_TIMEOUT.as_secs(),
        })?
        .map_err(|e| EventsError::rpc(operation, e))?;
        let client = common::pubsub::subscriber(ps).await?;
        let stream = client
            .subscribe(name)
            .set_max_outstanding_messages(i64::try_from(max_outstanding.max(1)).unwrap_or(i64::MAX))
            .set_max_lease_extension(READ_LEASE)
            .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
            .build();
        Ok(Self {
            stream,
            held: Vec::new(),
            seen: HashSet::new(),
            started: false,
        })
    }

    /// The next message, or `None` once the stream stays quiet for the window.
    async fn next(
        &mut self,
        window: ReadWindow,
    ) -> Result<Option<(Message, Handler)>, EventsError> {
        let wait = if self.started {
            window.idle
        } else {
            window.first
        };
        match tokio::time::timeout(wait, self.stream.next()).await {
            Err(_) | Ok(None) => Ok(None),
            Ok(Some(Err(e))) => Err(EventsError::rpc("reading the DLQ subscription", e)),
            Ok(Some(Ok(pair))) => {
                self.started = true;
                Ok(Some(pair))
            }
        }
    }

    /// Whether this is the first time this run sees `message`.
    fn first_sight(&mut self, message: &Message) -> bool {
        self.seen.insert(message.message_id.clone())
    }

    fn hold(&mut self, handler: Handler) {
        self.held.push(handler);
    }

    /// Flushes acks and gives back what was held. The gRPC stream is closed first: the
    /// emulator (like the service) would otherwise redeliver the nacked messages onto this
    /// dying stream, where they would sit unseen until their ack deadline.
    async fn close(self) {
        let Self { stream, held, .. } = self;
        let token = stream.shutdown_token();
        drop(stream);
        // Shutting down nacks what is still leased (the held messages) and flushes acks.
        token.shutdown().await;
        drop(held);
    }
}

/// Formats an entry for `dlq list`: one line, the body cut to `preview` characters.
pub fn describe(entry: &DlqEntry, now: DateTime<Utc>, preview: usize) -> String {
    let age = entry
        .dead_lettered_at
        .map(|t| format_age(now - t))
        .unwrap_or_else(|| "?".to_owned());
    let attempts = entry
        .attempts
        .map_or_else(|| "?".to_owned(), |a| a.to_string());
    let mut body: String = entry.body.chars().take(preview).collect();
    if entry.body.chars().count() > preview {
        body.push('…');
    }
    // One line, and nothing a terminal would act on or that hides text (control, bidi and
    // invisible characters escaped, as `escape_debug` does), quotes left as they are so a
    // JSON body stays readable.
    let mut shown = String::with_capacity(body.len());
    for c in body.chars() {
        if matches!(c, '"' | '\'') {
            shown.push(c);
        } else {
            shown.extend(c.escape_debug());
        }
    }
    let body = shown;
    format!(
        "{id}  original={orig}  reason={reason}  attempts={attempts}  age={age}\n    \
         error: {error}\n    body:  {body}",
        id = entry.message_id,
        orig = entry.original_message_id.as_deref().unwrap_or("?"),
        reason = entry.reason,
        error = entry.error.as_deref().unwrap_or("-"),
    )
}

fn format_age(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What keeps `--all` from replaying in a loop: a replayed event that the consumer
    /// dead-letters again (with other bookkeeping, an id and time of its own, and Pub/Sub's
    /// attributes when its policy forwarded it) republishes exactly what the run already did;
    /// another event does not.
    #[test]
    fn a_replay_dead_lettered_again_has_the_fingerprint_of_the_first_replay() {
        let event = |id: &str| {
            let mut m = Message::new()
                .set_data(format!(r#"{{"event_id":"{id}"}}"#))
                .set_attributes([("schema_version", "1"), ("event_type", "scan")]);
            m.message_id = format!("original-{id}");
            m
        };
        let letter = |reason, error: &str| dead_letter::DeadLetter {
            reason,
            error: error.to_owned(),
            delivery_attempt: Some(5),
            subscription: "projects/p/subscriptions/s",
        };
        let first = dead_letter::to_dlq_message(
            &event("a"),
            &letter(dead_letter::MAX_ATTEMPTS, "database unavailable"),
            Utc::now(),
        );
        let replayed = dead_letter::to_replay_message(&first);
        let mut received = replayed.clone();
        received.message_id = "replayed-1".to_owned();
        let mut again = dead_letter::to_dlq_message(
            &received,
            &letter(dead_letter::MAX_ATTEMPTS, "still unavailable"),
            Utc::now() + chrono::TimeDelta::minutes(3),
        );
        again.attributes.insert(
            "CloudPubSubDeadLetterSourceDeliveryCount".to_owned(),
            "5".to_owned(),
        );
        assert_eq!(
            fingerprint(&dead_letter::to_replay_message(&again)),
            fingerprint(&replayed)
        );
        let other = dead_letter::to_dlq_message(
            &event("b"),
            &letter(dead_letter::MAX_ATTEMPTS, "database unavailable"),
            Utc::now(),
        );
        assert_ne!(
            fingerprint(&dead_letter::to_replay_message(&other)),
            fingerprint(&replayed)
        );
    }

    #[test]
    fn an_entry_is_one_readable_block() {
        let now = Utc::now();
        let entry = DlqEntry {
            message_id: "9".into(),
            original_message_id: Some("4".into()),
            reason: "bad_json".into(),
            error: Some("body is not JSON".into()),
            attempts: Some(1),
            dead_lettered_at: Some(now - chrono::TimeDelta::seconds(3725)),
            body: "{\"a\":\n1\u{202E}}xyz".into(),
        };
        let text = describe(&entry, now, 9);
        assert!(text.starts_with("9  original=4  reason=bad_json  attempts=1  age=1h2m"));
        assert!(text.contains("error: body is not JSON"));
        assert!(text.ends_with("body:  {\"a\":\\n1\\u{202e}}…"), "{text}");
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(format_age(chrono::TimeDelta::seconds(59)), "59s");
        assert_eq!(format_age(chrono::TimeDelta::seconds(61)), "1m1s");
        assert_eq!(format_age(chrono::TimeDelta::days(2)), "2d0h");
        assert_eq!(format_age(chrono::TimeDelta::seconds(-5)), "0s");
    }
}

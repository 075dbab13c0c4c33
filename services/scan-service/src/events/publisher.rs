//! Where scan events go: the [`Publisher`] seam and its Google Pub/Sub implementation.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::{BufMut as _, BytesMut};
use common::config::PubSubConfig;
use google_cloud_gax::retry_policy::RetryPolicyExt as _;
use google_cloud_pubsub::client::Publisher as PubSubClient;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::retry_policy::RetryableErrors;

use super::{ATTRIBUTES, ScanEvent};

/// Some events of a batch were not published.
#[derive(Debug, thiserror::Error)]
#[error("{} of the batch not published: {message}", failed.len())]
pub struct PublishError {
    /// Indexes (into the batch) of the events to try again.
    pub failed: Vec<usize>,
    /// What went wrong (first error seen).
    pub message: String,
}

/// Sends batches of scan events to the broker.
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `batch`; on error, reports which events were not published.
    fn publish(&self, batch: &[ScanEvent])
    -> impl Future<Output = Result<(), PublishError>> + Send;

    /// Sends whatever the client itself still holds (called once at shutdown).
    fn flush(&self) -> impl Future<Output = ()> + Send;
}

/// Bytes reserved per event for the JSON bodies of a batch (an event is 250 to 350 bytes, more
/// with a long user agent; the buffer grows when a batch needs more).
const EVENT_JSON_CAPACITY: usize = 384;

/// The worker gives up on one attempt after this long and retries the batch later; the
/// client's own retries stop earlier so an attempt's outcome is known.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENT_RETRY_LIMIT: Duration = Duration::from_secs(5);

/// Publishes to a Pub/Sub topic with Google's client (emulator-aware via `common::pubsub`).
#[derive(Debug, Clone)]
pub struct PubSubPublisher {
    client: PubSubClient,
}

impl PubSubPublisher {
    /// A publisher on `config.topic`.
    pub async fn connect(config: &PubSubConfig) -> Result<Self, common::pubsub::ClientError> {
        let builder = PubSubClient::builder(config.topic_path(&config.topic))
            // Our worker batches already; the client should send what it gets promptly, and a
            // whole batch in one request (Pub/Sub's maximum): per-request costs, in this process
            // and at the broker, dominate per-message ones.
            .set_delay_threshold(Duration::from_millis(5))
            .set_message_count_threshold(1000)
            .with_retry_policy(RetryableErrors.with_time_limit(CLIENT_RETRY_LIMIT));
        let client = common::pubsub::configure(builder, config)
            .build()
            .await
            .map_err(|source| common::pubsub::ClientError {
                client: "publisher",
                source,
            })?;
        Ok(Self { client })
    }
}

/// A message with the contract's attributes and no body yet. Each event's message is a copy:
/// cloning the two-entry map costs less than building and hashing it again per event.
static TEMPLATE: LazyLock<Message> = LazyLock::new(|| Message::new().set_attributes(ATTRIBUTES));

/// The Pub/Sub message of an event: its JSON body and the contract's attributes. The body is
/// written into `bodies`, which must be empty (as every call leaves it), and split off it: the
/// bodies of a batch share one buffer (one allocation, when it was reserved large enough, and
/// one more for the shared handle of the first split), freed with the last of them.
pub fn to_message(event: &ScanEvent, bodies: &mut BytesMut) -> Result<Message, serde_json::Error> {
    debug_assert!(
        bodies.is_empty(),
        "a body would take in what was left before it"
    );
    let mut writer = bodies.writer();
    let written = serde_json::to_writer(&mut writer, event);
    let bodies = writer.into_inner();
    if let Err(e) = written {
        // Nothing of a failed body may stay in front of the next one.
        bodies.clear();
        return Err(e);
    }
    let mut message = TEMPLATE.clone();
    message.data = bodies.split().freeze();
    Ok(message)
}

impl Publisher for PubSubPublisher {
    async fn publish(&self, batch: &[ScanEvent]) -> Result<(), PublishError> {
        let mut sent = Vec::with_capacity(batch.len());
        let mut handles = Vec::with_capacity(batch.len());
        let mut bodies = BytesMut::with_capacity(batch.len() * EVENT_JSON_CAPACITY);
        for (i, event) in batch.iter().enumerate() {
            match to_message(event, &mut bodies) {
                Ok(message) => {
                    sent.push(i);
                    handles.push(self.client.publish(message));
                }
                Err(e) => {
                    // Cannot happen for this plain struct; never retry what cannot be encoded.
                    tracing::error!(error = %e, event_id = %event.event_id, "scan event not encodable; skipped");
                }
            }
        }
        // The client sends a batch in one request (or a few concurrent ones), so the results
        // arrive together: awaiting them in order costs about one wake-up for the batch, where
        // `join_all` over more than 30 futures (a batch under load holds hundreds) gives each a
        // task node of its own (an allocation and a wake-up per event).
        let mut results = Vec::with_capacity(handles.len());
        let answered = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
            for handle in handles {
                results.push(handle.await);
            }
        })
        .await
        .is_ok();
        let mut failed = Vec::new();
        // With no answer in time, the events without a result are retried. Messages may still
        // go out after this; the retry then duplicates them, which the consumer absorbs (it
        // applies each event_id once).
        let mut first_error = (!answered).then(|| format!("no answer within {ATTEMPT_TIMEOUT:?}"));
        for (k, &i) in sent.iter().enumerate() {
            match results.get(k) {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    first_error.get_or_insert_with(|| e.to_string());
                    failed.push(i);
                }
                None => failed.push(i),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(PublishError {
                failed,
                message: first_error.unwrap_or_default(),
            })
        }
    }

    async fn flush(&self) {
        let _ = tokio::time::timeout(ATTEMPT_TIMEOUT, self.client.flush()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{IpHash, ScanResult};

    #[test]
    fn a_message_is_the_event_json_with_the_contract_attributes() {
        let event = ScanEvent::new(
            "abcdefghijklmnop",
            ScanResult::Authentic,
            IpHash::default(),
            None,
            None,
        );
        // Two bodies in one buffer: each message holds its own event and nothing else.
        let mut bodies = BytesMut::with_capacity(16);
        for _ in 0..2 {
            let message = to_message(&event, &mut bodies).expect("encodable");
            let body: serde_json::Value = serde_json::from_slice(&message.data).expect("JSON");
            assert_eq!(body, serde_json::to_value(&event).expect("JSON"));
            assert_eq!(message.attributes.len(), 2);
            assert_eq!(message.attributes["event_type"], "scan");
            assert_eq!(message.attributes["schema_version"], "1");
            assert!(message.ordering_key.is_empty() && message.message_id.is_empty());
        }
    }
}

//! What becomes of each delivery: poison goes to the DLQ at once and is acked; a valid event is
//! acked once the transaction that applied it (or found it already applied) committed; a
//! transient failure (after the batch's hold, for a database that cannot be reached: see
//! [`super::batcher`]) is nacked (Pub/Sub redelivers it after the subscription's back-off)
//! until its last allowed attempt, when it goes to the DLQ with reason `max_attempts`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use sqlx::PgPool;
use tracing::Instrument as _;

use super::EventsSettings;
use super::apply::{Applied, ApplyError, EventResult};
use super::dead_letter::{self, DeadLetter};
use super::metrics::{self, Outcome};
use super::schema::{self, Poison, PoisonReason, ScanEvent};

/// Longest wait for the DLQ publish before the message is nacked instead.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// What settling a delivery needs, shared by a consumer's streams and batches.
pub(super) struct Context {
    /// Where events are applied.
    pub pool: PgPool,
    /// The DLQ topic's publisher.
    pub dlq: Publisher,
    /// The consumer's settings.
    pub settings: EventsSettings,
    /// The full subscription path (named in dead letters).
    pub subscription: String,
    /// Deliveries settled so far (acked, nacked or dead-lettered).
    pub settled: Arc<AtomicU64>,
}

/// A message as received, with the handle that settles it. Dropping it nacks it.
pub(super) struct Delivery {
    message: Message,
    handler: Handler,
    attempt: Option<i32>,
}

/// A delivery whose message is a valid scan event, waiting for its batch.
pub(super) struct Valid {
    /// The delivery to settle once the event is applied.
    pub delivery: Delivery,
    /// The event.
    pub event: ScanEvent,
}

impl Delivery {
    /// Takes a received message, recording its lag.
    pub fn new(message: Message, handler: Handler) -> Self {
        if let Some(published) = &message.publish_time {
            metrics::lag(seconds_since(published.seconds(), published.nanos()));
        }
        let attempt = handler.delivery_attempt();
        Self {
            message,
            handler,
            attempt,
        }
    }

    /// Parses and validates the message; poison comes back with the delivery (boxed: it is
    /// the rare path).
    pub fn validate(self) -> Result<Valid, Box<(Self, Poison)>> {
        match parse(&self.message) {
            Ok(event) => Ok(Valid {
                delivery: self,
                event,
            }),
            Err(poison) => Err(Box::new((self, poison))),
        }
    }

    fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "scan_event",
            message_id = %self.message.message_id,
            attempt = self.attempt,
            event_id = tracing::field::Empty,
        )
    }

    fn ack(self, context: &Context, outcome: Outcome) {
        self.handler.ack();
        metrics::processed(outcome);
        context.settled.fetch_add(1, Ordering::Relaxed);
    }

    /// Nacks for redelivery, counted as `retried`.
    pub fn nack(self, context: &Context) {
        self.handler.nack();
        metrics::processed(Outcome::Retried);
        context.settled.fetch_add(1, Ordering::Relaxed);
    }

    /// Publishes the message to the DLQ and acks it once the DLQ has it. If the DLQ cannot be
    /// reached the message is nacked, so it is never lost: it comes back, and after the
    /// subscription's own limit Pub/Sub forwards it to the DLQ by itself.
    async fn dead_letter(
        self,
        context: &Context,
        reason: &'static str,
        error: String,
        outcome: Outcome,
    ) {
        let letter = DeadLetter {
            reason,
            error,
            delivery_attempt: self.attempt,
            subscription: &context.subscription,
        };
        let dead = dead_letter::to_dlq_message(&self.message, &letter, Utc::now());
        match tokio::time::timeout(PUBLISH_TIMEOUT, context.dlq.publish(dead)).await {
            Ok(Ok(dlq_message_id)) => {
                metrics::dead_lettered(reason);
                tracing::warn!(
                    reason,
                    error = %letter.error,
                    %dlq_message_id,
                    "scan event dead-lettered"
                );
                self.ack(context, outcome);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, reason, "scan event could not be dead-lettered; nacking");
                self.nack(context);
            }
            Err(_) => {
                tracing::error!(reason, "dead-lettering timed out; nacking");
                self.nack(context);
            }
        }
    }
}

/// Dead-letters a poison message at once (it can never succeed), in a span naming it.
pub(super) async fn poison(context: Arc<Context>, delivery: Delivery, poison: Poison) {
    let span = delivery.span();
    delivery
        .dead_letter(
            &context,
            poison.reason.as_str(),
            poison.detail,
            Outcome::Poison,
        )
        .instrument(span)
        .await;
}

/// Settles a batch's deliveries by what applying their events did; `results` are in the
/// order of `batch` (see [`super::apply::apply_isolating`]).
pub(super) async fn settle(context: &Context, batch: Vec<Valid>, results: Vec<EventResult>) {
    let max = i64::from(context.settings.max_delivery_attempts);
    let mut letters = Vec::new();
    let (mut retried, mut uncounted, mut last_error) = (0usize, 0usize, None);
    let mut expired = 0usize;
    for (valid, result) in batch.into_iter().zip(results) {
        let delivery = valid.delivery;
        match result {
            Ok(Applied::Recorded) => delivery.ack(context, Outcome::Applied),
            Ok(Applied::Duplicate) => delivery.ack(context, Outcome::Duplicate),
            Ok(Applied::Expired) => {
                expired += 1;
                delivery.ack(context, Outcome::Expired);
            }
            Err(e) => {
                let span = delivery.span();
                span.record("event_id", tracing::field::display(valid.event.event_id));
                let is_last = delivery.attempt.is_some_and(|a| i64::from(a) >= max);
                let (reason, outcome) = match *e {
                    ApplyError::Rejected(_) => (PoisonReason::Rejected.as_str(), Outcome::Poison),
                    ApplyError::Transient(_) | ApplyError::TimedOut(_) if is_last => {
                        (dead_letter::MAX_ATTEMPTS, Outcome::DeadLettered)
                    }
                    ApplyError::Transient(_) | ApplyError::TimedOut(_) => {
                        uncounted += usize::from(delivery.attempt.is_none());
                        retried += 1;
                        last_error = Some(e);
                        delivery.nack(context);
                        continue;
                    }
                };
                letters.push(
                    delivery
                        .dead_letter(context, reason, e.to_string(), outcome)
                        .instrument(span),
                );
            }
        }
    }
    if let Some(e) = last_error {
        tracing::warn!(error = %e, events = retried, "scan events not applied; nacking for redelivery");
    }
    if expired > 0 {
        // A redelivery after the sweep, or a scan dated by an instance whose clock ran behind
        // by more than the retention: either way not counted, and said so.
        tracing::warn!(
            events = expired,
            "scan events scanned before the retention horizon acked without being counted"
        );
    }
    if uncounted > 0 {
        // Without a dead-letter policy Pub/Sub does not count deliveries, so these messages
        // would be retried for as long as the failure lasts.
        tracing::warn!("no delivery count on the subscription: run `pubsub setup`");
    }
    futures::future::join_all(letters).await;
}

/// Parses a message as a scan event, its `scanned_at` judged against the time the broker took
/// the message rather than this machine's clock: a consumer whose clock ran 5 minutes slow took
/// every valid event for one "in the future" and dead-lettered it, and `scan_count` stopped for
/// every tag. (Without a publish time, as no broker sends, this machine's clock.)
fn parse(message: &Message) -> Result<ScanEvent, Poison> {
    let published = message
        .publish_time
        .as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds(), t.nanos().try_into().ok()?));
    schema::parse_at(
        &message.attributes,
        &message.data,
        published.unwrap_or_else(Utc::now),
    )
}

/// Seconds from a protobuf timestamp to now.
fn seconds_since(seconds: i64, nanos: i32) -> f64 {
    let now = Utc::now();
    (now.timestamp() - seconds) as f64
        + (f64::from(now.timestamp_subsec_nanos()) - f64::from(nanos)) / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(published: chrono::DateTime<Utc>, scanned: chrono::DateTime<Utc>) -> Message {
        let body = serde_json::json!({
            "event_id": uuid::Uuid::new_v4(),
            "tag_id": "AbCdEfGhIjKlMnOp_-12",
            "result": "authentic",
            "scanned_at": scanned.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "client_ip_hash": "ABCDEF0123",
        });
        let published = google_cloud_wkt::Timestamp::new(
            published.timestamp(),
            published
                .timestamp_subsec_nanos()
                .try_into()
                .expect("under a second"),
        )
        .expect("a valid time");
        Message::new()
            .set_data(body.to_string())
            .set_publish_time(published)
    }

    /// The broker's time decides, not this consumer's clock: seen from a consumer whose clock
    /// is 10 minutes slow, a scan made a second before the broker took it is 10 minutes in the
    /// future, and it was dead-lettered as such.
    #[test]
    fn scanned_at_is_judged_by_the_broker_s_time_not_this_clock() {
        let broker = Utc::now() + chrono::Duration::minutes(10);
        let scanned = broker - chrono::Duration::seconds(1);
        assert!(parse(&message(broker, scanned)).is_ok());
        // Ahead of the broker by more than 5 minutes is still refused, whatever this clock says.
        let early_broker = Utc::now() - chrono::Duration::minutes(10);
        let poison =
            parse(&message(early_broker, Utc::now())).expect_err("6+ minutes ahead of the broker");
        assert_eq!(poison.reason, schema::PoisonReason::InvalidField);
    }
}

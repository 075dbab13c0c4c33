//! The scan-event consumer: a streaming pull on the subscription, each message handled on its
//! own task so that one slow or failing message never holds up the others.
//!
//! Per message: poison goes to the DLQ at once and is acked; a valid event is applied and acked
//! after commit; a transient failure is nacked (Pub/Sub redelivers it after the subscription's
//! back-off) until its last allowed attempt, when it goes to the DLQ with reason
//! `max_attempts`. Any number of consumers may share the subscription: applying is idempotent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use google_cloud_pubsub::client::{Publisher, Subscriber};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::apply::{self, Applied, ApplyError};
use super::dead_letter::{self, DeadLetter};
use super::metrics::{self, Outcome};
use super::schema::{self, PoisonReason};
use super::{EventsError, EventsSettings};

/// Longest wait for the DLQ publish before the message is nacked instead.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause between attempts to reopen a failed stream.
const MAX_REOPEN_BACKOFF: Duration = Duration::from_secs(30);

/// A scan-event consumer, ready to run.
pub struct Consumer {
    subscriber: Subscriber,
    context: Arc<Context>,
}

/// What every message task needs.
struct Context {
    pool: PgPool,
    dlq: Publisher,
    settings: EventsSettings,
    subscription: String,
    settled: Arc<AtomicU64>,
}

/// Why one stream stopped.
enum StreamEnd {
    /// Shutdown was asked for.
    Shutdown,
    /// The stream failed or ended; `delivered` says whether it had been working.
    Failed {
        error: Option<google_cloud_pubsub::Error>,
        delivered: bool,
    },
}

impl Consumer {
    /// Builds the Pub/Sub clients. `pool` is where events are applied.
    pub async fn build(settings: EventsSettings, pool: PgPool) -> Result<Self, EventsError> {
        let subscriber = common::pubsub::subscriber(&settings.pubsub).await?;
        let dlq = common::pubsub::publisher(&settings.pubsub, &settings.pubsub.dlq_topic).await?;
        let subscription = settings
            .pubsub
            .subscription_path(&settings.pubsub.subscription);
        Ok(Self {
            subscriber,
            context: Arc::new(Context {
                pool,
                dlq,
                settings,
                subscription,
                settled: Arc::new(AtomicU64::new(0)),
            }),
        })
    }

    /// A live count of the deliveries this consumer has settled (acked, nacked or
    /// dead-lettered): lets tests and benchmarks see how instances share the load.
    pub fn settled(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.context.settled)
    }

    /// Consumes until `shutdown` is cancelled, then stops pulling, lets in-flight messages
    /// finish (up to the drain timeout; the rest are nacked) and flushes acks. A failed stream
    /// is reopened with back-off rather than ending the consumer, so a missing subscription or
    /// an absent emulator heals by itself.
    pub async fn run(self, shutdown: CancellationToken) {
        // Here rather than in `build`: by now the process has installed its metrics recorder.
        metrics::describe();
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.run_stream(&shutdown).await {
                StreamEnd::Shutdown => break,
                StreamEnd::Failed { error, delivered } => {
                    if delivered {
                        backoff = Duration::from_secs(1);
                    }
                    let why =
                        error.map_or_else(|| "the stream ended".to_owned(), |e| e.to_string());
                    tracing::warn!(error = %why, ?backoff, "scan-event stream stopped; reopening");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_REOPEN_BACKOFF);
                }
            }
        }
        tracing::info!("scan-event consumer stopped");
    }

    async fn run_stream(&self, shutdown: &CancellationToken) -> StreamEnd {
        let settings = &self.context.settings;
        let mut stream = self
            .subscriber
            .subscribe(self.context.subscription.clone())
            .set_max_outstanding_messages(settings.max_outstanding_messages)
            .set_max_lease_extension(settings.ack_deadline)
            .build();
        let stream_token = stream.shutdown_token();
        let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut delivered = false;
        let end = loop {
            // Taking a permit before pulling is the local half of flow control: a saturated
            // consumer stops reading, and the server stops sending at the outstanding limit.
            let permit = tokio::select! {
                biased;
                () = shutdown.cancelled() => break StreamEnd::Shutdown,
                p = Arc::clone(&permits).acquire_owned() => p,
            };
            let Ok(permit) = permit else {
                break StreamEnd::Shutdown;
            };
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => break StreamEnd::Shutdown,
                n = stream.next() => n,
            };
            match next {
                Some(Ok((message, handler))) => {
                    delivered = true;
                    let context = Arc::clone(&self.context);
                    tasks.spawn(async move {
                        handle(&context, message, handler).await;
                        context.settled.fetch_add(1, Ordering::Relaxed);
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    break StreamEnd::Failed {
                        error: Some(e),
                        delivered,
                    };
                }
                None => {
                    break StreamEnd::Failed {
                        error: None,
                        delivered,
                    };
                }
            }
            while tasks.try_join_next().is_some() {}
        };
        // Stop pulling: close the gRPC stream before settling, so messages nacked from here on
        // are redelivered to other consumers at once instead of onto this stream. The handlers
        // still ack and nack through the lease loop until the token's shutdown completes.
        drop(stream);
        self.drain(&mut tasks).await;
        stream_token.shutdown().await;
        end
    }

    /// Waits for in-flight messages; those still running after the drain timeout are aborted,
    /// which drops (and so nacks) their handlers and rolls back their transactions.
    async fn drain(&self, tasks: &mut JoinSet<()>) {
        let all_done = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.context.settings.drain_timeout, all_done)
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = tasks.len(),
                "scan events still in flight at shutdown; nacking them"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }
}

/// Handles one delivery to its end, in a span naming the message (never the tag).
async fn handle(context: &Context, message: Message, handler: Handler) {
    let attempt = handler.delivery_attempt();
    let span = tracing::info_span!(
        "scan_event",
        message_id = %message.message_id,
        attempt,
        event_id = tracing::field::Empty,
    );
    process(context, message, handler, attempt)
        .instrument(span)
        .await;
}

/// Acks, nacks, or dead-letters then acks one delivery.
async fn process(context: &Context, message: Message, handler: Handler, attempt: Option<i32>) {
    if let Some(published) = &message.publish_time {
        metrics::lag(seconds_since(published.seconds(), published.nanos()));
    }
    let event = match schema::parse(&message.attributes, &message.data) {
        Ok(event) => event,
        Err(poison) => {
            let letter = letter(context, poison.reason.as_str(), poison.detail, attempt);
            return dead_letter(context, &message, handler, letter, Outcome::Poison).await;
        }
    };
    tracing::Span::current().record("event_id", tracing::field::display(event.event_id));
    match apply::apply(&context.pool, &event).await {
        Ok(Applied::Recorded) => settle(handler, Outcome::Applied),
        Ok(Applied::Duplicate) => settle(handler, Outcome::Duplicate),
        Err(ApplyError::Rejected(e)) => {
            let reason = PoisonReason::Rejected.as_str();
            let letter = letter(context, reason, e.to_string(), attempt);
            dead_letter(context, &message, handler, letter, Outcome::Poison).await;
        }
        Err(e @ ApplyError::Transient(_)) => {
            let max = i64::from(context.settings.max_delivery_attempts);
            if attempt.is_some_and(|a| i64::from(a) >= max) {
                let letter = letter(context, dead_letter::MAX_ATTEMPTS, e.to_string(), attempt);
                dead_letter(context, &message, handler, letter, Outcome::DeadLettered).await;
                return;
            }
            if attempt.is_none() {
                // Without a dead-letter policy Pub/Sub does not count deliveries, so this
                // message would be retried for as long as the failure lasts.
                tracing::warn!("no delivery count on the subscription: run `pubsub setup`");
            }
            tracing::warn!(error = %e, "scan event not applied; nacking for redelivery");
            handler.nack();
            metrics::processed(Outcome::Retried);
        }
    }
}

/// Seconds from a protobuf timestamp to now.
fn seconds_since(seconds: i64, nanos: i32) -> f64 {
    let now = Utc::now();
    (now.timestamp() - seconds) as f64
        + (f64::from(now.timestamp_subsec_nanos()) - f64::from(nanos)) / 1e9
}

fn letter<'a>(
    context: &'a Context,
    reason: &'static str,
    error: String,
    attempt: Option<i32>,
) -> DeadLetter<'a> {
    DeadLetter {
        reason,
        error,
        delivery_attempt: attempt,
        subscription: &context.subscription,
    }
}

fn settle(handler: Handler, outcome: Outcome) {
    handler.ack();
    metrics::processed(outcome);
}

/// Publishes the message to the DLQ and acks it once the DLQ has it. If the DLQ cannot be
/// reached the message is nacked, so it is never lost: it comes back, and after the
/// subscription's own limit Pub/Sub forwards it to the DLQ by itself.
async fn dead_letter(
    context: &Context,
    message: &Message,
    handler: Handler,
    letter: DeadLetter<'_>,
    outcome: Outcome,
) {
    let dead = dead_letter::to_dlq_message(message, &letter, Utc::now());
    match tokio::time::timeout(PUBLISH_TIMEOUT, context.dlq.publish(dead)).await {
        Ok(Ok(dlq_message_id)) => {
            handler.ack();
            metrics::processed(outcome);
            metrics::dead_lettered(letter.reason);
            tracing::warn!(
                reason = letter.reason,
                error = %letter.error,
                %dlq_message_id,
                "scan event dead-lettered"
            );
        }
        Ok(Err(e)) => {
            tracing::error!(
                error = %e,
                reason = letter.reason,
                "scan event could not be dead-lettered; nacking"
            );
            handler.nack();
            metrics::processed(Outcome::Retried);
        }
        Err(_) => {
            tracing::error!(reason = letter.reason, "dead-lettering timed out; nacking");
            handler.nack();
            metrics::processed(Outcome::Retried);
        }
    }
}

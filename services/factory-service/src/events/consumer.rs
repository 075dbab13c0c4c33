//! The scan-event consumer: several streaming pulls on the subscription feed one micro-batcher
//! ([`super::batcher`]), which applies events in batches (one transaction each) and settles
//! every delivery by its own outcome ([`super::delivery`]). Poison is dead-lettered by the
//! stream that received it, at once. Any number of consumers may share the subscription:
//! applying is idempotent.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use common::health::ReadinessCheck;
use google_cloud_pubsub::client::Subscriber;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::delivery::{self, Context, Delivery, Valid};
use super::metrics;
use super::{EventsError, EventsSettings, batcher, watch};

/// Longest pause between attempts to reopen a failed stream.
const MAX_REOPEN_BACKOFF: Duration = Duration::from_secs(30);

/// A scan-event consumer, ready to run.
pub struct Consumer {
    subscriber: Subscriber,
    context: Arc<Context>,
    /// Whether the broker answers for the subscription (the readiness probe's request), for
    /// [`watch`] and a worker's `/readyz`.
    watch: ReadinessCheck,
}

/// How often a consumer whose database lacks migrations looks again.
const SCHEMA_POLL: Duration = Duration::from_secs(2);

/// How long one look at the applied migrations may take (a partitioned connection would
/// otherwise hold the wait, and shutdown, for as long as TCP keeps it).
const SCHEMA_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits, before pulling anything, until the database has every migration this build needs;
/// `false` when shutdown came first. A release's consumer may start before its `migrate` has
/// run (a rolling deploy): pulling then would fail every event on a missing table, spend its
/// delivery attempts and dead-letter it, where waiting leaves the events in Pub/Sub for the
/// consumers of the release before (or for this one, once migrated).
///
/// A database that cannot be asked at the first look is not waited for: the batches hold
/// their events while it is away, as they do for an outage later on (and hold them too if it
/// comes back without the migrations: see `ApplyError::is_database_away`). Once it has been
/// seen lacking migrations, only seeing them all ends the wait.
async fn wait_for_schema(pool: &PgPool, shutdown: &CancellationToken) -> bool {
    let mut lacking = false;
    loop {
        let look = tokio::select! {
            () = shutdown.cancelled() => return false,
            look = tokio::time::timeout(
                SCHEMA_CHECK_TIMEOUT,
                common::db::missing_migrations(pool),
            ) => look,
        };
        match look {
            Ok(Ok(missing)) if missing.is_empty() => {
                if lacking {
                    tracing::info!("the database has every migration this build needs");
                }
                return true;
            }
            Ok(Ok(missing)) => {
                if !lacking {
                    lacking = true;
                    tracing::warn!(
                        ?missing,
                        "the database lacks migrations this build needs; not consuming scan \
                         events until `factory-service migrate` has run (they wait in Pub/Sub)"
                    );
                }
            }
            // Not known to lack anything: consume, as with any outage.
            Ok(Err(_)) | Err(_) if !lacking => return true,
            Ok(Err(_)) | Err(_) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(SCHEMA_POLL) => {}
        }
    }
}

/// Why one stream stopped.
enum StreamEnd {
    /// Shutdown was asked for (or the batcher is gone).
    Shutdown,
    /// The stream failed or ended; `delivered` says whether it had been working.
    Failed {
        error: Option<google_cloud_pubsub::Error>,
        delivered: bool,
    },
}

impl Consumer {
    /// Builds the Pub/Sub clients. `pool` is where events are applied; size it to
    /// `settings.consumer.db_connections`, the batches applied at once.
    pub async fn build(settings: EventsSettings, pool: PgPool) -> Result<Self, EventsError> {
        let subscriber = common::pubsub::subscriber(&settings.pubsub).await?;
        let watch = super::readiness(&settings.pubsub).await?;
        let dlq = common::pubsub::publisher(&settings.pubsub, &settings.pubsub.dlq_topic).await?;
        let subscription = settings
            .pubsub
            .subscription_path(&settings.pubsub.subscription);
        // The process installs its metrics recorder before building a consumer (`serve` in
        // `Application::build`, `worker` first thing), so these reach it, and they are in
        // place before anything can scrape.
        metrics::describe();
        Ok(Self {
            subscriber,
            context: Arc::new(Context {
                pool,
                dlq,
                settings,
                subscription,
                settled: Arc::new(AtomicU64::new(0)),
            }),
            watch,
        })
    }

    /// The probe of the subscription this consumer watches, for a `/readyz` of the process.
    pub fn readiness(&self) -> ReadinessCheck {
        self.watch.clone()
    }

    /// A live count of the deliveries this consumer has settled (acked, nacked or
    /// dead-lettered): lets tests and benchmarks see how instances share the load.
    pub fn settled(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.context.settled)
    }

    /// Warns, in the background, when PostgreSQL cannot be reached. For `worker`, where the
    /// consumer is all there is: nothing touches the database until a message arrives, so an
    /// unreachable one would go unnoticed on a quiet subscription. Not fatal, since it may come
    /// back by itself. (`serve` has its API, probes and audit jobs on the same database.)
    pub fn warn_if_database_unreachable(&self) {
        let pool = self.context.pool.clone();
        tokio::spawn(async move {
            if let Err(e) = sqlx::query("SELECT 1").execute(&pool).await {
                tracing::warn!(
                    error = %e,
                    "the scan-event consumer cannot reach PostgreSQL; events are not applied \
                     until it can (deliveries are retried, then dead-lettered)"
                );
            }
        });
    }

    /// Consumes until `shutdown` is cancelled, then stops pulling, lets in-flight batches
    /// finish (up to the drain timeout; the rest are nacked) and flushes acks. A failed stream
    /// is reopened with back-off rather than ending the consumer, so a missing subscription or
    /// an absent emulator heals by itself.
    pub async fn run(self, shutdown: CancellationToken) {
        if !wait_for_schema(&self.context.pool, &shutdown).await {
            return;
        }
        let settings = self.context.settings.consumer;
        tracing::info!(
            subscription = %self.context.subscription,
            streams = settings.streams.max(1),
            batch_size = settings.batch_size,
            "consuming scan events"
        );
        let (sender, deliveries) = mpsc::channel(settings.batch_size.max(1));
        let mut streams = JoinSet::new();
        for stream in 0..settings.streams.max(1) {
            let pull = pull(
                self.subscriber.clone(),
                Arc::clone(&self.context),
                sender.clone(),
                shutdown.clone(),
            );
            streams.spawn(pull.instrument(tracing::info_span!("scan_event_stream", stream)));
        }
        // The channel closes when the last stream has stopped and settled its messages.
        drop(sender);
        let streams_done = async {
            while let Some(joined) = streams.join_next().await {
                if let Err(e) = joined {
                    tracing::error!(error = %e, "a scan-event stream task failed");
                }
            }
        };
        tokio::join!(
            batcher::run(Arc::clone(&self.context), deliveries, shutdown.clone()),
            streams_done,
            watch::watch(&self.watch, &self.context.subscription, &shutdown),
        );
        tracing::info!("scan-event consumer stopped");
    }
}

/// One streaming pull, reopened with back-off whenever it fails, until shutdown.
async fn pull(
    subscriber: Subscriber,
    context: Arc<Context>,
    sender: mpsc::Sender<Valid>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match run_stream(&subscriber, &context, &sender, &shutdown).await {
            StreamEnd::Shutdown => break,
            StreamEnd::Failed { error, delivered } => {
                if delivered {
                    backoff = Duration::from_secs(1);
                }
                let why = error.map_or_else(|| "the stream ended".to_owned(), |e| e.to_string());
                tracing::warn!(error = %why, ?backoff, "scan-event stream stopped; reopening");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_REOPEN_BACKOFF);
            }
        }
    }
}

async fn run_stream(
    subscriber: &Subscriber,
    context: &Arc<Context>,
    sender: &mpsc::Sender<Valid>,
    shutdown: &CancellationToken,
) -> StreamEnd {
    let settings = &context.settings;
    let mut stream = subscriber
        .subscribe(context.subscription.clone())
        .set_max_outstanding_messages(settings.consumer.max_outstanding_messages)
        .set_max_lease_extension(settings.ack_deadline)
        .build();
    let stream_token = stream.shutdown_token();
    let mut poison = JoinSet::new();
    let mut delivered = false;
    let end = loop {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => break StreamEnd::Shutdown,
            n = stream.next() => n,
        };
        let (message, handler) = match next {
            Some(Ok(received)) => received,
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
        };
        delivered = true;
        match Delivery::new(message, handler).validate() {
            Ok(valid) => {
                // Waiting for room in the channel is the local half of flow control: a
                // saturated consumer stops reading, and the server stops sending at the
                // outstanding limit.
                let room = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => None,
                    room = sender.reserve() => room.ok(),
                };
                let Some(room) = room else {
                    valid.delivery.nack(context);
                    break StreamEnd::Shutdown;
                };
                room.send(valid);
            }
            Err(rejected) => {
                let (delivery, reason) = *rejected;
                poison.spawn(delivery::poison(Arc::clone(context), delivery, reason));
            }
        }
        while poison.try_join_next().is_some() {}
    };
    // Stop pulling: close the gRPC stream before settling, so messages nacked from here on
    // are redelivered to other consumers at once instead of onto this stream. Acks and nacks
    // still go through the lease loop until the token's shutdown completes, which waits for
    // every message this stream delivered (including those in the batcher) to be settled.
    drop(stream);
    drain_poison(&mut poison, settings.drain_timeout).await;
    // Waits for every message this stream delivered to be settled (the batcher may take up to
    // its drain timeout) and for Pub/Sub to take the acks and nacks. Bounded: with Pub/Sub not
    // answering they are never confirmed and this waited for ever, so a stopped process never
    // exited. Their messages come back after their ack deadline, and applying them again
    // counts nothing twice.
    let limit = settings.drain_timeout + ACK_FLUSH_TIMEOUT;
    if tokio::time::timeout(limit, stream_token.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "this stream's last messages were not settled with Pub/Sub within {limit:?}; \
             stopping without them (they are delivered again after their ack deadline)"
        );
    }
    end
}

/// How long a stopping stream waits for Pub/Sub to take its last acks and nacks, beyond the
/// batcher's drain timeout.
const ACK_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Waits for dead-letter publishes of poison; those still running after `timeout` are
/// aborted, which drops (and so nacks) their messages.
async fn drain_poison(tasks: &mut JoinSet<()>, timeout: Duration) {
    let all_done = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(timeout, all_done).await.is_err() {
        tracing::warn!(
            in_flight = tasks.len(),
            "poison scan events still being dead-lettered at shutdown; nacking them"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

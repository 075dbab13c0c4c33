//! Micro-batching: the valid events of all of a consumer's streams are collected into batches
//! of up to `batch_size` events, or what arrived within `batch_wait` of a batch's first event,
//! whichever comes first. Each batch is applied in one transaction on its own task, at most
//! `db_connections` at once; while all are busy the next batch keeps filling, so batches grow
//! with the load and a full channel stops the streams from reading (flow control).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::apply::{self, ApplyError};
use super::delivery::{self, Context, Valid};
use super::metrics;
use super::schema::ScanEvent;

/// Applies batches from `deliveries` until every stream has gone (the channel is closed) and
/// every batch is settled. After `shutdown`, batches still running when the drain timeout
/// passes are aborted (their transactions roll back, their messages are nacked), and so is
/// whatever is still waiting in the channel.
pub(super) async fn run(
    context: Arc<Context>,
    mut deliveries: mpsc::Receiver<Valid>,
    shutdown: CancellationToken,
) {
    let settings = context.settings.consumer;
    let (size, wait) = (settings.batch_size.max(1), settings.batch_wait);
    let permits = Arc::new(Semaphore::new(settings.db_connections.max(1) as usize));
    let drain_timeout = context.settings.drain_timeout;
    let drain_deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::pin!(drain_deadline);
    let mut tasks = JoinSet::new();
    // Outside the loop's future so that a batch being collected when the drain timeout
    // strikes can still be nacked.
    let mut batch = Vec::with_capacity(size);
    let timed_out = loop {
        let next = async {
            // A permit first: while every connection is busy, events pile up in the channel
            // and the next batch fills at once.
            let permit = Arc::clone(&permits).acquire_owned().await.ok()?;
            collect(&mut deliveries, &mut batch, size, wait)
                .await
                .then_some(permit)
        };
        tokio::select! {
            biased;
            () = &mut drain_deadline => break true,
            permit = next => {
                let Some(permit) = permit else { break false };
                let full = std::mem::replace(&mut batch, Vec::with_capacity(size));
                tasks.spawn(apply(Arc::clone(&context), full, permit, shutdown.clone()));
            }
        }
        while tasks.try_join_next().is_some() {}
    };
    if timed_out {
        deliveries.close();
        let mut nacked = 0;
        for valid in batch.drain(..) {
            valid.delivery.nack(&context);
            nacked += 1;
        }
        while let Some(valid) = deliveries.recv().await {
            valid.delivery.nack(&context);
            nacked += 1;
        }
        tracing::warn!(
            in_flight = tasks.len(),
            nacked,
            "scan events still in flight at shutdown; nacking them"
        );
        tasks.abort_all();
    } else {
        let all_done = async { while tasks.join_next().await.is_some() {} };
        tokio::select! {
            () = all_done => {}
            () = &mut drain_deadline => {
                tracing::warn!(
                    in_flight = tasks.len(),
                    "scan-event batches still in flight at shutdown; nacking them"
                );
                tasks.abort_all();
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Adds deliveries to `batch` until it holds `size`, or `wait` has passed since the first was
/// added; `false` once the channel is closed and empty. Safe to cancel: what was received is in
/// `batch`.
async fn collect(
    deliveries: &mut mpsc::Receiver<Valid>,
    batch: &mut Vec<Valid>,
    size: usize,
    wait: Duration,
) -> bool {
    if batch.is_empty() && deliveries.recv_many(batch, size).await == 0 {
        return false;
    }
    let deadline = Instant::now() + wait;
    while batch.len() < size {
        let room = size - batch.len();
        match tokio::time::timeout_at(deadline, deliveries.recv_many(batch, room)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    true
}

/// Applies one batch, then acks, nacks or dead-letters each of its deliveries (after holding
/// the events the database could not take, see [`hold`]).
async fn apply(
    context: Arc<Context>,
    batch: Vec<Valid>,
    permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    metrics::batch_size(batch.len());
    let span = tracing::info_span!("scan_event_batch", size = batch.len());
    async {
        let events: Vec<&ScanEvent> = batch.iter().map(|v| &v.event).collect();
        let mut results = apply_bounded(&context, &events).await;
        hold(&context, &events, &mut results, &shutdown).await;
        drop(events);
        delivery::settle(&context, batch, results).await;
    }
    .instrument(span)
    .await;
    drop(permit);
}

/// Events the database could not take because it was unreachable or did not answer are held
/// and applied again after a pause, up to the consumer's `hold`
/// ([`super::settings::ConsumerConfig::hold`]); the client keeps extending their leases
/// meanwhile, and flow control keeps the rest of the backlog in Pub/Sub. Whatever still fails
/// then, or at shutdown, is left in `results` for the caller to settle as before: nacked, or
/// dead-lettered on its last attempt.
async fn hold(
    context: &Context,
    events: &[&ScanEvent],
    results: &mut [apply::EventResult],
    shutdown: &CancellationToken,
) {
    let limit = context.settings.consumer.hold;
    let held_since = Instant::now();
    let mut pause = HOLD_FIRST_PAUSE;
    let mut held = false;
    loop {
        let failed: Vec<usize> = (0..results.len())
            .filter(|&i| results[i].as_ref().is_err_and(|e| e.is_database_away()))
            .collect();
        if failed.is_empty() || shutdown.is_cancelled() || held_since.elapsed() + pause > limit {
            break;
        }
        if !held {
            held = true;
            if let Some(Err(e)) = results.get(failed[0]) {
                tracing::warn!(
                    error = %e,
                    events = failed.len(),
                    "scan events not applied; holding them and trying again (up to {limit:?})"
                );
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(HOLD_LONGEST_PAUSE);
        metrics::processed_many(metrics::Outcome::Retried, failed.len());
        let again: Vec<&ScanEvent> = failed.iter().map(|&i| events[i]).collect();
        for (i, result) in failed.iter().zip(apply_bounded(context, &again).await) {
            results[*i] = result;
        }
    }
    // Otherwise `settle` says what it does with the rest (nack or dead letter).
    if held && results.iter().all(Result::is_ok) {
        tracing::info!("held scan events applied");
    }
}

/// The first pause before a held batch is tried again; it doubles up to [`HOLD_LONGEST_PAUSE`].
const HOLD_FIRST_PAUSE: Duration = Duration::from_secs(1);

/// The longest pause between two tries of a held batch.
const HOLD_LONGEST_PAUSE: Duration = Duration::from_secs(30);

/// Applies `events`, giving up after the settings' `apply_timeout`.
async fn apply_bounded(context: &Context, events: &[&ScanEvent]) -> Vec<apply::EventResult> {
    let limit = context.settings.apply_timeout;
    match tokio::time::timeout(limit, apply::apply_isolating(&context.pool, events)).await {
        Ok(results) => results,
        // Parts of the batch may have committed before the part that hung: applying them again
        // finds them duplicates.
        Err(_) => {
            let e = Arc::new(ApplyError::TimedOut(limit));
            events.iter().map(|_| Err(Arc::clone(&e))).collect()
        }
    }
}

//! The background publisher: takes events from the queue, sends them in batches through a
//! circuit breaker, and keeps a failed batch to retry with exponential back-off while the
//! broker is away (new events wait in the bounded queue meanwhile). On shutdown it drains the
//! queue and tries to send everything before a deadline.

use std::time::Duration;

use common::{BreakerError, CircuitBreaker};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{EventReceiver, Publisher, ScanEvent};

/// Tuning of the worker.
#[derive(Debug, Clone, Copy)]
pub struct WorkerSettings {
    /// Most events per publish call.
    pub batch_max: usize,
    /// How long to wait for more events to fill a batch.
    pub linger: Duration,
    /// First retry delay after a failure.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How long the shutdown flush may take.
    pub shutdown_deadline: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            // Batches go out one at a time, so a batch must be large enough that one broker
            // round trip per batch keeps up: 1000 (Pub/Sub's per-request maximum; the client
            // splits it into concurrent requests) over a 20 ms round trip is 50 000 events/s.
            batch_max: 1000,
            linger: Duration::from_millis(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            shutdown_deadline: Duration::from_secs(8),
        }
    }
}

/// Starts the worker. It runs until `shutdown` is cancelled (or every queue handle is dropped),
/// then flushes and returns the number of events it could not send.
pub fn spawn_worker<P: Publisher>(
    rx: EventReceiver,
    publisher: P,
    breaker: CircuitBreaker,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) -> JoinHandle<usize> {
    // Exported from the first scrape, so an alert on the first drop (`increase(..) > 0`) has a
    // series to compare with.
    metrics::counter!("scan_events_published_total").increment(0);
    metrics::counter!("scan_events_dropped_total").increment(0);
    metrics::gauge!("scan_events_buffered").set(0.0);
    tokio::spawn(run(rx, publisher, breaker, settings, shutdown))
}

async fn run<P: Publisher>(
    mut events: EventReceiver,
    publisher: P,
    breaker: CircuitBreaker,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) -> usize {
    let mut batch: Vec<ScanEvent> = Vec::with_capacity(settings.batch_max);
    let mut backoff = settings.backoff_min;
    loop {
        if batch.is_empty() {
            tokio::select! {
                event = events.rx.recv() => match event {
                    Some(event) => batch.push(event),
                    None => break,
                },
                () = shutdown.cancelled() => break,
            }
            // Let the batch gather for the linger time, then take what came: one wake-up per
            // batch, not one (and a timer) per event.
            tokio::select! {
                () = tokio::time::sleep(settings.linger) => {}
                () = shutdown.cancelled() => {}
            }
            while batch.len() < settings.batch_max {
                match events.rx.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
        } else {
            // A retried batch takes on whatever arrived meanwhile, up to the batch size.
            while batch.len() < settings.batch_max {
                match events.rx.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
        }

        events.holding(batch.len());
        // Shutdown does not wait for an attempt still running (up to its own 10 s timeout with
        // the broker away): the batch goes to the shutdown flush, which has the deadline. Its
        // events may then be published twice; the consumer applies each event_id once.
        let attempt = tokio::select! {
            result = breaker.call(publisher.publish(&batch)) => result,
            () = shutdown.cancelled() => break,
        };
        let wait = match attempt {
            Ok(()) => {
                metrics::counter!("scan_events_published_total").increment(batch.len() as u64);
                batch.clear();
                events.holding(0);
                backoff = settings.backoff_min;
                continue;
            }
            Err(BreakerError::Inner(error)) => {
                let sent = batch.len() - error.failed.len();
                metrics::counter!("scan_events_published_total").increment(sent as u64);
                keep_only(&mut batch, &error.failed);
                tracing::warn!(
                    error = %error.message,
                    retrying = batch.len(),
                    retry_in_ms = backoff.as_millis() as u64,
                    "publishing scan events failed; keeping them to retry"
                );
                let wait = backoff;
                backoff = (backoff * 2).min(settings.backoff_max);
                wait
            }
            Err(BreakerError::Rejected { retry_after }) => retry_after.min(settings.backoff_max),
        };
        events.holding(batch.len());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => break,
        }
    }
    flush_on_shutdown(events, batch, &publisher, settings).await
}

/// Sends what is left, bypassing the breaker (this is the last chance), until the deadline,
/// which also bounds the client's own flush: shutdown takes at most `shutdown_deadline` after
/// the HTTP drain, whether or not the broker answers.
async fn flush_on_shutdown<P: Publisher>(
    mut events: EventReceiver,
    mut left: Vec<ScanEvent>,
    publisher: &P,
    settings: WorkerSettings,
) -> usize {
    events.rx.close();
    while let Some(event) = events.rx.recv().await {
        left.push(event);
    }
    events.holding(left.len());
    let deadline = Instant::now() + settings.shutdown_deadline;
    let mut backoff = settings.backoff_min;
    while !left.is_empty() && Instant::now() < deadline {
        let take = left.len().min(settings.batch_max);
        let chunk: Vec<ScanEvent> = left.drain(..take).collect();
        let outcome = tokio::time::timeout_at(deadline, publisher.publish(&chunk)).await;
        match outcome {
            Ok(Ok(())) => {
                metrics::counter!("scan_events_published_total").increment(chunk.len() as u64);
            }
            Ok(Err(error)) => {
                metrics::counter!("scan_events_published_total")
                    .increment((chunk.len() - error.failed.len()) as u64);
                let mut chunk = chunk;
                keep_only(&mut chunk, &error.failed);
                left.splice(0..0, chunk);
                tokio::time::sleep_until(deadline.min(Instant::now() + backoff)).await;
                backoff = (backoff * 2).min(settings.backoff_max);
            }
            Err(_) => {
                left.splice(0..0, chunk);
                break;
            }
        }
    }
    if tokio::time::timeout_at(deadline, publisher.flush())
        .await
        .is_err()
    {
        tracing::warn!("the Pub/Sub client did not finish sending before the shutdown deadline");
    }
    events.holding(0);
    metrics::gauge!("scan_events_buffered").set(0.0);
    if left.is_empty() {
        tracing::info!("scan events flushed");
    } else {
        metrics::counter!("scan_events_dropped_total").increment(left.len() as u64);
        tracing::error!(
            lost = left.len(),
            "shutdown deadline passed with scan events unsent; they are dropped"
        );
    }
    left.len()
}

fn keep_only(batch: &mut Vec<ScanEvent>, failed: &[usize]) {
    let mut index = 0;
    batch.retain(|_| {
        let keep = failed.contains(&index);
        index += 1;
        keep
    });
}

#[cfg(test)]
mod tests {
    //! The broker's failures here come from a scripted fake: a partial batch failure cannot be
    //! produced on demand with the emulator. Whole-broker outages are tested against the real
    //! emulator in the integration tests.

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use common::config::BreakerConfig;

    use super::*;
    use crate::events::{EventQueue, IpHash, PublishError, ScanResult};

    #[derive(Clone, Default)]
    struct Scripted {
        /// Per call: indexes that fail (popped front; empty script means success).
        script: Arc<Mutex<VecDeque<Vec<usize>>>>,
        delivered: Arc<Mutex<Vec<ScanEvent>>>,
    }

    impl Publisher for Scripted {
        async fn publish(&self, batch: &[ScanEvent]) -> Result<(), PublishError> {
            let failed = self.script.lock().unwrap().pop_front().unwrap_or_default();
            let mut delivered = self.delivered.lock().unwrap();
            for (i, e) in batch.iter().enumerate() {
                if !failed.contains(&i) {
                    delivered.push(e.clone());
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(PublishError {
                    failed,
                    message: "scripted".into(),
                })
            }
        }
        async fn flush(&self) {}
    }

    fn event(n: usize) -> ScanEvent {
        ScanEvent::new(
            &format!("tag{n:013}"),
            ScanResult::Unknown,
            IpHash::default(),
            None,
            None,
        )
    }

    fn settings() -> WorkerSettings {
        WorkerSettings {
            batch_max: 10,
            linger: Duration::from_millis(5),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(40),
            shutdown_deadline: Duration::from_secs(2),
        }
    }

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(
            "test-pubsub",
            BreakerConfig {
                threshold: 100,
                open_timeout: Duration::from_secs(1),
            },
        )
    }

    #[tokio::test]
    async fn partial_failures_are_retried_exactly_once_each() {
        let fake = Scripted::default();
        fake.script
            .lock()
            .unwrap()
            .extend([vec![1, 3], vec![0], vec![]]);
        let (queue, rx) = EventQueue::bounded(100);
        let stop = CancellationToken::new();
        let worker = spawn_worker(rx, fake.clone(), breaker(), settings(), stop.clone());
        let sent: Vec<ScanEvent> = (0..5).map(event).collect();
        for e in &sent {
            assert!(queue.enqueue(e.clone()));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        assert_eq!(worker.await.unwrap(), 0);
        let mut got: Vec<_> = fake
            .delivered
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.event_id)
            .collect();
        let mut want: Vec<_> = sent.iter().map(|e| e.event_id).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "every event once, none twice");
    }

    /// A broker that never answers (the emulator cannot be made to hang on demand).
    #[derive(Clone)]
    struct Hanging;

    impl Publisher for Hanging {
        async fn publish(&self, _: &[ScanEvent]) -> Result<(), PublishError> {
            std::future::pending().await
        }
        async fn flush(&self) {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_with_a_hanging_broker_ends_at_the_deadline() {
        let (queue, rx) = EventQueue::bounded(100);
        let stop = CancellationToken::new();
        let worker = spawn_worker(rx, Hanging, breaker(), settings(), stop.clone());
        for n in 0..3 {
            assert!(queue.enqueue(event(n)));
        }
        // Let the worker start an attempt that will never finish, then shut down.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        stop.cancel();
        let lost = tokio::time::timeout(Duration::from_secs(60), worker)
            .await
            .expect("the worker ends despite the broker")
            .unwrap();
        assert_eq!(lost, 3, "the unsent events are reported lost");
        // Only the shutdown deadline (2 s here) passes, not the attempt's or the flush's own.
        let took = started.elapsed();
        assert!(
            took <= settings().shutdown_deadline + Duration::from_millis(100),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn shutdown_flushes_what_is_queued() {
        let fake = Scripted::default();
        let (queue, rx) = EventQueue::bounded(1000);
        for n in 0..250 {
            assert!(queue.enqueue(event(n)));
        }
        let stop = CancellationToken::new();
        stop.cancel();
        let worker = spawn_worker(rx, fake.clone(), breaker(), settings(), stop);
        assert_eq!(worker.await.unwrap(), 0);
        assert_eq!(fake.delivered.lock().unwrap().len(), 250);
    }
}

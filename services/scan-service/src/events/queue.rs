//! The bounded hand-off between scan handlers and the publishing worker. Enqueuing never waits:
//! when the buffer is full the event is dropped, counted in `scan_events_dropped_total` and
//! logged (at most every few seconds, with the running total).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::ScanEvent;

/// How often a run of drops is logged.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// The sending side; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventQueue {
    tx: mpsc::Sender<ScanEvent>,
    drops: Arc<DropLog>,
    /// Events the worker has taken from the queue and not yet sent.
    held: Arc<AtomicUsize>,
}

/// The worker's end of the queue.
#[derive(Debug)]
pub struct EventReceiver {
    /// The events, in order.
    pub rx: mpsc::Receiver<ScanEvent>,
    held: Arc<AtomicUsize>,
}

impl EventReceiver {
    /// Records how many events the worker holds (taken from the queue, not yet sent), for
    /// [`EventQueue::backlog`].
    pub fn holding(&self, events: usize) {
        self.held.store(events, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct DropLog {
    total: AtomicU64,
    started: Instant,
    /// Milliseconds after `started` of the last drop log line (`u64::MAX`: never logged).
    last_logged_ms: AtomicU64,
}

impl EventQueue {
    /// A queue holding up to `capacity` events, and its receiving end for the worker.
    pub fn bounded(capacity: usize) -> (Self, EventReceiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let held = Arc::new(AtomicUsize::new(0));
        let queue = Self {
            tx,
            drops: Arc::new(DropLog {
                total: AtomicU64::new(0),
                started: Instant::now(),
                last_logged_ms: AtomicU64::new(u64::MAX),
            }),
            held: Arc::clone(&held),
        };
        (queue, EventReceiver { rx, held })
    }

    /// Events not sent yet: waiting in the queue, or held by the worker (a batch being sent, or
    /// kept to retry while the broker is away). `scan_events_buffered` is this, read when
    /// `/metrics` is scraped: the worker can be inside one attempt for seconds while events
    /// pile up, so a gauge it set itself would lag.
    pub fn backlog(&self) -> usize {
        let queued = self.tx.max_capacity() - self.tx.capacity();
        queued + self.held.load(Ordering::Relaxed)
    }

    /// Sets `scan_events_buffered` to [`Self::backlog`].
    pub fn export_backlog(&self) {
        metrics::gauge!("scan_events_buffered").set(self.backlog() as f64);
    }

    /// Hands `event` to the worker without waiting. Returns whether it was accepted.
    pub fn enqueue(&self, event: ScanEvent) -> bool {
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.dropped(&event, "buffer full");
                false
            }
            Err(mpsc::error::TrySendError::Closed(event)) => {
                self.dropped(&event, "publisher stopped");
                false
            }
        }
    }

    /// Events dropped so far by this queue.
    pub fn dropped_total(&self) -> u64 {
        self.drops.total.load(Ordering::Relaxed)
    }

    fn dropped(&self, event: &ScanEvent, why: &'static str) {
        metrics::counter!("scan_events_dropped_total").increment(1);
        let total = self.drops.total.fetch_add(1, Ordering::Relaxed) + 1;
        let now_ms =
            u64::try_from(self.drops.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.drops.last_logged_ms.load(Ordering::Relaxed);
        let due =
            last == u64::MAX || now_ms.saturating_sub(last) >= DROP_LOG_EVERY.as_millis() as u64;
        if due
            && self
                .drops
                .last_logged_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::error!(
                reason = why,
                dropped_total = total,
                event_id = %event.event_id,
                "scan event dropped: the event buffer cannot take more"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{IpHash, ScanResult};

    fn event() -> ScanEvent {
        ScanEvent::new(
            "abcdefghijklmnop",
            ScanResult::Unknown,
            IpHash::default(),
            None,
            None,
        )
    }

    #[test]
    fn overflow_is_counted_not_blocking() {
        let (queue, mut events) = EventQueue::bounded(2);
        assert!(queue.enqueue(event()));
        assert!(queue.enqueue(event()));
        assert!(!queue.enqueue(event()));
        assert_eq!(queue.dropped_total(), 1);
        assert_eq!(queue.backlog(), 2);
        events.rx.try_recv().unwrap();
        events.holding(1);
        assert_eq!(queue.backlog(), 2, "one queued, one held by the worker");
        assert!(queue.enqueue(event()));
        assert_eq!(queue.backlog(), 3);
        drop(events);
        assert!(!queue.enqueue(event()));
        assert_eq!(queue.dropped_total(), 2);
    }
}

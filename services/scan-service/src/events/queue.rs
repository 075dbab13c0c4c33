//! The bounded hand-off between scan handlers and the publishing worker. Enqueuing never waits:
//! when the buffer is full the event is dropped, counted in `scan_events_dropped_total` and
//! logged (at most every few seconds, with the running total).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    pub fn bounded(capacity: usize) -> (Self, mpsc::Receiver<ScanEvent>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let queue = Self {
            tx,
            drops: Arc::new(DropLog {
                total: AtomicU64::new(0),
                started: Instant::now(),
                last_logged_ms: AtomicU64::new(u64::MAX),
            }),
        };
        (queue, rx)
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
    use crate::events::ScanResult;

    fn event() -> ScanEvent {
        ScanEvent::new(
            "abcdefghijklmnop",
            ScanResult::Unknown,
            String::new(),
            None,
            None,
        )
    }

    #[test]
    fn overflow_is_counted_not_blocking() {
        let (queue, mut rx) = EventQueue::bounded(2);
        assert!(queue.enqueue(event()));
        assert!(queue.enqueue(event()));
        assert!(!queue.enqueue(event()));
        assert_eq!(queue.dropped_total(), 1);
        rx.try_recv().unwrap();
        assert!(queue.enqueue(event()));
        drop(rx);
        assert!(!queue.enqueue(event()));
        assert_eq!(queue.dropped_total(), 2);
    }
}

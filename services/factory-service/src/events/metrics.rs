//! The pipeline's Prometheus metrics. Labels are small fixed sets, never ids.

use super::dead_letter;
use super::schema::PoisonReason;

/// `scan_events_processed_total{outcome}`.
pub const PROCESSED: &str = "scan_events_processed_total";
/// `dlq_messages_total{reason}`.
pub const DEAD_LETTERED: &str = "dlq_messages_total";
/// `scan_events_lag_seconds`: publish to processing time, the consumer lag the client exposes.
pub const LAG: &str = "scan_events_lag_seconds";
/// `scan_events_batch_size`: valid events applied together in one micro-batch.
pub const BATCH_SIZE: &str = "scan_events_batch_size";
/// `scan_events_subscription_reachable{subscription}`: 1 while the broker answers for the
/// consumer's subscription, 0 while it does not (the streaming pull retries such an outage
/// silently).
pub const SUBSCRIPTION_REACHABLE: &str = "scan_events_subscription_reachable";

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded for the first time.
    Applied,
    /// Already recorded (a redelivery or a duplicate publish).
    Duplicate,
    /// Scanned before the retention horizon: not recorded, not counted.
    Expired,
    /// Could never succeed; sent to the DLQ at once.
    Poison,
    /// Failed for now; nacked for redelivery.
    Retried,
    /// Failed on its last allowed attempt; sent to the DLQ.
    DeadLettered,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Expired => "expired",
            Self::Poison => "poison",
            Self::Retried => "retried",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// Counts one delivery's outcome.
pub fn processed(outcome: Outcome) {
    processed_many(outcome, 1);
}

/// Counts the same outcome for `events` deliveries.
pub fn processed_many(outcome: Outcome, events: usize) {
    metrics::counter!(PROCESSED, "outcome" => outcome.as_str()).increment(events as u64);
}

/// Counts one message sent to the DLQ.
pub fn dead_lettered(reason: &'static str) {
    metrics::counter!(DEAD_LETTERED, "reason" => reason).increment(1);
}

/// Records how long after publishing a message was processed.
pub fn lag(seconds: f64) {
    metrics::histogram!(LAG).record(seconds.max(0.0));
}

/// Records the size of a micro-batch as it is applied.
pub fn batch_size(events: usize) {
    metrics::histogram!(BATCH_SIZE).record(events as f64);
}

/// Every outcome, for starting each series at zero.
const OUTCOMES: [Outcome; 6] = [
    Outcome::Applied,
    Outcome::Duplicate,
    Outcome::Expired,
    Outcome::Poison,
    Outcome::Retried,
    Outcome::DeadLettered,
];

/// Registers descriptions so `/metrics` explains the series, and starts every outcome and
/// every dead-letter reason at zero so that rates and alerts work before the first event of a
/// kind: a series born at 1 has no increase for `increase()` to see, so the first dead letter
/// did not fire `DeadLetters`.
pub fn describe() {
    for outcome in OUTCOMES {
        metrics::counter!(PROCESSED, "outcome" => outcome.as_str()).increment(0);
    }
    let reasons = PoisonReason::ALL.map(PoisonReason::as_str);
    for reason in reasons.into_iter().chain([dead_letter::MAX_ATTEMPTS]) {
        metrics::counter!(DEAD_LETTERED, "reason" => reason).increment(0);
    }
    metrics::describe_counter!(PROCESSED, "Scan event deliveries by outcome");
    metrics::describe_counter!(
        DEAD_LETTERED,
        "Scan events sent to the dead-letter topic by reason"
    );
    metrics::describe_histogram!(
        LAG,
        metrics::Unit::Seconds,
        "Time from publishing a scan event to processing it"
    );
    metrics::describe_histogram!(
        BATCH_SIZE,
        metrics::Unit::Count,
        "Valid scan events applied together in one transaction (before any split)"
    );
    metrics::describe_gauge!(
        SUBSCRIPTION_REACHABLE,
        "1 while Pub/Sub answers for the consumer's subscription, else 0"
    );
}

/// Records whether `subscription` answered the consumer's last probe (labelled by it, so
/// consumers of different subscriptions in one process keep their own series).
pub fn subscription_reachable(subscription: &str, reachable: bool) {
    metrics::gauge!(SUBSCRIPTION_REACHABLE, "subscription" => subscription.to_owned())
        .set(if reachable { 1.0 } else { 0.0 });
}

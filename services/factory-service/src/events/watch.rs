//! The consumer's watch on its subscription. The client's streaming pull retries an
//! unreachable broker by itself and reports nothing, so without this an outage left no trace
//! (a `worker` without `--metrics-addr` has no `/readyz` either). Every [`WATCH_EVERY`] the
//! consumer asks the broker about its subscription (one small RPC), sets
//! `scan_events_subscription_reachable{subscription}`, warns when the subscription stops
//! answering (again every [`common::outage::WARN_AGAIN_EVERY`] while it stays away) and says
//! when it is back.

use std::time::{Duration, Instant};

use common::health::ReadinessCheck;
use common::outage::{OutageLog, Report};
use tokio_util::sync::CancellationToken;

use super::metrics;

/// How often a running consumer asks the broker about its subscription.
pub const WATCH_EVERY: Duration = Duration::from_secs(5);

/// The longest a probe may take before it counts as no answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Watches `subscription` through `check` until `shutdown` (a probe under way included).
pub async fn watch(check: &ReadinessCheck, subscription: &str, shutdown: &CancellationToken) {
    let mut outages = OutageLog::default();
    loop {
        let probe = tokio::time::timeout(PROBE_TIMEOUT, (check.check)());
        let answer = tokio::select! {
            () = shutdown.cancelled() => break,
            answer = probe => answer
                .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}"))),
        };
        metrics::subscription_reachable(subscription, answer.is_ok());
        match (outages.observe(answer.is_ok(), Instant::now()), answer) {
            (Report::Warn, Err(error)) => tracing::warn!(
                subscription,
                %error,
                "the scan-event consumer cannot reach its subscription; events wait in Pub/Sub \
                 until it can"
            ),
            (Report::Back, _) => {
                tracing::info!(subscription, "the scan-event subscription answers again");
            }
            _ => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
}

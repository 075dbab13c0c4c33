//! The consumer's watch on its subscription. The client's streaming pull retries an
//! unreachable broker by itself and reports nothing, so without this an outage left no trace
//! (a `worker` without `--metrics-addr` has no `/readyz` either). Every [`WATCH_EVERY`] the
//! consumer asks the broker about its subscription (one small RPC), sets
//! `scan_events_subscription_reachable{subscription}`, warns when the subscription stops
//! answering (again every [`WARN_AGAIN_EVERY`] while it stays away) and says when it is back.

use std::time::Duration;

use common::health::ReadinessCheck;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics;

/// How often a running consumer asks the broker about its subscription.
pub const WATCH_EVERY: Duration = Duration::from_secs(5);

/// The longest a probe may take before it counts as no answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// While the subscription stays unreachable, the warning is repeated this often.
pub const WARN_AGAIN_EVERY: Duration = Duration::from_secs(300);

/// What a probe's answer calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Nothing new: reachable as before, or unreachable and warned about recently.
    Quiet,
    /// Unreachable: warn (the first failure, or the outage goes on past the repeat interval).
    Warn,
    /// Reachable again after an outage.
    Back,
}

/// What the watch remembers between probes.
#[derive(Debug, Default)]
pub struct Watch {
    /// When it last warned, while the subscription is unreachable.
    warned_at: Option<Instant>,
}

impl Watch {
    /// Takes in one probe's answer, at `now`.
    pub fn observe(&mut self, reachable: bool, now: Instant) -> Report {
        match (reachable, self.warned_at) {
            (true, None) => Report::Quiet,
            (true, Some(_)) => {
                self.warned_at = None;
                Report::Back
            }
            (false, Some(at)) if now.duration_since(at) < WARN_AGAIN_EVERY => Report::Quiet,
            (false, _) => {
                self.warned_at = Some(now);
                Report::Warn
            }
        }
    }
}

/// Watches `subscription` through `check` until `shutdown` (a probe under way included).
pub async fn watch(check: &ReadinessCheck, subscription: &str, shutdown: &CancellationToken) {
    let mut watch = Watch::default();
    loop {
        let probe = tokio::time::timeout(PROBE_TIMEOUT, (check.check)());
        let answer = tokio::select! {
            () = shutdown.cancelled() => break,
            answer = probe => answer
                .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}"))),
        };
        metrics::subscription_reachable(subscription, answer.is_ok());
        match (watch.observe(answer.is_ok(), Instant::now()), answer) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_then_every_five_minutes_and_says_when_it_is_back() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut watch = Watch::default();
        assert_eq!(watch.observe(true, at(0)), Report::Quiet);
        assert_eq!(watch.observe(false, at(5)), Report::Warn);
        assert_eq!(watch.observe(false, at(10)), Report::Quiet);
        assert_eq!(watch.observe(false, at(304)), Report::Quiet);
        assert_eq!(watch.observe(false, at(305)), Report::Warn);
        assert_eq!(watch.observe(true, at(310)), Report::Back);
        assert_eq!(watch.observe(true, at(315)), Report::Quiet);
        // A new outage warns at once, whatever the time since the last one.
        assert_eq!(watch.observe(false, at(320)), Report::Warn);
    }
}

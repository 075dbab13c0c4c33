//! When to tell operators that something the process depends on in the background is away:
//! at once when it first fails, again every [`WARN_AGAIN_EVERY`] while it stays away, and once
//! when it is back. Retries that a library runs by itself (Pub/Sub's streaming pull, the OTLP
//! exporter) report nothing on their own, so an outage would otherwise leave no trace in the
//! logs, and a failure per attempt would flood them.

use std::time::{Duration, Instant};

/// While the dependency stays away, the warning is repeated this often.
pub const WARN_AGAIN_EVERY: Duration = Duration::from_secs(300);

/// What an attempt's outcome calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Nothing new: working as before, or away and warned about recently.
    Quiet,
    /// Away: warn (the first failure, or the outage goes on past the repeat interval).
    Warn,
    /// Working again after an outage.
    Back,
}

/// What is remembered between attempts.
#[derive(Debug, Default)]
pub struct OutageLog {
    /// When it last warned, while the dependency is away.
    warned_at: Option<Instant>,
}

impl OutageLog {
    /// Takes in one attempt's outcome, at `now`.
    pub fn observe(&mut self, ok: bool, now: Instant) -> Report {
        match (ok, self.warned_at) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_then_every_five_minutes_and_says_when_it_is_back() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut log = OutageLog::default();
        assert_eq!(log.observe(true, at(0)), Report::Quiet);
        assert_eq!(log.observe(false, at(5)), Report::Warn);
        assert_eq!(log.observe(false, at(10)), Report::Quiet);
        assert_eq!(log.observe(false, at(304)), Report::Quiet);
        assert_eq!(log.observe(false, at(305)), Report::Warn);
        assert_eq!(log.observe(true, at(310)), Report::Back);
        assert_eq!(log.observe(true, at(315)), Report::Quiet);
        // A new outage warns at once, whatever the time since the last one.
        assert_eq!(log.observe(false, at(320)), Report::Warn);
    }
}

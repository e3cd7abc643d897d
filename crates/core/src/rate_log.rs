//! Warnings about bad input from the pool, at most one line per reason every [`LOG_EVERY`]:
//! a node or registrar that keeps sending garbage must not flood Asterisk's log. The next line
//! of a reason says how many were held back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// At most one log line per reason in this time; the next one says how many were not logged.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct RateLimitedLog {
    /// Starts every line, e.g. `registrations`.
    subsystem: &'static str,
    last: BTreeMap<&'static str, (Instant, u64)>,
}

impl RateLimitedLog {
    pub fn new(subsystem: &'static str) -> RateLimitedLog {
        RateLimitedLog { subsystem, last: BTreeMap::new() }
    }

    pub fn warn(&mut self, reason: &'static str, text: impl FnOnce() -> String) {
        let s = self.subsystem;
        match self.due(reason, Instant::now()) {
            Some(None) => tracing::warn!("{s}: {}", text()),
            Some(Some(more)) => tracing::warn!("{s}: {} ({more} more '{reason}' since the last such line)", text()),
            None => {}
        }
    }

    /// Whether a line for `reason` is due at `now`: `None` while the last one is less than
    /// LOG_EVERY old (this one is counted instead), else `Some` of how many were not logged
    /// since the last line (`None` for the first line of that reason).
    fn due(&mut self, reason: &'static str, now: Instant) -> Option<Option<u64>> {
        match self.last.get_mut(reason) {
            Some((at, suppressed)) if now.duration_since(*at) < LOG_EVERY => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(Some(std::mem::take(suppressed)))
            }
            None => {
                self.last.insert(reason, (now, 0));
                Some(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_at_most_once_per_reason_every_ten_seconds() {
        let mut log = RateLimitedLog::new("test");
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(log.due("bad_json", t0), Some(None));
        assert_eq!(log.due("bad_json", at(1)), None);
        assert_eq!(log.due("expired", at(1)), Some(None), "each reason has its own limit");
        assert_eq!(log.due("bad_json", at(9)), None);
        assert_eq!(log.due("bad_json", at(10)), Some(Some(2)), "10 s after the last line, with the count of those not logged");
        assert_eq!(log.due("bad_json", at(11)), None);
        assert_eq!(log.due("bad_json", at(20)), Some(Some(1)));
        assert_eq!(log.due("bad_json", at(30)), Some(Some(0)));
    }
}

//! Logs a subsystem's state only when it changes: a broker or agent that stays down for an
//! hour gives one line when it goes and one when it comes back, not one per retry.

/// How loud a state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

#[derive(Debug)]
pub struct StateLog {
    subsystem: &'static str,
    state: String,
}

impl StateLog {
    pub fn new(subsystem: &'static str) -> StateLog {
        StateLog { subsystem, state: String::new() }
    }

    /// Records `state`; logs `detail` if the state differs from the previous one. Returns
    /// whether it did.
    pub fn enter(&mut self, state: &str, severity: Severity, detail: &str) -> bool {
        if self.state == state {
            return false;
        }
        self.state = state.to_string();
        let s = self.subsystem;
        match severity {
            Severity::Info => tracing::info!("{s}: {detail}"),
            Severity::Warning => tracing::warn!("{s}: {detail}"),
            Severity::Error => tracing::error!("{s}: {detail}"),
        }
        true
    }

    pub fn state(&self) -> &str {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_only_on_change() {
        let mut log = StateLog::new("consul");
        assert!(log.enter("unreachable", Severity::Warning, "down"));
        assert!(!log.enter("unreachable", Severity::Warning, "still down"));
        assert!(log.enter("registered", Severity::Info, "up"));
        assert_eq!(log.state(), "registered");
    }
}

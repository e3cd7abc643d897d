//! Duplicates and out-of-order messages are harmless: for every (origin, AOR) pair only a
//! message newer than the last one applied is applied.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct SeqTracker {
    last: HashMap<(String, String), u64>,
}

impl SeqTracker {
    /// Records `seq` and returns true if it is newer than what was applied for (origin, aor).
    pub fn accept(&mut self, origin: &str, aor: &str, seq: u64) -> bool {
        let key = (origin.to_string(), aor.to_string());
        match self.last.get(&key) {
            Some(&last) if seq <= last => false,
            _ => {
                self.last.insert(key, seq);
                true
            }
        }
    }

    /// Forgets an origin (it left the pool, or restarted with a new counter).
    pub fn forget_origin(&mut self, origin: &str) {
        self.last.retain(|(o, _), _| o != origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_older_messages_are_refused_per_origin_and_aor() {
        let mut t = SeqTracker::default();
        assert!(t.accept("n1", "alice", 5));
        assert!(!t.accept("n1", "alice", 5), "duplicate");
        assert!(!t.accept("n1", "alice", 4), "older");
        assert!(t.accept("n1", "bob", 1), "another AOR has its own order");
        assert!(t.accept("n2", "alice", 1), "another origin has its own counter");
        assert!(t.accept("n1", "alice", 6));
        t.forget_origin("n1");
        assert!(t.accept("n1", "alice", 1), "a restarted origin starts again");
    }
}

//! Where each node's event sequence of one application stands. The module stamps every event
//! with `seq` (one more than the event before) and `seq_start` (where the node's sequence
//! began); the gateway drops what it already relayed (the module delivers at least once) and
//! counts what is missing (a full queue somewhere dropped it).
//!
//! Two positions per node: `committed`, the last event written to a client socket (kept while
//! the app lingers, so a reconnecting client resumes from it), and the relay's own `handed`,
//! the last one handed to the socket's writer. A relay starts from `committed`: what it handed
//! out but was never written is delivered again by RabbitMQ (unacked, requeued) and must not
//! count as a duplicate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::owners::Eid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub start: u64,
    pub seq: u64,
}

/// What to do with an event, by its seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New: relay it; `lost` events of this node's sequence never arrived before it.
    Fresh { lost: u64 },
    /// Already relayed: drop it.
    Duplicate,
}

/// The committed positions of one application, shared by its relay and the writers.
#[derive(Default)]
pub struct Committed {
    by_node: Mutex<HashMap<Eid, Position>>,
}

impl Committed {
    /// The event was written to a socket.
    pub fn commit(&self, node: &Eid, at: Position) {
        let mut by_node = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        match by_node.get_mut(node) {
            Some(p) if p.start == at.start && p.seq >= at.seq => {}
            Some(p) => *p = at,
            None => {
                by_node.insert(node.clone(), at);
            }
        }
    }

    fn snapshot(&self) -> HashMap<Eid, Position> {
        self.by_node.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One relay's view: starts where the last written event left off.
pub struct Tracker {
    handed: HashMap<Eid, Position>,
}

impl Tracker {
    pub fn resume(committed: &Arc<Committed>) -> Tracker {
        Tracker { handed: committed.snapshot() }
    }

    /// Judges the next event of `node` and, if fresh, moves past it.
    pub fn check(&mut self, node: &Eid, at: Position) -> Verdict {
        let Some(last) = self.handed.get_mut(node) else {
            // The first event heard from this node: nothing before it can be judged.
            self.handed.insert(node.clone(), at);
            return Verdict::Fresh { lost: 0 };
        };
        if last.start != at.start {
            // A new sequence (the node restarted or re-created the app): nothing was lost.
            *last = at;
            return Verdict::Fresh { lost: 0 };
        }
        if at.seq <= last.seq {
            return Verdict::Duplicate;
        }
        let lost = at.seq - last.seq - 1;
        last.seq = at.seq;
        Verdict::Fresh { lost }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: u64, seq: u64) -> Position {
        Position { start, seq }
    }

    #[test]
    fn counts_duplicates_gaps_and_new_sequences_per_node() {
        let committed = Arc::new(Committed::default());
        let (a, b): (Eid, Eid) = ("a".into(), "b".into());
        let mut t = Tracker::resume(&committed);
        assert_eq!(t.check(&a, at(100, 100)), Verdict::Fresh { lost: 0 });
        assert_eq!(t.check(&a, at(100, 101)), Verdict::Fresh { lost: 0 });
        assert_eq!(t.check(&b, at(7, 50)), Verdict::Fresh { lost: 0 }, "each node has its own sequence");
        assert_eq!(t.check(&a, at(100, 101)), Verdict::Duplicate);
        assert_eq!(t.check(&a, at(100, 100)), Verdict::Duplicate, "a re-sent older event");
        assert_eq!(t.check(&a, at(100, 105)), Verdict::Fresh { lost: 3 });
        assert_eq!(t.check(&a, at(100, 106)), Verdict::Fresh { lost: 0 });
        assert_eq!(t.check(&a, at(900, 900)), Verdict::Fresh { lost: 0 }, "a restarted node starts anew");
        assert_eq!(t.check(&a, at(900, 901)), Verdict::Fresh { lost: 0 });
    }

    #[test]
    fn a_new_relay_resumes_from_what_was_written_not_from_what_was_handed_out() {
        let committed = Arc::new(Committed::default());
        let a: Eid = "a".into();
        let mut first = Tracker::resume(&committed);
        for seq in 10..15 {
            assert_eq!(first.check(&a, at(1, seq)), Verdict::Fresh { lost: 0 });
        }
        // Only 10 and 11 reached the socket before it closed; 12..14 come back from the queue.
        committed.commit(&a, at(1, 11));
        committed.commit(&a, at(1, 10));
        let mut second = Tracker::resume(&committed);
        assert_eq!(second.check(&a, at(1, 11)), Verdict::Duplicate);
        assert_eq!(second.check(&a, at(1, 12)), Verdict::Fresh { lost: 0 });
        assert_eq!(second.check(&a, at(1, 20)), Verdict::Fresh { lost: 7 });
    }
}

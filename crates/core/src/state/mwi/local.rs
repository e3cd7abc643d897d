//! The mailboxes whose state changed on this node, and the messages that tell the pool. Fed
//! from Asterisk's MWI topic on a Stasis thread: it only records and numbers.

use std::collections::BTreeMap;

use super::message::{valid_mailbox, MwiState};
use crate::state::devices::DevicePatterns;

/// This node's counts of a mailbox, as they last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub new: u32,
    pub old: u32,
}

/// This node's state of a mailbox and the seq it was told with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMailbox {
    pub counts: Counts,
    pub seq: u64,
}

#[derive(Debug)]
pub struct LocalMailboxes {
    origin: String,
    mailboxes: DevicePatterns,
    next_seq: u64,
    states: BTreeMap<String, LocalMailbox>,
}

impl LocalMailboxes {
    /// `first_seq` must exceed every seq this node used before (see `LocalStates::new`).
    pub fn new(origin: &str, mailboxes: DevicePatterns, first_seq: u64) -> LocalMailboxes {
        LocalMailboxes { origin: origin.to_ascii_lowercase(), mailboxes, next_seq: first_seq, states: BTreeMap::new() }
    }

    pub fn states(&self) -> &BTreeMap<String, LocalMailbox> {
        &self.states
    }

    /// Records a change (or the deletion) of this node's own state of `mailbox` and returns
    /// the message for the pool, or None for a mailbox that is not shared or that no receiver
    /// would accept. Counts below zero (never seen from Asterisk) are taken as 0.
    pub fn changed(&mut self, mailbox: &str, new: i32, old: i32, deleted: bool) -> Option<MwiState> {
        if !valid_mailbox(mailbox) || !self.mailboxes.shares(mailbox) {
            return None;
        }
        let counts = if deleted { Counts { new: 0, old: 0 } } else { Counts { new: new.max(0) as u32, old: old.max(0) as u32 } };
        let seq = self.next_seq;
        self.next_seq += 1;
        if deleted {
            self.states.remove(mailbox);
        } else {
            self.states.insert(mailbox.to_string(), LocalMailbox { counts, seq });
        }
        Some(MwiState { mailbox: mailbox.to_string(), new: counts.new, old: counts.old, deleted, origin: self.origin.clone(), seq })
    }

    /// Records a state that Asterisk already held (one set before the module was loaded), unless
    /// a change of that mailbox was recorded meanwhile: that one is newer.
    pub fn adopt(&mut self, mailbox: &str, new: i32, old: i32) {
        if !self.states.contains_key(mailbox) {
            self.changed(mailbox, new, old, false);
        }
    }

    /// Every state as the pool should know it (deleted mailboxes are not), each with the seq
    /// it was told with (a receiver that already has it ignores it).
    pub fn all(&self) -> Vec<MwiState> {
        self.states
            .iter()
            .map(|(mailbox, s)| MwiState { mailbox: mailbox.clone(), new: s.counts.new, old: s.counts.old, deleted: false, origin: self.origin.clone(), seq: s.seq })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_the_changes_of_shared_mailboxes_and_forgets_deleted_ones() {
        let mut local = LocalMailboxes::new("02:00:00:00:00:0A", DevicePatterns::parse("*@default").unwrap(), 100);
        let m = local.changed("1001@default", 2, 1, false).unwrap();
        assert_eq!(m, MwiState { mailbox: "1001@default".into(), new: 2, old: 1, deleted: false, origin: "02:00:00:00:00:0a".into(), seq: 100 });
        assert_eq!(local.states()["1001@default"], LocalMailbox { counts: Counts { new: 2, old: 1 }, seq: 100 });
        assert_eq!(local.changed("1001@other", 1, 0, false), None, "not shared");
        assert_eq!(local.changed("@default", 1, 0, false), None, "no receiver would take it");
        let gone = local.changed("1001@default", 5, 5, true).unwrap();
        assert_eq!((gone.new, gone.old, gone.deleted, gone.seq), (0, 0, true, 101));
        assert!(local.states().is_empty());
        assert_eq!(local.changed("1002@default", -1, 3, false).unwrap().new, 0);
        local.adopt("1002@default", 9, 9);
        local.adopt("1003@default", 1, 2);
        let all = local.all();
        assert_eq!(all.iter().map(|m| (m.mailbox.as_str(), m.new, m.old, m.seq)).collect::<Vec<_>>(), [("1002@default", 0, 3, 102), ("1003@default", 1, 2, 103)], "a change since is newer than what Asterisk held");
    }
}

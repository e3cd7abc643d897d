//! What a node learned about mailboxes from the others, and the rules that hand a state to
//! Asterisk (the state book, `state::book`, decodes the messages and hands MWI ones here).
//! The same rules as for device state: own messages ignored, only newer ones per (origin,
//! mailbox), mailboxes not shared left alone. What differs is taking back: Asterisk keeps one
//! state per mailbox, so an origin's state is only taken back while it is still the mailbox's.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::message::MwiState;
use crate::rate_log::RateLimitedLog;
use crate::state::book::{Counters, Refused, MAX_REMOTE};
use crate::state::devices::DevicePatterns;

/// Asterisk's mailbox states, as the book changes them. The module's implementation calls
/// `ast_publish_mwi_state_full` / `ast_delete_mwi_state_full` with the origin's EID.
pub trait Mailboxes {
    /// Publishes another node's counts of a mailbox under that node's EID.
    fn apply(&mut self, state: &MwiState) -> Result<(), Refused>;
    /// Takes back `origin`'s state of the mailbox if it is still the mailbox's state (phones
    /// hear that no message waits); returns false when a later state of this node or of
    /// another origin is there, which stays.
    fn forget(&mut self, mailbox: &str, origin: &str) -> bool;
}

/// The last message applied from one origin for one mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteMwi {
    pub new: u32,
    pub old: u32,
    /// The origin deleted it: nothing of it is left to take back.
    pub deleted: bool,
    pub seq: u64,
}

/// Mailbox → origin → its last message.
pub type RemoteMailboxes = BTreeMap<String, BTreeMap<String, RemoteMwi>>;

/// What taking states back did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TakenBack {
    /// Mailboxes whose state was the origin's and is gone now.
    pub taken: usize,
    /// Mailboxes with a later state of this node or of another origin, left as they are.
    pub kept: usize,
    /// Not looked at: the deadline came first.
    pub left: usize,
}

#[derive(Debug)]
pub struct MwiBook {
    origin: String,
    mailboxes: DevicePatterns,
    remote: RemoteMailboxes,
    count: usize,
    counters: Arc<Counters>,
    log: RateLimitedLog,
}

impl MwiBook {
    /// `origin` is this node's EID; `counters` are the MWI ones (messages that could not be
    /// decoded count with the exchange's).
    pub fn new(origin: &str, mailboxes: DevicePatterns, counters: Arc<Counters>) -> MwiBook {
        MwiBook { origin: origin.to_ascii_lowercase(), mailboxes, remote: RemoteMailboxes::new(), count: 0, counters, log: RateLimitedLog::new("mwi") }
    }

    pub fn remote(&self) -> &RemoteMailboxes {
        &self.remote
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn apply(&mut self, state: MwiState, target: &mut impl Mailboxes) {
        let counters = &*self.counters;
        if state.origin == self.origin {
            return Counters::count(&counters.ignored_own);
        }
        if !self.mailboxes.shares(&state.mailbox) {
            return Counters::count(&counters.ignored_not_shared);
        }
        let known = self.remote.get(&state.mailbox).and_then(|origins| origins.get(&state.origin));
        if known.is_some_and(|r| state.seq <= r.seq) {
            return Counters::count(&counters.ignored_stale);
        }
        if known.is_none() && self.count >= MAX_REMOTE {
            let mailbox = state.mailbox.clone();
            return counters.refuse(&mut self.log, "too_many", || format!("state of {mailbox} from {} not applied (too_many): this node already keeps {MAX_REMOTE} remote mailbox states", state.origin));
        }
        if state.deleted {
            target.forget(&state.mailbox, &state.origin);
        } else if target.apply(&state).is_err() {
            let mailbox = state.mailbox.clone();
            return counters.refuse(&mut self.log, "refused", || format!("state {}/{} of {mailbox} from {} not applied (refused): Asterisk refused it", state.new, state.old, state.origin));
        }
        Counters::count(&counters.applied);
        let remote = RemoteMwi { new: state.new, old: state.old, deleted: state.deleted, seq: state.seq };
        if self.remote.entry(state.mailbox).or_default().insert(state.origin, remote).is_none() {
            self.count += 1;
        }
    }

    /// Takes back the states of `origin`, a node that left the pool (its seq numbers go too:
    /// a restarted node starts from a new clock anyway).
    pub fn forget_origin(&mut self, origin: &str, target: &mut impl Mailboxes) -> TakenBack {
        let mut gone = Vec::new();
        self.remote.retain(|mailbox, origins| {
            if let Some(remote) = origins.remove(origin) {
                gone.push((mailbox.clone(), remote));
            }
            !origins.is_empty()
        });
        self.count -= gone.len();
        let done = take_back(gone.iter().map(|(mailbox, remote)| (mailbox.as_str(), origin, remote)), target, None);
        self.counters.cleared_lost.fetch_add(done.taken as u64, Ordering::Relaxed);
        done
    }

    /// Takes back every state learned from others (at unload: nothing would keep them right),
    /// until `deadline`; the book forgets them all.
    pub fn clear(&mut self, target: &mut impl Mailboxes, deadline: Instant) -> TakenBack {
        let all = std::mem::take(&mut self.remote);
        self.count = 0;
        take_back(all.iter().flat_map(|(mailbox, origins)| origins.iter().map(move |(origin, remote)| (mailbox.as_str(), origin.as_str(), remote))), target, Some(deadline))
    }
}

/// Takes back each (mailbox, origin) that still has a state (not deleted), until `deadline`.
fn take_back<'a>(states: impl Iterator<Item = (&'a str, &'a str, &'a RemoteMwi)>, target: &mut impl Mailboxes, deadline: Option<Instant>) -> TakenBack {
    let mut done = TakenBack::default();
    for (mailbox, origin, _) in states.filter(|(_, _, remote)| !remote.deleted) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            done.left += 1;
        } else if target.forget(mailbox, origin) {
            done.taken += 1;
        } else {
            done.kept += 1;
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Asterisk's one slot per mailbox: (origin, new, old); mailboxes named `refuse*` are refused.
    #[derive(Default)]
    struct FakeMailboxes {
        slots: BTreeMap<String, (String, u32, u32)>,
    }

    impl Mailboxes for FakeMailboxes {
        fn apply(&mut self, s: &MwiState) -> Result<(), Refused> {
            if s.mailbox.starts_with("refuse") {
                return Err(Refused);
            }
            self.slots.insert(s.mailbox.clone(), (s.origin.clone(), s.new, s.old));
            Ok(())
        }

        fn forget(&mut self, mailbox: &str, origin: &str) -> bool {
            let holds = self.slots.get(mailbox).is_some_and(|(o, _, _)| o == origin);
            if holds {
                self.slots.remove(mailbox);
            }
            holds
        }
    }

    const ME: &str = "02:00:00:00:00:01";
    const A: &str = "02:00:00:00:00:0a";
    const B: &str = "02:00:00:00:00:0b";

    fn msg(mailbox: &str, new: u32, old: u32, origin: &str, seq: u64) -> MwiState {
        MwiState { mailbox: mailbox.into(), new, old, deleted: false, origin: origin.into(), seq }
    }

    fn deleted(mailbox: &str, origin: &str, seq: u64) -> MwiState {
        MwiState { deleted: true, ..msg(mailbox, 0, 0, origin, seq) }
    }

    fn setup(mailboxes: &str) -> (MwiBook, FakeMailboxes, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        (MwiBook::new(ME, DevicePatterns::parse(mailboxes).unwrap(), counters.clone()), FakeMailboxes::default(), counters)
    }

    fn slot<'a>(ast: &'a FakeMailboxes, mailbox: &str) -> Option<(&'a str, u32, u32)> {
        ast.slots.get(mailbox).map(|(o, n, d)| (o.as_str(), *n, *d))
    }

    #[test]
    fn the_last_newer_state_of_any_origin_is_the_mailboxs_state() {
        let (mut book, mut ast, c) = setup("");
        book.apply(msg("1001@default", 2, 1, A, 5), &mut ast);
        assert_eq!(slot(&ast, "1001@default"), Some((A, 2, 1)));
        book.apply(msg("1001@default", 9, 9, A, 5), &mut ast);
        book.apply(msg("1001@default", 9, 9, A, 4), &mut ast);
        assert_eq!(Counters::get(&c.ignored_stale), 2, "a duplicate and an older one");
        book.apply(msg("1001@default", 0, 3, B, 1), &mut ast);
        assert_eq!(slot(&ast, "1001@default"), Some((B, 0, 3)), "one slot: the last writer wins");
        assert_eq!(Counters::get(&c.applied), 2);
        assert_eq!(book.remote()["1001@default"][A], RemoteMwi { new: 2, old: 1, deleted: false, seq: 5 });
    }

    #[test]
    fn own_messages_and_mailboxes_not_shared_are_left_alone() {
        let (mut book, mut ast, c) = setup("*@default");
        // The exchange's decoder lower-cases every origin.
        book.apply(msg("1001@default", 1, 0, ME, 1), &mut ast);
        book.apply(msg("1001@sales", 1, 0, A, 3), &mut ast);
        assert!(ast.slots.is_empty());
        assert_eq!((Counters::get(&c.ignored_own), Counters::get(&c.ignored_not_shared)), (1, 1));
    }

    #[test]
    fn a_deletion_takes_the_origins_state_back_but_not_a_later_one_of_another() {
        let (mut book, mut ast, _) = setup("");
        book.apply(msg("1001@default", 2, 1, A, 1), &mut ast);
        book.apply(deleted("1001@default", A, 2), &mut ast);
        assert_eq!(slot(&ast, "1001@default"), None);
        book.apply(msg("1001@default", 2, 1, A, 1), &mut ast);
        assert_eq!(slot(&ast, "1001@default"), None, "an older state does not come back after its deletion");
        book.apply(msg("1001@default", 4, 0, A, 3), &mut ast);
        book.apply(msg("1001@default", 1, 1, B, 1), &mut ast);
        book.apply(deleted("1001@default", A, 4), &mut ast);
        assert_eq!(slot(&ast, "1001@default"), Some((B, 1, 1)), "B wrote after A: A's deletion leaves it");
    }

    #[test]
    fn a_state_asterisk_refuses_is_counted_and_the_next_one_applies() {
        let (mut book, mut ast, c) = setup("");
        book.apply(msg("refuse@default", 1, 0, A, 2), &mut ast);
        assert_eq!(c.rejected.by_reason(), "refused=1");
        assert!(book.remote().is_empty(), "a refused state is not remembered");
        book.apply(msg("1001@default", 2, 1, A, 3), &mut ast);
        assert_eq!(slot(&ast, "1001@default"), Some((A, 2, 1)));
    }

    #[test]
    fn the_number_of_remote_states_is_bounded() {
        let (mut book, mut ast, c) = setup("");
        for i in 0..MAX_REMOTE {
            book.apply(msg(&format!("{i}@default"), 1, 0, A, 1), &mut ast);
        }
        book.apply(msg("one-more@default", 1, 0, A, 1), &mut ast);
        assert_eq!(c.rejected.get("too_many"), 1);
        book.apply(msg("0@default", 0, 1, A, 2), &mut ast);
        assert_eq!(Counters::get(&c.applied), MAX_REMOTE as u64 + 1, "known ones still change");
    }

    #[test]
    fn clear_takes_back_only_what_is_still_the_origins_until_the_deadline() {
        let (mut book, mut ast, _) = setup("");
        book.apply(msg("1001@default", 2, 1, A, 1), &mut ast);
        book.apply(msg("1002@default", 1, 0, A, 1), &mut ast);
        book.apply(msg("1002@default", 5, 0, B, 1), &mut ast);
        book.apply(msg("1003@default", 1, 0, A, 1), &mut ast);
        book.apply(deleted("1003@default", A, 2), &mut ast);
        // This node's own voicemail wrote 1001 later: it stays.
        ast.slots.insert("1001@default".into(), (ME.into(), 0, 0));
        let done = book.clear(&mut ast, Instant::now() + Duration::from_secs(60));
        assert_eq!(done, TakenBack { taken: 1, kept: 2, left: 0 }, "B's 1002 taken back; A's 1002 and 1001 were overwritten; 1003 was deleted already");
        assert_eq!(slot(&ast, "1001@default"), Some((ME, 0, 0)));
        assert!(!ast.slots.contains_key("1002@default") && book.remote().is_empty());
        book.apply(msg("1001@default", 3, 0, A, 3), &mut ast);
        assert_eq!(book.clear(&mut ast, Instant::now()), TakenBack { taken: 0, kept: 0, left: 1 });
    }

    #[test]
    fn a_lost_nodes_states_are_taken_back_where_they_still_are_the_mailboxs() {
        let (mut book, mut ast, c) = setup("");
        book.apply(msg("1001@default", 2, 1, A, 1), &mut ast);
        book.apply(msg("1002@default", 1, 0, A, 1), &mut ast);
        book.apply(msg("1002@default", 5, 0, B, 1), &mut ast);
        assert_eq!(book.forget_origin(A, &mut ast), TakenBack { taken: 1, kept: 1, left: 0 });
        assert_eq!((slot(&ast, "1001@default"), slot(&ast, "1002@default")), (None, Some((B, 5, 0))));
        assert_eq!(Counters::get(&c.cleared_lost), 1);
        assert!(!book.remote().values().any(|origins| origins.contains_key(A)));
        book.apply(msg("1001@default", 1, 0, A, 1), &mut ast);
        assert_eq!(slot(&ast, "1001@default"), Some((A, 1, 0)), "a node back with a new clock is heard again");
    }
}

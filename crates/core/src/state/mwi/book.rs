//! What a node learned about mailboxes from the others, and the rules that hand a message to
//! Asterisk. The same rules as for device state (`state::book`): own messages ignored, only
//! newer ones per (origin, mailbox), mailboxes not shared left alone, bad input refused with a
//! reason. What differs is taking back: Asterisk keeps one state per mailbox, so an origin's
//! state is only taken back while it is still the mailbox's state.

use std::collections::BTreeMap;
use std::time::Instant;

use super::message::{self, MwiState};
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
    log: RateLimitedLog,
}

impl MwiBook {
    /// `origin` is this node's EID.
    pub fn new(origin: &str, mailboxes: DevicePatterns) -> MwiBook {
        MwiBook { origin: origin.to_ascii_lowercase(), mailboxes, remote: RemoteMailboxes::new(), count: 0, log: RateLimitedLog::new("mwi") }
    }

    pub fn remote(&self) -> &RemoteMailboxes {
        &self.remote
    }

    /// Decodes one message body and applies it.
    pub fn handle(&mut self, body: &[u8], target: &mut impl Mailboxes, counters: &Counters) {
        match message::decode(body) {
            Ok(state) => self.apply(state, target, counters),
            Err(rejection) => {
                let reason = rejection.reason();
                counters.refuse(&mut self.log, reason, || format!("message refused ({reason}): {rejection}"));
            }
        }
    }

    pub fn apply(&mut self, state: MwiState, target: &mut impl Mailboxes, counters: &Counters) {
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

    /// Takes back every state learned from others (at unload: nothing would keep them right),
    /// until `deadline`; the book forgets them all.
    pub fn clear(&mut self, target: &mut impl Mailboxes, deadline: Instant) -> TakenBack {
        let all = std::mem::take(&mut self.remote);
        self.count = 0;
        let mut done = TakenBack::default();
        for (mailbox, origins) in all {
            for (origin, remote) in origins {
                if remote.deleted {
                    continue;
                }
                if Instant::now() >= deadline {
                    done.left += 1;
                } else if target.forget(&mailbox, &origin) {
                    done.taken += 1;
                } else {
                    done.kept += 1;
                }
            }
        }
        done
    }
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

    fn msg(mailbox: &str, new: u32, old: u32, origin: &str, seq: u64) -> Vec<u8> {
        format!(r#"{{"type":"MWI","mailbox":"{mailbox}","new":{new},"old":{old},"origin":"{origin}","seq":{seq}}}"#).into_bytes()
    }

    fn deleted(mailbox: &str, origin: &str, seq: u64) -> Vec<u8> {
        format!(r#"{{"type":"MWI","mailbox":"{mailbox}","new":0,"old":0,"deleted":true,"origin":"{origin}","seq":{seq}}}"#).into_bytes()
    }

    fn setup(mailboxes: &str) -> (MwiBook, FakeMailboxes, Counters) {
        (MwiBook::new(ME, DevicePatterns::parse(mailboxes).unwrap()), FakeMailboxes::default(), Counters::default())
    }

    fn slot<'a>(ast: &'a FakeMailboxes, mailbox: &str) -> Option<(&'a str, u32, u32)> {
        ast.slots.get(mailbox).map(|(o, n, d)| (o.as_str(), *n, *d))
    }

    #[test]
    fn the_last_newer_state_of_any_origin_is_the_mailboxs_state() {
        let (mut book, mut ast, c) = setup("");
        book.handle(&msg("1001@default", 2, 1, A, 5), &mut ast, &c);
        assert_eq!(slot(&ast, "1001@default"), Some((A, 2, 1)));
        book.handle(&msg("1001@default", 9, 9, A, 5), &mut ast, &c);
        book.handle(&msg("1001@default", 9, 9, A, 4), &mut ast, &c);
        assert_eq!(Counters::get(&c.ignored_stale), 2, "a duplicate and an older one");
        book.handle(&msg("1001@default", 0, 3, B, 1), &mut ast, &c);
        assert_eq!(slot(&ast, "1001@default"), Some((B, 0, 3)), "one slot: the last writer wins");
        assert_eq!(Counters::get(&c.applied), 2);
        assert_eq!(book.remote()["1001@default"][A], RemoteMwi { new: 2, old: 1, deleted: false, seq: 5 });
    }

    #[test]
    fn own_messages_and_mailboxes_not_shared_are_left_alone() {
        let (mut book, mut ast, c) = setup("*@default");
        book.handle(&msg("1001@default", 1, 0, ME, 1), &mut ast, &c);
        book.handle(&msg("1001@default", 1, 0, &ME.to_uppercase(), 2), &mut ast, &c);
        book.handle(&msg("1001@sales", 1, 0, A, 3), &mut ast, &c);
        assert!(ast.slots.is_empty());
        assert_eq!((Counters::get(&c.ignored_own), Counters::get(&c.ignored_not_shared)), (2, 1));
    }

    #[test]
    fn a_deletion_takes_the_origins_state_back_but_not_a_later_one_of_another() {
        let (mut book, mut ast, c) = setup("");
        book.handle(&msg("1001@default", 2, 1, A, 1), &mut ast, &c);
        book.handle(&deleted("1001@default", A, 2), &mut ast, &c);
        assert_eq!(slot(&ast, "1001@default"), None);
        book.handle(&msg("1001@default", 2, 1, A, 1), &mut ast, &c);
        assert_eq!(slot(&ast, "1001@default"), None, "an older state does not come back after its deletion");
        book.handle(&msg("1001@default", 4, 0, A, 3), &mut ast, &c);
        book.handle(&msg("1001@default", 1, 1, B, 1), &mut ast, &c);
        book.handle(&deleted("1001@default", A, 4), &mut ast, &c);
        assert_eq!(slot(&ast, "1001@default"), Some((B, 1, 1)), "B wrote after A: A's deletion leaves it");
    }

    #[test]
    fn bad_input_is_counted_by_reason_and_the_next_message_applies() {
        let (mut book, mut ast, c) = setup("");
        book.handle(b"{not json", &mut ast, &c);
        book.handle(br#"{"type":"MWI","mailbox":"1001@default","new":-2,"old":0,"origin":"02:00:00:00:00:0a","seq":1}"#, &mut ast, &c);
        book.handle(&msg("refuse@default", 1, 0, A, 2), &mut ast, &c);
        book.handle(&vec![b'x'; crate::state::message::MAX_MESSAGE_BYTES + 1], &mut ast, &c);
        assert_eq!(c.rejected.by_reason(), "too_large=1 bad_json=1 bad_field=1 refused=1");
        assert!(book.remote().is_empty(), "a refused state is not remembered");
        book.handle(&msg("1001@default", 2, 1, A, 3), &mut ast, &c);
        assert_eq!(slot(&ast, "1001@default"), Some((A, 2, 1)));
    }

    #[test]
    fn the_number_of_remote_states_is_bounded() {
        let (mut book, mut ast, c) = setup("");
        for i in 0..MAX_REMOTE {
            book.handle(&msg(&format!("{i}@default"), 1, 0, A, 1), &mut ast, &c);
        }
        book.handle(&msg("one-more@default", 1, 0, A, 1), &mut ast, &c);
        assert_eq!(c.rejected.get("too_many"), 1);
        book.handle(&msg("0@default", 0, 1, A, 2), &mut ast, &c);
        assert_eq!(Counters::get(&c.applied), MAX_REMOTE as u64 + 1, "known ones still change");
    }

    #[test]
    fn clear_takes_back_only_what_is_still_the_origins_until_the_deadline() {
        let (mut book, mut ast, c) = setup("");
        book.handle(&msg("1001@default", 2, 1, A, 1), &mut ast, &c);
        book.handle(&msg("1002@default", 1, 0, A, 1), &mut ast, &c);
        book.handle(&msg("1002@default", 5, 0, B, 1), &mut ast, &c);
        book.handle(&msg("1003@default", 1, 0, A, 1), &mut ast, &c);
        book.handle(&deleted("1003@default", A, 2), &mut ast, &c);
        // This node's own voicemail wrote 1001 later: it stays.
        ast.slots.insert("1001@default".into(), (ME.into(), 0, 0));
        let done = book.clear(&mut ast, Instant::now() + Duration::from_secs(60));
        assert_eq!(done, TakenBack { taken: 1, kept: 2, left: 0 }, "B's 1002 taken back; A's 1002 and 1001 were overwritten; 1003 was deleted already");
        assert_eq!(slot(&ast, "1001@default"), Some((ME, 0, 0)));
        assert!(ast.slots.get("1002@default").is_none() && book.remote().is_empty());
        book.handle(&msg("1001@default", 3, 0, A, 3), &mut ast, &c);
        assert_eq!(book.clear(&mut ast, Instant::now()), TakenBack { taken: 0, kept: 0, left: 1 });
    }
}

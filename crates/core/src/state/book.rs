//! What a node learned about device states from the others, and the rules that hand a message
//! to Asterisk:
//!
//! - a node never applies its own messages (they come back from the exchange, and a state
//!   published with this node's EID would overwrite its local one);
//! - per (origin, device), only a message newer than the last one applied counts;
//! - devices this node does not share (`[state] devices`) are left alone;
//! - bad input is refused with a reason, counted, logged (rate-limited), and the next message
//!   still applies;
//! - when a node leaves the pool, everything it said is taken back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::devices::DevicePatterns;
use super::message::{self, DeviceState, Message, Update};
use super::mwi::book::{Mailboxes, MwiBook};
use crate::amqp::signing::Signature;
use crate::rate_log::RateLimitedLog;
use crate::reasons::ByReason;

/// Asterisk did not take a state (it could not parse the origin's EID, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

/// Asterisk's device states, as the book changes them. The module's implementation publishes
/// them with `ast_publish_device_state_full` and the origin's EID.
pub trait DeviceStates {
    /// Publishes another node's state of a device under that node's EID.
    fn apply(&mut self, state: &DeviceState) -> Result<(), Refused>;
    /// Takes back what `apply` put there for (device, origin), and has Asterisk work the
    /// device's aggregate out again.
    fn forget(&mut self, device: &str, origin: &str);
}

/// The reasons a message is rejected, each with its counter.
pub const REASONS: [&str; 10] = ["too_large", "bad_json", "unknown_type", "missing_field", "bad_field", "unknown_state", "too_many", "refused", "unsigned", "bad_signature"];

/// What [`StateBook::handle`] leaves to its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Applied,
    /// Another node asks for this node's own states.
    SyncRequest {
        origin: String,
    },
}

/// (device, origin) pairs kept at most: every one is also an entry in Asterisk's cache, and
/// a publisher that makes up device names must not fill the node's memory.
pub const MAX_REMOTE: usize = 50_000;

#[derive(Debug)]
pub struct Counters {
    /// Local changes queued for the exchange.
    pub published: AtomicU64,
    /// Local changes lost because the queue to the exchange was full.
    pub publish_dropped: AtomicU64,
    /// Remote states handed to Asterisk.
    pub applied: AtomicU64,
    /// Messages with this node's own EID (its own, back from the exchange, or spoofed).
    pub ignored_own: AtomicU64,
    /// Duplicates and messages older than the last one applied for that origin and device.
    pub ignored_stale: AtomicU64,
    /// Devices this node does not share.
    pub ignored_not_shared: AtomicU64,
    /// SYNC requests of other nodes answered.
    pub sync_answered: AtomicU64,
    /// SYNC requests this node sent (after a (re)connect, or when a node came back).
    pub sync_requested: AtomicU64,
    /// States taken back because the node they came from left the pool.
    pub cleared_lost: AtomicU64,
    pub rejected: ByReason<{ REASONS.len() }>,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            published: AtomicU64::new(0),
            publish_dropped: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            ignored_own: AtomicU64::new(0),
            ignored_stale: AtomicU64::new(0),
            ignored_not_shared: AtomicU64::new(0),
            sync_answered: AtomicU64::new(0),
            sync_requested: AtomicU64::new(0),
            cleared_lost: AtomicU64::new(0),
            rejected: ByReason::new(REASONS),
        }
    }
}

impl Counters {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts a refused message under `reason` and says why in the log (rate-limited).
    pub fn refuse(&self, log: &mut RateLimitedLog, reason: &'static str, text: impl FnOnce() -> String) {
        self.rejected.count(reason);
        log.warn(reason, text);
    }
}

/// The last state applied for one origin of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub state: &'static str,
    pub cachable: bool,
    pub seq: u64,
}

/// Device → origin → its last state.
pub type RemoteStates = BTreeMap<String, BTreeMap<String, Remote>>;

#[derive(Debug)]
pub struct StateBook {
    origin: String,
    devices: DevicePatterns,
    remote: RemoteStates,
    count: usize,
    /// None when mailbox state is not shared: MWI messages are then left alone.
    mwi: Option<MwiBook>,
    log: RateLimitedLog,
}

impl StateBook {
    /// `origin` is this node's EID.
    pub fn new(origin: &str, devices: DevicePatterns, mwi: Option<MwiBook>) -> StateBook {
        StateBook { origin: origin.to_ascii_lowercase(), devices, remote: RemoteStates::new(), count: 0, mwi, log: RateLimitedLog::new("state") }
    }

    pub fn remote(&self) -> &RemoteStates {
        &self.remote
    }

    pub fn mwi(&self) -> Option<&MwiBook> {
        self.mwi.as_ref()
    }

    pub fn mwi_mut(&mut self) -> Option<&mut MwiBook> {
        self.mwi.as_mut()
    }

    /// Whether a message whose signature the bus found to be `signature` may be handled; if
    /// not, it is counted and logged (rate-limited). Only nodes publish state, and they sign.
    pub fn admits(&mut self, signature: Signature, counters: &Counters) -> bool {
        let Some((reason, why)) = signature.refusal() else { return true };
        self.refuse(counters, reason, || format!("message refused ({reason}): {why}"));
        false
    }

    /// Decodes one message body and applies what it says; a SYNC request is the caller's to
    /// answer (it knows where the reply goes).
    pub fn handle(&mut self, body: &[u8], target: &mut (impl DeviceStates + Mailboxes), counters: &Counters) -> Handled {
        match message::decode(body) {
            Ok(Message::Update(update)) => self.apply(update, target, counters),
            Ok(Message::Batch { items, .. }) => {
                for item in items {
                    match item {
                        Ok(update) => self.apply(update, target, counters),
                        Err(rejection) => self.rejected(counters, &rejection),
                    }
                }
            }
            // Its own request comes back to the asker too.
            Ok(Message::SyncRequest { origin }) if origin == self.origin => {}
            Ok(Message::SyncRequest { origin }) => return Handled::SyncRequest { origin },
            Err(rejection) => self.rejected(counters, &rejection),
        }
        Handled::Applied
    }

    fn rejected(&mut self, counters: &Counters, rejection: &message::Rejection) {
        let reason = rejection.reason();
        self.refuse(counters, reason, || format!("message refused ({reason}): {rejection}"));
    }

    fn refuse(&mut self, counters: &Counters, reason: &'static str, text: impl FnOnce() -> String) {
        counters.refuse(&mut self.log, reason, text);
    }

    fn apply(&mut self, update: Update, target: &mut (impl DeviceStates + Mailboxes), counters: &Counters) {
        match update {
            Update::Device(state) => self.apply_device(state, target, counters),
            Update::Mwi(state) => match &mut self.mwi {
                Some(mwi) => mwi.apply(state, target),
                None => Counters::count(&counters.ignored_not_shared),
            },
        }
    }

    fn apply_device(&mut self, state: DeviceState, target: &mut impl DeviceStates, counters: &Counters) {
        if state.origin == self.origin {
            return Counters::count(&counters.ignored_own);
        }
        if !self.devices.shares(&state.device) {
            return Counters::count(&counters.ignored_not_shared);
        }
        let known = self.remote.get(&state.device).and_then(|origins| origins.get(&state.origin));
        if known.is_some_and(|r| state.seq <= r.seq) {
            return Counters::count(&counters.ignored_stale);
        }
        if known.is_none() && self.count >= MAX_REMOTE {
            let device = state.device.clone();
            return self.refuse(counters, "too_many", || format!("state of {device} from {} not applied (too_many): this node already keeps {MAX_REMOTE} remote device states", state.origin));
        }
        if target.apply(&state).is_err() {
            let device = state.device.clone();
            return self.refuse(counters, "refused", || format!("state {} of {device} from {} not applied (refused): Asterisk refused it", state.state, state.origin));
        }
        Counters::count(&counters.applied);
        let remote = Remote { state: state.state, cachable: state.cachable, seq: state.seq };
        if self.remote.entry(state.device).or_default().insert(state.origin, remote).is_none() {
            self.count += 1;
        }
    }

    /// Takes back every state that `origin` (a node that left the pool) said; returns how many.
    /// Its seq numbers go too: a restarted node starts from a new clock anyway.
    pub fn forget_origin(&mut self, origin: &str, target: &mut impl DeviceStates, counters: &Counters) -> usize {
        let mut cleared = 0;
        self.remote.retain(|device, origins| {
            if origins.remove(origin).is_some() {
                target.forget(device, origin);
                cleared += 1;
            }
            !origins.is_empty()
        });
        self.count -= cleared;
        counters.cleared_lost.fetch_add(cleared as u64, Ordering::Relaxed);
        cleared
    }

    /// Takes back every state learned from others (at unload: nothing would keep them right),
    /// until `deadline`; the book forgets the rest. Returns how many were taken back and how
    /// many left in place.
    pub fn clear(&mut self, target: &mut impl DeviceStates, deadline: Instant) -> (usize, usize) {
        let all = std::mem::take(&mut self.remote);
        let count = std::mem::take(&mut self.count);
        let mut cleared = 0;
        'devices: for (device, origins) in all {
            for origin in origins.keys() {
                if Instant::now() >= deadline {
                    break 'devices;
                }
                target.forget(&device, origin);
                cleared += 1;
            }
        }
        (cleared, count - cleared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::mwi::message::MwiState;
    use std::sync::Arc;
    use std::time::Duration;

    /// Asterisk's per-EID slots as a map; devices named `refuse*` are refused.
    #[derive(Default)]
    struct FakeStates {
        slots: BTreeMap<(String, String), &'static str>,
        forgotten: Vec<(String, String)>,
        mailboxes: BTreeMap<String, (String, u32)>,
    }

    /// Mailboxes as Asterisk's one slot each: (origin, new).
    impl Mailboxes for FakeStates {
        fn apply(&mut self, s: &MwiState) -> Result<(), Refused> {
            self.mailboxes.insert(s.mailbox.clone(), (s.origin.clone(), s.new));
            Ok(())
        }

        fn forget(&mut self, mailbox: &str, origin: &str) -> bool {
            let holds = self.mailboxes.get(mailbox).is_some_and(|(o, _)| o == origin);
            if holds {
                self.mailboxes.remove(mailbox);
            }
            holds
        }
    }

    impl DeviceStates for FakeStates {
        fn apply(&mut self, s: &DeviceState) -> Result<(), Refused> {
            if s.device.starts_with("refuse") {
                return Err(Refused);
            }
            self.slots.insert((s.device.clone(), s.origin.clone()), s.state);
            Ok(())
        }

        fn forget(&mut self, device: &str, origin: &str) {
            self.slots.remove(&(device.to_string(), origin.to_string()));
            self.forgotten.push((device.to_string(), origin.to_string()));
        }
    }

    const ME: &str = "02:00:00:00:00:01";
    const A: &str = "02:00:00:00:00:0a";
    const B: &str = "02:00:00:00:00:0b";

    fn msg(device: &str, state: &str, origin: &str, seq: u64) -> Vec<u8> {
        format!(r#"{{"type":"DEVICE_STATE","device":"{device}","state":"{state}","cachable":true,"origin":"{origin}","seq":{seq}}}"#).into_bytes()
    }

    fn setup(devices: &str) -> (StateBook, FakeStates, Counters) {
        let mwi = MwiBook::new(ME, DevicePatterns::default(), Arc::new(Counters::default()));
        (StateBook::new(ME, DevicePatterns::parse(devices).unwrap(), Some(mwi)), FakeStates::default(), Counters::default())
    }

    #[test]
    fn applies_each_origins_state_and_only_newer_ones() {
        let (mut book, mut ast, c) = setup("");
        book.handle(&msg("Custom:agent1", "INUSE", A, 5), &mut ast, &c);
        book.handle(&msg("Custom:agent1", "NOT_INUSE", B, 1), &mut ast, &c);
        assert_eq!(ast.slots.len(), 2, "one slot per origin");
        book.handle(&msg("Custom:agent1", "BUSY", A, 5), &mut ast, &c);
        book.handle(&msg("Custom:agent1", "BUSY", A, 4), &mut ast, &c);
        assert_eq!(Counters::get(&c.ignored_stale), 2, "a duplicate and an older one");
        assert_eq!(ast.slots[&("Custom:agent1".into(), A.into())], "INUSE");
        book.handle(&msg("Custom:agent1", "NOT_INUSE", A, 6), &mut ast, &c);
        assert_eq!(ast.slots[&("Custom:agent1".into(), A.into())], "NOT_INUSE");
        assert_eq!(Counters::get(&c.applied), 3);
        assert_eq!(book.remote()["Custom:agent1"][A], Remote { state: "NOT_INUSE", cachable: true, seq: 6 });
    }

    #[test]
    fn own_messages_are_ignored_whatever_the_case_of_the_eid() {
        let (mut book, mut ast, c) = setup("");
        book.handle(&msg("Custom:agent1", "INUSE", ME, 1), &mut ast, &c);
        book.handle(&msg("Custom:agent1", "INUSE", &ME.to_uppercase(), 2), &mut ast, &c);
        assert!(ast.slots.is_empty());
        assert_eq!(Counters::get(&c.ignored_own), 2);
    }

    #[test]
    fn devices_not_shared_are_left_alone() {
        let (mut book, mut ast, c) = setup("PJSIP/*, !PJSIP/trunk");
        book.handle(&msg("Custom:agent1", "INUSE", A, 1), &mut ast, &c);
        book.handle(&msg("PJSIP/trunk", "INUSE", A, 2), &mut ast, &c);
        book.handle(&msg("PJSIP/alice", "INUSE", A, 3), &mut ast, &c);
        assert_eq!((ast.slots.len(), Counters::get(&c.ignored_not_shared)), (1, 2));
    }

    #[test]
    fn bad_input_is_counted_by_reason_and_the_next_message_applies() {
        let (mut book, mut ast, c) = setup("");
        book.handle(b"{not json", &mut ast, &c);
        book.handle(&msg("Custom:agent1", "SLEEPING", A, 1), &mut ast, &c);
        book.handle(&msg("refuse-me", "INUSE", A, 2), &mut ast, &c);
        book.handle(&vec![b'x'; message::MAX_MESSAGE_BYTES + 1], &mut ast, &c);
        assert_eq!(c.rejected.by_reason(), "too_large=1 bad_json=1 unknown_state=1 refused=1");
        assert!(book.remote().is_empty(), "a refused state is not remembered");
        book.handle(&msg("Custom:agent1", "INUSE", A, 3), &mut ast, &c);
        assert_eq!(ast.slots.len(), 1);
    }

    #[test]
    fn with_a_pool_key_only_verified_messages_apply() {
        let (mut book, mut ast, c) = setup("*");
        for (seq, signature) in [(1, Signature::Missing), (2, Signature::Invalid)] {
            let body = msg("Custom:agent1", "INUSE", A, seq);
            if book.admits(signature, &c) {
                book.handle(&body, &mut ast, &c);
            }
        }
        assert!(ast.slots.is_empty(), "a forged state applied");
        assert_eq!(c.rejected.by_reason(), "unsigned=1 bad_signature=1");
        assert!(book.admits(Signature::Verified, &c) && book.admits(Signature::NotChecked, &c));
        assert_eq!(c.rejected.total(), 2);
    }

    #[test]
    fn the_number_of_remote_states_is_bounded() {
        let (mut book, mut ast, c) = setup("");
        for i in 0..MAX_REMOTE {
            book.handle(&msg(&format!("Custom:d{i}"), "INUSE", A, 1), &mut ast, &c);
        }
        book.handle(&msg("Custom:one-more", "INUSE", A, 1), &mut ast, &c);
        assert_eq!(c.rejected.get("too_many"), 1);
        book.handle(&msg("Custom:d0", "NOT_INUSE", A, 2), &mut ast, &c);
        assert_eq!(Counters::get(&c.applied), MAX_REMOTE as u64 + 1, "known ones still change");
    }

    #[test]
    fn batches_apply_item_by_item_and_sync_requests_go_to_the_caller() {
        let (mut book, mut ast, c) = setup("");
        let batch = format!(
            r#"{{"type":"STATE_BATCH","origin":"{A}","states":[{},{{"type":"DEVICE_STATE"}},{}]}}"#,
            String::from_utf8(msg("Custom:agent1", "INUSE", A, 1)).unwrap(),
            String::from_utf8(msg("Custom:agent2", "BUSY", A, 2)).unwrap()
        );
        assert_eq!(book.handle(batch.as_bytes(), &mut ast, &c), Handled::Applied);
        assert_eq!((ast.slots.len(), c.rejected.by_reason()), (2, "missing_field=1".to_string()));
        let ask = |origin: &str| format!(r#"{{"type":"STATE_SYNC","origin":"{origin}"}}"#).into_bytes();
        assert_eq!(book.handle(&ask(B), &mut ast, &c), Handled::SyncRequest { origin: B.into() });
        assert_eq!(book.handle(&ask(ME), &mut ast, &c), Handled::Applied, "its own request, back from the exchange");
    }

    #[test]
    fn a_lost_nodes_states_are_taken_back_and_only_its_own() {
        let (mut book, mut ast, c) = setup("");
        book.handle(&msg("Custom:agent1", "INUSE", A, 1), &mut ast, &c);
        book.handle(&msg("Custom:agent1", "NOT_INUSE", B, 1), &mut ast, &c);
        book.handle(&msg("PJSIP/alice", "INUSE", A, 2), &mut ast, &c);
        assert_eq!(book.forget_origin(A, &mut ast, &c), 2);
        assert_eq!(ast.slots.keys().cloned().collect::<Vec<_>>(), [("Custom:agent1".to_string(), B.to_string())]);
        assert_eq!(book.remote().len(), 1, "devices without any origin left are forgotten");
        assert_eq!(Counters::get(&c.cleared_lost), 2);
        book.handle(&msg("PJSIP/alice", "INUSE", A, 1), &mut ast, &c);
        assert_eq!(ast.slots.len(), 2, "back with a seq from before: it counts again");
    }

    #[test]
    fn clear_takes_back_everything_learned_until_the_deadline() {
        let (mut book, mut ast, c) = setup("");
        book.handle(&msg("Custom:agent1", "INUSE", A, 1), &mut ast, &c);
        book.handle(&msg("Custom:agent1", "INUSE", B, 1), &mut ast, &c);
        book.handle(&msg("PJSIP/alice", "RINGING", A, 2), &mut ast, &c);
        assert_eq!(book.clear(&mut ast, Instant::now() + Duration::from_secs(60)), (3, 0));
        assert!(ast.slots.is_empty() && book.remote().is_empty());
        assert_eq!(ast.forgotten.len(), 3);
        book.handle(&msg("Custom:agent1", "INUSE", A, 3), &mut ast, &c);
        assert_eq!(book.clear(&mut ast, Instant::now()), (0, 1), "past the deadline nothing more is taken back");
    }

    #[test]
    fn mwi_messages_alone_or_in_a_batch_go_to_the_mailboxes_unless_mwi_is_off() {
        let (mut book, mut ast, c) = setup("");
        let mwi = |mailbox: &str, new: u32, seq: u64| format!(r#"{{"type":"MWI","mailbox":"{mailbox}","new":{new},"old":0,"origin":"{A}","seq":{seq}}}"#);
        book.handle(mwi("1001@default", 2, 1).as_bytes(), &mut ast, &c);
        let batch = format!(r#"{{"type":"STATE_BATCH","origin":"{A}","states":[{},{}]}}"#, mwi("1002@default", 1, 2), String::from_utf8(msg("Custom:agent1", "INUSE", A, 3)).unwrap());
        book.handle(batch.as_bytes(), &mut ast, &c);
        assert_eq!((ast.mailboxes.len(), ast.slots.len()), (2, 1));
        assert_eq!(Counters::get(&book.mwi().unwrap().counters().applied), 2);
        assert_eq!(Counters::get(&c.applied), 1, "device and MWI counters are apart");
        book.handle(br#"{"type":"MWI","mailbox":"@x","new":1,"old":0,"origin":"02:00:00:00:00:0a","seq":9}"#, &mut ast, &c);
        assert_eq!(c.rejected.get("bad_field"), 1, "what cannot be decoded counts with the exchange");

        let mut off = StateBook::new(ME, DevicePatterns::default(), None);
        off.handle(mwi("1003@default", 1, 1).as_bytes(), &mut ast, &c);
        assert_eq!((ast.mailboxes.len(), Counters::get(&c.ignored_not_shared)), (2, 1));
    }
}

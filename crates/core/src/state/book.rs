//! What a node learned about device states from the others, and the rules that hand a message
//! to Asterisk:
//!
//! - a node never applies its own messages (they come back from the exchange, and a state
//!   published with this node's EID would overwrite its local one);
//! - per (origin, device), only a message newer than the last one applied counts;
//! - devices this node does not share (`[state] devices`) are left alone;
//! - bad input is refused with a reason, counted, logged (rate-limited), and the next message
//!   still applies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::devices::DevicePatterns;
use super::message::{self, DeviceState};
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
pub const REASONS: [&str; 8] = ["too_large", "bad_json", "unknown_type", "missing_field", "bad_field", "unknown_state", "too_many", "refused"];

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
    log: RateLimitedLog,
}

impl StateBook {
    /// `origin` is this node's EID.
    pub fn new(origin: &str, devices: DevicePatterns) -> StateBook {
        StateBook { origin: origin.to_ascii_lowercase(), devices, remote: RemoteStates::new(), count: 0, log: RateLimitedLog::new("state") }
    }

    pub fn remote(&self) -> &RemoteStates {
        &self.remote
    }

    /// Decodes one message body and applies it.
    pub fn handle(&mut self, body: &[u8], target: &mut impl DeviceStates, counters: &Counters) {
        match message::decode(body) {
            Ok(state) => self.apply(state, target, counters),
            Err(rejection) => {
                let reason = rejection.reason();
                counters.refuse(&mut self.log, reason, || format!("message refused ({reason}): {rejection}"));
            }
        }
    }

    fn apply(&mut self, state: DeviceState, target: &mut impl DeviceStates, counters: &Counters) {
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
            return counters.refuse(&mut self.log, "too_many", || format!("state of {device} from {} not applied (too_many): this node already keeps {MAX_REMOTE} remote device states", state.origin));
        }
        if target.apply(&state).is_err() {
            let device = state.device.clone();
            return counters.refuse(&mut self.log, "refused", || format!("state {} of {device} from {} not applied (refused): Asterisk refused it", state.state, state.origin));
        }
        Counters::count(&counters.applied);
        let remote = Remote { state: state.state, cachable: state.cachable, seq: state.seq };
        if self.remote.entry(state.device).or_default().insert(state.origin, remote).is_none() {
            self.count += 1;
        }
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
    use std::time::Duration;

    /// Asterisk's per-EID slots as a map; devices named `refuse*` are refused.
    #[derive(Default)]
    struct FakeStates {
        slots: BTreeMap<(String, String), &'static str>,
        forgotten: Vec<(String, String)>,
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
        (StateBook::new(ME, DevicePatterns::parse(devices).unwrap()), FakeStates::default(), Counters::default())
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
}

//! The device states that changed on this node, and the messages that tell the pool. Fed from
//! Asterisk's device state topic on a Stasis thread: it only records and numbers.

use std::collections::BTreeMap;

use super::devices::DevicePatterns;
use super::message::{self, DeviceState};

/// This node's state of a device, as it last changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalState {
    pub state: &'static str,
    pub cachable: bool,
    /// The seq of the message that told the pool.
    pub seq: u64,
}

#[derive(Debug)]
pub struct LocalStates {
    origin: String,
    devices: DevicePatterns,
    next_seq: u64,
    states: BTreeMap<String, LocalState>,
}

impl LocalStates {
    /// `first_seq` must exceed every seq this node used before (the module starts from the
    /// clock in microseconds, so a restarted node is not taken for a replay).
    pub fn new(origin: &str, devices: DevicePatterns, first_seq: u64) -> LocalStates {
        LocalStates { origin: origin.to_ascii_lowercase(), devices, next_seq: first_seq, states: BTreeMap::new() }
    }

    pub fn states(&self) -> &BTreeMap<String, LocalState> {
        &self.states
    }

    /// Records a change of this node's own state of `device` (`state` as `ast_devstate_str`
    /// names it) and returns the message for the pool, or None for a device that is not
    /// shared or that no receiver would accept.
    pub fn changed(&mut self, device: &str, state: &str, cachable: bool) -> Option<DeviceState> {
        let state = message::state_name(state)?;
        if !message::valid_name(device) || !self.devices.shares(device) {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.states.insert(device.to_string(), LocalState { state, cachable, seq });
        Some(DeviceState { device: device.to_string(), state, cachable, origin: self.origin.clone(), seq })
    }

    /// Records a state that Asterisk already held (one set before the module was loaded), unless
    /// a change of that device was recorded meanwhile: that one is newer.
    pub fn adopt(&mut self, device: &str, state: &str, cachable: bool) {
        if !self.states.contains_key(device) {
            self.changed(device, state, cachable);
        }
    }

    /// Every state as the pool should know it, each with the seq it was told with (a receiver
    /// that already has it ignores it).
    pub fn all(&self) -> Vec<DeviceState> {
        self.states.iter().map(|(device, s)| DeviceState { device: device.clone(), state: s.state, cachable: s.cachable, origin: self.origin.clone(), seq: s.seq }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_the_changes_of_shared_devices() {
        let mut local = LocalStates::new("02:00:00:00:00:0A", DevicePatterns::parse("!Local/*").unwrap(), 100);
        let m = local.changed("Custom:agent1", "INUSE", true).unwrap();
        assert_eq!(m, DeviceState { device: "Custom:agent1".into(), state: "INUSE", cachable: true, origin: "02:00:00:00:00:0a".into(), seq: 100 });
        assert_eq!(local.changed("Custom:agent1", "NOT_INUSE", true).unwrap().seq, 101);
        assert_eq!(local.changed("Local/100@from-sip-0001;1", "INUSE", false), None, "not shared");
        assert_eq!(local.changed("Custom:agent1", "Sleeping", true), None, "not a state name");
        assert_eq!(local.changed(&"x".repeat(300), "INUSE", true), None, "no receiver would take it");
        assert_eq!(local.states().len(), 1);
        assert_eq!(local.states()["Custom:agent1"], LocalState { state: "NOT_INUSE", cachable: true, seq: 101 });
    }

    #[test]
    fn adopts_what_asterisk_held_before_without_overwriting_a_newer_change() {
        let mut local = LocalStates::new("02:00:00:00:00:0a", DevicePatterns::default(), 1);
        local.changed("Custom:agent1", "BUSY", true);
        local.adopt("Custom:agent1", "NOT_INUSE", true);
        local.adopt("PJSIP/alice", "INUSE", true);
        let all = local.all();
        assert_eq!(all.iter().map(|s| (s.device.as_str(), s.state, s.seq)).collect::<Vec<_>>(), [("Custom:agent1", "BUSY", 1), ("PJSIP/alice", "INUSE", 2)]);
    }
}

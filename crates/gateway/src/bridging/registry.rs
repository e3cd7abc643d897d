//! What the gateway knows of its cross-node bridges: for each application bridge that has
//! members on other nodes, one helper leg per such node (a helper bridge and a call leg on the
//! member node, the call's other end in the application's bridge), and which channels each
//! leg carries. Ids of torn-down helpers stay known for a while, so late events about them
//! are still hidden. What the events themselves show is learned too (helpers are recognisable
//! by their names), so any gateway replica hides the helpers of legs another one set up.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::owners::Eid;

/// Every helper bridge's id starts with this (so a sweep can tell them from applications').
pub const HELPER_BRIDGE_PREFIX: &str = "scale-helper-";
/// The id of every helper call's far end (on the member's node), chosen by the gateway.
pub const HELPER_CALL_PREFIX: &str = "scale-leg-";
/// A helper bridge's name: this, then the id of the application bridge it extends.
pub const HELPER_NAME_PREFIX: &str = "scale-gateway-helper:";

/// How long the ids of a torn-down helper leg are still hidden from applications.
const RETIRED_FOR: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    /// Random hex: the leg's extension on the bridge's node and its Stasis argument.
    pub id: String,
    /// The helper bridge on the member node, holding the members and the far end.
    pub helper_bridge: String,
    /// The helper call on the member node (its id is chosen by the gateway).
    pub far: String,
    /// The helper call's other end in the application's bridge, once it arrived.
    pub near: Option<String>,
    /// The application's channels this leg carries.
    pub members: BTreeSet<String>,
}

impl Leg {
    pub fn new(id: &str) -> Leg {
        Leg { id: id.to_string(), helper_bridge: format!("{HELPER_BRIDGE_PREFIX}{id}"), far: format!("{HELPER_CALL_PREFIX}{id}"), near: None, members: BTreeSet::new() }
    }
}

/// An application bridge with members on other nodes.
#[derive(Debug)]
pub struct Cross {
    /// Where the application's bridge lives.
    pub node: Eid,
    /// One leg per member node.
    pub legs: BTreeMap<Eid, Leg>,
}

#[derive(Default)]
pub struct Registry {
    pub bridges: HashMap<String, Cross>,
    /// Helper bridge id -> the application bridge it extends.
    pub helper_bridges: HashMap<String, String>,
    pub helper_channels: HashSet<String>,
    /// The application bridge as its node last described it (from events and answers).
    pub snapshots: HashMap<String, Value>,
    /// Members of helper bridges as the events showed them (also of other replicas' legs).
    pub seen_members: HashMap<String, BTreeSet<String>>,
    /// Every application bridge that holds channels, as its node last described it. A replica
    /// that learns of a leg only from its events may see the member's side first (the nodes'
    /// events race): this is then the application's bridge it extends.
    pub occupied: HashMap<String, Value>,
    retired: VecDeque<Retired>,
}

/// At most this many bridges are remembered in [`Registry::occupied`] (a node that dies takes
/// its `BridgeDestroyed` events with it; past the bound new bridges are not remembered).
const OCCUPIED_MAX: usize = 20_000;

/// The ids of a torn-down leg, forgotten once their time is up.
struct Retired {
    at: Instant,
    helper_bridge: String,
    helper_channels: Vec<String>,
    /// The application bridge, when this was its last leg (its snapshot goes too).
    bridge: Option<String>,
}

impl Registry {
    /// Whether anything is known of helpers: when not, events and answers pass untouched
    /// (bridge events are still remembered).
    pub fn is_empty(&self) -> bool {
        self.bridges.is_empty() && self.helper_bridges.is_empty() && self.helper_channels.is_empty() && self.snapshots.is_empty() && self.seen_members.is_empty()
    }

    /// Starts a leg from `member_node` into `bridge` (on `bridge_node`): its ids are hidden
    /// from now on, before any event about them can arrive.
    pub fn open(&mut self, bridge: &str, bridge_node: &Eid, member_node: &Eid, leg: Leg) {
        self.helper_bridges.insert(leg.helper_bridge.clone(), bridge.to_string());
        self.helper_channels.insert(leg.far.clone());
        let cross = self.bridges.entry(bridge.to_string()).or_insert_with(|| Cross { node: bridge_node.clone(), legs: BTreeMap::new() });
        cross.legs.insert(member_node.clone(), leg);
    }

    pub fn leg(&self, bridge: &str, member_node: &Eid) -> Option<&Leg> {
        self.bridges.get(bridge)?.legs.get(member_node)
    }

    pub fn leg_mut(&mut self, bridge: &str, member_node: &Eid) -> Option<&mut Leg> {
        self.bridges.get_mut(bridge)?.legs.get_mut(member_node)
    }

    pub fn set_near(&mut self, bridge: &str, member_node: &Eid, near: &str) {
        self.helper_channels.insert(near.to_string());
        if let Some(leg) = self.leg_mut(bridge, member_node) {
            leg.near = Some(near.to_string());
        }
    }

    /// Takes the leg out; its ids stay hidden for [`RETIRED_FOR`].
    pub fn close(&mut self, bridge: &str, member_node: &Eid) -> Option<Leg> {
        let cross = self.bridges.get_mut(bridge)?;
        let leg = cross.legs.remove(member_node)?;
        let last = cross.legs.is_empty();
        if last {
            self.bridges.remove(bridge);
        }
        let channels = std::iter::once(leg.far.clone()).chain(leg.near.clone()).collect();
        self.retired.push_back(Retired { at: Instant::now(), helper_bridge: leg.helper_bridge.clone(), helper_channels: channels, bridge: last.then(|| bridge.to_string()) });
        Some(leg)
    }

    /// Forgets retired ids whose time is up (unless they are in use again).
    pub fn expire(&mut self, now: Instant) {
        while self.retired.front().is_some_and(|r| now.duration_since(r.at) >= RETIRED_FOR) {
            let retired = self.retired.pop_front().expect("front exists");
            if !self.bridges.values().flat_map(|c| c.legs.values()).any(|l| l.helper_bridge == retired.helper_bridge) {
                self.helper_bridges.remove(&retired.helper_bridge);
                self.seen_members.remove(&retired.helper_bridge);
            }
            for c in retired.helper_channels {
                self.helper_channels.remove(&c);
            }
            if let Some(b) = retired.bridge.filter(|b| !self.bridges.contains_key(b)) {
                self.snapshots.remove(&b);
            }
        }
    }

    /// The leg (bridge, member node) that carries `channel`.
    pub fn leg_of_member(&self, channel: &str) -> Option<(String, Eid)> {
        self.bridges.iter().find_map(|(b, cross)| cross.legs.iter().find(|(_, l)| l.members.contains(channel)).map(|(n, _)| (b.clone(), n.clone())))
    }

    /// The leg whose helper call (either end) is `channel`.
    pub fn leg_of_helper(&self, channel: &str) -> Option<(String, Eid)> {
        self.bridges.iter().find_map(|(b, cross)| cross.legs.iter().find(|(_, l)| l.far == channel || l.near.as_deref() == Some(channel)).map(|(n, _)| (b.clone(), n.clone())))
    }

    /// The leg of a helper bridge.
    pub fn leg_of_helper_bridge(&self, helper: &str) -> Option<(String, Eid)> {
        let bridge = self.helper_bridges.get(helper)?;
        let cross = self.bridges.get(bridge)?;
        cross.legs.iter().find(|(_, l)| l.helper_bridge == helper).map(|(n, _)| (bridge.clone(), n.clone()))
    }

    /// Every remote member of `bridge`: of this gateway's legs, and as events showed them.
    pub fn members(&self, bridge: &str) -> BTreeSet<&String> {
        let own = self.bridges.get(bridge).into_iter().flat_map(|c| c.legs.values()).flat_map(|l| l.members.iter());
        let seen = self.seen_members.iter().filter(|(h, _)| self.helper_bridges.get(*h).is_some_and(|b| b == bridge)).flat_map(|(_, m)| m.iter());
        own.chain(seen).collect()
    }

    /// Learns a helper bridge from an event: its id and name say what it extends.
    pub fn see_helper_bridge(&mut self, helper: &str, name: Option<&str>) -> Option<String> {
        if let Some(bridge) = self.helper_bridges.get(helper) {
            return Some(bridge.clone());
        }
        let bridge = name?.strip_prefix(HELPER_NAME_PREFIX)?.to_string();
        self.helper_bridges.insert(helper.to_string(), bridge.clone());
        Some(bridge)
    }

    /// Remembers an application bridge an event described, or forgets it once it is empty.
    pub fn remember(&mut self, kind: &str, bridge: Option<&Value>) {
        if !matches!(kind, "ChannelEnteredBridge" | "ChannelLeftBridge" | "BridgeDestroyed") {
            return;
        }
        let Some((id, bridge)) = bridge.and_then(|b| Some((b.get("id")?.as_str()?, b))) else { return };
        if id.starts_with(HELPER_BRIDGE_PREFIX) {
            return;
        }
        let empty = bridge.get("channels").and_then(Value::as_array).is_none_or(|c| c.is_empty());
        if kind == "BridgeDestroyed" || empty {
            self.occupied.remove(id);
        } else if self.occupied.len() < OCCUPIED_MAX || self.occupied.contains_key(id) {
            self.occupied.insert(id.to_string(), bridge.clone());
        }
    }

    /// A helper bridge or call an event said has ended: forgotten after [`RETIRED_FOR`].
    pub fn retire(&mut self, helper_bridge: Option<&str>, helper_channel: Option<&str>) {
        self.retired.push_back(Retired {
            at: Instant::now(),
            helper_bridge: helper_bridge.unwrap_or_default().to_string(),
            helper_channels: helper_channel.into_iter().map(str::to_string).collect(),
            bridge: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_leg_stays_hidden_for_a_while_then_is_forgotten() {
        let mut r = Registry::default();
        let (a, b): (Eid, Eid) = ("a".into(), "b".into());
        r.open("conf", &a, &b, Leg::new("00ff"));
        r.set_near("conf", &b, "near-1");
        r.leg_mut("conf", &b).unwrap().members.insert("c1".into());
        assert_eq!(r.leg_of_member("c1"), Some(("conf".into(), b.clone())));
        assert_eq!(r.leg_of_helper("near-1"), Some(("conf".into(), b.clone())));
        assert_eq!(r.leg_of_helper_bridge("scale-helper-00ff"), Some(("conf".into(), b.clone())));

        let leg = r.close("conf", &b).unwrap();
        assert_eq!((leg.far.as_str(), leg.helper_bridge.as_str()), ("scale-leg-00ff", "scale-helper-00ff"));
        assert!(r.bridges.is_empty());
        assert!(r.helper_channels.contains("near-1") && r.helper_bridges.contains_key("scale-helper-00ff"), "late events stay hidden");
        r.expire(Instant::now());
        assert!(!r.is_empty());
        r.expire(Instant::now() + RETIRED_FOR);
        assert!(r.is_empty(), "everything forgotten");
    }
}

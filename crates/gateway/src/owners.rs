//! Which node owns each resource an application can name: channels, bridges, playbacks, live
//! recordings. Learned from events, from create answers and from ids clients choose; a miss is
//! resolved by asking every node (routing does that). Nothing here is shared between gateway
//! replicas: each one learns the same facts from the same sources.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A node, by its Asterisk entity ID (the `asterisk_id` of its events).
pub type Eid = Arc<str>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Channel,
    Bridge,
    Playback,
    /// A live recording, by name.
    Recording,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Channel, Kind::Bridge, Kind::Playback, Kind::Recording];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Channel => "channel",
            Kind::Bridge => "bridge",
            Kind::Playback => "playback",
            Kind::Recording => "recording",
        }
    }
}

struct Entry {
    node: Eid,
    /// When the entry was last learned or confirmed.
    seen: Instant,
}

pub struct Owners {
    ttl: Duration,
    map: Mutex<HashMap<(Kind, String), Entry>>,
}

impl Owners {
    pub fn new(ttl: Duration) -> Owners {
        Owners { ttl, map: Mutex::new(HashMap::new()) }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(Kind, String), Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records (or confirms) that `node` owns the resource.
    pub fn learn(&self, kind: Kind, id: &str, node: &Eid) {
        if id.is_empty() {
            return;
        }
        let mut map = self.map();
        match map.get_mut(&(kind, id.to_string())) {
            Some(e) => {
                if e.node != *node {
                    e.node = node.clone();
                }
                e.seen = Instant::now();
            }
            None => {
                map.insert((kind, id.to_string()), Entry { node: node.clone(), seen: Instant::now() });
            }
        }
    }

    pub fn forget(&self, kind: Kind, id: &str) {
        self.map().remove(&(kind, id.to_string()));
    }

    /// The owner, unless the entry is older than the TTL (then it is dropped).
    pub fn lookup(&self, kind: Kind, id: &str) -> Option<Eid> {
        let mut map = self.map();
        let key = (kind, id.to_string());
        let expired = map.get(&key).map(|e| e.seen.elapsed() > self.ttl)?;
        if expired {
            map.remove(&key);
            return None;
        }
        map.get(&key).map(|e| e.node.clone())
    }

    /// Drops every entry of a node that left the pool.
    pub fn forget_node(&self, node: &str) -> usize {
        let mut map = self.map();
        let before = map.len();
        map.retain(|_, e| &*e.node != node);
        before - map.len()
    }

    /// Drops entries older than the TTL; run periodically.
    pub fn expire(&self) -> usize {
        let mut map = self.map();
        let before = map.len();
        map.retain(|_, e| e.seen.elapsed() <= self.ttl);
        before - map.len()
    }

    /// Entries by kind, for the metrics.
    pub fn counts(&self) -> HashMap<Kind, usize> {
        let mut counts = HashMap::new();
        for (kind, _) in self.map().keys() {
            *counts.entry(*kind).or_insert(0) += 1;
        }
        counts
    }

    /// Channels known per node: what placement uses to find the least loaded node.
    pub fn channels_per_node(&self) -> HashMap<Eid, usize> {
        let mut counts = HashMap::new();
        for ((kind, _), e) in self.map().iter() {
            if *kind == Kind::Channel {
                *counts.entry(e.node.clone()).or_insert(0) += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_moves_and_forgets() {
        let owners = Owners::new(Duration::from_secs(60));
        let a: Eid = "00:00:00:00:00:0a".into();
        let b: Eid = "00:00:00:00:00:0b".into();
        owners.learn(Kind::Channel, "c1", &a);
        owners.learn(Kind::Bridge, "c1", &b);
        assert_eq!(owners.lookup(Kind::Channel, "c1"), Some(a.clone()));
        assert_eq!(owners.lookup(Kind::Bridge, "c1"), Some(b.clone()));
        owners.learn(Kind::Channel, "c1", &b);
        assert_eq!(owners.lookup(Kind::Channel, "c1"), Some(b.clone()));
        owners.forget(Kind::Channel, "c1");
        assert_eq!(owners.lookup(Kind::Channel, "c1"), None);
        assert_eq!(owners.forget_node(&b), 1);
        assert!(owners.counts().is_empty());
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let owners = Owners::new(Duration::from_millis(20));
        let a: Eid = "a".into();
        owners.learn(Kind::Playback, "p", &a);
        owners.learn(Kind::Channel, "c", &a);
        assert_eq!(owners.channels_per_node().get(&a), Some(&1));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(owners.lookup(Kind::Playback, "p"), None);
        assert_eq!(owners.expire(), 1);
    }
}

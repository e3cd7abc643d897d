//! Who is in the pool, as the subsystems that hold other nodes' data (registrations, device
//! state) need to know it: a node that Consul stops listing (or whose check turns critical)
//! for a grace period has left, and what it announced must go; one that comes back after that
//! is asked for a SYNC.
//!
//! [`watch_members`] samples Consul's view every tick and hands a subsystem's applier the EIDs
//! that are in the pool, or nothing while Consul's answer cannot be trusted; the applier keeps a
//! [`NodeWatch`] that turns those samples into departures and returns.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::api::{ServiceInstance, MAINTENANCE_CHECK_PREFIX};
use super::nodes::PoolView;

/// A node must be missing (or critical) this long before it has left: a Consul restart or a
/// blip in the watch must not empty every AOR and clear every state.
pub const NODE_LOSS_GRACE: Duration = Duration::from_secs(6);

/// One sample of the pool: the EIDs of the nodes in it, or None when Consul cannot be trusted
/// right now (an error, no answer yet, or an answer that does not list this node itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members(pub Option<BTreeSet<String>>);

/// Sends a [`Members`] sample to `inbox` every `every` until shutdown or until the receiver is
/// gone. Without a pool view (no Consul), every sample is None: nobody ever leaves.
pub async fn watch_members<T: From<Members>>(inbox: mpsc::Sender<T>, pool: Option<Arc<Mutex<PoolView>>>, own_eid: String, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let members = pool.as_ref().and_then(|pool| trusted_members(&pool.lock().unwrap_or_else(|e| e.into_inner()), &own_eid));
        if inbox.send(Members(members).into()).await.is_err() {
            return;
        }
    }
}

/// The EIDs in the pool, if the view is a fresh answer that lists this node itself: only such
/// an answer says who is really gone.
pub fn trusted_members(view: &PoolView, own_eid: &str) -> Option<BTreeSet<String>> {
    let eids: BTreeSet<String> = view.instances.iter().filter(|i| alive(i)).filter_map(|i| i.meta.get("eid").cloned()).collect();
    (view.last_error.is_none() && view.updated.is_some() && eids.contains(own_eid)).then_some(eids)
}

/// A node counts as in the pool while Consul lists it and its own check is not critical: a
/// crashed node is noticed after one TTL, not after Consul deregisters it (a minute at least).
/// A drained node (maintenance) is still in the pool.
fn alive(instance: &ServiceInstance) -> bool {
    instance.checks.iter().filter(|c| !c.id.starts_with(MAINTENANCE_CHECK_PREFIX)).all(|c| c.status != "critical")
}

/// What one sample changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Nodes missing for the whole grace period: what they announced must go.
    pub gone: Vec<String>,
    /// Nodes listed again after they were reported gone: ask the pool for a SYNC.
    pub back: Vec<String>,
}

/// Departures and returns, from successive samples.
#[derive(Debug)]
pub struct NodeWatch {
    grace: Duration,
    /// Nodes seen in Consul, and since when each has been missing.
    seen: HashMap<String, Option<Instant>>,
    /// Nodes reported gone and not seen since.
    gone: BTreeSet<String>,
}

impl NodeWatch {
    /// A node must be missing for `grace` before it is gone, so that a Consul restart or a blip
    /// in the watch does not empty the pool.
    pub fn new(grace: Duration) -> NodeWatch {
        NodeWatch { grace, seen: HashMap::new(), gone: BTreeSet::new() }
    }

    /// Takes in one trusted sample (the EIDs in the pool at `now`).
    pub fn observe(&mut self, members: &BTreeSet<String>, now: Instant) -> Changes {
        let mut changes = Changes::default();
        for eid in members {
            self.seen.insert(eid.clone(), None);
            if self.gone.remove(eid) {
                changes.back.push(eid.clone());
            }
        }
        for (eid, missing_since) in self.seen.iter_mut().filter(|(eid, _)| !members.contains(*eid)) {
            match missing_since {
                None => *missing_since = Some(now),
                Some(since) if now.duration_since(*since) >= self.grace => changes.gone.push(eid.clone()),
                Some(_) => {}
            }
        }
        changes.gone.sort();
        for eid in &changes.gone {
            self.seen.remove(eid);
            self.gone.insert(eid.clone());
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::api::CheckState;

    fn set(eids: &[&str]) -> BTreeSet<String> {
        eids.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn a_node_is_gone_only_after_the_grace_period_and_back_when_listed_again() {
        let mut watch = NodeWatch::new(Duration::from_secs(6));
        let t0 = Instant::now();
        assert_eq!(watch.observe(&set(&["a", "b"]), t0), Changes::default());
        assert_eq!(watch.observe(&set(&["a"]), t0 + Duration::from_secs(2)), Changes::default(), "missing, not yet gone");
        assert_eq!(watch.observe(&set(&["a"]), t0 + Duration::from_secs(7)), Changes::default(), "grace counts from when it went missing");
        assert_eq!(watch.observe(&set(&["a"]), t0 + Duration::from_secs(8)), Changes { gone: vec!["b".into()], back: vec![] });
        assert_eq!(watch.observe(&set(&["a"]), t0 + Duration::from_secs(20)), Changes::default(), "reported once");
        assert_eq!(watch.observe(&set(&["a", "b"]), t0 + Duration::from_secs(21)), Changes { gone: vec![], back: vec!["b".into()] });
        assert_eq!(watch.observe(&set(&["a", "b"]), t0 + Duration::from_secs(22)), Changes::default());
    }

    #[test]
    fn a_node_that_returns_within_the_grace_period_never_left() {
        let mut watch = NodeWatch::new(Duration::from_secs(6));
        let t0 = Instant::now();
        watch.observe(&set(&["a", "b"]), t0);
        watch.observe(&set(&["a"]), t0 + Duration::from_secs(1));
        assert_eq!(watch.observe(&set(&["a", "b"]), t0 + Duration::from_secs(3)), Changes::default());
        assert_eq!(watch.observe(&set(&["a"]), t0 + Duration::from_secs(8)), Changes::default(), "missing again from 8 s on");
    }

    #[test]
    fn only_a_fresh_answer_that_lists_this_node_is_trusted() {
        let instance = |eid: &str, status: &str| ServiceInstance {
            node: "n".into(),
            id: format!("asterisk-{eid}"),
            address: "10.0.0.1".into(),
            port: 5060,
            meta: [("eid".to_string(), eid.to_string())].into(),
            checks: vec![CheckState { id: "service:x".into(), status: status.into() }],
        };
        let mut view = PoolView { instances: vec![instance("me", "passing"), instance("a", "critical"), instance("b", "warning")], updated: Some(Instant::now()), last_error: None };
        assert_eq!(trusted_members(&view, "me"), Some(set(&["me", "b"])), "a critical check is out of the pool");
        assert_eq!(trusted_members(&view, "stranger"), None, "an answer without this node");
        view.last_error = Some("timeout".into());
        assert_eq!(trusted_members(&view, "me"), None);
    }
}

//! Cross-node bridges. When an application adds to a bridge on node A a channel that lives on
//! node B, the gateway joins the nodes: a helper call from B to A over the pool's PJSIP
//! endpoint, its B end in a helper bridge on B with the channel, its A end in the application's
//! bridge. One leg per (bridge, node), shared by every further channel of that node, torn down
//! when its last channel leaves. The gateway's own Stasis application on every node (one
//! WebSocket per node, `helper_app`) receives the helper calls and sees their bridges, so legs
//! are kept right even while the application's socket is away; `hide` keeps every helper out
//! of what the application sees.

mod helper_app;
pub mod hide;
mod legs;
mod registry;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::oneshot;

pub use helper_app::run;
pub use legs::{add, destroy, remove};
use registry::Registry;

use crate::owners::Eid;

pub struct Bridging {
    /// The gateway's Stasis application on every node (`scale-gateway-<instance_id>`).
    pub app: String,
    /// How helpers are recognised in events and answers.
    marks: hide::Marks,
    registry: Mutex<Registry>,
    /// Leg set-ups and tear-downs, one at a time: two channels of one node joining at once
    /// must share one leg.
    ops: tokio::sync::Mutex<()>,
    /// Helper calls waited for in the gateway's app: the near end by leg id, the far end by
    /// its channel id.
    waiters: Mutex<HashMap<String, oneshot::Sender<String>>>,
    /// Nodes where the helper application's socket is up.
    connected: Mutex<HashSet<Eid>>,
    /// The node of the channel an application acted on last: a new bridge goes there, so the
    /// callers of a conference need as few legs as can be.
    last_channel_node: Mutex<Option<Eid>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Bridging {
    pub fn new(instance_id: &str, pool_endpoint: &str) -> Bridging {
        Bridging {
            app: format!("{}{instance_id}", hide::HELPER_APP_PREFIX),
            marks: hide::Marks { helper_call_name: format!("PJSIP/{pool_endpoint}-") },
            registry: Mutex::new(Registry::default()),
            ops: tokio::sync::Mutex::new(()),
            waiters: Mutex::new(HashMap::new()),
            connected: Mutex::new(HashSet::new()),
            last_channel_node: Mutex::new(None),
        }
    }

    /// What to do with one application event (see `hide`).
    pub fn judge(&self, body: &[u8]) -> hide::Verdict {
        let mut registry = lock(&self.registry);
        registry.expire(Instant::now());
        hide::judge(&mut registry, &self.marks, body)
    }

    /// Hides helpers in a REST answer.
    pub fn rewrite_answer(&self, value: &mut Value) {
        hide::rewrite_answer(&lock(&self.registry), &self.marks, &self.app, value);
    }

    /// Whether an answer may need rewriting: a pool-wide listing (it may hold any replica's
    /// helpers), or anything is known.
    pub fn rewrites(&self, listing: bool) -> bool {
        listing || !lock(&self.registry).is_empty()
    }

    /// The application bridge a remote member was joined to, and the member's node.
    pub fn remote_member(&self, channel: &str) -> Option<(String, Eid)> {
        lock(&self.registry).leg_of_member(channel)
    }

    pub fn note_channel_node(&self, node: &Eid) {
        *lock(&self.last_channel_node) = Some(node.clone());
    }

    pub fn last_channel_node(&self) -> Option<Eid> {
        lock(&self.last_channel_node).clone()
    }

    /// Counts for /metrics: legs up, remote members carried.
    pub fn counts(&self) -> (usize, usize) {
        let registry = lock(&self.registry);
        let legs = registry.bridges.values().map(|c| c.legs.len()).sum();
        let members = registry.bridges.values().flat_map(|c| c.legs.values()).map(|l| l.members.len()).sum();
        (legs, members)
    }
}

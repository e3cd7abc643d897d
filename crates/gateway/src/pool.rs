//! The nodes of the pool, from Consul's health endpoint (a blocking query on the service the
//! nodes register as), and one pooled keep-alive HTTP client to reach their ARI.
//!
//! A node serves requests for what it owns while its TTL check passes, also while it drains
//! (maintenance); it gets new work only when it is passing and not draining. A node that fails
//! a request at the transport level gets no new work for a while, without waiting for Consul.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use res_scale_core::consul::api::ServiceInstance;
use res_scale_core::consul::http::HttpConsul;
use res_scale_core::consul::nodes;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::{KindLabels, Metrics};
use crate::owners::{Eid, Owners};

const WATCH_WAIT: Duration = Duration::from_secs(30);
/// How long a node Consul stops listing is still believed to be there (see `with_missing`).
const MISSING_GRACE: Duration = Duration::from_secs(30);
/// How long a node that failed at the transport level is left out of placement.
const FAILED_PAUSE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub eid: Eid,
    /// The Consul service ID (`asterisk-<eid>` by default).
    pub id: String,
    /// Base URL of the node's ARI, without a trailing slash (`http://10.0.0.5:8088/ari`).
    pub ari_url: String,
    /// `passing`, `warning`, `critical` or `maintenance`.
    pub health: &'static str,
    /// The node's SIP `host:port` (the service's Address and Port): where helper legs of
    /// cross-node bridges call it. `None` when Consul lists no address.
    pub sip: Option<String>,
}

impl Node {
    /// Answers requests for its own resources and takes part in pool-wide reads.
    pub fn serving(&self) -> bool {
        self.health != "critical"
    }

    /// Takes new channels and bridges.
    pub fn placeable(&self) -> bool {
        matches!(self.health, "passing" | "warning")
    }
}

#[derive(Default)]
struct View {
    nodes: Vec<Node>,
    /// Consul's last error, while it has one.
    consul_error: Option<String>,
    updated: Option<Instant>,
}

pub struct Pool {
    view: RwLock<View>,
    failed: Mutex<BTreeMap<Eid, Instant>>,
    client: reqwest::Client,
    ari_user: String,
    ari_password: String,
}

impl Pool {
    pub fn new(config: &Config) -> Result<Pool, String> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(config.nodes.request_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .user_agent(concat!("scale-gateway/", env!("CARGO_PKG_VERSION")));
        if let Some(file) = &config.nodes.ca_file {
            let pem = std::fs::read(file).map_err(|e| format!("[nodes] ca_file {file}: {e}"))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("[nodes] ca_file {file}: {e}"))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Pool { view: RwLock::new(View::default()), failed: Mutex::new(BTreeMap::new()), client, ari_user: config.nodes.ari_user.clone(), ari_password: config.nodes.ari_password.clone() })
    }

    /// Every node Consul lists, in a stable order.
    pub fn nodes(&self) -> Vec<Node> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).nodes.clone()
    }

    pub fn node(&self, eid: &str) -> Option<Node> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).nodes.iter().find(|n| &*n.eid == eid).cloned()
    }

    /// Nodes that answer for their resources and join pool-wide reads.
    pub fn serving(&self) -> Vec<Node> {
        self.nodes().into_iter().filter(Node::serving).collect()
    }

    /// Nodes that may take new work: passing, not draining, not failing right now.
    pub fn placeable(&self) -> Vec<Node> {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        self.nodes().into_iter().filter(|n| n.placeable() && failed.get(&n.eid).is_none_or(|t| t.elapsed() > FAILED_PAUSE)).collect()
    }

    /// A request to this node failed at the transport level (refused, reset, timed out).
    pub fn mark_failed(&self, eid: &Eid) {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).insert(eid.clone(), Instant::now());
    }

    pub fn mark_answered(&self, eid: &Eid) {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if !failed.is_empty() {
            failed.remove(eid);
        }
    }

    /// `None` while Consul answers, else its last error.
    pub fn consul_error(&self) -> Option<String> {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        match (&view.consul_error, view.updated) {
            (Some(e), _) => Some(e.clone()),
            (None, None) => Some("no answer from Consul yet".into()),
            (None, Some(_)) => None,
        }
    }

    /// A request to `path` (relative to the node's `/ari/`, may carry a query) on `node`,
    /// authenticated with the nodes' ARI credentials.
    pub fn request(&self, node: &Node, method: reqwest::Method, path_and_query: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}/{}", node.ari_url, path_and_query.trim_start_matches('/'))).basic_auth(&self.ari_user, Some(&self.ari_password))
    }

    fn replace(&self, nodes: Vec<Node>) -> Vec<Node> {
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        let gone = view.nodes.iter().filter(|old| !nodes.iter().any(|n| n.eid == old.eid)).cloned().collect();
        view.nodes = nodes;
        view.consul_error = None;
        view.updated = Some(Instant::now());
        gone
    }

    /// Sets the pool's nodes as Consul would (for tests of routing against fake nodes).
    #[cfg(test)]
    pub fn set_nodes(&self, nodes: Vec<Node>) {
        self.replace(nodes);
    }

    fn record_error(&self, error: String) {
        self.view.write().unwrap_or_else(|e| e.into_inner()).consul_error = Some(error);
    }
}

/// The nodes Consul lists for the service, with what the gateway needs of each. Instances
/// without an EID or an ARI URL in their metadata are not res_scale nodes and are skipped.
fn nodes_of(instances: Vec<ServiceInstance>) -> Vec<Node> {
    let mut nodes: Vec<Node> = instances
        .into_iter()
        .filter_map(|i| {
            let health = i.health();
            let eid = i.meta.get("eid").filter(|e| !e.is_empty())?;
            let ari_url = i.meta.get("ari_url").filter(|u| u.starts_with("http://") || u.starts_with("https://"))?;
            let sip = (!i.address.is_empty() && i.port != 0).then(|| sip_host_port(&i.address, i.port));
            Some(Node { eid: eid.as_str().into(), id: i.id, ari_url: ari_url.trim_end_matches('/').to_string(), health, sip })
        })
        .collect();
    nodes.sort_by(|a, b| a.eid.cmp(&b.eid));
    nodes.dedup_by(|a, b| a.eid == b.eid);
    nodes
}

/// `host:port`, with an IPv6 address in brackets as SIP URIs want it.
fn sip_host_port(address: &str, port: u16) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// Keeps the pool's view fresh until shutdown. A node that leaves the pool has its ownership
/// entries dropped, so requests for its resources answer 404.
pub async fn watch(pool: Arc<Pool>, consul: Arc<HttpConsul>, service: String, owners: Arc<Owners>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut missing: BTreeMap<Eid, Instant> = BTreeMap::new();
    nodes::follow(&*consul, &service, WATCH_WAIT, Duration::from_secs(5), &shutdown, |answer| match answer {
        Ok(instances) => {
            let nodes = with_missing(&pool.nodes(), nodes_of(instances), &mut missing, Instant::now());
            for state in ["serving", "draining", "down"] {
                let n = nodes.iter().filter(|n| node_state(n) == state).count();
                metrics.nodes.get_or_create(&KindLabels { kind: state.into() }).set(n as i64);
            }
            for node in pool.replace(nodes) {
                let dropped = owners.forget_node(&node.eid);
                tracing::info!(node = %node.eid, ownership_entries = dropped, "node left the pool");
            }
            metrics.set_connected("consul", true);
        }
        Err(e) => {
            if pool.consul_error().is_none() {
                tracing::warn!(error = %e, "Consul: cannot read the pool; routing goes on with the last known nodes");
            }
            pool.record_error(e.to_string());
            metrics.set_connected("consul", false);
        }
    })
    .await
}

/// A node missing from a listing stays in the pool for [`MISSING_GRACE`]: most often the
/// Consul agent restarted without its state and the nodes are registering again (a node that
/// really died turns critical first and is listed as such); its calls stay routable meanwhile.
/// `missing` holds since when each known node has been missing.
fn with_missing(known: &[Node], mut listed: Vec<Node>, missing: &mut BTreeMap<Eid, Instant>, now: Instant) -> Vec<Node> {
    missing.retain(|eid, _| !listed.iter().any(|n| &n.eid == eid));
    let absent: Vec<&Node> = known.iter().filter(|k| !listed.iter().any(|n| n.eid == k.eid)).collect();
    for node in absent {
        let since = *missing.entry(node.eid.clone()).or_insert_with(|| {
            tracing::warn!(node = %node.eid, grace = ?MISSING_GRACE, "Consul no longer lists this node; keeping it for a while (an agent that restarted empty?)");
            now
        });
        if now.duration_since(since) < MISSING_GRACE {
            listed.push(node.clone());
        } else {
            missing.remove(&node.eid);
        }
    }
    listed.sort_by(|a, b| a.eid.cmp(&b.eid));
    listed
}

fn node_state(n: &Node) -> &'static str {
    match n.health {
        "critical" => "down",
        "maintenance" => "draining",
        _ => "serving",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use res_scale_core::consul::api::CheckState;

    fn instance(id: &str, eid: &str, url: &str, checks: &[(&str, &str)]) -> ServiceInstance {
        ServiceInstance {
            node: "n".into(),
            id: id.into(),
            address: "127.0.0.1".into(),
            port: 5060,
            meta: [("eid".to_string(), eid.to_string()), ("ari_url".to_string(), url.to_string())].into_iter().collect(),
            checks: checks.iter().map(|(id, s)| CheckState { id: id.to_string(), status: s.to_string() }).collect(),
        }
    }

    #[test]
    fn nodes_carry_health_and_skip_foreign_services() {
        let nodes = nodes_of(vec![
            instance("b", "00:02", "http://127.0.0.1:8089/ari/", &[("res_scale:b", "passing"), ("_service_maintenance:b", "critical")]),
            instance("a", "00:01", "http://127.0.0.1:8088/ari", &[("res_scale:a", "passing")]),
            instance("c", "00:03", "http://127.0.0.1:8090/ari", &[("res_scale:c", "critical")]),
            instance("x", "", "http://127.0.0.1:1/ari", &[]),
            instance("y", "00:04", "ftp://nowhere", &[]),
        ]);
        let shown: Vec<_> = nodes.iter().map(|n| (&*n.eid, n.ari_url.as_str(), n.health, n.serving(), n.placeable())).collect();
        assert_eq!(nodes[0].sip.as_deref(), Some("127.0.0.1:5060"));
        assert_eq!(
            shown,
            [
                ("00:01", "http://127.0.0.1:8088/ari", "passing", true, true),
                ("00:02", "http://127.0.0.1:8089/ari", "maintenance", true, false),
                ("00:03", "http://127.0.0.1:8090/ari", "critical", false, false),
            ]
        );
    }

    #[test]
    fn a_node_missing_from_a_listing_stays_for_the_grace() {
        let both = nodes_of(vec![instance("a", "00:01", "http://127.0.0.1:8088/ari", &[]), instance("b", "00:02", "http://127.0.0.1:8089/ari", &[])]);
        let only_a = vec![both[0].clone()];
        let mut missing = BTreeMap::new();
        let t0 = Instant::now();
        let eids = |nodes: Vec<Node>| nodes.into_iter().map(|n| n.eid.to_string()).collect::<Vec<_>>();
        assert_eq!(eids(with_missing(&both, vec![], &mut missing, t0)), ["00:01", "00:02"], "an agent that lists nobody");
        assert_eq!(eids(with_missing(&both, only_a.clone(), &mut missing, t0 + MISSING_GRACE / 2)), ["00:01", "00:02"], "a came back first");
        assert_eq!(eids(with_missing(&both, only_a.clone(), &mut missing, t0 + MISSING_GRACE)), ["00:01"], "b believed gone after the grace");
        assert!(missing.is_empty());
        assert_eq!(eids(with_missing(&only_a, both.clone(), &mut missing, t0)), ["00:01", "00:02"], "a new node is taken at once");
    }

    #[test]
    fn sip_addresses_are_uri_hosts() {
        assert_eq!(sip_host_port("10.0.0.5", 5060), "10.0.0.5:5060");
        assert_eq!(sip_host_port("fd00::5", 5061), "[fd00::5]:5061");
    }
}

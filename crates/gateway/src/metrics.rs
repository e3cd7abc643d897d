//! The gateway's Prometheus metrics (`GET /metrics`). Labels carry route templates, node EIDs,
//! application names and status codes: never a resource id, a user name or a secret.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template, e.g. `/channels/{channelId}/answer`.
    pub route: String,
    /// The node that answered, `pool` for a merged read, `gateway` for an answer of its own.
    pub node: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppNodeLabels {
    pub app: String,
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabels {
    pub link: String,
}

fn latency_histogram() -> Histogram {
    // 100 us .. ~13 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub upstream_seconds: Family<NodeLabels, Histogram, fn() -> Histogram>,
    pub events_relayed: Family<AppNodeLabels, Counter>,
    pub events_duplicate: Family<AppNodeLabels, Counter>,
    pub events_lost: Family<AppNodeLabels, Counter>,
    /// Frames the gateway could not read (no seq, not JSON, ...), by reason.
    pub events_rejected: Family<ReasonLabels, Counter>,
    pub sockets: Gauge,
    pub ownership_entries: Family<KindLabels, Gauge>,
    /// 1 while connected, 0 otherwise; links `consul` and `amqp`.
    pub connected: Family<LinkLabels, Gauge>,
    /// Nodes by state: `serving`, `draining`, `down`.
    pub nodes: Family<KindLabels, Gauge>,
    /// Requests refused before routing: `auth`, `body_too_large`, `path`, ...
    pub refused: Family<ReasonLabels, Counter>,
    /// Cross-node bridges: helper legs up and the remote members they carry (set on scrape).
    pub bridging_legs: Gauge,
    pub bridging_members: Gauge,
    pub bridging_failures: Counter,
    pub bridging_setup_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("scale_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "ARI requests answered, by route template, node and status", requests.clone());
        let upstream_seconds = Family::<NodeLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register("upstream_seconds", "Time a node took to answer a forwarded request", upstream_seconds.clone());
        let events_relayed = Family::<AppNodeLabels, Counter>::default();
        registry.register("events_relayed", "Events written to a client socket", events_relayed.clone());
        let events_duplicate = Family::<AppNodeLabels, Counter>::default();
        registry.register("events_duplicate", "Events dropped because their seq was already relayed", events_duplicate.clone());
        let events_lost = Family::<AppNodeLabels, Counter>::default();
        registry.register("events_lost", "Events missing from a node's seq sequence", events_lost.clone());
        let events_rejected = Family::<ReasonLabels, Counter>::default();
        registry.register("events_rejected", "Messages from the broker that were not a valid event", events_rejected.clone());
        let sockets = Gauge::default();
        registry.register("sockets", "Open client event sockets", sockets.clone());
        let ownership_entries = Family::<KindLabels, Gauge>::default();
        registry.register("ownership_entries", "Resources whose owning node is known", ownership_entries.clone());
        let connected = Family::<LinkLabels, Gauge>::default();
        registry.register("connected", "1 while the link (consul, amqp) is up", connected.clone());
        let nodes = Family::<KindLabels, Gauge>::default();
        registry.register("nodes", "Pool nodes by state", nodes.clone());
        let refused = Family::<ReasonLabels, Counter>::default();
        registry.register("refused", "Requests refused before routing, by reason", refused.clone());
        let bridging_legs = Gauge::default();
        registry.register("bridging_legs", "Helper legs joining a bridge to another node's channels", bridging_legs.clone());
        let bridging_members = Gauge::default();
        registry.register("bridging_members", "Channels in a bridge on another node, carried by a helper leg", bridging_members.clone());
        let bridging_failures = Counter::default();
        registry.register("bridging_failures", "Helper legs that could not be set up", bridging_failures.clone());
        let bridging_setup_seconds = latency_histogram();
        registry.register("bridging_setup_seconds", "Time to set a helper leg up (call, answer, both sides bridged)", bridging_setup_seconds.clone());
        Metrics {
            registry,
            requests,
            upstream_seconds,
            events_relayed,
            events_duplicate,
            events_lost,
            events_rejected,
            sockets,
            ownership_entries,
            connected,
            nodes,
            refused,
            bridging_legs,
            bridging_members,
            bridging_failures,
            bridging_setup_seconds,
        }
    }

    pub fn refuse(&self, reason: &str) {
        self.refused.get_or_create(&ReasonLabels { reason: reason.to_string() }).inc();
    }

    pub fn set_connected(&self, link: &str, up: bool) {
        self.connected.get_or_create(&LinkLabels { link: link.to_string() }).set(i64::from(up));
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

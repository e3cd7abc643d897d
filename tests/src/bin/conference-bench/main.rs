//! `make bench` (part three): conferences across nodes through scale-gateway, on a 2-node pool
//! (Asterisk in Docker, RabbitMQ, Consul, the gateway), side by side in one run.
//!
//! 1. `joins`: time from an application's `addChannel` request to its ChannelEnteredBridge
//!    event on the gateway's socket. Each round makes a bridge on node1 and adds, in this
//!    order, a caller of node1 (empty bridge), the first caller of node2 (the helper leg is
//!    set up), a second one of node2 (the leg is reused) and a second caller of node1; then
//!    the time until the helper leg is gone after the last caller of node2 leaves (hang-up or
//!    removeChannel, in turns).
//! 2. `load`: SIPp callers through Kamailio dialing 8000 into the shipped conference app, once
//!    with the app on one node's own ARI (Kamailio sends every call to that node), once through
//!    the gateway on both nodes: CPU per call of every process, failed calls, INVITE -> 200.
//! 3. `audio`: mouth-to-ear latency through the conference app on the gateway, talker and
//!    listener on the bridge's node, then one of them on the other node (through the helper
//!    leg): `tests/sip-phones/mouth_to_ear.py`, tone bursts timed on one pjsua media clock.
//!
//! `cargo run --release -p res-scale-tests --bin conference-bench [-- joins|load|audio]`

mod joins;
mod load;
mod mouth_to_ear;
mod sipp_results;

use std::time::Duration;

use res_scale_tests::gateway::Gateway;
use res_scale_tests::stats::quantile;
use res_scale_tests::{wait, Node, Pool};

const SECONDS_20: Duration = Duration::from_secs(20);

fn main() {
    let which: Vec<String> = std::env::args().skip(1).collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    // An app's Consul key goes 1 s after its socket (not 30): a load run on a node's own ARI
    // must find no node holding the app through res_scale (load.rs).
    let gw = Gateway::start(&pool, "conference-bench", &[("SCALE_GATEWAY_APPS_LINGER", "1s")]);
    gw.wait_healthy(2);
    println!("conference benchmark, 2 nodes, {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    if wants("joins") {
        joins::joins(&pool, &gw);
    }
    if wants("load") {
        load::load(&pool, &gw);
    }
    if wants("audio") {
        mouth_to_ear::mouth_to_ear(&pool, &gw);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `p50 / p99 / max` in ms of a sample.
fn spread(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    (ms(quantile(samples, 0.5)), ms(quantile(samples, 0.99)), ms(*samples.last().unwrap()))
}

fn wait_app_on(nodes: &[&Node], app: &str) {
    for node in nodes {
        wait::until(&format!("app {app} on {}", node.name), SECONDS_20, Duration::from_millis(50), || {
            let apps = node.ari().get("/applications");
            (apps.status == 200 && apps.json().as_array()?.iter().any(|a| a["name"] == app)).then_some(())
        });
    }
}

fn listed(node: &Node, what: &str) -> usize {
    node.ari().get(what).json().as_array().map_or(0, Vec::len)
}

fn wait_idle(nodes: &[Node]) {
    for node in nodes {
        wait::until(&format!("no call left on {}", node.name), Duration::from_secs(30), Duration::from_millis(50), || (listed(node, "/channels") == 0).then_some(()));
    }
}

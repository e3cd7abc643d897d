//! `make bench` (part two): scale-gateway against the node's own ARI, side by side in one run on
//! a 1-node pool.
//!
//! 1. REST: `wrk` on `GET /ari/asterisk/info` and `GET /ari/channels/{id}` of a live channel,
//!    directly to the node and through the gateway, at 1 and 16 connections, 10 s each,
//!    interleaved: req/s, p50/p99, the ratios, and the gateway's CPU per request.
//! 2. Event latency node -> application at 1,000 events/s: res_scale + RabbitMQ + gateway
//!    against the node's own ARI WebSocket (the same client script reads both).
//! 3. A burst of 50,000 events to a slow client on each path: how many each delivers, and how
//!    many the gateway reports lost.
//!
//! `cargo run --release -p res-scale-tests --bin gateway-bench [-- rest|events|slow]`

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use res_scale_tests::ari_app::AriApp;
use res_scale_tests::gateway::{Gateway, CLIENT_PASSWORD, CLIENT_USER};
use res_scale_tests::node::{ARI_PASSWORD, ARI_USER};
use res_scale_tests::{cpu, wait, Node, Pool};
use serde_json::Value;

fn main() {
    let which: Vec<String> = std::env::args().skip(1).collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    let pool = Pool::builder().nodes(1).with_consul().with_rabbitmq().start();
    let gw = Gateway::start(&pool, "bench", &[]);
    gw.wait_healthy(1);
    let node = &pool.nodes[0];
    println!("scale-gateway benchmark, 1 node, {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    if wants("rest") {
        rest(node, &gw);
    }
    if wants("events") {
        event_latency(&pool, node, &gw);
    }
    if wants("slow") {
        slow_burst(&pool, node, &gw);
    }
}

struct Wrk {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    requests: f64,
}

fn run_wrk(url: &str, auth: &str, connections: u32) -> Wrk {
    let out = Command::new("wrk")
        .args(["-t", &connections.min(2).to_string(), "-c", &connections.to_string(), "-d", "10s", "--latency", "-H", &format!("Authorization: Basic {auth}"), url])
        .output()
        .expect("run wrk (Debian package wrk; tests/provision.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| text.lines().find(|l| l.trim_start().starts_with(prefix)).map(|l| l.trim_start()[prefix.len()..].trim().to_string());
    let rps = field("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let requests = text.lines().find(|l| l.contains("requests in")).and_then(|l| l.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let non2xx = field("Non-2xx or 3xx responses:");
    assert!(non2xx.is_none(), "{url}: wrk saw errors: {text}");
    Wrk { rps, p50_us: field("50%").map(|v| micros(&v)).unwrap_or(0.0), p99_us: field("99%").map(|v| micros(&v)).unwrap_or(0.0), requests }
}

/// wrk prints `70.00us`, `1.20ms`, `1.01s`.
fn micros(text: &str) -> f64 {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        (text, 1.0)
    };
    number.trim().parse::<f64>().unwrap_or(0.0) * factor
}

fn rest(node: &Node, gw: &Gateway) {
    let r = node.ari().post("/channels?endpoint=Local/101@from-sip&extension=101&context=from-sip&channelId=bench-live");
    assert_eq!(r.status, 200, "{}", r.body);
    let node_auth = base64::engine::general_purpose::STANDARD.encode(format!("{ARI_USER}:{ARI_PASSWORD}"));
    let gw_auth = base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_USER}:{CLIENT_PASSWORD}"));
    let direct = format!("http://127.0.0.1:{}/ari", node.http_port);
    let through = format!("{}/ari", gw.url());
    let gw_pid = gw.pid().expect("gateway running");
    println!("\n## REST: wrk, 10 s per run, interleaved (direct, then gateway)");
    println!("command: cargo run --release -p res-scale-tests --bin gateway-bench -- rest");
    println!("| request | conns | direct req/s | gateway req/s | ratio | direct p50/p99 us | gateway p50/p99 us | added p50 us | gateway CPU us/req |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for path in ["/asterisk/info", "/channels/bench-live"] {
        for connections in [1, 16] {
            let d = run_wrk(&format!("{direct}{path}"), &node_auth, connections);
            let cpu_before = cpu::process(gw_pid).as_secs_f64();
            let g = run_wrk(&format!("{through}{path}"), &gw_auth, connections);
            let cpu = (cpu::process(gw_pid).as_secs_f64() - cpu_before) / g.requests.max(1.0) * 1e6;
            println!(
                "| GET {path} | {connections} | {:.0} | {:.0} | {:.2} | {:.0} / {:.0} | {:.0} / {:.0} | {:+.0} | {:.1} |",
                d.rps,
                g.rps,
                g.rps / d.rps.max(1.0),
                d.p50_us,
                d.p99_us,
                g.p50_us,
                g.p99_us,
                g.p50_us - d.p50_us,
                cpu
            );
        }
    }
}

fn wait_app(node: &Node, app: &str) {
    wait::until(&format!("app {app}"), Duration::from_secs(20), Duration::from_millis(100), || {
        let apps = node.ari().get("/applications");
        (apps.status == 200 && apps.json().as_array()?.iter().any(|a| a["name"] == app)).then_some(())
    });
}

fn summary_of(app: &AriApp, within: Duration) -> Value {
    app.expect("the summary", within, |l| l.get("summary").is_some())["summary"].clone()
}

fn event_latency(_pool: &Pool, node: &Node, gw: &Gateway) {
    println!("\n## Event latency node -> application, 5,000 events at 1,000/s");
    println!("command: cargo run --release -p res-scale-tests --bin gateway-bench -- events");
    let direct_url = format!("http://127.0.0.1:{}", node.http_port);
    for (label, url, user, password, app) in
        [("node's own ARI WebSocket", direct_url.as_str(), ARI_USER, ARI_PASSWORD, "lat-direct"), ("res_scale + RabbitMQ + gateway", gw.url().as_str(), CLIENT_USER, CLIENT_PASSWORD, "lat-gateway")]
    {
        let client = AriApp::start("ws_events.py", &[url, app, user, password, "--expect", "5000", "--idle", "20", "--latency"]);
        client.expect("ready", Duration::from_secs(20), |l| l["ready"] == true);
        wait_app(node, app);
        node.cli(&format!("scale test events {app} 5000 1000"));
        let s = summary_of(&client, Duration::from_secs(60));
        println!("  {label:<32} delivered {} of 5000, latency p50 {} us, p99 {} us", s["bench"], s["latency_us"]["p50"], s["latency_us"]["p99"]);
    }
}

/// The node's `Dropped:` counter (events its full queue refused).
fn node_dropped(node: &Node) -> u64 {
    let amqp = node.cli("scale show amqp");
    amqp.lines().find_map(|l| l.trim_start().strip_prefix("Dropped:")).and_then(|v| v.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn slow_burst(_pool: &Pool, node: &Node, gw: &Gateway) {
    println!("\n## A burst of 50,000 events to a slow client (sleeps 5 ms every 50 frames)");
    println!("command: cargo run --release -p res-scale-tests --bin gateway-bench -- slow");
    let direct_url = format!("http://127.0.0.1:{}", node.http_port);
    for (label, url, user, password, app) in
        [("node's own ARI WebSocket", direct_url.as_str(), ARI_USER, ARI_PASSWORD, "slow-direct"), ("res_scale + RabbitMQ + gateway", gw.url().as_str(), CLIENT_USER, CLIENT_PASSWORD, "slow-gateway")]
    {
        let client = AriApp::start("ws_events.py", &[url, app, user, password, "--expect", "50001", "--idle", "15", "--slow", "50:5", "--report-gaps"]);
        client.expect("ready", Duration::from_secs(20), |l| l["ready"] == true);
        wait_app(node, app);
        let dropped_before = node_dropped(node);
        node.cli(&format!("scale test events {app} 50000"));
        // One more event once the burst is out: a gap at the burst's tail shows only when a
        // later event arrives.
        wait::until("the node's queue drained", Duration::from_secs(120), Duration::from_millis(200), || node.cli("scale show amqp").contains("Queue depth:   0 of").then_some(()));
        node.cli(&format!("scale test events {app} 1"));
        let s = summary_of(&client, Duration::from_secs(300));
        println!("  (the node's own queue dropped {} of the burst: queue_capacity)", node_dropped(node) - dropped_before);
        let closed = client.lines().iter().find(|l| l.get("closed").is_some()).map(|l| format!(", socket closed by the server ({})", l["closed"])).unwrap_or_default();
        println!(
            "  {label:<32} delivered {} of 50001 ({:.1}%), reported lost {}, out of order {}, {} s{closed}",
            s["bench"],
            s["bench"].as_f64().unwrap_or(0.0) / 500.01,
            s["lost"],
            s["out_of_order"],
            s["seconds"]
        );
    }
}

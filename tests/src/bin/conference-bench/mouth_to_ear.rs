//! Mouth-to-ear latency through one node and across a helper leg (tests/sip-phones/mouth_to_ear.py).

use std::path::Path;
use std::time::Duration;

use res_scale_tests::ari_app::AriApp;
use res_scale_tests::gateway::{Gateway, CLIENT_PASSWORD, CLIENT_USER};
use res_scale_tests::{wait, Node, Pool};

use crate::{spread, wait_app_on, wait_idle, SECONDS_20};

/// Bursts per path, and the time from one to the next.
const BURSTS: u32 = 30;
const BURST_PERIOD_MS: u32 = 400;

pub fn mouth_to_ear(pool: &Pool, gw: &Gateway) {
    let app = AriApp::example("conference/conference.py", &["--url", &format!("{}/", gw.url()), "--user", CLIENT_USER, "--password", CLIENT_PASSWORD, "--app", "conference"]);
    app.expect("the app connected", SECONDS_20, |l| l["unparsed"].as_str().is_some_and(|t| t.contains("connected to")));
    wait_app_on(&pool.nodes.iter().collect::<Vec<_>>(), "conference");
    let home = wait::until("the app's bridge conf", SECONDS_20, Duration::from_millis(50), || pool.nodes.iter().position(|n| n.ari().get("/bridges/conf").status == 200));
    let (bridge_node, other) = (&pool.nodes[home], &pool.nodes[1 - home]);
    let paths = [
        ("talker and listener on the bridge's node", bridge_node, bridge_node),
        ("talker on the bridge's node, listener on the other (helper leg)", bridge_node, other),
        ("talker on the other node (helper leg), listener on the bridge's node", other, bridge_node),
    ];
    let mut rows = Vec::new();
    for (label, talker, listener) in paths {
        let (sent, mut heard) = burst_latencies(pool, talker, listener);
        let (p50, p99, max) = if heard.is_empty() { (f64::NAN, f64::NAN, f64::NAN) } else { spread(&mut heard) };
        rows.push((label, sent, heard.len(), p50, p99, max));
        wait_idle(&pool.nodes);
    }
    let _ = gw.ari().delete("/bridges/conf");

    println!("\n## Mouth-to-ear latency through the conference app on the gateway ({BURSTS} tone bursts of 10 ms per path, every {BURST_PERIOD_MS} ms, a silent caller on each node)");
    println!("command: cargo run --release -p res-scale-tests --bin conference-bench -- audio");
    println!("| path | bursts sent / heard | p50 ms | p99 ms | max ms | p50 added to one node |");
    println!("|---|---|---|---|---|---|");
    let one_node = rows[0].3;
    for (label, sent, heard, p50, p99, max) in rows {
        println!("| {label} | {sent} / {heard} | {p50:.1} | {p99:.1} | {max:.1} | {:+.1} ms |", p50 - one_node);
    }
    println!("target: a helper leg adds under 20 ms");
}

/// Runs mouth_to_ear.py with the talker calling 8000 on `talker`, the listener on `listener`
/// and a silent caller on every node; the bursts it sent and the latency of each one heard.
fn burst_latencies(pool: &Pool, talker: &Node, listener: &Node) -> (u64, Vec<Duration>) {
    let testbed = res_scale_tests::testbed::Testbed::load();
    let dir = pool.dir.join(format!("mouth-to-ear-{}-{}", talker.name, listener.name));
    std::fs::create_dir_all(&dir).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-phones/mouth_to_ear.py");
    let uri = |node: &Node| format!("sip:8000@127.0.0.1:{}", node.sip_port);
    let mut child = res_scale_tests::child::tied_command(&testbed.pjsua_python, "KILL")
        .arg("-u")
        .arg(&script)
        .args(["--talker", &uri(talker), "--listener", &uri(listener), "--bursts", &BURSTS.to_string(), "--period-ms", &BURST_PERIOD_MS.to_string()])
        // A silent caller on every node: each bridge then holds three or more channels and
        // mixes (softmix), as a conference does; a bridge of two passes frames through as they are.
        .args(pool.nodes.iter().flat_map(|n| ["--silent".to_string(), uri(n)]))
        .arg("--record")
        .arg(dir.join("heard.wav"))
        .arg("--log")
        .arg(dir.join("pjsua.log"))
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.join("status.txt")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr.txt")).unwrap())
        .spawn()
        .expect("spawn mouth_to_ear.py");
    let bound = Duration::from_secs(u64::from(BURSTS * BURST_PERIOD_MS / 1000) + 40);
    if wait::try_until(bound, Duration::from_millis(50), || child.try_wait().ok().flatten()).is_none() {
        res_scale_tests::child::terminate(&mut child, Duration::from_secs(3));
    }
    let status = std::fs::read_to_string(dir.join("status.txt")).unwrap_or_default();
    let result: serde_json::Value = status
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_else(|| panic!("mouth_to_ear.py gave no result:\n{status}\n{}", std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default()));
    let heard = result["latency_ms"].as_array().into_iter().flatten().filter_map(|v| v.as_f64()).map(|ms| Duration::from_secs_f64(ms / 1e3)).collect();
    (result["bursts"].as_u64().unwrap_or(0), heard)
}

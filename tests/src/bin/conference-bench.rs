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

use std::path::Path;
use std::time::{Duration, Instant};

use res_scale_tests::ari::Ari;
use res_scale_tests::ari_app::AriApp;
use res_scale_tests::event_socket::EventSocket;
use res_scale_tests::gateway::{Gateway, CLIENT_PASSWORD, CLIENT_USER};
use res_scale_tests::kamailio::{sipp_dir, Kamailio, KamailioSpec, Sipp};
use res_scale_tests::node::{ARI_PASSWORD, ARI_USER};
use res_scale_tests::ports::free_port;
use res_scale_tests::stats::quantile;
use res_scale_tests::{cpu, wait, Node, Pool};

const SECONDS_20: Duration = Duration::from_secs(20);
/// Join rounds: each gives one join of each kind and one leg teardown.
const ROUNDS: usize = 200;
/// How often the teardown is polled (the node's bridges, the gateway's metrics).
const POLL: Duration = Duration::from_millis(2);
/// The load: calls per second, how many, and how long each caller talks before its BYE.
const RATE: u32 = 5;
const CALLS: u32 = 300;
const TALK_MS: u32 = 6000;
/// Load runs: this many of each path, in turns.
const LOAD_PAIRS: usize = 2;

fn main() {
    let which: Vec<String> = std::env::args().skip(1).collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    let gw = Gateway::start(&pool, "conference-bench", &[]);
    gw.wait_healthy(2);
    println!("conference benchmark, 2 nodes, {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    if wants("joins") {
        joins(&pool, &gw);
    }
    if wants("load") {
        load(&pool, &gw);
    }
    if wants("audio") {
        mouth_to_ear(&pool, &gw);
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

/// A value of the gateway's Prometheus text, e.g. `scale_gateway_bridging_legs`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The callers of a round, in the order they join.
const JOINS: [&str; 4] = [
    "bridge's node, into the empty bridge",
    "other node, first of its node (leg set up)",
    "other node, further (leg reused)",
    "bridge's node, into the bridge of 3",
];

/// Per kind of join (`JOINS`): until the event, and until the gateway answered addChannel.
#[derive(Default)]
struct JoinTimes {
    entered: [Vec<Duration>; 4],
    answered: [Vec<Duration>; 4],
}

/// Per way of leaving: (helper bridge gone on the member's node, the gateway's leg count at 0).
#[derive(Default)]
struct Teardowns {
    hang_up: (Vec<Duration>, Vec<Duration>),
    remove: (Vec<Duration>, Vec<Duration>),
}

fn joins(pool: &Pool, gw: &Gateway) {
    const APP: &str = "bench-conf";
    let socket = EventSocket::connect(&gw.url(), APP, CLIENT_USER, CLIENT_PASSWORD);
    wait_app_on(&pool.nodes.iter().collect::<Vec<_>>(), APP);
    let (a, b) = (&pool.nodes[0], &pool.nodes[1]);
    let ari = gw.ari();
    let mut times = JoinTimes::default();
    let mut teardowns = Teardowns::default();
    let started = Instant::now();
    for round in 0..ROUNDS {
        let bridge = format!("cb-{round}");
        let callers = [(a, format!("{bridge}-a1")), (b, format!("{bridge}-b1")), (b, format!("{bridge}-b2")), (a, format!("{bridge}-a2"))];
        for (node, id) in &callers {
            let r = node.ari().post(&format!("/channels?endpoint=Local/101@from-sip&app={APP}&channelId={id}&formats=ulaw"));
            assert_eq!(r.status, 200, "originate {id} on {}: {}", node.name, r.body);
        }
        for (_, id) in &callers {
            socket.wait_for(&format!("StasisStart of {id}"), SECONDS_20, |e| e["type"] == "StasisStart" && e["channel"]["id"] == id.as_str());
        }
        let r = ari.post(&format!("/bridges/{bridge}?type=mixing&ast_id={}", a.eid));
        assert_eq!(r.status, 200, "{}", r.body);
        for (kind, (_, id)) in callers.iter().enumerate() {
            let sent = Instant::now();
            let r = ari.post(&format!("/bridges/{bridge}/addChannel?channel={id}"));
            assert_eq!(r.status, 204, "add {id}: {}", r.body);
            let entered = socket.wait_for(&format!("{id} in {bridge}"), SECONDS_20, |e| e["type"] == "ChannelEnteredBridge" && e["channel"]["id"] == id.as_str());
            times.entered[kind].push(entered.at - sent);
            times.answered[kind].push(r.elapsed);
        }

        // The second remote caller leaves (the leg stays), then the last one, by hang-up in
        // even rounds and by removeChannel in odd ones.
        let (b1, b2) = (&callers[1].1, &callers[2].1);
        assert_eq!(ari.post(&format!("/bridges/{bridge}/removeChannel?channel={b2}")).status, 204);
        socket.wait_for(&format!("{b2} left"), SECONDS_20, |e| e["type"] == "ChannelLeftBridge" && e["channel"]["id"] == b2.as_str());
        assert_eq!(listed(b, "/bridges"), 1, "the helper bridge stays while {b1} is in {bridge}");
        let hang_up = round % 2 == 0;
        let sent = Instant::now();
        let status = if hang_up { ari.delete(&format!("/channels/{b1}")).status } else { ari.post(&format!("/bridges/{bridge}/removeChannel?channel={b1}")).status };
        assert_eq!(status, 204, "{b1} leaves {bridge}");
        let (mut bridge_gone, mut legs_zero) = (None, None);
        let gone = wait::try_until(Duration::from_secs(10), POLL, || {
            if bridge_gone.is_none() && listed(b, "/bridges") == 0 {
                bridge_gone = Some(sent.elapsed());
            }
            if legs_zero.is_none() && metric(&gw.metrics(), "scale_gateway_bridging_legs") == Some(0.0) {
                legs_zero = Some(sent.elapsed());
            }
            bridge_gone.zip(legs_zero)
        });
        let (bridge_gone, legs_zero) = gone.unwrap_or_else(|| panic!("round {round}: the leg did not go within 10 s (helper bridge gone: {bridge_gone:?}, legs 0: {legs_zero:?})"));
        let kind = if hang_up { &mut teardowns.hang_up } else { &mut teardowns.remove };
        kind.0.push(bridge_gone);
        kind.1.push(legs_zero);

        for (_, id) in &callers {
            let _ = ari.delete(&format!("/channels/{id}"));
        }
        assert_eq!(ari.delete(&format!("/bridges/{bridge}")).status, 204);
        wait_idle(&pool.nodes);
    }
    let metrics = gw.metrics();

    println!("\n## Conference join time, addChannel request -> ChannelEnteredBridge on the gateway's socket");
    println!("command: cargo run --release -p res-scale-tests --bin conference-bench -- joins ({ROUNDS} rounds in {:.0} s)", started.elapsed().as_secs_f64());
    println!("| joining caller | n | p50 ms | p99 ms | max ms | addChannel answered p50 / p99 ms |");
    println!("|---|---|---|---|---|---|");
    let mut entered = Vec::new();
    for (kind, label) in JOINS.iter().enumerate() {
        let (p50, p99, max) = spread(&mut times.entered[kind]);
        let (a50, a99, _) = spread(&mut times.answered[kind]);
        println!("| {label} | {} | {p50:.1} | {p99:.1} | {max:.1} | {a50:.1} / {a99:.1} |", times.entered[kind].len());
        entered.push((p50, p99));
    }
    let [empty, first, further, occupied] = [entered[0], entered[1], entered[2], entered[3]];
    println!(
        "p50 ratio to the same-node join into the empty bridge / into the bridge of 3: first remote {:.2}x / {:.2}x, further remote {:.2}x / {:.2}x (target: within 2x)",
        first.0 / empty.0,
        first.0 / occupied.0,
        further.0 / empty.0,
        further.0 / occupied.0
    );
    println!("p99 cross-node: first {:.1} ms, further {:.1} ms (target: under 500 ms)", first.1, further.1);
    if let (Some(sum), Some(count)) = (metric(&metrics, "scale_gateway_bridging_setup_seconds_sum"), metric(&metrics, "scale_gateway_bridging_setup_seconds_count")) {
        println!("the gateway's own scale_gateway_bridging_setup_seconds: {count} legs, mean {:.1} ms", sum / count.max(1.0) * 1e3);
    }

    println!("\n## Helper leg teardown after the last remote caller leaves (polled every {} ms)", POLL.as_millis());
    println!("| the caller leaves by | n | helper bridge gone on its node p50 / p99 ms | scale_gateway_bridging_legs 0 p50 / p99 ms |");
    println!("|---|---|---|---|");
    for (label, (bridge_gone, legs_zero)) in [("hang-up (DELETE /channels)", &mut teardowns.hang_up), ("removeChannel", &mut teardowns.remove)] {
        let (g50, g99, _) = spread(bridge_gone);
        let (l50, l99, _) = spread(legs_zero);
        println!("| {label} | {} | {g50:.1} / {g99:.1} | {l50:.1} / {l99:.1} |", bridge_gone.len());
    }
}

/// What one load run measured.
struct LoadRun {
    successful: u64,
    failed: u64,
    setup: Vec<Duration>,
    joined: usize,
    join_errors: usize,
    /// CPU per process (name, seconds) over the run, and the load generator's apart.
    cpu: Vec<(String, f64)>,
    sipp_cpu: f64,
}

impl LoadRun {
    fn total_cpu(&self) -> f64 {
        self.cpu.iter().map(|(_, s)| s).sum()
    }
}

fn load(pool: &Pool, gw: &Gateway) {
    let a = &pool.nodes[0];
    let direct_url = format!("http://127.0.0.1:{}/", a.http_port);
    let (gw_url, both) = (format!("{}/", gw.url()), pool.nodes.iter().collect::<Vec<_>>());
    // In turns, so that a slow spell of the machine hits both sides of a ratio.
    let pairs: Vec<(LoadRun, LoadRun)> = (1..=LOAD_PAIRS)
        .map(|pair| {
            let direct = load_run(pool, gw, &format!("direct-{pair}"), &[a], [&direct_url, ARI_USER, ARI_PASSWORD]);
            let through = load_run(pool, gw, &format!("gateway-{pair}"), &both, [&gw_url, CLIENT_USER, CLIENT_PASSWORD]);
            (direct, through)
        })
        .collect();

    println!("\n## The whole stack under load: SIPp -> Kamailio -> 8000 -> conference app, {CALLS} calls at {RATE}/s, each talks {TALK_MS} ms");
    println!("command: cargo run --release -p res-scale-tests --bin conference-bench -- load");
    println!("| run | path | successful | failed | joined (app) | INVITE -> 200 p50 / p99 / max ms | CPU s, all processes | CPU ms per call | ratio to the direct run before |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let per_call = |run: &LoadRun| run.total_cpu() / f64::from(CALLS) * 1e3;
    for (pair, (direct, through)) in pairs.iter().enumerate() {
        for (label, run) in [("app on node1's ARI, Kamailio -> node1", direct), ("app on the gateway, Kamailio -> 2 nodes", through)] {
            let (p50, p99, max) = if run.setup.is_empty() { (0.0, 0.0, 0.0) } else { spread(&mut run.setup.clone()) };
            println!(
                "| {} | {label} | {} | {} | {} ({} errors) | {p50:.0} / {p99:.0} / {max:.0} | {:.2} | {:.1} | {:.2} |",
                pair + 1,
                run.successful,
                run.failed,
                run.joined,
                run.join_errors,
                run.total_cpu(),
                per_call(run),
                per_call(run) / per_call(direct)
            );
        }
    }
    let total = |pick: fn(&(LoadRun, LoadRun)) -> &LoadRun| pairs.iter().map(|p| pick(p).total_cpu()).sum::<f64>();
    println!("all runs: the gateway's CPU per call is {:.2}x the direct one (target: at most 1.3x, no failed call)", total(|p| &p.1) / total(|p| &p.0));
    println!("CPU seconds by process, direct / gateway, per run:");
    for (i, (name, _)) in pairs[0].0.cpu.iter().enumerate() {
        let runs: Vec<String> = pairs.iter().map(|(d, g)| format!("{:.2} / {:.2}", d.cpu[i].1, g.cpu[i].1)).collect();
        println!("  {name:<10} {}", runs.join("   "));
    }
    let sipp: Vec<String> = pairs.iter().map(|(d, g)| format!("{:.2} / {:.2}", d.sipp_cpu, g.sipp_cpu)).collect();
    println!("  (SIPp, the load generator, not counted: {})", sipp.join("   "));
}

/// One load run: Kamailio in front of `nodes`, the conference app on the ARI server `ari` (url,
/// user, password), SIPp callers until they are all done and every node is idle again.
fn load_run(pool: &Pool, gw: &Gateway, label: &str, nodes: &[&Node], ari: [&str; 3]) -> LoadRun {
    let dir = pool.dir.join(format!("load-{label}"));
    let kamailio = kamailio_in_front_of(pool, &dir, nodes);
    let [url, user, password] = ari;
    let app = AriApp::example("conference/conference.py", &["--url", url, "--user", user, "--password", password, "--app", "conference"]);
    app.expect("the app connected", SECONDS_20, |l| l["unparsed"].as_str().is_some_and(|t| t.contains("connected to")));
    wait_app_on(nodes, "conference");
    write_talk_wav(&dir.join("talk.wav"));

    let mut processes: Vec<(String, u32)> = pool.nodes.iter().map(|n| (n.name.clone(), n.pid())).collect();
    processes.push(("rabbitmq".into(), pool.rabbitmq.as_ref().and_then(|m| m.vm_pid()).expect("the broker's PID")));
    processes.push(("consul".into(), pool.consul.as_ref().and_then(|c| c.pid()).expect("Consul's PID")));
    processes.push(("kamailio".into(), kamailio.pid().expect("Kamailio's PID")));
    processes.push(("gateway".into(), gw.pid().expect("the gateway's PID")));
    processes.push(("app".into(), app.pid().expect("the app's PID")));
    let before: Vec<Duration> = processes.iter().map(|(_, pid)| cpu::tree(*pid)).collect();

    // RTP from above Linux's ephemeral range and the nodes' RTP ranges: SIPp takes a port pair
    // per call from here.
    let media_port = 61_000 + (std::process::id() % 8) * 500;
    let args: Vec<String> = [
        "-sf",
        &sipp_dir().join("uac_conference.xml").display().to_string(),
        "-s",
        "8000",
        "-d",
        &TALK_MS.to_string(),
        "-i",
        "127.0.0.1",
        "-p",
        &free_port().to_string(),
        "-mp",
        &media_port.to_string(),
        "-m",
        &CALLS.to_string(),
        "-r",
        &RATE.to_string(),
        "-trace_rtt",
        // SIPp writes its response times out every this many calls (and not at exit).
        "-rtt_freq",
        "1",
        "-trace_stat",
        &format!("127.0.0.1:{}", kamailio.sip_port),
    ]
    .map(String::from)
    .to_vec();
    // SIPp is our child: once reaped, its CPU time is in our children's total.
    let reaped_before = cpu::reaped_children();
    let bound = Duration::from_secs(u64::from(CALLS / RATE) + u64::from(TALK_MS / 1000) + 60);
    let outcome = Sipp::spawn(&dir, "callers", &args).wait(bound);
    let sipp_cpu = cpu::reaped_children().saturating_sub(reaped_before);
    if let Err(e) = &outcome {
        eprintln!("{label}: SIPp reports failures: {}", e.lines().filter(|l| l.contains("call") || l.contains("rror")).take(20).collect::<Vec<_>>().join("\n"));
    }
    wait_idle(&pool.nodes);
    let cpu: Vec<(String, f64)> = processes.iter().zip(&before).map(|((name, pid), before)| (name.clone(), (cpu::tree(*pid).saturating_sub(*before)).as_secs_f64())).collect();

    let lines = app.lines();
    let logged = |what: &str| lines.iter().filter(|l| l["unparsed"].as_str().is_some_and(|t| t.contains(what))).count();
    let (successful, failed) = sipp_counts(&dir);
    let run = LoadRun { successful, failed, setup: sipp_setup_times(&dir), joined: logged(" joined conf"), join_errors: logged("could not join"), cpu, sipp_cpu: sipp_cpu.as_secs_f64() };
    // The app's bridge goes with the run (through the app's own ARI server), so the next
    // run's app makes its own.
    let _ = Ari::new(&format!("{url}ari"), user, password).delete("/bridges/conf");
    run
}

fn kamailio_in_front_of(pool: &Pool, dir: &Path, nodes: &[&Node]) -> Kamailio {
    let mut spec = KamailioSpec::new(&pool.rabbitmq.as_ref().expect("the pool has a broker").url());
    spec.destinations = nodes.iter().map(|n| format!("sip:127.0.0.1:{}", n.sip_port)).collect();
    spec.defines = vec!["DS_PING_INTERVAL=1".into()];
    let kamailio = Kamailio::start(&dir.join("kamailio"), spec);
    wait::until("Kamailio sees its nodes", SECONDS_20, Duration::from_millis(200), || {
        kamailio.kamcmd(&["dispatcher.list"]).filter(|l| l.matches("FLAGS: AP").count() == nodes.len()).map(|_| ())
    });
    kamailio
}

/// The callers' voice: 2 s of a 440 Hz tone at a speaking level, G.711 u-law in a WAV file
/// (what SIPp's rtp_stream plays).
fn write_talk_wav(path: &Path) {
    let samples: Vec<u8> = (0..16_000).map(|i| ulaw((4000.0 * (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / 8000.0).sin()) as i16)).collect();
    let mut wav = Vec::with_capacity(samples.len() + 58);
    let chunk = |wav: &mut Vec<u8>, id: &[u8], body: &[u8]| {
        wav.extend_from_slice(id);
        wav.extend_from_slice(&(body.len() as u32).to_le_bytes());
        wav.extend_from_slice(body);
    };
    // fmt: format 7 (u-law), mono, 8000 Hz, 8000 bytes/s, block 1, 8 bits, no extra bytes.
    let fmt: Vec<u8> = [7u16.to_le_bytes(), 1u16.to_le_bytes()].concat().into_iter().chain(8000u32.to_le_bytes()).chain(8000u32.to_le_bytes()).chain(1u16.to_le_bytes()).chain(8u16.to_le_bytes()).chain(0u16.to_le_bytes()).collect();
    let mut body = b"WAVE".to_vec();
    chunk(&mut body, b"fmt ", &fmt);
    chunk(&mut body, b"data", &samples);
    chunk(&mut wav, b"RIFF", &body);
    std::fs::write(path, wav).unwrap();
}

/// G.711 u-law of one linear sample (ITU-T G.711: bias 0x84, segment and mantissa, inverted).
fn ulaw(sample: i16) -> u8 {
    let sign = if sample < 0 { 0x80 } else { 0 };
    let magnitude = (i32::from(sample).abs().min(32_635) + 0x84) as u32;
    let exponent = (31 - magnitude.leading_zeros()).saturating_sub(7).min(7);
    let mantissa = (magnitude >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// The one file in `dir` whose name ends with `suffix` (SIPp names them `<scenario>_<pid>...`).
fn sipp_file(dir: &Path, suffix: &str) -> Option<String> {
    let path = std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|p| p.to_string_lossy().ends_with(suffix))?;
    std::fs::read_to_string(path).ok()
}

/// Successful and failed calls from SIPp's statistics file (its last, cumulative line).
fn sipp_counts(dir: &Path) -> (u64, u64) {
    let text = sipp_file(dir, "_.csv").unwrap_or_default();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(';').collect();
    let last: Vec<&str> = lines.last().unwrap_or_default().split(';').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).and_then(|i| last.get(i)).and_then(|v| v.parse().ok()).unwrap_or(0);
    (column("SuccessfulCall(C)"), column("FailedCall(C)"))
}

/// Every call's INVITE -> 200 time ("setup" in the scenario), from `-trace_rtt` (whole ms).
fn sipp_setup_times(dir: &Path) -> Vec<Duration> {
    let text = sipp_file(dir, "_rtt.csv").unwrap_or_default();
    text.lines().skip(1).filter_map(|l| l.split(';').nth(1)?.parse::<f64>().ok()).map(|ms| Duration::from_secs_f64(ms / 1e3)).collect()
}

/// Bursts per path, and the time from one to the next.
const BURSTS: u32 = 30;
const BURST_PERIOD_MS: u32 = 400;

fn mouth_to_ear(pool: &Pool, gw: &Gateway) {
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
    let result: serde_json::Value = status.lines().find_map(|l| l.strip_prefix("RESULT ")).and_then(|r| serde_json::from_str(r).ok()).unwrap_or_else(|| {
        panic!("mouth_to_ear.py gave no result:\n{status}\n{}", std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default())
    });
    let heard = result["latency_ms"].as_array().into_iter().flatten().filter_map(|v| v.as_f64()).map(|ms| Duration::from_secs_f64(ms / 1e3)).collect();
    (result["bursts"].as_u64().unwrap_or(0), heard)
}

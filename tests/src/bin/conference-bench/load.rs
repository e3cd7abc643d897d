//! The whole stack under SIPp callers: the conference app on one node's own ARI against the
//! same app on the gateway over two nodes, CPU per call of every process.

use std::path::Path;
use std::time::Duration;

use res_scale_tests::ari::Ari;
use res_scale_tests::ari_app::AriApp;
use res_scale_tests::gateway::{Gateway, CLIENT_PASSWORD, CLIENT_USER};
use res_scale_tests::kamailio::{sipp_dir, Kamailio, KamailioSpec, Sipp};
use res_scale_tests::node::{ARI_PASSWORD, ARI_USER};
use res_scale_tests::ports::free_port;
use res_scale_tests::{cpu, wait, Node, Pool};

use crate::sipp_results::{sipp_counts, sipp_setup_times};
use crate::{spread, wait_app_on, wait_idle, SECONDS_20};
use res_scale_tests::talk_wav::write_talk_wav;

/// The load: calls per second, how many, and how long each caller talks before its BYE.
const RATE: u32 = 5;
const CALLS: u32 = 300;
const TALK_MS: u32 = 6000;
/// Load runs: this many of each path, in turns.
const LOAD_PAIRS: usize = 2;

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

pub fn load(pool: &Pool, gw: &Gateway) {
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
    // The app of the run before has gone from every node. (A node's own ARI client that takes
    // an application name res_scale holds and then leaves takes the application with it: the
    // node has none until the Consul key changes, and its calls to Stasis would fail.)
    for node in &pool.nodes {
        wait::until(&format!("no app conference on {}", node.name), SECONDS_20, Duration::from_millis(100), || {
            let apps = node.ari().get("/applications");
            (apps.status == 200 && !apps.json().as_array()?.iter().any(|a| a["name"] == "conference")).then_some(())
        });
    }
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
    wait::until("Kamailio sees its nodes", SECONDS_20, Duration::from_millis(200), || kamailio.kamcmd(&["dispatcher.list"]).filter(|l| l.matches("FLAGS: AP").count() == nodes.len()).map(|_| ()));
    kamailio
}

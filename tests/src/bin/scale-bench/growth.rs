//! `registrations-growth`: how the cost of applying one contact grows with the contacts a node
//! already holds (every node holds every phone of the pool, so this is the curve that decides
//! how far a pool grows).
//!
//! One node with enough AORs for the largest level ([`PER_AOR`] contacts each). At each level L the node is filled to L
//! contacts (batches, not measured); then `probe` more contacts are announced and then withdrawn
//! again, each measured: Asterisk's CPU time (all its threads, from /proc) and the wall time per
//! contact, and the node's resident memory at L. The figure that matters is a ratio from the
//! same run: the cost at the largest level over the cost at the smallest. Last, a second node
//! joins and SYNCs everything held. All of it twice, in one run: with PJSIP's contacts in
//! res_scale's indexed store (`indexed_contacts = yes`, the default) and in sorcery's `memory`
//! wizard (`no`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use res_scale_tests::amqp::AmqpProbe;
use res_scale_tests::control_socket::socket_cli;
use res_scale_tests::{wait, Node, Pool};

use super::{
    applied, bench_update, process_cpu, registrations_counters, registrations_line, reset_contact_taskprocessor, until_contact_applied, until_taskprocessors_idle, BENCH_ORIGIN, REGISTRATIONS_EXCHANGE,
};

/// Contacts per batch message, as a registrar's SYNC answer sends them.
const BATCH: usize = 500;
/// Contacts per AOR: Asterisk boots in minutes with 100,000 AORs in pjsip.conf (its config
/// loading grows faster than the AOR count), and the cost under measurement is that of the
/// contacts held, whichever AORs they are in.
const PER_AOR: usize = 20;

fn aor_of(i: usize) -> String {
    format!("bench-aor-{}", i / PER_AOR)
}

/// One measured step: `n` contacts announced or withdrawn at one level.
struct Cost {
    cpu: Duration,
    wall: Duration,
    n: usize,
    /// The deepest the contact observers' queue got (their high-water mark is 1,500).
    max_depth: u64,
}

impl Cost {
    fn cpu_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.n as f64
    }

    fn wall_us(&self) -> f64 {
        self.wall.as_secs_f64() * 1e6 / self.n as f64
    }
}

/// The `removed` count of the `Applied:` line (`N created or refreshed, M removed, ...`).
fn removed(text: &str) -> u64 {
    let line = registrations_line(text, "Applied:");
    line.split(", ").find_map(|part| part.strip_suffix(" removed")).and_then(|n| n.trim().parse().ok()).unwrap_or_else(|| panic!("unexpected Applied line: {line}"))
}

/// The registrar's per-origin counter: each message about an AOR must carry a higher `seq`
/// than the one before (the probe contacts are announced and withdrawn again at every level).
static SEQ: AtomicU64 = AtomicU64::new(1);

fn batches(kind: &str, contacts: &[serde_json::Value]) -> Vec<Vec<u8>> {
    contacts
        .chunks(BATCH)
        .map(|chunk| {
            let numbered: Vec<serde_json::Value> = chunk
                .iter()
                .map(|c| {
                    let mut c = c.clone();
                    c["seq"] = SEQ.fetch_add(1, Ordering::Relaxed).into();
                    c
                })
                .collect();
            serde_json::json!({"type": kind, "origin": BENCH_ORIGIN, "contacts": numbered}).to_string().into_bytes()
        })
        .collect()
}

/// Announces contacts `from..to` and waits until the node applied them all.
fn announce(probe: &AmqpProbe, node: &Node, updates: &[serde_json::Value], from: usize, to: usize) -> Cost {
    let before = applied(&registrations_counters(node));
    measured(node, to - from, || {
        let bodies = batches("ANNOUNCE", &updates[from..to]);
        probe.publish_burst(REGISTRATIONS_EXCHANGE, |_| "registration.batch".to_string(), &bodies, &[], false);
        until_contact_applied(node, &aor_of(to - 1), to - 1, before + (to - from) as u64, Instant::now());
    })
}

/// Withdraws contacts `from..to` (one message each: batches are for announcing) and waits until
/// the node removed them all.
fn withdraw(probe: &AmqpProbe, node: &Node, updates: &[serde_json::Value], from: usize, to: usize) -> Cost {
    let target = removed(&registrations_counters(node)) + (to - from) as u64;
    let bodies: Vec<Vec<u8>> = updates[from..to]
        .iter()
        .map(|u| {
            serde_json::json!({"type": "WITHDRAW", "aor": u["aor"], "contact": {"uri": u["contact"]["uri"]}, "origin": BENCH_ORIGIN, "seq": SEQ.fetch_add(1, Ordering::Relaxed)})
                .to_string()
                .into_bytes()
        })
        .collect();
    let keys: Vec<String> = updates[from..to].iter().map(|u| format!("registration.{}", u["aor"].as_str().unwrap_or_default())).collect();
    measured(node, to - from, || {
        probe.publish_burst(REGISTRATIONS_EXCHANGE, |i| keys[i].clone(), &bodies, &[], false);
        // The last one gone from PJSIP (cheap to ask), then the counter must agree.
        let uri = format!("phone-{}@", to - 1);
        wait::until("the probe contacts withdrawn", Duration::from_secs(300), Duration::from_millis(10), || {
            (!socket_cli(node, &format!("pjsip show aor {}", aor_of(to - 1))).contains(&uri) && removed(&registrations_counters(node)) >= target).then_some(())
        });
    })
}

/// What `work` on `n` contacts cost the node, its observers' tail included.
fn measured(node: &Node, n: usize, work: impl FnOnce()) -> Cost {
    reset_contact_taskprocessor(node);
    let (cpu, started) = (process_cpu(node.pid()), Instant::now());
    work();
    let wall = started.elapsed();
    // The observers' work after the last contact is stored belongs to the cost too.
    let (_, max_depth) = until_taskprocessors_idle(node);
    Cost { cpu: process_cpu(node.pid()) - cpu, wall, n, max_depth }
}

pub fn registrations_growth(levels: &[usize], probe_size: usize) {
    growth(levels, probe_size, true);
    // In `memory` a contact costs milliseconds at 50,000 held (5.9 ms on 2026-12-01): filling
    // it to 100,000 and a SYNC of that many would take most of an hour.
    let memory_levels: Vec<usize> = levels.iter().copied().filter(|&l| l <= 50_000).collect();
    growth(&memory_levels, probe_size, false);
}

fn growth(levels: &[usize], probe_size: usize, indexed: bool) {
    let largest = *levels.iter().max().expect("a level");
    let total = largest + probe_size;
    let started = Instant::now();
    let indexed_contacts = if indexed { "yes" } else { "no" };
    let conf = format!("[consul]\nenabled = no\n[amqp]\nenabled = yes\nurl = {{amqp_url}}\n[registrations]\nenabled = yes\nindexed_contacts = {indexed_contacts}\n");
    let pool = Pool::builder().nodes(2).with_rabbitmq().without_module_loaded().extra_aors(total.div_ceil(PER_AOR)).res_scale_conf(&conf).start();
    let boot = started.elapsed();
    let (node, joiner) = (pool.node(0), pool.node(1));
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    let expires = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let updates: Vec<serde_json::Value> = (0..total)
        .map(|i| {
            let mut update = bench_update(i, expires);
            update["aor"] = aor_of(i).into();
            update
        })
        .collect();
    let rss_empty = node.rss_mib();
    node.cli("module load res_scale.so");
    super::wait_registrations_connected(node);

    println!(
        "## Registrations as they grow, indexed_contacts = {indexed_contacts} (1 node, {} AORs of {PER_AOR} contacts; batches of {BATCH}; probe of {probe_size} contacts announced, then withdrawn, at each level)",
        total.div_ceil(PER_AOR)
    );
    println!("- pool of 2 nodes with {} AORs each started in {:.1} s; Asterisk RSS before any contact: {rss_empty:.0} MiB", total.div_ceil(PER_AOR), boot.as_secs_f64());
    println!("| held | announce: CPU us/contact | wall us/contact | withdraw: CPU us/contact | wall us/contact | observer queue max | RSS MiB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let (mut held, mut rows) = (0, Vec::new());
    for &level in levels {
        // Fill: the probe contacts live above `largest`, so the fill never touches them.
        if level > held {
            announce(&probe, node, &updates, held, level);
            held = level;
        }
        let rss = node.rss_mib();
        let added = announce(&probe, node, &updates, largest, total);
        let gone = withdraw(&probe, node, &updates, largest, total);
        println!("| {level} | {:.1} | {:.1} | {:.1} | {:.1} | {} / {} | {rss:.0} |", added.cpu_us(), added.wall_us(), gone.cpu_us(), gone.wall_us(), added.max_depth, gone.max_depth);
        rows.push((level, added, gone, rss));
    }
    let (first, last) = (&rows[0], &rows[rows.len() - 1]);
    println!(
        "- growth, {} held against {}: announce {:.2}x CPU ({:.2}x wall), withdraw {:.2}x CPU ({:.2}x wall) (target: within 1.5x)",
        last.0,
        first.0,
        last.1.cpu_us() / first.1.cpu_us(),
        last.1.wall_us() / first.1.wall_us(),
        last.2.cpu_us() / first.2.cpu_us(),
        last.2.wall_us() / first.2.wall_us()
    );
    if rows.len() > 1 {
        let (a, b) = (&rows[1], last);
        println!("- memory: {:.1} MiB per 10,000 contacts held (RSS at {} against {})", (b.3 - a.3) / ((b.0 - a.0) as f64 / 10_000.0), b.0, a.0);
    }

    // A node that joins and holds none: SYNC of everything held.
    reset_contact_taskprocessor(joiner);
    let (cpu, started) = (process_cpu(joiner.pid()), Instant::now());
    joiner.cli("module load res_scale.so");
    let seen = until_contact_applied(joiner, &aor_of(held - 1), held - 1, held as u64, started);
    let (_, max_depth) = until_taskprocessors_idle(joiner);
    println!(
        "- SYNC of a joining node, {held} contacts: {:.2} s from `module load` (at least {:.2} s), {:.2} s of its Asterisk's CPU; observer queue max depth {max_depth}",
        (seen.by - started).as_secs_f64(),
        (seen.after - started).as_secs_f64(),
        (process_cpu(joiner.pid()) - cpu).as_secs_f64()
    );
}

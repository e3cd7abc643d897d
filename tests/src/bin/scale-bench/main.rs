//! `make bench`: measurements against a real pool. Each benchmark prints its figures with the
//! command that made them, ready for BENCHMARKS.md.
//!
//! Benchmarks: `apps` (Consul KV write -> Stasis application registered on every node),
//! `events` (Stasis events through the module to RabbitMQ, against a plain lapin publisher;
//! with `--pinned`, Asterisk and the publishers on CPU 0 and the broker and the consumer on
//! CPU 1, as if the broker ran on its own host),
//! `registrations` (ANNOUNCE messages applied as PJSIP contacts, single and batched, and the
//! SYNC of a node that joins); and, not part of a plain run (`make scale` runs them):
//! `pool [--nodes N]` (a pool of 10 nodes: start-up, memory at rest, Consul's load, app and
//! registration propagation to every node) and `registrations-growth` (the cost per contact as
//! the contacts held grow to 100,000).

mod growth;
mod pool;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use res_scale_tests::amqp::AmqpProbe;
use res_scale_tests::control_socket::socket_cli;
use res_scale_tests::stats::quantile;
use res_scale_tests::{wait, Node, Pool};

fn main() {
    let which: Vec<String> = std::env::args().skip(1).collect();
    let all = which.is_empty();
    if all || which.iter().any(|w| w == "apps") {
        app_propagation(100);
    }
    if all || which.iter().any(|w| w == "events") {
        event_forwarding(100_000, 5_000, which.iter().any(|w| w == "--pinned"));
    }
    if all || which.iter().any(|w| w == "callback") {
        callback_at_low_rates();
    }
    if all || which.iter().any(|w| w == "registrations") {
        registrations_apply(10_000, 500);
    }
    if which.iter().any(|w| w == "pool") {
        let nodes = which.iter().position(|w| w == "--nodes").and_then(|i| which.get(i + 1)).map(|n| n.parse().expect("--nodes takes a number")).unwrap_or(10);
        pool::many_nodes(nodes, 100, 50);
    }
    if which.iter().any(|w| w == "registrations-growth") {
        growth::registrations_growth(&[1_000, 10_000, 50_000, 100_000], 5_000);
    }
}

/// Median, p99 and max of a sample, in milliseconds.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!("median {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})", ms(quantile(samples, 0.5)), ms(quantile(samples, 0.99)), ms(*samples.last().unwrap()), samples.len())
}

/// Time from a KV write (or delete) until every node has (or no longer has) the application,
/// seen through each node's ARI (`GET /applications/<name>`), polled every 2 ms.
fn app_propagation(rounds: usize) {
    let pool = Pool::builder().nodes(2).with_consul().start();
    let (mut adds, mut deletes) = app_rounds(&pool, rounds);
    println!("## App propagation (Consul KV -> Stasis app on every node), 2 nodes, {rounds} adds and {rounds} deletes");
    println!("- add:    {}", summary(&mut adds));
    println!("- delete: {}", summary(&mut deletes));
}

/// `rounds` applications added, then deleted, one at a time: how long each took to reach every
/// node of the pool.
fn app_rounds(pool: &Pool, rounds: usize) -> (Vec<Duration>, Vec<Duration>) {
    let consul = pool.consul.as_ref().unwrap();
    let aris: Vec<_> = pool.nodes.iter().map(|n| n.ari()).collect();
    let until_all = |name: &str, present: bool| {
        let started = Instant::now();
        let mut pending: Vec<usize> = (0..aris.len()).collect();
        while !pending.is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10), "{name} did not propagate");
            pending.retain(|&i| (aris[i].get(&format!("/applications/{name}")).status == 200) != present);
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    };
    let (mut adds, mut deletes) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let name = format!("bench-{round}");
        let t = Instant::now();
        consul.put_kv(&format!("res_scale/apps/{name}"), "{}");
        until_all(&name, true);
        adds.push(t.elapsed());
        let t = Instant::now();
        consul.delete_kv(&format!("res_scale/apps/{name}"));
        until_all(&name, false);
        deletes.push(t.elapsed());
    }
    (adds, deletes)
}

/// Events through the real callback path (`scale test events`, which hands each event to
/// res_stasis like any other) to a queue bound on `stasis.app.bench.#`, compared in the same
/// run with a plain lapin publisher sending the same messages (and the bodies alone), each
/// burst timed until a consumer has them all; then the latency from event creation to a
/// consumer at 1,000 events/s.
fn event_forwarding(burst: usize, paced: usize, pinned: bool) {
    // A queue that holds the whole burst: this measures throughput, not the drop policy.
    let conf = "[consul]\nurl = {consul_url}\ncheck_ttl = 3s\n[amqp]\nurl = {amqp_url}\nqueue_capacity = 200000\n[registrations]\nenabled = no\n";
    let pool = Pool::builder().nodes(1).with_consul().with_rabbitmq().res_scale_conf(conf).start();
    let node = pool.node(0);
    pool.consul.as_ref().unwrap().put_kv("res_scale/apps/bench", "{}");
    wait::until("app bench and a broker", Duration::from_secs(10), Duration::from_millis(20), || {
        let ready = node.ari().get("/applications/bench").status == 200 && node.cli("scale show amqp").contains("State:         connected");
        ready.then_some(())
    });
    let url = pool.rabbitmq.as_ref().unwrap().url();
    let probe = AmqpProbe::new(&url);
    probe.bind_queue("bench", "res_scale.events", "stasis.app.bench.#");

    let broker_pid = pool.rabbitmq.as_ref().unwrap().vm_pid().expect("the broker's PID file");
    // Threads inherit their creator's CPUs, so pinning every thread there now covers the ones
    // to come (the consumer's are moved on their own, below).
    let consumer_cpu = pinned.then(|| {
        pin(node.pid(), CLIENT_CPU, true);
        pin(std::process::id(), CLIENT_CPU, true);
        pin(broker_pid, BROKER_CPU, true);
        BROKER_CPU
    });
    let burst_of = |publish: &mut dyn FnMut()| timed_burst(&url, consumer_cpu, node.pid(), broker_pid, burst, publish);
    // A burst through the module, with what `scale test events` reported of it.
    let module_burst = || {
        let mut report = String::new();
        let burst = burst_of(&mut || report = test_events(node, &format!("bench {burst}")));
        (burst, report)
    };
    let key = format!("stasis.app.bench.{}", node.eid);
    let template = BenchBody::from_module(&url, node);
    let bodies: Vec<Vec<u8>> = (0..burst).map(|seq| template.body(seq, 1_795_345_201_000_000_000)).collect();
    let headers = [("application", "bench"), ("asterisk_id", node.eid.as_str()), ("event_type", "BenchEvent")];
    // The plain publisher: the same messages res_scale sends (with the contract's headers), or
    // the bodies alone (the broker's raw limit).
    let plain = |headers: &[(&str, &str)], confirms: bool| {
        burst_of(&mut || {
            probe.publish_burst("res_scale.events", |_| key.clone(), &bodies, headers, confirms);
        })
    };
    let file = node.dir.join("etc/res_scale.conf");
    let confirmed_conf = std::fs::read_to_string(&file).unwrap();
    let set_confirms = |on: bool| {
        let conf = if on { confirmed_conf.clone() } else { confirmed_conf.replace("queue_capacity = 200000", "queue_capacity = 200000\nconfirms = no") };
        node.write_config("res_scale.conf", &conf);
        node.cli("module reload res_scale.so");
        let shown = format!("confirms: {}", if on { "yes" } else { "no" });
        wait::until("the publisher back", Duration::from_secs(10), Duration::from_millis(20), || {
            let amqp = node.cli("scale show amqp");
            (amqp.contains("State:         connected") && amqp.contains(&shown)).then_some(())
        });
    };

    // The first burst into a fresh broker, and the module's first after its load, also pay for
    // growing their memory: not measured (the module's callback times are shown). Then each
    // kind runs once per round, each res_scale burst next to its plain counterpart, so a slow
    // spell of the machine hits both sides of a ratio.
    plain(&headers, false);
    let (_, first_report) = module_burst();
    // What `scale test events` reported of every measured burst (confirms on, then off).
    let mut reports = Vec::new();
    let mut runs: [Vec<Burst>; 5] = Default::default();
    for round in 1..=BURST_ROUNDS {
        let (confirmed, report) = module_burst();
        runs[0].push(confirmed);
        reports.push((round, "yes", report));
        runs[1].push(plain(&headers, true));
        set_confirms(false);
        let (unconfirmed, report) = module_burst();
        runs[2].push(unconfirmed);
        reports.push((round, "no", report));
        runs[3].push(plain(&headers, false));
        runs[4].push(plain(&[], false));
        set_confirms(true);
    }
    let [module, headers_confirmed, unconfirmed, with_headers, bodies_only] = runs.map(|r| Burst::total(&r));

    // Latency at 1,000 events/s: through the module, then (the reference) the same messages
    // from a plain publisher; what the module adds is the difference.
    let (mut module_latency, paced_report) = paced_latencies(&url, paced, consumer_cpu, || test_events(node, &format!("bench {paced} 1000")));
    let (mut plain_latency, ()) = paced_latencies(&url, paced, consumer_cpu, || probe.publish_paced("res_scale.events", &key, paced, 1000, &headers, |seq, sent_ns| template.body(seq, sent_ns)));
    let amqp = node.cli("scale show amqp");

    let phases = [
        ("res_scale, confirms = yes (callback -> queue -> publisher -> queue):", &module),
        ("plain lapin, same messages (the three headers), confirms:", &headers_confirmed),
        ("res_scale, confirms = no:", &unconfirmed),
        ("plain lapin, same messages, no confirms:", &with_headers),
        ("plain lapin, bodies only (no headers, no confirms):", &bodies_only),
    ];
    let rate = |b: &Burst| (burst * BURST_ROUNDS) as f64 / b.took.as_secs_f64();
    let placement = if pinned { ", pinned: Asterisk and the publishers on CPU 0, the broker and the consumer on CPU 1" } else { "" };
    println!("## Event forwarding (1 node, bursts of {burst} events, {BURST_ROUNDS} of each kind, queue_capacity 200000{placement})");
    for (what, b) in phases {
        println!("- {what:<66} {:>6.0} events/s delivered ({:.2} s in all)", rate(b), b.took.as_secs_f64());
    }
    let ratio = |ours: &Burst, plain: &Burst| rate(ours) / rate(plain);
    println!(
        "- ratio res_scale / plain, like for like: confirms on {:.2}, confirms off {:.2}; against the bodies-only publisher: {:.2} / {:.2}",
        ratio(&module, &headers_confirmed),
        ratio(&unconfirmed, &with_headers),
        ratio(&module, &bodies_only),
        ratio(&unconfirmed, &bodies_only)
    );
    println!("- CPU per event in each burst, us: res_scale's threads (publisher, lapin) / the rest of Asterisk (the CLI thread that makes the events; res_stasis and our callback run on it) / the broker / this process (the consumer, and the plain publisher in its bursts):");
    for (what, b) in phases {
        let cpu = b.cpu.per_event(burst * BURST_ROUNDS);
        println!("  {:<64} {}", what.trim_end_matches(':').split(" (callback").next().unwrap_or(what), cpu);
    }
    println!("- the first burst after the module's load (not in the rates above): {}", first_report.trim());
    for (round, confirms, report) in &reports {
        println!("- measured burst, round {round}, confirms = {confirms}: {}", report.trim());
    }
    println!("- at 1000 events/s: {}", paced_report.trim());
    println!("- latency to a consumer at 1000 events/s:");
    println!("  through res_scale (from event creation): {}", summary(&mut module_latency));
    println!("  plain lapin publisher (from publish):    {}", summary(&mut plain_latency));
    let added = |q: f64| (quantile(&module_latency, q).as_secs_f64() - quantile(&plain_latency, q).as_secs_f64()) * 1e3;
    println!("  added by res_scale: p50 {:+.1} ms, p99 {:+.1} ms", added(0.5), added(0.99));
    println!("- counters after the run:\n{amqp}");
}

/// The callback at the rates most applications see. Below 5 events/s (QUIET_AFTER in the
/// publisher) the publisher sleeps between events, so each send pays for waking it: a cost
/// that bursts and 1000 events/s never show. A consumer is bound (as in production) but the
/// events are not read: this measures only the callback and `stasis_app_send`.
fn callback_at_low_rates() {
    let pool = Pool::builder().nodes(1).with_consul().with_rabbitmq().start();
    let node = pool.node(0);
    pool.consul.as_ref().unwrap().put_kv("res_scale/apps/bench", "{}");
    wait::until("app bench and a broker", Duration::from_secs(10), Duration::from_millis(20), || {
        let ready = node.ari().get("/applications/bench").status == 200 && node.cli("scale show amqp").contains("State:         connected");
        ready.then_some(())
    });
    AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url()).bind_queue("bench", "res_scale.events", "stasis.app.bench.#");
    // Warm-up, not reported: the first events after the load grow the module's memory.
    test_events(node, "bench 1000");
    println!("## The callback at low event rates (1 node; paced sends, each on a freshly copied event)");
    for (per_second, n) in LOW_RATES {
        let report = test_events(node, &format!("bench {n} {per_second}"));
        println!("- at {per_second}/s: {}", report.trim().replace('\n', "\n  "));
    }
}

/// (events per second, events) of `callback_at_low_rates`: about 100 s at 2/s, then shorter.
const LOW_RATES: [(u32, u32); 4] = [(2, 200), (10, 300), (100, 1000), (1000, 5000)];

/// With `--pinned`: where Asterisk and the publishers run, and where the broker and the
/// consumer run.
const CLIENT_CPU: u32 = 0;
const BROKER_CPU: u32 = 1;

/// Restricts a process (`all_threads`: every thread it has) or one thread to one CPU.
fn pin(id: u32, cpu: u32, all_threads: bool) {
    let mut taskset = std::process::Command::new("taskset");
    if all_threads {
        taskset.arg("-a");
    }
    let out = taskset.args(["-c", "-p", &cpu.to_string(), &id.to_string()]).output().expect("run taskset");
    assert!(out.status.success(), "taskset -c -p {cpu} {id}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Bursts of each kind in the event benchmark, taken in turns.
const BURST_ROUNDS: usize = 2;

/// One burst: how long until the consumer had every message, and the CPU it cost meanwhile.
struct Burst {
    took: Duration,
    cpu: CpuSplit,
}

impl Burst {
    /// Several bursts as one: their times and CPU added up.
    fn total(bursts: &[Burst]) -> Burst {
        let mut total = Burst { took: Duration::ZERO, cpu: CpuSplit::default() };
        for b in bursts {
            total.took += b.took;
            total.cpu = total.cpu.plus(&b.cpu);
        }
        total
    }
}

/// Runs `publish` (a burst of `n` messages towards queue `bench`) and measures it until a
/// consumer of the queue has received them all: the rate is events delivered, so the broker's
/// work of handing them on counts too.
fn timed_burst(url: &str, consumer_cpu: Option<u32>, asterisk_pid: u32, broker_pid: u32, n: usize, publish: &mut dyn FnMut()) -> Burst {
    let mut before = None;
    let (last, ()) = while_consuming(
        url,
        consumer_cpu,
        move |probe, ready| {
            let mut last = None;
            let arrived = probe.consume_each("bench", n, Duration::from_secs(300), ready, |_| last = Some(Instant::now()));
            assert_eq!(arrived, n, "every event of the burst reaches the consumer");
            last.expect("a message arrived")
        },
        || {
            before = Some((CpuSplit::now(asterisk_pid, broker_pid), Instant::now()));
            publish();
        },
    );
    let (cpu_before, started) = before.expect("the burst started");
    Burst { took: last - started, cpu: CpuSplit::now(asterisk_pid, broker_pid).since(&cpu_before) }
}

/// CPU time used so far (or during a phase) by the programs sharing the machine in the event
/// benchmark. With two cores shared, a rate alone hides who spent them.
#[derive(Default)]
struct CpuSplit {
    /// res_scale's own threads in Asterisk: the publisher's runtime and lapin's I/O loop.
    module: Duration,
    /// Every other Asterisk thread, ended ones included.
    asterisk: Duration,
    broker: Duration,
    /// The benchmark process itself (the consumer, and the plain publisher in its bursts).
    bench: Duration,
}

impl CpuSplit {
    fn now(asterisk_pid: u32, broker_pid: u32) -> CpuSplit {
        let mut split = CpuSplit::default();
        for (name, cpu) in thread_cpu(asterisk_pid).into_values() {
            if name.starts_with("res_scale") || name.starts_with("lapin") {
                split.module += cpu;
            }
        }
        // From the process's total, which keeps the CPU of threads that have ended: the CLI
        // thread that makes a burst's events ends with its command.
        split.asterisk = process_cpu(asterisk_pid).saturating_sub(split.module);
        split.broker = process_cpu(broker_pid);
        split.bench = process_cpu(std::process::id());
        split
    }

    fn plus(&self, other: &CpuSplit) -> CpuSplit {
        CpuSplit { module: self.module + other.module, asterisk: self.asterisk + other.asterisk, broker: self.broker + other.broker, bench: self.bench + other.bench }
    }

    fn since(&self, before: &CpuSplit) -> CpuSplit {
        CpuSplit {
            module: self.module.saturating_sub(before.module),
            asterisk: self.asterisk.saturating_sub(before.asterisk),
            broker: self.broker.saturating_sub(before.broker),
            bench: self.bench.saturating_sub(before.bench),
        }
    }

    /// e.g. `5.6 / 3.1 / 28.0 / 0.1` (microseconds per event, in the fields' order).
    fn per_event(&self, n: usize) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        format!("{:>5.1} / {:>5.1} / {:>5.1} / {:>5.1}", us(self.module), us(self.asterisk), us(self.broker), us(self.bench))
    }
}

/// The body res_scale publishes for a `scale test events` event, as a template for the plain
/// publisher: cut from an event the module published, so that both send the same bytes (a
/// ratio of different messages would mean nothing) and the event's text lives in one place.
struct BenchBody {
    /// Up to `"seq":`.
    head: String,
    /// After the `sent_ns` value.
    tail: String,
}

impl BenchBody {
    fn from_module(url: &str, node: &Node) -> BenchBody {
        let (received, _) = while_consuming(url, None, |probe, ready| probe.consume("bench", 1, Duration::from_secs(10), ready), || test_events(node, "bench 1"));
        let body = &received.first().expect("the module's event reaches the consumer").0.body;
        let seq_at = body.find(r#""seq":"#).unwrap_or_else(|| panic!("no seq in {body}"));
        let sent_at = body.find(r#""sent_ns":"#).unwrap_or_else(|| panic!("no sent_ns in {body}")) + r#""sent_ns":"#.len();
        let tail_at = sent_at + body[sent_at..].find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
        BenchBody { head: body[..seq_at].to_string(), tail: body[tail_at..].to_string() }
    }

    /// The body of event `seq` made at `sent_ns` (ns since the epoch).
    fn body(&self, seq: usize, sent_ns: u128) -> Vec<u8> {
        format!(r#"{}"seq":{seq},"sent_ns":{sent_ns}{}"#, self.head, self.tail).into_bytes()
    }
}

/// Runs `publish` once `consume` (on its own thread, with its own probe, on `consumer_cpu` when
/// pinned) has a consumer registered, and returns what each returned. `consume` gets the
/// probe and the function to call once its consumer is registered.
fn while_consuming<R: Send + 'static, T>(
    url: &str,
    consumer_cpu: Option<u32>,
    consume: impl FnOnce(&AmqpProbe, Box<dyn FnOnce() + Send>) -> R + Send + 'static,
    publish: impl FnOnce() -> T,
) -> (R, T) {
    let url = url.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let consumer = std::thread::spawn(move || {
        if let Some(cpu) = consumer_cpu {
            // Before the probe starts its runtime, whose threads then inherit the CPU.
            let me = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
            let tid = me.file_name().and_then(|t| t.to_str()).and_then(|t| t.parse().ok()).expect("a thread id");
            pin(tid, cpu, false);
        }
        consume(
            &AmqpProbe::new(&url),
            Box::new(move || {
                // Fails only when nobody waits any more (the publishing side panicked).
                let _ = ready_tx.send(());
            }),
        )
    });
    if ready_rx.recv().is_err() {
        // The consumer's thread ended before its consumer was registered: its panic says why.
        match consumer.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(_) => panic!("the consumer ended before it was registered"),
        }
    }
    let published = publish();
    (consumer.join().unwrap_or_else(|e| std::panic::resume_unwind(e)), published)
}

/// Runs `publish` while a consumer takes `n` messages from queue `bench`; returns each one's
/// time from its `sent_ns` to its arrival, and what `publish` returned.
fn paced_latencies<T>(url: &str, n: usize, consumer_cpu: Option<u32>, publish: impl FnOnce() -> T) -> (Vec<Duration>, T) {
    let (received, published) = while_consuming(url, consumer_cpu, move |probe, ready| probe.consume("bench", n, Duration::from_secs(60), ready), publish);
    assert_eq!(received.len(), n, "every paced event reaches the consumer");
    let latencies = received.iter().filter_map(|(m, at)| at.duration_since(UNIX_EPOCH + Duration::from_nanos(m.json["sent_ns"].as_u64()?)).ok()).collect();
    (latencies, published)
}

const REGISTRATIONS_EXCHANGE: &str = "res_scale.registrations";
/// The registrar the benchmark's contacts come from (not a node's EID, so every node applies them).
const BENCH_ORIGIN: &str = "bench-registrar";

/// One line of `scale show registrations`, e.g. `Applied:`, without its label.
fn registrations_line(text: &str, label: &str) -> String {
    text.lines().find_map(|l| l.trim_start().strip_prefix(label)).unwrap_or_else(|| panic!("no '{label}' in:\n{text}")).trim().to_string()
}

/// `scale test events <args>` through the control socket, and its report. Not `node.cli`:
/// `docker exec` takes ~140 ms and a lot of CPU, inside the clock of a burst that lasts 2-3 s.
fn test_events(node: &Node, args: &str) -> String {
    let output = socket_cli(node, &format!("scale test events {args}"));
    // After the banner line (and the NUL that ends it) comes the command's output.
    let report = output.split_once('\n').map_or(output.as_str(), |(_, rest)| rest);
    report.trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string()
}

/// `scale show registrations` filtered to one AOR: the counters without a 10,000-line listing
/// (the module copies only that AOR's contacts to answer).
fn registrations_counters(node: &Node) -> String {
    socket_cli(node, "scale show registrations bench-aor-0")
}

/// The `Applied:` counter (contacts created or refreshed in PJSIP).
fn applied(text: &str) -> u64 {
    let line = registrations_line(text, "Applied:");
    line.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("unexpected Applied line: {line}"))
}

/// When the last contact was seen: between the start of the last poll that did not see it
/// (`after`) and the end of the first poll that did (`by`).
struct Seen {
    after: Instant,
    by: Instant,
    polls: usize,
}

/// Waits until `node` has applied all `n` benchmark contacts. The node applies messages one at
/// a time in queue order, so the cheap signal is the last contact published (`last`) showing in
/// `pjsip show aor` (polled every 10 ms; it does not touch the module's book); then the Applied
/// counter must say `n`, which proves that none was lost or refused on the way. Should the
/// order ever differ, the counter is polled until it gets there and that time is the result.
fn until_applied(node: &Node, last: usize, n: u64, started: Instant) -> Seen {
    until_contact_applied(node, &format!("bench-aor-{last}"), last, n, started)
}

/// [`until_applied`] where contact `last` belongs to AOR `aor`.
fn until_contact_applied(node: &Node, aor: &str, last: usize, n: u64, started: Instant) -> Seen {
    let deadline = started + Duration::from_secs(300);
    let uri = format!("phone-{last}@");
    let (mut after, mut polls, mut out_of_order) = (started, 0, false);
    loop {
        let asked = Instant::now();
        let shown = socket_cli(node, &format!("pjsip show aor {aor}"));
        polls += 1;
        if shown.contains(&uri) {
            let visible = Instant::now();
            let text = registrations_counters(node);
            if applied(&text) >= n {
                return Seen { after, by: if out_of_order { Instant::now() } else { visible }, polls };
            }
            out_of_order = true;
        }
        after = asked;
        assert!(Instant::now() < deadline, "{} did not apply {n} contacts within 300 s:\n{}", node.name, registrations_counters(node));
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Resets the statistics (max depth) of the contact observers' serializer before a phase.
fn reset_contact_taskprocessor(node: &Node) {
    let text = socket_cli(node, "core show taskprocessors like sorcery/contact");
    for name in text.lines().filter_map(|l| l.split_whitespace().next()).filter(|w| w.starts_with("sorcery/contact-")) {
        socket_cli(node, &format!("core reset taskprocessor {name}"));
    }
}

/// Waits (up to 60 s) until no Asterisk taskprocessor has work queued: the contact observers
/// (res_pjsip's and res_scale's own, on the `sorcery/contact` serializer) run after the contacts
/// are stored, and while any queue is over its high-water mark res_pjsip ignores new SIP
/// requests. Returns when that was seen (None: not within 60 s) and the `sorcery/contact`
/// queue's maximum depth since [`reset_contact_taskprocessor`].
fn until_taskprocessors_idle(node: &Node) -> (Option<Instant>, u64) {
    let mut max_depth = 0;
    let idle = wait::try_until(Duration::from_secs(60), Duration::from_millis(10), || {
        let text = socket_cli(node, "core show taskprocessors");
        let mut queued = 0;
        for fields in text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).filter(|f| f.len() >= 6) {
            let number = |i: usize| fields[i].parse::<u64>().ok();
            let (Some(in_queue), Some(depth)) = (number(2), number(3)) else { continue };
            queued += in_queue;
            if fields[0].starts_with("sorcery/contact") {
                max_depth = depth;
            }
        }
        (queued == 0).then(Instant::now)
    });
    (idle, max_depth)
}

fn wait_registrations_connected(node: &Node) {
    wait::until(&format!("registrations connected on {}", node.name), Duration::from_secs(15), Duration::from_millis(50), || {
        registrations_counters(node).contains("State:       connected").then_some(())
    });
}

/// The `registrations` line of `scale show status`.
fn status_registrations(node: &Node) -> String {
    let text = node.cli("scale show status");
    text.lines().find(|l| l.trim_start().starts_with("registrations ")).unwrap_or_else(|| panic!("no registrations line in:\n{text}")).trim().to_string()
}

/// The contact of benchmark phone `i`, as a registrar announces it: AOR `bench-aor-<i>`, one
/// distinct URI each (no qualify: nothing is ever sent to it).
fn bench_update(i: usize, expires: u64) -> serde_json::Value {
    serde_json::json!({
        "aor": format!("bench-aor-{i}"),
        "contact": {"uri": format!("sip:phone-{i}@127.0.0.1:{}", 10_000 + i % 50_000), "expires": expires, "path": "",
                    "user_agent": "bench-phone", "via_addr": "127.0.0.1", "via_port": 5060, "call_id": format!("bench-{i}")},
        "origin": BENCH_ORIGIN,
        "seq": 1,
    })
}

/// CPU time (user + system) of every thread of a process, by thread id, with its name.
fn thread_cpu(pid: u32) -> BTreeMap<u32, (String, Duration)> {
    let mut threads = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        if let Some((tid, name, cpu)) = stat_cpu(&task.path().join("stat")) {
            threads.insert(tid, (name, cpu));
        }
    }
    threads
}

/// CPU time (user + system) of a whole process, all its threads together.
fn process_cpu(pid: u32) -> Duration {
    stat_cpu(std::path::Path::new(&format!("/proc/{pid}/stat"))).map_or(Duration::ZERO, |(_, _, cpu)| cpu)
}

/// Id, name and CPU time from a `stat` file of /proc.
fn stat_cpu(path: &std::path::Path) -> Option<(u32, String, Duration)> {
    let tick = Duration::from_secs(1) / 100; // USER_HZ
    let stat = std::fs::read_to_string(path).ok()?;
    // "tid (name) state ppid ...": utime and stime are fields 14 and 15.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u32>().ok()).unwrap_or(0);
    Some((stat[..open].trim().parse().ok()?, stat[open + 1..close].to_string(), tick * (ticks(11) + ticks(12))))
}

/// Busy and total CPU time of the whole machine so far (`/proc/stat`), in USER_HZ ticks.
fn machine_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total = ticks.iter().sum();
    let idle = ticks.get(3).unwrap_or(&0) + ticks.get(4).unwrap_or(&0);
    (total - idle, total)
}

/// Where the CPU went between two points: the busiest threads of one Asterisk process, and
/// how busy the whole machine was.
struct CpuWatch {
    pid: u32,
    threads: BTreeMap<u32, (String, Duration)>,
    machine: (u64, u64),
}

impl CpuWatch {
    fn start(pid: u32) -> CpuWatch {
        CpuWatch { pid, threads: thread_cpu(pid), machine: machine_cpu() }
    }

    /// e.g. `machine 93% busy (all cores); Asterisk 1.21 s of CPU: res_scale-reg 0.61 s, ...`
    fn report(&self) -> String {
        let (busy, total) = machine_cpu();
        let machine = (busy - self.machine.0) as f64 / (total - self.machine.1).max(1) as f64;
        let mut by_name: BTreeMap<String, Duration> = BTreeMap::new();
        for (tid, (name, cpu)) in thread_cpu(self.pid) {
            let before = self.threads.get(&tid).map(|t| t.1).unwrap_or_default();
            *by_name.entry(name).or_default() += cpu.saturating_sub(before);
        }
        let asterisk: Duration = by_name.values().sum();
        let mut top: Vec<(String, Duration)> = by_name.into_iter().filter(|(_, cpu)| !cpu.is_zero()).collect();
        top.sort_by_key(|t| std::cmp::Reverse(t.1));
        let top: Vec<String> = top.iter().take(6).map(|(name, cpu)| format!("{name} {:.2} s", cpu.as_secs_f64())).collect();
        format!("machine {:.0}% busy (all cores); Asterisk {:.2} s of CPU: {}", machine * 100.0, asterisk.as_secs_f64(), top.join(", "))
    }
}

/// One measured phase: `n` contacts applied on a node.
struct Phase {
    started: Instant,
    seen: Seen,
    /// How long the publisher took to hand its messages to the broker, and how many there were.
    publish: Option<(Duration, usize)>,
    /// Where the CPU went meanwhile.
    cpu: String,
    /// When every taskprocessor queue was empty again, and the contact observers' deepest queue.
    idle: (Option<Instant>, u64),
}

impl Phase {
    /// The time until all were seen applied: by the end of the poll that saw it (the figure,
    /// conservative), and after the start of the poll before (the least it can be).
    fn elapsed(&self) -> (Duration, Duration) {
        (self.seen.by - self.started, self.seen.after - self.started)
    }

    fn line(&self, n: usize) -> String {
        let (at_most, at_least) = self.elapsed();
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        let publish = match self.publish {
            Some((p, messages)) => format!("; publishing the {messages} messages took {:.3} s ({:.0} msg/s)", p.as_secs_f64(), messages as f64 / p.as_secs_f64()),
            None => String::new(),
        };
        let idle = match self.idle.0 {
            Some(at) => format!("at {:.3} s", (at - self.started).as_secs_f64()),
            None => "not within 60 s".into(),
        };
        format!(
            "{:.0} contacts/s ({n} contacts in {:.3} s; the poll before, at {:.3} s, had not seen them all: at most {:.0}/s; {} polls{publish}); \
             taskprocessor queues empty again {idle} (sorcery/contact queue max depth {})",
            rate(at_most),
            at_most.as_secs_f64(),
            at_least.as_secs_f64(),
            rate(at_least),
            self.seen.polls,
            self.idle.1
        )
    }
}

/// Publishes `bodies` (as fast as the broker takes them, from another thread) and times from
/// the first publish until `node` has applied all `n` contacts.
fn publish_and_wait(probe: &AmqpProbe, node: &Node, keys: &[String], bodies: &[Vec<u8>], n: usize) -> Phase {
    reset_contact_taskprocessor(node);
    let watch = CpuWatch::start(node.pid());
    std::thread::scope(|s| {
        let started = Instant::now();
        let publisher = s.spawn(|| probe.publish_burst(REGISTRATIONS_EXCHANGE, |i| keys[i].clone(), bodies, &[], false));
        let seen = until_applied(node, n - 1, n as u64, started);
        let cpu = watch.report();
        let idle = until_taskprocessors_idle(node);
        let publish = publisher.join().unwrap();
        Phase { started, seen, publish: Some((publish, bodies.len())), cpu, idle }
    })
}

/// Checks that `node` shows all `n` benchmark contacts in PJSIP and in its book, and returns the
/// counters for the report.
fn check_all_visible(node: &Node, n: usize) -> String {
    let t = Instant::now();
    let in_pjsip = node.pjsip_contacts();
    let listing = t.elapsed();
    let status = status_registrations(node);
    assert!(in_pjsip >= n, "{}: only {in_pjsip} contacts in `pjsip show contacts`, expected {n}", node.name);
    assert!(status.contains(&format!("remote={n} ")), "{}: {status}", node.name);
    let text = node.cli("scale show registrations bench-aor-0");
    let counters = ["Applied:", "Ignored:", "Rejected:", "Published:", "Sync/loss:"].map(|l| format!("{l} {}", registrations_line(&text, l)));
    format!("`pjsip show contacts`: {in_pjsip} objects (listed in {:.1} s); {}", listing.as_secs_f64(), counters.join("; "))
}

/// Warnings and errors a node logged after byte `from` of its log.
fn log_problems(node: &Node, from: usize) -> Vec<String> {
    let log = node.log();
    log.get(from..).unwrap_or_default().lines().filter(|l| l.contains("WARNING[") || l.contains("ERROR[")).map(str::to_string).collect()
}

/// The registrations apply rate and SYNC convergence. Two nodes with `n` extra AORs, the module
/// not loaded at boot, so that only the node under measurement consumes:
/// 1. node1 loads the module; `n` single ANNOUNCE messages (one contact each, distinct AORs, from
///    one registrar) are published in a burst; the clock runs from the first publish until
///    node1 has applied all `n` ([`until_applied`]: the last one visible in PJSIP, and the
///    Applied counter at `n`);
/// 2. node1 unloads the module (which removes what it applied) and loads it again (a fresh book);
///    the same `n` contacts are published as batches of `batch`; same clock;
/// 3. node2, which holds none, loads the module: it asks for a SYNC and node1 answers with
///    everything it knows; the clock runs from `module load` until node2 has applied all `n`.
///
/// After each phase: how long until every taskprocessor queue is empty again, and a full check
/// (`pjsip show contacts`, `scale show status`, the counters).
fn registrations_apply(n: usize, batch: usize) {
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let pool = Pool::builder().nodes(2).with_rabbitmq().without_module_loaded().extra_aors(n).start();
    let (node1, node2) = (pool.node(0), pool.node(1));
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    let expires = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let updates: Vec<serde_json::Value> = (0..n).map(|i| bench_update(i, expires)).collect();
    let log_from = [node1.log().len(), node2.log().len()];

    node1.cli("module load res_scale.so");
    wait_registrations_connected(node1);

    // 1. Single messages.
    let singles: Vec<Vec<u8>> = updates
        .iter()
        .map(|u| {
            let mut message = u.clone();
            message["type"] = "ANNOUNCE".into();
            message.to_string().into_bytes()
        })
        .collect();
    let keys: Vec<String> = (0..n).map(|i| format!("registration.bench-aor-{i}")).collect();
    let single = publish_and_wait(&probe, node1, &keys, &singles, n);
    let single_check = check_all_visible(node1, n);
    // What one poll costs with every contact in place: the resolution of the figures.
    let mean_of_10 = |command: &str| {
        let t = Instant::now();
        (0..10).for_each(|_| drop(socket_cli(node1, command)));
        t.elapsed().as_secs_f64() * 1e3 / 10.0
    };
    let (aor_poll, counter_poll) = (mean_of_10(&format!("pjsip show aor bench-aor-{}", n - 1)), mean_of_10("scale show registrations bench-aor-0"));

    // A fresh book on node1: unloading removes the contacts it applied.
    let t = Instant::now();
    node1.cli("module unload res_scale.so");
    let unload_time = t.elapsed();
    let left = node1.pjsip_contacts();
    assert_eq!(left, 0, "node1 still holds {left} contacts after unloading the module");
    node1.cli("module load res_scale.so");
    wait_registrations_connected(node1);

    // 2. The same contacts in batches.
    let batches: Vec<Vec<u8>> = updates.chunks(batch).map(|chunk| serde_json::json!({"type": "ANNOUNCE", "origin": BENCH_ORIGIN, "contacts": chunk}).to_string().into_bytes()).collect();
    let largest = batches.iter().map(Vec::len).max().unwrap();
    assert!(largest <= 256 * 1024, "a batch of {batch} is {largest} bytes, over the 256 KiB limit");
    let batch_keys = vec!["registration.batch".to_string(); batches.len()];
    let batched = publish_and_wait(&probe, node1, &batch_keys, &batches, n);
    let batched_check = check_all_visible(node1, n);

    // 3. SYNC of a joining node that holds none.
    assert_eq!(node2.pjsip_contacts(), 0, "node2 should start with no contact");
    reset_contact_taskprocessor(node2);
    let (watch, answering) = (CpuWatch::start(node2.pid()), CpuWatch::start(node1.pid()));
    let started = Instant::now();
    node2.cli("module load res_scale.so");
    let seen = until_applied(node2, n - 1, n as u64, started);
    let cpu = format!("{} (node2); node1, answering: {}", watch.report(), answering.report());
    let sync = Phase { started, seen, publish: None, cpu, idle: until_taskprocessors_idle(node2) };
    let sync_check = check_all_visible(node2, n);

    println!("## Registrations apply rate (2 nodes, {n} AORs each, {n} contacts from origin {BENCH_ORIGIN}; load average before: {load_before})");
    println!(
        "- completion seen by polling `pjsip show aor bench-aor-{}` (the last contact published) every 10 ms through the control socket: {aor_poll:.1} ms a poll; then `scale show registrations bench-aor-0` confirms Applied = {n} ({counter_poll:.1} ms)",
        n - 1
    );
    println!("- 1. single ANNOUNCE, one contact per message, node1: {}", single.line(n));
    println!("     CPU meanwhile: {}", single.cpu);
    println!("     after: {single_check}");
    println!("     (`module unload` then removed the {n} contacts in {:.2} s)", unload_time.as_secs_f64());
    println!("- 2. batched ANNOUNCE, {batch} contacts per message ({} messages, largest {} KiB), node1: {}", batches.len(), largest / 1024, batched.line(n));
    println!("     CPU meanwhile: {}", batched.cpu);
    println!("     after: {batched_check}");
    println!("- 3. SYNC of node2 joining with none, from `module load`: {}", sync.line(n));
    println!("     CPU meanwhile: {}", sync.cpu);
    println!("     after: {sync_check}");
    for (node, from) in [node1, node2].into_iter().zip(log_from) {
        let problems = log_problems(node, from);
        println!("- {} log during the benchmark: {} warning/error line(s)", node.name, problems.len());
        for line in problems.iter().take(10) {
            println!("    {line}");
        }
    }
}

//! `make bench`: measurements against a real pool. Each benchmark prints its figures with the
//! command that made them, ready for BENCHMARKS.md.
//!
//! Benchmarks: `apps` (Consul KV write -> Stasis application registered on every node),
//! `events` (Stasis events through the module to RabbitMQ, against a plain lapin publisher).

use std::time::{Duration, Instant, UNIX_EPOCH};

use res_scale_tests::amqp::AmqpProbe;
use res_scale_tests::{wait, Pool};

fn main() {
    let which: Vec<String> = std::env::args().skip(1).collect();
    let all = which.is_empty();
    if all || which.iter().any(|w| w == "apps") {
        app_propagation(100);
    }
    if all || which.iter().any(|w| w == "events") {
        event_forwarding(100_000, 5_000);
    }
}

/// Median, p99 and max of a sample, in milliseconds.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!("median {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})", ms(at(0.5)), ms(at(0.99)), ms(*samples.last().unwrap()), samples.len())
}

/// Time from a KV write (or delete) until every node has (or no longer has) the application,
/// seen through each node's ARI (`GET /applications/<name>`), polled every 2 ms.
fn app_propagation(rounds: usize) {
    let pool = Pool::builder().nodes(2).with_consul().start();
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
    println!("## App propagation (Consul KV -> Stasis app on every node), 2 nodes, {rounds} adds and {rounds} deletes");
    println!("- add:    {}", summary(&mut adds));
    println!("- delete: {}", summary(&mut deletes));
}

/// Waits until `queue` holds `n` messages; returns when that was seen.
fn until_queued(probe: &AmqpProbe, queue: &str, n: usize) -> Instant {
    wait::until(&format!("{n} messages in {queue}"), Duration::from_secs(300), Duration::from_millis(10), || {
        (probe.message_count(queue) as usize >= n).then(Instant::now)
    })
}

/// Events through the real callback path (`scale test events`, which hands each event to
/// res_stasis like any other) to a queue bound on `stasis.app.bench.#`, compared in the same
/// run with a plain lapin publisher sending the same number of same-sized bodies; then the
/// latency from event creation to a consumer at 1,000 events/s.
fn event_forwarding(burst: usize, paced: usize) {
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

    let started = Instant::now();
    let report = node.cli(&format!("scale test events bench {burst}"));
    let module_time = until_queued(&probe, "bench", burst) - started;
    probe.purge("bench");

    // The same with confirms off (fire-and-forget), after a reload.
    let file = node.dir.join("etc/res_scale.conf");
    let confirmed_conf = std::fs::read_to_string(&file).unwrap();
    node.write_config("res_scale.conf", &confirmed_conf.replace("queue_capacity = 200000", "queue_capacity = 200000\nconfirms = no"));
    node.cli("module reload res_scale.so");
    wait::until("the publisher back", Duration::from_secs(10), Duration::from_millis(20), || {
        let amqp = node.cli("scale show amqp");
        (amqp.contains("State:         connected") && amqp.contains("confirms: no")).then_some(())
    });
    let started = Instant::now();
    node.cli(&format!("scale test events bench {burst}"));
    let unconfirmed_time = until_queued(&probe, "bench", burst) - started;
    probe.purge("bench");
    node.write_config("res_scale.conf", &confirmed_conf);
    node.cli("module reload res_scale.so");

    let key = format!("stasis.app.bench.{}", node.eid);
    let bodies: Vec<Vec<u8>> = (0..burst)
        .map(|seq| format!(r#"{{"application":"bench","type":"BenchEvent","seq":{seq},"sent_ns":1795345201000000000,"asterisk_id":"{}"}}"#, node.eid).into_bytes())
        .collect();
    let started = Instant::now();
    probe.publish_burst("res_scale.events", |_| key.clone(), &bodies, &[]);
    let plain_time = until_queued(&probe, "bench", burst) - started;
    probe.purge("bench");
    // The same again with the three headers res_scale adds, for a like-for-like figure.
    let headers = [("application", "bench"), ("asterisk_id", node.eid.as_str()), ("event_type", "BenchEvent")];
    let started = Instant::now();
    probe.publish_burst("res_scale.events", |_| key.clone(), &bodies, &headers);
    let headers_time = until_queued(&probe, "bench", burst) - started;
    probe.purge("bench");

    let consumer = std::thread::spawn(move || AmqpProbe::new(&url).consume("bench", paced, Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(500));
    let paced_report = node.cli(&format!("scale test events bench {paced} 1000"));
    let received = consumer.join().unwrap();
    let mut latencies: Vec<Duration> = received
        .iter()
        .filter_map(|(m, at)| {
            let sent = UNIX_EPOCH + Duration::from_nanos(m.json["sent_ns"].as_u64()?);
            at.duration_since(sent).ok()
        })
        .collect();
    let amqp = node.cli("scale show amqp");

    let rate = |d: Duration| burst as f64 / d.as_secs_f64();
    println!("## Event forwarding (1 node, {burst} events burst, queue_capacity 200000)");
    println!("- through res_scale (callback -> queue -> publisher -> broker queue): {:.0} events/s ({:.2} s)", rate(module_time), module_time.as_secs_f64());
    println!("- the same with confirms = no:                                        {:.0} events/s ({:.2} s)", rate(unconfirmed_time), unconfirmed_time.as_secs_f64());
    println!("- plain lapin publisher, same count and size, same broker:           {:.0} events/s ({:.2} s)", rate(plain_time), plain_time.as_secs_f64());
    println!("- plain lapin publisher with res_scale's three headers:            {:.0} events/s ({:.2} s)", rate(headers_time), headers_time.as_secs_f64());
    let ratio = |d: Duration| format!("{:.2} (with the same headers: {:.2})", rate(d) / rate(plain_time), rate(d) / rate(headers_time));
    println!("- ratio res_scale / plain lapin, confirms on: {}; confirms off: {}", ratio(module_time), ratio(unconfirmed_time));
    println!("- burst injection: {}", report.trim());
    println!("- at 1000 events/s: {}", paced_report.trim());
    println!("- latency event creation -> consumer at 1000 events/s: {} ({} of {paced} received)", summary(&mut latencies), received.len());
    println!("- counters after the run:\n{amqp}");
}

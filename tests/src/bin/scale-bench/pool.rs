//! `pool`: a pool of many nodes on this machine (10 by default: `pool --nodes N`), with one
//! RabbitMQ and one Consul, as `make scale` runs it. It reports:
//! - the time to start the pool and each node's memory at rest;
//! - what the idle pool costs Consul (its CPU over 30 s of TTL checks and blocking watches);
//! - application propagation: a Consul KV write until every node's ARI lists the app;
//! - registration propagation: an ANNOUNCE (then a WITHDRAW) of a phone's contact until every
//!   node has applied it, seen from outside through the device state every node then publishes
//!   (the phone's endpoint turns reachable, or unavailable, on each node): an upper bound on the
//!   time to apply, since it includes the node's own state publication;
//! - events of many nodes into one broker: 1, 2, 5 and all nodes each forwarding a burst of
//!   Stasis events at once (`scale test events`, the real callback path) to one consumer: the
//!   rate delivered and the broker's CPU per event, to see where the broker, not the modules,
//!   sets the pace.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use res_scale_tests::amqp::AmqpProbe;
use res_scale_tests::{wait, Pool};

use super::{app_rounds, process_cpu, summary, test_events, REGISTRATIONS_EXCHANGE};

/// The phone whose contact goes back and forth: an endpoint of every node (so its state is
/// published) that registers nowhere.
const PHONE: &str = "dave";
const STATE_EXCHANGE: &str = "res_scale.state";

pub fn many_nodes(nodes: usize, app_rounds_n: usize, registration_rounds: usize) {
    let started = Instant::now();
    // Room for a whole burst in each node's event queue: this measures rates, not the drop policy.
    let conf = "[consul]\nurl = {consul_url}\ncheck_ttl = 3s\n[amqp]\nurl = {amqp_url}\nqueue_capacity = 200000\n";
    let pool = Pool::builder().nodes(nodes).with_consul().with_rabbitmq().res_scale_conf(conf).start();
    let boot = started.elapsed();
    for node in &pool.nodes {
        node.wait_connected("registrations");
    }
    let ready = started.elapsed();
    println!("## A pool of {nodes} nodes on one machine (Consul and RabbitMQ one each)");
    println!("- started in {:.1} s (every Asterisk fully booted with res_scale loaded); all registrations connected at {:.1} s", boot.as_secs_f64(), ready.as_secs_f64());

    // At rest: let the start-up settle, then 30 s of nothing but TTL checks and watches.
    std::thread::sleep(Duration::from_secs(5));
    let consul_pid = pool.consul.as_ref().and_then(|c| c.pid()).expect("Consul's pid");
    let (consul_before, asterisk_before): (Duration, Vec<Duration>) = (process_cpu(consul_pid), pool.nodes.iter().map(|n| process_cpu(n.pid())).collect());
    std::thread::sleep(Duration::from_secs(30));
    let consul_cpu = process_cpu(consul_pid) - consul_before;
    let idle: Vec<f64> = pool.nodes.iter().zip(&asterisk_before).map(|(n, before)| (process_cpu(n.pid()) - *before).as_secs_f64() / 30.0 * 100.0).collect();
    let rss: Vec<f64> = pool.nodes.iter().map(|n| n.rss_mib()).collect();
    println!("- memory at rest (RSS): {} MiB (mean {:.0} MiB)", rss.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", "), rss.iter().sum::<f64>() / rss.len() as f64);
    println!(
        "- idle for 30 s: Consul agent {:.2}% of one core ({:.2} s of CPU); each Asterisk {:.2}% on average (max {:.2}%)",
        consul_cpu.as_secs_f64() / 30.0 * 100.0,
        consul_cpu.as_secs_f64(),
        idle.iter().sum::<f64>() / idle.len() as f64,
        idle.iter().cloned().fold(0.0, f64::max)
    );

    let (mut adds, mut deletes) = app_rounds(&pool, app_rounds_n);
    println!("- app propagation to all {nodes} nodes, {app_rounds_n} apps: add {}; delete {}", summary(&mut adds), summary(&mut deletes));

    let (mut announced, mut withdrawn) = registration_rounds_on(&pool, registration_rounds);
    println!(
        "- registration change seen applied on all {nodes} nodes (through their device state), {registration_rounds} rounds: ANNOUNCE {}; WITHDRAW {}",
        summary(&mut announced),
        summary(&mut withdrawn)
    );

    events_into_one_broker(&pool, EVENTS_PER_NODE);
}

/// Events each forwarding node injects in one burst.
const EVENTS_PER_NODE: usize = 10_000;

/// 1, 2, 5, ... up to every node forward a burst of `per_node` events at the same moment; one
/// consumer takes them all off one queue.
fn events_into_one_broker(pool: &Pool, per_node: usize) {
    let mq = pool.rabbitmq.as_ref().unwrap();
    let broker_pid = mq.vm_pid().expect("the broker's PID file");
    pool.consul.as_ref().unwrap().put_kv("res_scale/apps/bench", "{}");
    for node in &pool.nodes {
        wait::until(&format!("app bench on {}", node.name), Duration::from_secs(10), Duration::from_millis(20), || (node.ari().get("/applications/bench").status == 200).then_some(()));
    }
    let consumer = AmqpProbe::new(&mq.url());
    consumer.bind_queue("scale-pool-events", "res_scale.events", "stasis.app.bench.#");
    println!("- events into one broker ({per_node} events from each forwarding node at once, one consumer):");
    println!("  | forwarding nodes | events | until all consumed | events/s | broker CPU µs/event | broker CPU (one core = 100%) |");
    println!("  |---:|---:|---:|---:|---:|---:|");
    let mut counts: Vec<usize> = [1, 2, 5].into_iter().filter(|&k| k < pool.nodes.len()).collect();
    counts.push(pool.nodes.len());
    for k in counts {
        let total = k * per_node;
        let (tx, rx) = std::sync::mpsc::channel();
        let (took, broker) = std::thread::scope(|s| {
            let taking = s.spawn(|| {
                let mut last = None;
                let arrived = consumer.consume_each("scale-pool-events", total, Duration::from_secs(300), || tx.send(()).unwrap(), |_| last = Some(Instant::now()));
                assert_eq!(arrived, total, "every event of the burst reaches the consumer");
                last.expect("an event arrived")
            });
            rx.recv().expect("the consumer is ready");
            let (broker_before, started) = (process_cpu(broker_pid), Instant::now());
            let injecting: Vec<_> = pool.nodes[..k].iter().map(|node| s.spawn(move || test_events(node, &format!("bench {per_node}")))).collect();
            injecting.into_iter().for_each(|i| drop(i.join().unwrap()));
            let last = taking.join().unwrap();
            (last - started, process_cpu(broker_pid) - broker_before)
        });
        println!(
            "  | {k} | {total} | {:.2} s | {:.0} | {:.1} | {:.0}% |",
            took.as_secs_f64(),
            total as f64 / took.as_secs_f64(),
            broker.as_secs_f64() * 1e6 / total as f64,
            broker.as_secs_f64() / took.as_secs_f64() * 100.0
        );
    }
}

/// Announces and withdraws [`PHONE`]'s contact `rounds` times; each time, how long until every
/// node published the phone's new device state.
fn registration_rounds_on(pool: &Pool, rounds: usize) -> (Vec<Duration>, Vec<Duration>) {
    let url = pool.rabbitmq.as_ref().unwrap().url();
    let (watcher, publisher) = (AmqpProbe::new(&url), AmqpProbe::new(&url));
    let queue = "scale-pool-states";
    watcher.bind_queue(queue, STATE_EXCHANGE, &format!("device.PJSIP/{PHONE}"));
    let nodes: BTreeSet<String> = pool.nodes.iter().map(|n| n.eid.clone()).collect();
    let expires = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let (mut announced, mut withdrawn) = (Vec::new(), Vec::new());
    for round in 0..rounds * 2 {
        let seq = round + 1;
        let announce = round % 2 == 0;
        let expected = if announce { "NOT_INUSE" } else { "UNAVAILABLE" };
        let contact = serde_json::json!({"uri": format!("sip:{PHONE}@10.0.0.9:5060"), "expires": expires, "user_agent": "scale-bench"});
        let body = if announce {
            serde_json::json!({"type": "ANNOUNCE", "aor": PHONE, "contact": contact, "origin": "scale-bench", "seq": seq})
        } else {
            serde_json::json!({"type": "WITHDRAW", "aor": PHONE, "contact": {"uri": contact["uri"]}, "origin": "scale-bench", "seq": seq})
        };
        // What earlier rounds left (repeats of a state) must not count for this one.
        watcher.drain(queue, 0, Duration::ZERO);
        let (tx, rx) = std::sync::mpsc::channel();
        let took = std::thread::scope(|s| {
            let consumer = s.spawn(|| {
                let mut seen = BTreeSet::new();
                let mut last = None;
                watcher.consume_while(
                    queue,
                    Duration::from_secs(10),
                    || tx.send(()).unwrap(),
                    |delivery| {
                        let json: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap_or_default();
                        if json["state"] == expected && json["origin"].as_str().is_some_and(|o| nodes.contains(o)) && seen.insert(json["origin"].as_str().unwrap_or_default().to_string()) {
                            last = Some(Instant::now());
                        }
                        seen.len() < nodes.len()
                    },
                );
                (seen.len(), last)
            });
            rx.recv().expect("the consumer is ready");
            let sent = Instant::now();
            publisher.publish(REGISTRATIONS_EXCHANGE, &format!("registration.{PHONE}"), body.to_string().as_bytes());
            let (count, last) = consumer.join().unwrap();
            assert_eq!(count, nodes.len(), "round {round}: only {count} of {} nodes published {expected} for PJSIP/{PHONE}", nodes.len());
            last.expect("a last state") - sent
        });
        if announce {
            announced.push(took);
        } else {
            withdrawn.push(took);
        }
    }
    (announced, withdrawn)
}

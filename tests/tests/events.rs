//! Stasis events to RabbitMQ, end to end: real calls in real Asterisk 22 nodes, a real Consul
//! naming the application, a real RabbitMQ, and a consumer bound like an application would be.

use std::time::{Duration, Instant};

use res_scale_tests::amqp::{AmqpProbe, Received};
use res_scale_tests::{wait, Node, Pool};

const EXCHANGE: &str = "res_scale.events";

/// Puts `app` in Consul and waits until every node runs it.
fn create_app(pool: &Pool, app: &str) {
    pool.consul.as_ref().unwrap().put_kv(&format!("res_scale/apps/{app}"), "{}");
    for node in &pool.nodes {
        wait::until(&format!("{app} on {}", node.name), Duration::from_secs(5), Duration::from_millis(20), || (node.ari().get(&format!("/applications/{app}")).status == 200).then_some(()));
    }
}

fn wait_connected(node: &Node) {
    wait::until("amqp connected", Duration::from_secs(10), Duration::from_millis(50), || node.cli("scale show amqp").contains("State:         connected").then_some(()));
}

/// Runs application `conf` on every node of `pool`, waits until each one's publisher is
/// connected, and binds a durable `queue` on `binding_key`, as an ARI application's consumer
/// would be.
fn conf_with_consumer(pool: &Pool, queue: &str, binding_key: &str) -> AmqpProbe {
    create_app(pool, "conf");
    pool.nodes.iter().for_each(wait_connected);
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    // The probe does not declare the exchange: the module must have done it.
    probe.bind_queue_to_existing(queue, EXCHANGE, binding_key);
    probe
}

/// Originates a Local channel straight into Stasis `app` and returns its id.
fn call_into(node: &Node, app: &str) -> String {
    timed_call_into(node, app).0
}

/// `call_into`, with how long ARI took to answer: the originate runs our callback (StasisStart)
/// on the way.
fn timed_call_into(node: &Node, app: &str) -> (String, Duration) {
    let reply = node.ari().post(&format!("/channels?endpoint=Local/100@from-sip&app={app}"));
    assert_eq!(reply.status, 200, "originate: {}", reply.body);
    (reply.json()["id"].as_str().unwrap().to_string(), reply.elapsed)
}

/// `scale test events <app> <count> <per_second>`: events of type BenchEvent, numbered by
/// `seq` from 0, handed to our callback through res_stasis on the CLI thread. Returns how
/// many of the sends slept (the thread gave up the CPU on its own: it waited for a lock or
/// blocked), which a callback that never waits does not do.
fn inject(node: &Node, app: &str, count: usize, per_second: u32) -> usize {
    let out = node.cli(&format!("scale test events {app} {count} {per_second}"));
    assert!(out.contains(&format!("sent {count} events to {app}")), "{out}");
    let slept = out.split(" slept").next().and_then(|s| s.rsplit(' ').next()).and_then(|n| n.parse().ok());
    slept.unwrap_or_else(|| panic!("no count of sends that slept in: {out}"))
}

/// The `seq` of the BenchEvents received, each once, in the order they first arrived (an
/// event sent again after a broken connection may arrive twice: delivery is at least once).
fn first_seqs(messages: &[Received]) -> Vec<u64> {
    let mut seen = std::collections::BTreeSet::new();
    messages.iter().filter(|m| m.json["type"] == "BenchEvent").filter_map(|m| m.json["seq"].as_u64()).filter(|seq| seen.insert(*seq)).collect()
}

fn hang_up(node: &Node, channel: &str) {
    let reply = node.ari().delete(&format!("/channels/{channel}"));
    assert!(matches!(reply.status, 204 | 404), "hangup: {}", reply.body);
}

/// The event types of one channel's events, in arrival order.
fn types_of(messages: &[Received], channel: &str) -> Vec<String> {
    messages.iter().filter(|m| m.json["channel"]["id"] == channel).map(|m| m.json["type"].as_str().unwrap().to_string()).collect()
}

fn has_start_then_end(types: &[String]) -> bool {
    let start = types.iter().position(|t| t == "StasisStart");
    let end = types.iter().position(|t| t == "StasisEnd");
    matches!((start, end), (Some(s), Some(e)) if s < e)
}

/// One channel's events in the order Asterisk made them: StasisStart before StasisEnd, each
/// once, ChannelDestroyed the last, and the events' own timestamps never going back.
fn assert_in_order(messages: &[Received], channel: &str, who: &str) {
    let events: Vec<&Received> = messages.iter().filter(|m| m.json["channel"]["id"] == channel).collect();
    let types = types_of(messages, channel);
    assert!(has_start_then_end(&types), "{who}: {types:?}");
    for once in ["StasisStart", "StasisEnd", "ChannelDestroyed"] {
        assert_eq!(types.iter().filter(|t| *t == once).count(), 1, "{who}: {types:?}");
    }
    assert_eq!(types.last().map(String::as_str), Some("ChannelDestroyed"), "{who}: {types:?}");
    let stamps: Vec<&str> = events.iter().map(|m| m.json["timestamp"].as_str().unwrap_or("")).collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{who}: timestamps out of order: {:?}", types.iter().zip(&stamps).collect::<Vec<_>>());
}

fn ended(messages: &[Received], channels: &[String]) -> bool {
    channels.iter().all(|c| types_of(messages, c).iter().any(|t| t == "StasisEnd"))
}

#[test]
fn call_events_reach_a_consumer_in_order_with_application_and_node_eid() {
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    let probe = conf_with_consumer(&pool, "test-conf", "stasis.app.conf.#");

    let mut calls = Vec::new();
    for node in &pool.nodes {
        let channel = call_into(node, "conf");
        std::thread::sleep(Duration::from_millis(300));
        hang_up(node, &channel);
        calls.push((node, channel));
    }
    let mut messages = Vec::new();
    let channels: Vec<String> = calls.iter().map(|(_, c)| c.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let destroyed = |messages: &[Received]| channels.iter().all(|c| types_of(messages, c).iter().any(|t| t == "ChannelDestroyed"));
    while !(ended(&messages, &channels) && destroyed(&messages)) && Instant::now() < deadline {
        messages.extend(probe.drain("test-conf", 1, Duration::from_millis(500)));
    }
    assert!(ended(&messages, &channels), "StasisEnd missing: {:?}", messages.iter().map(|m| &m.json["type"]).collect::<Vec<_>>());

    for (node, channel) in &calls {
        assert_in_order(&messages, channel, &node.name);
        for m in messages.iter().filter(|m| m.json["channel"]["id"] == channel.as_str()) {
            assert_eq!(m.json["application"], "conf");
            assert_eq!(m.json["asterisk_id"], node.eid.as_str(), "each event carries its own node's EID");
            assert_eq!(m.routing_key, format!("stasis.app.conf.{}", node.eid));
            assert_eq!(m.headers["application"], "conf");
            assert_eq!(m.headers["asterisk_id"], node.eid);
            assert_eq!(m.headers["event_type"], m.json["type"].as_str().unwrap());
            assert_eq!(m.content_type.as_deref(), Some("application/json"));
            assert!(m.body.starts_with(r#"{"application":"conf","#), "application comes first: {}", m.body);
        }
        // The module writes Asterisk's JSON itself (not through jansson's dump): nested objects,
        // arrays, integers and strings must arrive as ARI has them.
        let start = messages.iter().find(|m| m.json["channel"]["id"] == channel.as_str() && m.json["type"] == "StasisStart").unwrap();
        assert!(start.json["args"].is_array(), "{}", start.body);
        assert!(start.json["channel"]["dialplan"]["priority"].is_i64(), "{}", start.body);
        assert!(start.json["channel"]["caller"].is_object() && start.json["timestamp"].is_string(), "{}", start.body);
    }
    // Every event of an app carries its node's seq, one more than the event before, and the
    // sequence's start (a consumer drops duplicates and counts gaps by them).
    for node in &pool.nodes {
        let of_node: Vec<&Received> = messages.iter().filter(|m| m.headers["asterisk_id"] == node.eid).collect();
        let seq = |m: &Received| m.headers["seq"].parse::<u64>().unwrap_or_else(|_| panic!("seq header: {:?}", m.headers));
        let start: u64 = of_node[0].headers["seq_start"].parse().expect("seq_start header");
        assert!(of_node.iter().all(|m| m.headers["seq_start"] == start.to_string()), "{}: one sequence", node.name);
        assert!(seq(of_node[0]) >= start, "{}: seq counts from its start", node.name);
        let seqs: Vec<u64> = of_node.iter().map(|m| seq(m)).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{}: seq rises by one per event: {seqs:?}", node.name);
    }
    let amqp = pool.node(0).cli("scale show amqp");
    assert!(amqp.contains("Dropped:       0"), "{amqp}");
    // Many events in a row leave each node in the order they were made.
    for node in &pool.nodes {
        inject(node, "conf", 200, 0);
    }
    let mut per_node: Vec<Vec<Received>> = vec![Vec::new(); pool.nodes.len()];
    let deadline = Instant::now() + Duration::from_secs(10);
    while per_node.iter().any(|got| first_seqs(got).len() < 200) && Instant::now() < deadline {
        for m in probe.drain("test-conf", 1, Duration::from_millis(500)) {
            if let Some(i) = pool.nodes.iter().position(|n| m.json["asterisk_id"] == n.eid.as_str()) {
                per_node[i].push(m);
            }
        }
    }
    for (node, got) in pool.nodes.iter().zip(&per_node) {
        assert_eq!(first_seqs(got), (0..200).collect::<Vec<u64>>(), "{}: events out of order or missing", node.name);
        let amqp = node.cli("scale show amqp");
        assert!(amqp.contains("Dropped:       0"), "{}: {amqp}", node.name);
    }
}

#[test]
fn a_broker_outage_keeps_asterisk_fast_and_loses_no_event() {
    let mut pool = Pool::builder().nodes(1).with_consul().with_rabbitmq().start();
    // A durable queue keeps its binding across the broker restart.
    let probe = conf_with_consumer(&pool, "test-outage", "stasis.app.conf.#");

    // Originates run our callback (StasisStart) inside the ARI request; they are timed for the
    // record (timing is for benchmarks), and what the test asserts is that the callback never
    // waits: an injected send that slept means Asterisk's thread waited in our code.
    let node = pool.node(0);
    let mut before = Vec::new();
    let mut channels = Vec::new();
    for _ in 0..10 {
        let (channel, took) = timed_call_into(node, "conf");
        before.push(took);
        hang_up(node, &channel);
        channels.push(channel);
    }
    let slept_before = inject(node, "conf", 50, 100);
    let mut early = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(ended(&early, &channels) && first_seqs(&early).len() == 50) && Instant::now() < deadline {
        early.extend(probe.drain("test-outage", 1, Duration::from_millis(500)));
    }
    assert_eq!(first_seqs(&early), (0..50).collect::<Vec<u64>>(), "the events injected before the outage");
    channels.clear();

    pool.rabbitmq.as_mut().unwrap().stop();
    let node = pool.node(0);
    let mut during = Vec::new();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(15) {
        let (channel, took) = timed_call_into(node, "conf");
        during.push(took);
        std::thread::sleep(Duration::from_millis(200));
        hang_up(node, &channel);
        channels.push(channel);
        // The module's own commands answer while the broker is away.
        assert!(node.cli("scale show status").contains("res_scale 0.1.0"));
        std::thread::sleep(Duration::from_millis(300));
    }
    let slept_during = inject(node, "conf", 50, 100);
    let amqp = node.cli("scale show amqp");
    assert!(!amqp.contains("State:         connected"), "{amqp}");
    assert!(!amqp.contains("Queue depth:   0 of"), "events wait in the queue: {amqp}");
    assert!(slept_before * 10 <= 50 && slept_during * 10 <= 50, "the callback waited: {slept_before} of 50 sends slept before the outage, {slept_during} of 50 during it");

    pool.rabbitmq.as_mut().unwrap().restart();
    let node = pool.node(0);
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(ended(&messages, &channels) && first_seqs(&messages).len() == 50) && Instant::now() < deadline {
        messages.extend(probe.drain("test-outage", 1, Duration::from_millis(500)));
    }
    for channel in &channels {
        assert!(has_start_then_end(&types_of(&messages, channel)), "{channel}: {:?}", types_of(&messages, channel));
    }
    assert_eq!(first_seqs(&messages), (0..50).collect::<Vec<u64>>(), "the events injected during the outage, after it");
    let amqp = node.cli("scale show amqp");
    assert!(amqp.contains("State:         connected"), "{amqp}");
    assert!(amqp.contains("Dropped:       0"), "{amqp}");
    assert!(!amqp.contains("Reconnects:    0\n"), "{amqp}");
    // The counters account for every event the consumer got.
    let distinct: std::collections::BTreeSet<&str> = early.iter().chain(&messages).map(|m| m.body.as_str()).collect();
    let amqp = wait::until("every queued event confirmed", Duration::from_secs(10), Duration::from_millis(50), || {
        let queued = node.amqp_counter("Queued");
        (node.amqp_counter("Confirmed") >= queued).then(|| node.cli("scale show amqp"))
    });
    assert_eq!(node.amqp_counter("Queued"), distinct.len() as u64, "queued events against distinct events received: {amqp}");

    before.sort();
    during.sort();
    let p = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    eprintln!(
        "ARI originate into Stasis(conf) before the outage: median {:?} max {:?}; during: median {:?} max {:?}; {} calls, {} events",
        p(&before, 0.5),
        before.last().unwrap(),
        p(&during, 0.5),
        during.last().unwrap(),
        channels.len(),
        messages.len()
    );
}

#[test]
fn wrong_credentials_are_reported_and_a_reload_with_the_right_ones_connects() {
    let pool = Pool::builder().nodes(1).with_consul().with_rabbitmq().start();
    let node = pool.node(0);
    let good = std::fs::read_to_string(node.dir.join("etc/res_scale.conf")).unwrap();
    let bad = good.replace("amqp://guest:guest@", "amqp://guest:wrong@");
    node.write_config("res_scale.conf", &bad);
    node.cli("module reload res_scale.so");

    let amqp = wait::until("the refusal to show", Duration::from_secs(10), Duration::from_millis(100), || {
        let amqp = node.cli("scale show amqp");
        amqp.contains("ACCESS_REFUSED").then_some(amqp)
    });
    assert!(amqp.contains("amqp://guest:****@"), "password masked: {amqp}");
    assert!(!amqp.contains("State:         connected"), "{amqp}");
    assert!(node.cli("core show version").contains("Asterisk 22."));
    // The registrations connection uses the same brokers and reports the same refusal.
    assert!(node.cli("scale show registrations").contains("ACCESS_REFUSED"), "{}", node.cli("scale show registrations"));
    for subsystem in ["amqp", "registrations"] {
        let log = node.wait_logged(&format!("{subsystem}: no broker reachable"));
        assert_eq!(log.matches(&format!("{subsystem}: no broker reachable")).count(), 1, "one line per state change of {subsystem}");
    }

    node.write_config("res_scale.conf", &good);
    node.cli("module reload res_scale.so");
    wait_connected(node);
}

#[test]
fn an_app_removed_from_consul_stops_publishing_and_an_added_one_starts() {
    let pool = Pool::builder().nodes(1).with_consul().with_rabbitmq().start();
    let probe = conf_with_consumer(&pool, "test-apps", "stasis.app.#");
    let node = pool.node(0);
    let user_event = |app: &str| node.ari().post(&format!("/events/user/ping?application={app}")).status;

    assert_eq!(user_event("conf"), 204);
    let got = probe.drain("test-apps", 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json["application"], "conf");

    pool.consul.as_ref().unwrap().delete_kv("res_scale/apps/conf");
    wait::until("conf gone", Duration::from_secs(5), Duration::from_millis(20), || (node.ari().get("/applications/conf").status == 404).then_some(()));
    // Asterisk itself refuses events for an application the module unregistered.
    assert_eq!(user_event("conf"), 404, "ARI still knows 'conf' after its removal from Consul");
    create_app(&pool, "queue");
    assert_eq!(user_event("queue"), 204);
    let got = probe.drain("test-apps", 1, Duration::from_secs(5));
    let apps: Vec<&str> = got.iter().map(|m| m.json["application"].as_str().unwrap()).collect();
    assert_eq!(apps, ["queue"], "nothing from the removed app, the new one publishes");
}

/// The module writes Asterisk's JSON as text itself: whatever an ARI client puts in a user
/// event (escapes, non-ASCII, nesting, every JSON type) must reach the consumer unchanged.
#[test]
fn a_user_events_variables_arrive_unchanged() {
    let pool = Pool::builder().nodes(1).with_consul().with_rabbitmq().start();
    let probe = conf_with_consumer(&pool, "test-json", "stasis.app.conf.#");
    let node = pool.node(0);
    let variables = serde_json::json!({
        "text": "quote\" backslash\\ slash/ newline\n tab\t control\u{1} é ß 😀 \u{2028}",
        "numbers": [0, -42, 9_007_199_254_740_993_i64, 1.5, -0.25, 1e300],
        "flags": {"yes": true, "no": false, "nothing": null},
        "nested": [[], {}, [{"deep": [1, {"deeper": "x"}]}]],
        "application": "not ours",
    });
    let reply = node.ari().post_json("/events/user/tricky?application=conf", &serde_json::json!({ "variables": variables }));
    assert_eq!(reply.status, 204, "{}", reply.body);
    let got = probe.drain("test-json", 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json["type"], "ChannelUserevent");
    assert_eq!(got[0].json["application"], "conf");
    // Asterisk adds the event name to the variables; everything else is the client's.
    let mut expected = variables;
    expected["eventname"] = "tricky".into();
    assert_eq!(got[0].json["userevent"], expected, "body: {}", got[0].body);
}

#[test]
fn the_connection_names_the_node_and_an_unreachable_broker_fails_over() {
    let conf = "[consul]\nurl = {consul_url}\ncheck_ttl = 3s\n[amqp]\nurl = amqp://guest:guest@127.0.0.1:1/%2f, {amqp_url}\n[registrations]\nenabled = no\n";
    let pool = Pool::builder().nodes(1).with_consul().with_rabbitmq().res_scale_conf(conf).start();
    let node = pool.node(0);
    wait_connected(node);
    let mq = pool.rabbitmq.as_ref().unwrap();
    let amqp = node.cli("scale show amqp");
    assert!(amqp.contains(&format!("Broker:        amqp://guest:****@127.0.0.1:{}/%2f", mq.port)), "{amqp}");
    let connections = mq.ctl(&["list_connections", "client_properties", "timeout"]);
    let node_id = format!("asterisk-{}", node.eid.replace(':', ""));
    assert!(connections.contains(&format!("res_scale {node_id} (node1)")), "{connections}");
    // Heartbeats are on by default (30 s): a broker that vanished without closing the
    // connection is noticed. The last column is the negotiated heartbeat.
    let ours: Vec<&str> = connections.lines().filter(|l| l.contains(&format!("res_scale {node_id}"))).collect();
    assert!(!ours.is_empty(), "{connections}");
    assert!(ours.iter().all(|l| l.trim_end().ends_with("\t30")), "heartbeat 30 s: {connections}");
}

#[test]
fn the_exchange_is_declared_again_on_every_reconnect() {
    let pool = Pool::builder().nodes(1).with_consul().with_rabbitmq().start();
    create_app(&pool, "conf");
    let node = pool.node(0);
    wait_connected(node);
    let mq = pool.rabbitmq.as_ref().unwrap();
    let probe = AmqpProbe::new(&mq.url());
    // Someone deletes the exchange, and the connection breaks: the module must not count on
    // the broker still having it.
    probe.delete_exchange(EXCHANGE);
    mq.ctl(&["close_all_connections", "test: connection closed on purpose"]);
    // The publisher learns of the broken connection when a publish fails.
    assert_eq!(node.ari().post("/events/user/ping?application=conf").status, 204);
    wait::until("a reconnect", Duration::from_secs(15), Duration::from_millis(50), || {
        (node.amqp_counter("Reconnects") >= 1 && node.cli("scale show amqp").contains("State:         connected")).then_some(())
    });
    probe.bind_queue_to_existing("test-redeclare", EXCHANGE, "stasis.app.conf.#");
    assert_eq!(node.ari().post("/events/user/ping?application=conf").status, 204);
    let got = probe.drain("test-redeclare", 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "the event after the reconnect");
}

#[test]
fn events_beyond_the_queue_capacity_are_dropped_and_counted_and_the_rest_delivered() {
    let conf = "[consul]\nurl = {consul_url}\ncheck_ttl = 3s\n[amqp]\nurl = {amqp_url}\nqueue_capacity = 10\n[registrations]\nenabled = no\n";
    let mut pool = Pool::builder().nodes(1).with_consul().with_rabbitmq().res_scale_conf(conf).start();
    let probe = conf_with_consumer(&pool, "test-full", "stasis.app.conf.#");
    pool.rabbitmq.as_mut().unwrap().stop();
    let node = pool.node(0);
    // The publisher learns of the outage when a publish fails: one event makes it try.
    assert_eq!(node.ari().post("/events/user/ping?application=conf").status, 204);
    wait::until("the publisher to notice the outage", Duration::from_secs(10), Duration::from_millis(50), || (!node.cli("scale show amqp").contains("State:         connected")).then_some(()));
    inject(node, "conf", 25, 0);
    let amqp = node.cli("scale show amqp");
    assert!(amqp.contains("Queue depth:   10 of 10"), "{amqp}");
    assert_eq!(node.amqp_counter("Dropped"), 15, "{amqp}");
    // The ping and the ten kept.
    assert_eq!(node.amqp_counter("Queued"), 11, "{amqp}");

    pool.rabbitmq.as_mut().unwrap().restart();
    let node = pool.node(0);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while first_seqs(&got).len() < 10 && Instant::now() < deadline {
        got.extend(probe.drain("test-full", 1, Duration::from_millis(500)));
    }
    got.extend(probe.drain("test-full", 0, Duration::from_millis(500)));
    assert_eq!(first_seqs(&got), (0..10).collect::<Vec<u64>>(), "the oldest ten are kept, the newest dropped");
    assert_eq!(node.amqp_counter("Dropped"), 15);
}

#[test]
fn persistent_delivery_and_publisher_confirms_when_configured() {
    // Confirms are the default; persistence is asked for.
    let conf = "[consul]\nurl = {consul_url}\ncheck_ttl = 3s\n[amqp]\nurl = {amqp_url}\npersistent = yes\n[registrations]\nenabled = no\n";
    let pool = Pool::builder().nodes(1).with_consul().with_rabbitmq().res_scale_conf(conf).start();
    let probe = conf_with_consumer(&pool, "test-persistent", "stasis.app.conf.#");
    let node = pool.node(0);

    for _ in 0..3 {
        assert_eq!(node.ari().post("/events/user/ping?application=conf").status, 204);
    }
    let got = probe.drain("test-persistent", 3, Duration::from_secs(5));
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|m| m.delivery_mode == Some(2)), "persistent messages");
    let amqp = wait::until("three confirms", Duration::from_secs(5), Duration::from_millis(50), || {
        let amqp = node.cli("scale show amqp");
        amqp.contains("Confirmed:     3\n").then_some(amqp)
    });
    assert!(amqp.contains("persistent: yes, confirms: yes") && amqp.contains("Nacked:        0"), "{amqp}");
}

#[test]
fn amqps_verifies_the_broker_against_the_configured_ca() {
    let conf = "[consul]\nurl = {consul_url}\ncheck_ttl = 3s\n[amqp]\nurl = {amqps_url}\nca_file = {ca_file}\n[registrations]\nenabled = no\n";
    let pool = Pool::builder().nodes(1).with_consul().with_rabbitmq_tls().res_scale_conf(conf).start();
    create_app(&pool, "conf");
    let node = pool.node(0);
    wait_connected(node);
    let mq = pool.rabbitmq.as_ref().unwrap();
    let amqp = node.cli("scale show amqp");
    assert!(amqp.contains(&format!("Broker:        amqps://guest:****@127.0.0.1:{}/%2f", mq.tls_port.unwrap())), "{amqp}");
    let probe = AmqpProbe::new(&mq.url());
    probe.bind_queue("test-tls", EXCHANGE, "stasis.app.conf.#");
    assert_eq!(node.ari().post("/events/user/ping?application=conf").status, 204);
    let got = probe.drain("test-tls", 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "the event went through the TLS connection");

    // Without the CA the broker's certificate cannot be verified, and the module says so.
    let file = node.dir.join("etc/res_scale.conf");
    let text = std::fs::read_to_string(&file).unwrap();
    let without_ca: String = text.lines().filter(|l| !l.starts_with("ca_file")).map(|l| format!("{l}\n")).collect();
    node.write_config("res_scale.conf", &without_ca);
    node.cli("module reload res_scale.so");
    let amqp = wait::until("a certificate error", Duration::from_secs(10), Duration::from_millis(100), || {
        let amqp = node.cli("scale show amqp");
        (!amqp.contains("State:         connected") && amqp.to_lowercase().contains("certificate")).then_some(amqp)
    });
    eprintln!("{amqp}");
}

/// An ARI client on the node's events WebSocket, subscribed to (and so registering) `app`.
fn ari_client(node: &Node, app: &str) -> tungstenite::WebSocket<std::net::TcpStream> {
    let stream = std::net::TcpStream::connect(("127.0.0.1", node.http_port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let url = format!("ws://127.0.0.1:{}/ari/events?app={app}&api_key={}:{}", node.http_port, res_scale_tests::node::ARI_USER, res_scale_tests::node::ARI_PASSWORD);
    tungstenite::client(url, stream).unwrap_or_else(|e| panic!("ARI WebSocket: {e}")).0
}

#[test]
fn an_ari_client_that_takes_an_applications_name_keeps_it() {
    let pool = Pool::builder().nodes(1).with_consul().with_rabbitmq().start();
    let node = pool.node(0);
    create_app(&pool, "conf");
    // The client registers after res_scale: res_stasis gives it the application.
    let mut client = ari_client(node, "conf");
    // The key goes: res_scale must not take the application from the client.
    pool.consul.as_ref().unwrap().delete_kv("res_scale/apps/conf");
    wait::until("res_scale to drop conf", Duration::from_secs(5), Duration::from_millis(50), || (!node.cli("scale show apps").contains("conf")).then_some(()));

    let channel = call_into(node, "conf");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut started = false;
    while !started && Instant::now() < deadline {
        match client.read() {
            Ok(tungstenite::Message::Text(text)) => started = text.contains("\"StasisStart\"") && text.contains(&channel),
            Ok(_) => {}
            // The read timeout: nothing came.
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("the client's WebSocket: {e}"),
        }
    }
    hang_up(node, &channel);
    assert!(started, "the client never got its call's StasisStart");
    let log = node.wait_logged("Stasis app 'conf' was taken over by another client");
    assert!(!log.contains("Deactivating Stasis app 'conf'"), "res_scale deactivated the client's application");
}

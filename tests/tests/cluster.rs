//! A bad day with clustered services: real Asterisk 22 nodes with res_scale against a 3-node
//! RabbitMQ cluster and a 3-server Consul cluster (each node with its own client agent), every
//! broker and agent a container of its own, and real faults made with `docker kill`, `docker
//! stop`, `docker pause` and `docker network disconnect`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use res_scale_tests::amqp::{AmqpProbe, Received};
use res_scale_tests::kamailio::{sipp_dir, Kamailio, Register, Sipp};
use res_scale_tests::ports::free_port;
use res_scale_tests::talk_wav::write_talk_wav;
use res_scale_tests::{wait, Node, Pool};

const EVENTS: &str = "res_scale.events";

/// One clustered pool at a time: each is 3 brokers, 3 Consul servers, an agent per node and the
/// nodes, and two at once on a 2-core machine turn the faults' timings into the load's.
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_cluster() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Puts application `conf` in Consul (through node 1's agent) and waits until every node runs it.
fn create_app(pool: &Pool, app: &str) {
    pool.cluster.as_ref().unwrap().consul.agent(0).put_kv(&format!("res_scale/apps/{app}"), "{}");
    for node in &pool.nodes {
        wait::until(&format!("{app} on {}", node.name), Duration::from_secs(10), Duration::from_millis(50), || (node.ari().get(&format!("/applications/{app}")).status == 200).then_some(()));
    }
}

fn events_connected(node: &Node) -> bool {
    node.cli("scale show amqp").contains("State:         connected")
}

/// Application `conf` on every node, every node publishing its events and connected for
/// registrations, and the application's consumer: a quorum queue (replicated on every broker)
/// bound to the app's events, read through the last broker (the one the faults leave up).
fn app_with_consumer(pool: &Pool, queue: &str) -> AmqpProbe {
    create_app(pool, "conf");
    for node in &pool.nodes {
        wait::until(&format!("{} publishing events", node.name), Duration::from_secs(15), Duration::from_millis(100), || events_connected(node).then_some(()));
        node.wait_connected("registrations");
    }
    let probe = AmqpProbe::new(&pool.cluster.as_ref().unwrap().rabbitmq.last_url());
    probe.bind_quorum_queue(queue, EVENTS, "stasis.app.conf.#");
    probe
}

/// Which broker of the cluster the node's events go to, once its publisher is connected.
fn broker_of(pool: &Pool, node: &Node) -> Option<usize> {
    let shown = node.cli("scale show amqp");
    shown.contains("State:         connected").then(|| pool.cluster.as_ref().unwrap().rabbitmq.index_of_broker(&shown)).flatten()
}

/// Calls into Stasis `app` on every node, one after another (a Local channel answered by
/// extension 100, hung up by us a moment later), until `stop` is set; returns their channel ids.
fn place_calls(pool: &Pool, app: &str, stop: &AtomicBool) -> Vec<String> {
    let mut channels = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        for node in &pool.nodes {
            let reply = node.ari().post(&format!("/channels?endpoint=Local/100@from-sip&app={app}"));
            assert_eq!(reply.status, 200, "originate on {}: {}", node.name, reply.body);
            let channel = reply.json()["id"].as_str().unwrap().to_string();
            std::thread::sleep(Duration::from_millis(150));
            let hung_up = node.ari().delete(&format!("/channels/{channel}"));
            assert!(matches!(hung_up.status, 204 | 404), "hangup on {}: {}", node.name, hung_up.body);
            channels.push(channel);
        }
    }
    channels
}

/// Sets the flag when dropped: a failed assertion inside `thread::scope` must still stop the
/// scope's callers and samplers, or the scope would wait for them forever.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Per channel, the types of its events in arrival order.
fn types_by_channel(messages: &[Received]) -> BTreeMap<String, Vec<String>> {
    let mut by = BTreeMap::<String, Vec<String>>::new();
    for m in messages {
        if let (Some(channel), Some(kind)) = (m.json["channel"]["id"].as_str(), m.json["type"].as_str()) {
            by.entry(channel.to_string()).or_default().push(kind.to_string());
        }
    }
    by
}

fn started_and_ended(types: Option<&Vec<String>>) -> bool {
    types.is_some_and(|t| t.iter().any(|k| k == "StasisStart") && t.iter().any(|k| k == "StasisEnd"))
}

/// Messages that arrived more than once (the same body): at-least-once delivery resends what
/// was not confirmed when a connection broke.
fn duplicates(messages: &[Received]) -> usize {
    let distinct: std::collections::BTreeSet<&str> = messages.iter().map(|m| m.body.as_str()).collect();
    messages.len() - distinct.len()
}

#[test]
fn killing_the_broker_node_a_module_uses_fails_it_over_with_no_event_lost() {
    let _one = one_cluster();
    let pool = Pool::builder().nodes(2).clustered(3, 3).start();
    let cluster = pool.cluster.as_ref().unwrap();
    let probe = app_with_consumer(&pool, "cluster-app");
    for node in &pool.nodes {
        assert_eq!(broker_of(&pool, node), Some(0), "{} publishes to the first broker listed", node.name);
    }

    let stop = AtomicBool::new(false);
    let (channels, recovered) = std::thread::scope(|s| {
        let calls = s.spawn(|| place_calls(&pool, "conf", &stop));
        let stop_calls = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_secs(4));
        let killed_at = Instant::now();
        cluster.rabbitmq.nodes[0].kill();
        // How long each node takes to publish through another broker.
        let recovered: Vec<String> = pool
            .nodes
            .iter()
            .map(|node| {
                let to = wait::until(&format!("{} to fail over", node.name), Duration::from_secs(30), Duration::from_millis(20), || broker_of(&pool, node).filter(|b| *b != 0));
                format!("{} to rmq{} in {:.1?}", node.name, to + 1, killed_at.elapsed())
            })
            .collect();
        // Calls go on after the failover.
        std::thread::sleep(Duration::from_secs(6));
        drop(stop_calls);
        (calls.join().unwrap(), recovered)
    });

    // Every call's StasisStart..StasisEnd arrives, from before, during and after the failover.
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        messages.extend(probe.drain("cluster-app", 1, Duration::from_millis(500)));
        let by = types_by_channel(&messages);
        if channels.iter().all(|c| started_and_ended(by.get(c))) || Instant::now() > deadline {
            break;
        }
    }
    let by = types_by_channel(&messages);
    let missing: Vec<&String> = channels.iter().filter(|c| !started_and_ended(by.get(*c))).collect();
    assert!(missing.is_empty(), "{} of {} calls lack StasisStart or StasisEnd: {missing:?}", missing.len(), channels.len());
    for node in &pool.nodes {
        let amqp = node.cli("scale show amqp");
        assert!(amqp.contains("Dropped:       0"), "{}: {amqp}", node.name);
    }

    // Registrations recovered too, without a reload: a phone registers on node1 and node2
    // learns it through the broker both failed over to.
    let (a, b) = (pool.node(0), pool.node(1));
    a.wait_connected("registrations");
    b.wait_connected("registrations");
    let dir = pool.dir.join("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    let phone = Register { user: "dave".into(), call_id: "dave-cluster-1".into(), cseq: 1, expires: 120, user_agent: "SIPp phone".into(), local_port: free_port() };
    phone.send(&dir, a.sip_port).expect("dave registers with node1");
    let uri = phone.contact_uri();
    wait::until("node2 to learn dave after the failover", Duration::from_secs(10), Duration::from_millis(50), || b.cli("pjsip show aor dave").contains(&uri).then_some(()));

    eprintln!("broker node loss: {} calls, {} events, {} duplicates; failed over: {}", channels.len(), messages.len(), duplicates(&messages), recovered.join(", "));
}

/// What the samplers saw of one node during the faults.
#[derive(Default)]
struct Watched {
    /// `GET /asterisk/info`: the slowest answer, and how many were not 200.
    worst_info: Duration,
    info_failures: usize,
    /// `GET /applications/conf` answers other than 200 (the app was removed).
    app_missing: usize,
    /// The longest stretch the node was not listed as passing in Consul, among the answers of
    /// servers that had a leader.
    longest_unregistered: Duration,
}

/// Samples every node's ARI (info, the app) and its Consul registration every 100 ms until
/// `stop` is set.
fn watch(pool: &Pool, stop: &AtomicBool) -> Vec<Watched> {
    let cluster = pool.cluster.as_ref().unwrap();
    let mut watched: Vec<Watched> = pool.nodes.iter().map(|_| Watched::default()).collect();
    let mut unregistered_since: Vec<Option<Instant>> = vec![None; pool.nodes.len()];
    while !stop.load(Ordering::SeqCst) {
        for (i, node) in pool.nodes.iter().enumerate() {
            let info = node.ari().get("/asterisk/info");
            watched[i].worst_info = watched[i].worst_info.max(info.elapsed);
            watched[i].info_failures += usize::from(info.status != 200);
            watched[i].app_missing += usize::from(node.ari().get("/applications/conf").status != 200);
        }
        // Any server that answers (stale reads are allowed while there is no leader).
        let listed = (0..cluster.consul.servers.len()).find_map(|s| cluster.consul.server(s).try_get("/v1/health/service/asterisk?stale").ok());
        if let Some(listed) = listed.as_ref().and_then(|l| l.as_array()) {
            for (i, node) in pool.nodes.iter().enumerate() {
                let passing = listed.iter().filter(|e| e["Service"]["Meta"]["eid"] == node.eid.as_str()).any(|e| e["Checks"].as_array().is_some_and(|c| c.iter().all(|c| c["Status"] == "passing")));
                match (passing, unregistered_since[i]) {
                    (true, Some(since)) => {
                        watched[i].longest_unregistered = watched[i].longest_unregistered.max(since.elapsed());
                        unregistered_since[i] = None;
                    }
                    (false, None) => unregistered_since[i] = Some(Instant::now()),
                    _ => {}
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, since) in unregistered_since.into_iter().enumerate() {
        if let Some(since) = since {
            watched[i].longest_unregistered = watched[i].longest_unregistered.max(since.elapsed());
        }
    }
    watched
}

/// Kamailio's registrar truth: the contact URIs of `aor` in `kamcmd ul.dump`.
fn registrar_contacts(dump: &str, aor: &str) -> Vec<String> {
    let mut contacts = Vec::new();
    let mut in_aor = false;
    for line in dump.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("AoR:") {
            in_aor = name.trim() == aor;
        } else if let Some(uri) = line.strip_prefix("Address:").filter(|_| in_aor) {
            contacts.push(uri.trim().to_string());
        }
    }
    contacts.sort();
    contacts
}

#[test]
fn consul_leader_loss_then_a_consul_server_and_a_broker_restarting_under_calls_block_nothing_and_lose_nothing() {
    let _one = one_cluster();
    const CALLS: u32 = 250;
    const PER_SECOND: u32 = 5;
    const TTL: Duration = Duration::from_secs(3);
    let pool = Pool::builder().nodes(2).clustered(3, 3).start();
    let cluster = pool.cluster.as_ref().unwrap();
    let probe = app_with_consumer(&pool, "cluster-calls");
    let kamailio = Kamailio::in_front_of(&pool);
    let dir = pool.dir.join("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    write_talk_wav(&dir.join("talk.wav"));

    // SIPp callers through Kamailio (round robin over the nodes) into extension 7000: answered,
    // then Stasis(conf); each talks for a second and hangs up.
    let target = format!("127.0.0.1:{}", kamailio.sip_port);
    let scenario = sipp_dir().join("uac_conference.xml").display().to_string();
    let (uac_port, rtp_port) = (free_port().to_string(), (20_000 + free_port() % 5_000).to_string());
    let (calls, per_second) = (CALLS.to_string(), PER_SECOND.to_string());
    let sipp_args: Vec<String> =
        ["-sf", &scenario, "-s", "7000", "-d", "1000", "-i", "127.0.0.1", "-p", &uac_port, "-mp", &rtp_port, "-m", &calls, "-r", &per_second, "-timeout", "150s", "-timeout_error", &target]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let phones = ["dave", "1001", "1002"];
    let stop = AtomicBool::new(false);
    let (watched, faults) = std::thread::scope(|s| {
        let watcher = s.spawn(|| watch(&pool, &stop));
        let stop_watching = StopOnDrop(&stop);
        let callers = Sipp::spawn(&dir, "callers", &sipp_args);
        let started = Instant::now();
        let at = |secs: u64| std::thread::sleep(Duration::from_secs(secs).saturating_sub(started.elapsed()));
        let mut faults = Vec::new();

        at(5);
        let leader = cluster.consul.leader().expect("a Consul leader");
        let killed = Instant::now();
        cluster.consul.servers[leader].kill();
        let (new_leader, took) = cluster.consul.wait_new_leader(leader, killed);
        faults.push(format!("Consul leader consul{} killed: consul{} leads after {took:.1?}", leader + 1, new_leader + 1));
        // Phones register while the Consul cluster is short of a server.
        let registered: Vec<Register> =
            phones.iter().map(|user| Register { user: user.to_string(), call_id: format!("{user}-faults"), cseq: 1, expires: 300, user_agent: "SIPp phone".into(), local_port: free_port() }).collect();
        for phone in &registered {
            phone.send(&dir, kamailio.sip_port).unwrap_or_else(|e| panic!("{} registers through Kamailio: {e}", phone.user));
        }

        // Within the minute: the killed server back, another server restarted, and the broker
        // the nodes use restarted.
        at(15);
        cluster.consul.servers[leader].start();
        at(20);
        let other = (0..cluster.consul.servers.len()).find(|s| *s != leader && *s != new_leader).unwrap();
        cluster.consul.servers[other].stop();
        cluster.consul.servers[other].start();
        faults.push(format!("consul{} back at 15 s, consul{} restarted at 20 s", leader + 1, other + 1));
        at(25);
        let broker = broker_of(&pool, pool.node(0)).expect("node1 publishing");
        cluster.rabbitmq.nodes[broker].stop();
        // Registrations change while the broker is away: one phone leaves.
        let bye = Register { cseq: 2, expires: 0, ..registered[2].clone() };
        bye.send(&dir, kamailio.sip_port).expect("1002 unregisters through Kamailio");
        cluster.rabbitmq.nodes[broker].start();
        cluster.rabbitmq.wait_running(broker);
        faults.push(format!("rmq{} restarted at 25 s (back after {:.1?})", broker + 1, started.elapsed() - Duration::from_secs(25)));

        callers.wait(Duration::from_secs(180)).expect("every SIPp call completed");
        drop(stop_watching);
        (watcher.join().unwrap(), faults)
    });

    // Zero events lost: every call's StasisStart and StasisEnd.
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let complete = |messages: &[Received]| types_by_channel(messages).values().filter(|t| started_and_ended(Some(t))).count();
    while complete(&messages) < CALLS as usize && Instant::now() < deadline {
        messages.extend(probe.drain("cluster-calls", 1, Duration::from_millis(500)));
    }
    let by = types_by_channel(&messages);
    let half: Vec<&String> = by.iter().filter(|(_, t)| t.iter().any(|k| k == "StasisStart") && !started_and_ended(Some(t))).map(|(c, _)| c).collect();
    assert!(half.is_empty(), "calls with StasisStart and no StasisEnd: {half:?}");
    assert_eq!(complete(&messages), CALLS as usize, "calls with StasisStart..StasisEnd against SIPp's calls");

    for (node, seen) in pool.nodes.iter().zip(&watched) {
        assert_eq!(seen.info_failures, 0, "{}: GET /asterisk/info failed", node.name);
        assert!(seen.worst_info < Duration::from_secs(2), "{}: an Asterisk thread blocked: GET /asterisk/info took {:?}", node.name, seen.worst_info);
        assert_eq!(seen.app_missing, 0, "{}: Stasis app conf was missing from ARI", node.name);
        assert!(seen.longest_unregistered <= TTL, "{}: not passing in Consul for {:?} (TTL {TTL:?})", node.name, seen.longest_unregistered);
        assert!(node.cli("scale show amqp").contains("Dropped:       0"), "{}", node.name);
    }

    // Afterwards every node holds what the registrar holds.
    let dump = kamailio.kamcmd(&["ul.dump"]).unwrap_or_default();
    for aor in phones {
        let truth = registrar_contacts(&dump, aor);
        assert_eq!(truth.is_empty(), aor == "1002", "Kamailio's contacts of {aor}: {truth:?}");
        for node in &pool.nodes {
            let same = wait::try_until(Duration::from_secs(10), Duration::from_millis(100), || (node.contact_uris(aor) == truth).then_some(()));
            assert!(same.is_some(), "{}: {aor} is {:?}, Kamailio has {truth:?}", node.name, node.contact_uris(aor));
        }
    }

    eprintln!("combined faults: {}; {CALLS} calls at {PER_SECOND}/s, {} events, {} duplicates", faults.join("; "), messages.len(), duplicates(&messages));
    for (node, seen) in pool.nodes.iter().zip(&watched) {
        eprintln!("  {}: worst GET /asterisk/info {:?}, longest not passing in Consul {:?}", node.name, seen.worst_info, seen.longest_unregistered);
    }
}

#[test]
fn a_node_cut_off_for_20_s_keeps_its_calls_and_events_and_the_pool_takes_its_phones_back() {
    let _one = one_cluster();
    const EVENTS_DURING: usize = 200;
    let pool = Pool::builder().nodes(2).clustered(3, 3).nodes_on_the_cluster_network().start();
    let cluster = pool.cluster.as_ref().unwrap();
    let (a, b) = (pool.node(0), pool.node(1));
    let probe = app_with_consumer(&pool, "partition-app");

    // A phone registers on node2 (SIPp on the host, from its address on the network), and
    // node1 learns it.
    let dir = pool.dir.join("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    let host_ip = cluster.network.host_ip();
    let phone = Register { user: "dave".into(), call_id: "dave-partition".into(), cseq: 1, expires: 300, user_agent: "SIPp phone".into(), local_port: free_port() };
    phone.send_between(&dir, &host_ip, &format!("{}:{}", b.ip, b.sip_port), "register.xml").expect("dave registers with node2");
    let uri = phone.contact_uri_from(&host_ip);
    let holds = |node: &Node| node.cli("pjsip show aor dave").contains(&uri);
    wait::until("node1 to learn dave", Duration::from_secs(10), Duration::from_millis(50), || holds(a).then_some(()));
    // A call on node2 that lasts (extension 101 waits 300 s), in Stasis.
    let reply = b.ari().post("/channels?endpoint=Local/101@from-sip&app=conf");
    assert_eq!(reply.status, 200, "originate on node2: {}", reply.body);
    let call = reply.json()["id"].as_str().unwrap().to_string();

    b.disconnect();
    let cut = Instant::now();
    // The others apply the node loss rule: node2's TTL check goes critical, and after the
    // grace its phones are withdrawn.
    wait::until("node1 to withdraw node2's phone", Duration::from_secs(20), Duration::from_millis(100), || (!holds(a)).then_some(()));
    let withdrawn_after = cut.elapsed();
    // node2 goes on: events of its apps wait in its queue (the CLI answers through docker exec).
    let out = b.cli(&format!("scale test events conf {EVENTS_DURING} 200"));
    assert!(out.contains(&format!("sent {EVENTS_DURING} events to conf")), "{out}");
    std::thread::sleep(Duration::from_secs(20).saturating_sub(cut.elapsed()));
    let during = b.cli("scale show amqp");
    assert!(during.contains("Dropped:       0"), "node2 dropped events while cut off: {during}");
    assert!(b.cli("core show channels concise").contains(&call), "node2 lost its call while cut off");

    b.connect();
    let back = Instant::now();
    wait::until("node1 to take dave back", Duration::from_secs(30), Duration::from_millis(100), || holds(a).then_some(()));
    let taken_back_after = back.elapsed();
    assert_eq!(b.ari().get(&format!("/channels/{call}")).status, 200, "node2's call after the cut");
    let hung_up = b.ari().delete(&format!("/channels/{call}"));
    assert_eq!(hung_up.status, 204, "{}", hung_up.body);

    // Nothing lost: the call's StasisStart..StasisEnd and every event made while cut off.
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let seqs = |messages: &[Received]| messages.iter().filter(|m| m.json["type"] == "BenchEvent").filter_map(|m| m.json["seq"].as_u64()).collect::<std::collections::BTreeSet<u64>>();
    while !(started_and_ended(types_by_channel(&messages).get(&call)) && seqs(&messages).len() == EVENTS_DURING) && Instant::now() < deadline {
        messages.extend(probe.drain("partition-app", 1, Duration::from_millis(500)));
    }
    assert!(started_and_ended(types_by_channel(&messages).get(&call)), "node2's call: {:?}", types_by_channel(&messages).get(&call));
    assert_eq!(seqs(&messages), (0..EVENTS_DURING as u64).collect(), "the events made while node2 was cut off");
    // Nothing left inconsistent: both nodes hold the same contacts, node2 still as their origin.
    assert_eq!(a.contact_uris("dave"), b.contact_uris("dave"));
    assert!(a.cli("scale show registrations dave").contains(&b.eid), "{}", a.cli("scale show registrations dave"));

    eprintln!(
        "partition of node2 for 20 s: its phone withdrawn on node1 after {withdrawn_after:.1?}, taken back {taken_back_after:.1?} after the reconnect; {} events, {} duplicates",
        messages.len(),
        duplicates(&messages)
    );
    eprintln!("node2 while cut off:\n{during}");
}

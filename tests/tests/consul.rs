//! Consul integration against a real Consul 1.8.7 agent and real Asterisk 22 nodes: node
//! registration and health, agent restarts, Stasis applications from KV, outages, drain, and
//! duplicate entity IDs.

use std::time::{Duration, Instant};

use res_scale_tests::ari_app::AriApp;
use res_scale_tests::node::{ARI_PASSWORD, ARI_USER};
use res_scale_tests::{wait, Node, Pool};
use serde_json::Value;

/// Instances of the `asterisk` service keyed by their service ID.
fn instances(pool: &Pool) -> Vec<Value> {
    pool.consul.as_ref().unwrap().health("asterisk")
}

fn instance_of<'a>(all: &'a [Value], node: &Node) -> Option<&'a Value> {
    all.iter().find(|i| i["Service"]["Meta"]["eid"] == node.eid.as_str())
}

fn passing(instance: &Value) -> bool {
    instance["Checks"].as_array().unwrap().iter().all(|c| c["Status"] == "passing")
}

fn in_maintenance(instance: &Value) -> bool {
    instance["Checks"].as_array().unwrap().iter().any(|c| c["CheckID"].as_str().unwrap().starts_with("_service_maintenance:"))
}

fn wait_registered(pool: &Pool, within: Duration) {
    wait::until("every node registered and passing", within, Duration::from_millis(50), || {
        let all = instances(pool);
        pool.nodes.iter().all(|n| instance_of(&all, n).is_some_and(passing)).then_some(())
    });
}

/// Whether `scale show apps` lists `app` (a line of its table starts with the name).
fn lists_app(apps: &str, app: &str) -> bool {
    apps.lines().any(|l| l.trim_start().starts_with(&format!("{app} ")))
}

fn ari_apps(node: &Node) -> Vec<String> {
    let reply = node.ari().get("/applications");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json().as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn nodes_register_with_health_and_meta_and_unload_deregisters() {
    let mut pool = Pool::builder().nodes(2).with_consul().start();
    wait_registered(&pool, Duration::from_secs(5));

    let all = instances(&pool);
    assert_eq!(all.len(), 2);
    for node in &pool.nodes {
        let s = &instance_of(&all, node).unwrap()["Service"];
        assert_eq!(s["ID"], format!("asterisk-{}", node.eid.replace(':', "")));
        assert_eq!(s["Address"], "127.0.0.1");
        assert_eq!(s["Port"], node.sip_port);
        assert!(s["Tags"].as_array().unwrap().contains(&Value::from("res_scale")));
        assert_eq!(s["Meta"]["system_name"], node.name.as_str());
        assert_eq!(s["Meta"]["ari_url"], format!("http://127.0.0.1:{}/ari", node.http_port));
        assert!(s["Meta"]["asterisk_version"].as_str().unwrap().starts_with("22."), "{s}");
        assert_eq!(s["Meta"]["res_scale_version"], "0.1.0");
    }
    let nodes = pool.node(0).cli("scale show nodes");
    assert!(nodes.contains("2 node(s)"), "{nodes}");
    assert!(nodes.lines().any(|l| l.starts_with("* asterisk-") && l.contains(&pool.node(0).eid) && l.contains("passing")), "{nodes}");
    let status = pool.node(0).cli("scale show status");
    assert!(status.lines().any(|l| l.trim_start().starts_with("consul") && l.contains("registered")), "{status}");

    let gone = pool.node_mut(1);
    assert!(gone.cli("module unload res_scale.so").contains("Unloaded"));
    let eid = gone.eid.clone();
    wait::until("node2's service to be gone", Duration::from_secs(3), Duration::from_millis(50), || {
        let all = instances(&pool);
        (all.len() == 1 && all.iter().all(|i| i["Service"]["Meta"]["eid"] != eid.as_str())).then_some(())
    });
}

#[test]
fn a_fresh_consul_agent_gets_the_nodes_and_apps_back_within_one_ttl() {
    let mut pool = Pool::builder().nodes(2).with_consul().start();
    wait_registered(&pool, Duration::from_secs(5));

    let consul = pool.consul.as_mut().unwrap();
    consul.restart();
    let restarted = Instant::now();
    // The pool's check_ttl is 3 s.
    wait_registered(&pool, Duration::from_secs(3) + Duration::from_millis(800));
    eprintln!("nodes registered again {:?} after the agent restart", restarted.elapsed());

    pool.consul.as_ref().unwrap().put_kv("res_scale/apps/after-restart", "{\"name\":\"after-restart\"}");
    for node in &pool.nodes {
        wait::until("the app on every node", Duration::from_secs(5), Duration::from_millis(50), || ari_apps(node).contains(&"after-restart".to_string()).then_some(()));
    }
}

#[test]
fn apps_in_consul_appear_and_disappear_on_every_node() {
    let pool = Pool::builder().nodes(2).with_consul().start();
    let consul = pool.consul.as_ref().unwrap();
    wait_registered(&pool, Duration::from_secs(5));

    consul.put_kv("res_scale/apps/conf", "{\"name\":\"conf\"}");
    consul.put_kv("res_scale/apps/bad name", "{}");
    let put = Instant::now();
    // One window for the whole pool, counted from the write.
    wait::until("conf on every node (ARI and scale show apps) within 1 s", Duration::from_secs(1), Duration::from_millis(10), || {
        pool.nodes.iter().all(|node| ari_apps(node).contains(&"conf".to_string()) && lists_app(&node.cli("scale show apps"), "conf")).then_some(())
    });
    eprintln!("conf registered on both nodes {:?} after the KV write", put.elapsed());
    for node in &pool.nodes {
        let apps = node.cli("scale show apps");
        assert!(apps.contains("Skipped invalid names: bad name"), "{apps}");
        assert!(!ari_apps(node).contains(&"bad name".to_string()));
        node.wait_logged("skipping key 'res_scale/apps/bad name'");
    }
    // The nodes publish the apps they run.
    wait::until("apps in the node meta", Duration::from_secs(2), Duration::from_millis(50), || instances(&pool).iter().all(|i| i["Service"]["Meta"]["apps"] == "conf").then_some(()));

    consul.delete_kv("res_scale/apps/conf");
    wait::until("conf gone on every node (ARI and scale show apps) within 1 s", Duration::from_secs(1), Duration::from_millis(10), || {
        pool.nodes.iter().all(|node| !ari_apps(node).contains(&"conf".to_string()) && !lists_app(&node.cli("scale show apps"), "conf")).then_some(())
    });
    for node in &pool.nodes {
        // Still the table (it lists the skipped name), only without conf.
        let apps = node.cli("scale show apps");
        assert!(apps.contains("Skipped invalid names: bad name") && !lists_app(&apps, "conf"), "{apps}");
    }
}

#[test]
fn consul_down_for_ten_seconds_leaves_asterisk_answering_and_apps_registered() {
    let mut pool = Pool::builder().nodes(2).with_consul().start();
    wait_registered(&pool, Duration::from_secs(5));
    pool.consul.as_ref().unwrap().put_kv("res_scale/apps/conf", "{}");
    for node in &pool.nodes {
        wait::until("conf registered", Duration::from_secs(2), Duration::from_millis(20), || ari_apps(node).contains(&"conf".to_string()).then_some(()));
    }

    let baseline: Vec<Duration> = (0..10).map(|_| pool.node(0).ari().get("/asterisk/info").elapsed).collect();
    pool.consul.as_mut().unwrap().stop();
    let down = Instant::now();
    let mut worst = Duration::ZERO;
    while down.elapsed() < Duration::from_secs(10) {
        for node in &pool.nodes {
            let reply = node.ari().get("/asterisk/info");
            assert_eq!(reply.status, 200);
            worst = worst.max(reply.elapsed);
            assert!(node.cli("core show version").contains("Asterisk 22."));
            assert!(ari_apps(node).contains(&"conf".to_string()), "apps stay registered while Consul is down");
            // The module's own commands answer from what it knows (the CLI helper fails a
            // command that does not answer).
            assert!(lists_app(&node.cli("scale show apps"), "conf"), "{}", node.cli("scale show apps"));
            assert!(node.cli("scale show status").contains("res_scale 0.1.0"));
            assert!(node.cli("scale show nodes").contains("node(s)"), "{}", node.cli("scale show nodes"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("ARI /asterisk/info: worst {worst:?} during the outage, baseline max {:?}", baseline.iter().max().unwrap());
    let status = pool.node(0).cli("scale show status");
    assert!(status.lines().any(|l| l.trim_start().starts_with("consul") && l.contains("unreachable")), "{status}");
    // One line per subsystem when Consul went away, not one per retry.
    let log = pool.node(0).log();
    assert_eq!(log.matches("consul: Consul unreachable").count(), 1, "{log}");
    assert_eq!(log.matches("consul apps: cannot watch applications").count(), 1, "{log}");

    // The fresh agent has no KV: conf was, as far as the pool can tell, deleted while Consul
    // was away, and the watch must reconcile rather than only follow changes.
    pool.consul.as_mut().unwrap().restart();
    wait_registered(&pool, Duration::from_secs(5));
    // The watch retries with a backoff capped at 10 s, so it may be that long before it asks.
    for node in &pool.nodes {
        wait::until("conf removed after the reconnect", Duration::from_secs(15), Duration::from_millis(50), || (!ari_apps(node).contains(&"conf".to_string())).then_some(()));
    }
    pool.consul.as_ref().unwrap().put_kv("res_scale/apps/conf", "{}");
    for node in &pool.nodes {
        wait::until("conf back", Duration::from_secs(5), Duration::from_millis(50), || ari_apps(node).contains(&"conf".to_string()).then_some(()));
    }
    // Asterisk's logger writes on its own thread, so the line can reach the file a little after
    // Consul shows the node passing again.
    wait::until("node1 to log that Consul is back", Duration::from_secs(5), Duration::from_millis(50), || {
        let log = pool.node(0).log();
        (log.contains("Consul reachable again") || log.matches("registered as service").count() >= 2).then_some(())
    });
}

#[test]
fn drain_puts_only_that_node_in_maintenance_and_back() {
    let pool = Pool::builder().nodes(2).with_consul().start();
    wait_registered(&pool, Duration::from_secs(5));
    let (node1, node2) = (pool.node(0), pool.node(1));

    let out = node1.cli("scale set drain on");
    assert!(out.contains("Drain on") && out.contains("in maintenance"), "{out}");
    let all = instances(&pool);
    assert!(in_maintenance(instance_of(&all, node1).unwrap()));
    assert!(!in_maintenance(instance_of(&all, node2).unwrap()));
    assert!(node1.cli("scale show status").contains("drain: on"));
    assert!(node2.cli("scale show nodes").lines().any(|l| l.contains(&node1.eid) && l.contains("maintenance")));

    let out = node1.cli("scale set drain off");
    assert!(out.contains("out of maintenance"), "{out}");
    let all = instances(&pool);
    assert!(!in_maintenance(instance_of(&all, node1).unwrap()));
    assert!(node1.cli("scale show status").contains("drain: off"));
    assert!(node1.cli("scale set drain maybe").contains("Usage: scale set drain"));
}

#[test]
fn a_second_node_with_the_same_eid_is_refused() {
    let pool = Pool::builder().nodes(2).same_eid().without_module_loaded().with_consul().start();
    let (node1, node2) = (pool.node(0), pool.node(1));
    node1.cli("module load res_scale.so");
    wait::until("node1 registered", Duration::from_secs(5), Duration::from_millis(50), || instances(&pool).iter().any(|i| i["Service"]["Meta"]["system_name"] == "node1" && passing(i)).then_some(()));
    node2.cli("module load res_scale.so");
    let log = wait::until("node2 to refuse", Duration::from_secs(5), Duration::from_millis(50), || {
        let log = node2.log();
        log.contains("not registering: another live node uses EID").then_some(log)
    });
    assert!(log.contains(&format!("uses EID {}", node2.eid)) && log.contains("give every node its own entityid"), "{log}");
    // For one TTL (3 s), by when node2 would have registered and passed its check, the
    // service has only node1.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        assert_eq!(instances(&pool).len(), 1, "{:?}", instances(&pool));
        std::thread::sleep(Duration::from_millis(200));
    }
    let all = instances(&pool);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["Service"]["Meta"]["system_name"], "node1", "node1's registration stays");
    assert!(node2.cli("scale show status").contains("refused: duplicate EID"));
}

#[test]
fn an_unreachable_first_agent_fails_over_to_the_next() {
    // Port 1 on loopback refuses at once: the node must move on to the pool's agent.
    let conf = "[consul]\nurl = http://127.0.0.1:1, {consul_url}\ncheck_ttl = 3s\n[amqp]\nenabled = no\n[registrations]\nenabled = no\n";
    let pool = Pool::builder().nodes(1).with_consul().res_scale_conf(conf).start();
    wait_registered(&pool, Duration::from_secs(5));
    let status = pool.node(0).cli("scale show status");
    let url = pool.consul.as_ref().unwrap().url();
    assert!(status.contains(&format!("Consul agent:   {url}")), "{status}");
}

#[test]
fn an_acl_token_is_used_and_a_wrong_one_is_reported() {
    let conf = |token: &str| format!("[consul]\nurl = {{consul_url}}\ntoken = {token}\ncheck_ttl = 3s\n[amqp]\nenabled = no\n[registrations]\nenabled = no\n");
    let pool = Pool::builder().nodes(1).with_consul_acl("root-token").res_scale_conf(&conf("root-token")).start();
    wait_registered(&pool, Duration::from_secs(5));
    pool.consul.as_ref().unwrap().put_kv("res_scale/apps/acl-app", "{}");
    let node = pool.node(0);
    wait::until("the app through an ACL'd Consul", Duration::from_secs(5), Duration::from_millis(20), || ari_apps(node).contains(&"acl-app".to_string()).then_some(()));
    assert!(node.cli("scale show status").contains("token=****"));

    let good = std::fs::read_to_string(node.dir.join("etc/res_scale.conf")).unwrap();
    node.write_config("res_scale.conf", &good.replace("token = root-token", "token = not-a-token"));
    node.cli("module reload res_scale.so");
    let status = wait::until("the refusal", Duration::from_secs(5), Duration::from_millis(50), || {
        let status = node.cli("scale show status");
        status.lines().any(|l| l.trim_start().starts_with("consul") && l.contains("forbidden")).then_some(status)
    });
    assert!(!status.contains("not-a-token"), "the token is never shown: {status}");
    node.wait_logged("Consul refused the token");
    assert!(ari_apps(node).contains(&"acl-app".to_string()), "apps stay registered");
}

#[test]
fn an_app_an_ari_client_took_over_and_left_is_registered_again() {
    let pool = Pool::builder().nodes(1).with_consul().start();
    let node = &pool.nodes[0];
    wait_registered(&pool, Duration::from_secs(5));
    pool.consul.as_ref().unwrap().put_kv("res_scale/apps/conf", "{\"name\":\"conf\"}");
    wait::until("conf on the node", Duration::from_secs(5), Duration::from_millis(50), || ari_apps(node).contains(&"conf".to_string()).then_some(()));

    // A client of the node's own ARI takes the app (newest wins, as ARI has it) for 5 s...
    let base = format!("http://127.0.0.1:{}", node.http_port);
    let client = AriApp::start("ws_events.py", &[&base, "conf", ARI_USER, ARI_PASSWORD, "--idle", "5"]);
    client.expect("the client connected", Duration::from_secs(10), |l| l["ready"] == true);
    node.wait_logged("was taken over by another client");
    std::thread::sleep(Duration::from_secs(3));
    assert!(!node.log().contains("registered again for res_scale"), "res_scale must not take the app back from a live client");
    // ... then leaves: res_stasis unregisters the app with its socket, and res_scale takes it back.
    client.expect("the client left", Duration::from_secs(15), |l| l.get("summary").is_some());
    node.wait_logged("'conf' was let go by the client that took it over; registered again for res_scale");
    wait::until("conf on the node again", Duration::from_secs(5), Duration::from_millis(50), || ari_apps(node).contains(&"conf".to_string()).then_some(()));
}

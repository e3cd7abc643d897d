//! Trust on the bus: who may say what. The nodes, Kamailio and an application's consumer each
//! connect to a real RabbitMQ as their own user, with the permissions
//! `configs/rabbitmq/grant.sh` gives their role, and the pool still works; a user that may only
//! read events cannot inject a registration. With a pool key, only signed messages apply.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use res_scale_tests::amqp::AmqpProbe;
use res_scale_tests::kamailio::{Kamailio, KamailioSpec, Register};
use res_scale_tests::ports::free_port;
use res_scale_tests::{wait, Node, Pool};

fn has_contact(node: &Node, aor: &str, uri: &str) -> bool {
    node.cli(&format!("pjsip show aor {aor}")).contains(uri)
}

/// A device state changed on `a` reaches `b` live, and one changed while `b`'s module was
/// unloaded reaches it by SYNC once loaded again.
fn state_crosses_live_and_by_sync(a: &Node, b: &Node) {
    a.cli("devstate change Custom:agent1 INUSE");
    b.wait_hint("agent1", "InUse");
    b.cli("module unload res_scale.so");
    a.cli("devstate change Custom:agent2 BUSY");
    b.cli("module load res_scale.so");
    let told = format!("{}=BUSY", a.eid);
    wait::until("node2 has node1's state by SYNC", Duration::from_secs(10), Duration::from_millis(100), || b.cli("scale show states Custom:agent2").contains(&told).then_some(()));
}

#[test]
fn every_part_works_with_the_least_permissions_and_a_reader_cannot_inject_a_registration() {
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq_user("node", "node-secret").start();
    let (a, b) = (pool.node(0), pool.node(1));
    for node in &pool.nodes {
        node.wait_connected("registrations");
        node.wait_connected("states");
    }
    assert!(a.cli("scale show amqp").contains("connected"), "events: {}", a.cli("scale show amqp"));
    let rabbitmq = pool.rabbitmq.as_ref().unwrap();

    // Nodes with the node role: device state goes from one to the other, live and by SYNC (whose
    // answers go through the default exchange).
    state_crosses_live_and_by_sync(a, b);
    // Had the broker refused a SYNC answer, node1 would have lost its connection and told its
    // states again after reconnecting: the state arrives either way, the reconnect tells.
    let published = a.cli("scale show states");
    assert!(published.contains(" 0 reconnect(s)"), "node1's state connection was broken: {published}");

    // Kamailio with the kamailio role: its registration reaches both nodes.
    let mut spec = KamailioSpec::new(&rabbitmq.grant("kamailio", "registrar", "kamailio-secret"));
    spec.registrar_id = "kamailio-trust".into();
    spec.destinations = pool.nodes.iter().map(|n| format!("sip:127.0.0.1:{}", n.sip_port)).collect();
    let dir = pool.dir.join("kamailio");
    let kamailio = Kamailio::start(&dir, spec);
    let phone = Register { user: "alice".into(), call_id: "alice-trust".into(), cseq: 1, expires: 120, user_agent: "SIPp via Kamailio".into(), local_port: free_port() };
    phone.send(&dir, kamailio.sip_port).expect("alice registers with Kamailio");
    for node in &pool.nodes {
        wait::until(&format!("alice on {}", node.name), Duration::from_secs(10), Duration::from_millis(100), || has_contact(node, "alice", &phone.contact_uri()).then_some(()));
    }

    // An application's user reads events; the exchanges that carry registrations refuse it.
    let reader = AmqpProbe::new(&rabbitmq.grant("app", "reader", "reader-secret"));
    let forged = br#"{"type":"ANNOUNCE","aor":"bob","contact":{"uri":"sip:bob@203.0.113.9:5060","expires":4102444800},"origin":"kamailio-trust","seq":99}"#;
    let refused = reader.try_publish("res_scale.registrations", "registration.bob", forged).expect_err("the broker took a registration from a reader");
    assert!(refused.contains("ACCESS_REFUSED"), "{refused}");
    assert!(reader.try_publish("res_scale.state", "device.Custom:agent1", b"{}").is_err(), "the state exchange took a message from a reader");
    // Nor straight into a node's queue through the default exchange.
    let queues = rabbitmq.ctl(&["list_queues", "name"]);
    let node_queues: Vec<&str> = queues.lines().filter(|l| l.starts_with("res_scale.registrations.") || l.starts_with("res_scale.state.")).collect();
    assert!(!node_queues.is_empty(), "{queues}");
    for queue in node_queues {
        let refused = reader.try_publish("", queue, forged).expect_err("the default exchange took a message from a reader");
        assert!(refused.contains("ACCESS_REFUSED"), "{refused}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(!has_contact(a, "bob", "sip:bob@203.0.113.9:5060"), "the forged registration applied");
    // The same message from a user that may write (the broker's administrator) applies:
    // nothing but the permissions kept the forged one out.
    AmqpProbe::new(&rabbitmq.url()).publish("res_scale.registrations", "registration.bob", forged);
    wait::until("the administrator's message applied", Duration::from_secs(10), Duration::from_millis(100), || has_contact(a, "bob", "sip:bob@203.0.113.9:5060").then_some(()));
}

/// The key the nodes sign with, the one they still accept (a rotation), and one they do not know.
const POOL_KEY: &str = "5f2b9c0e7a1d4e8b-pool-key-of-the-trust-test";
const OLD_KEY: &str = "c83a0d6e1f9b2a47-previous-pool-key";
const WRONG_KEY: &str = "0000111122223333-a-key-nobody-uses";
const HEADER: &str = "x-res-scale-signature";

/// The signature header of `body` as res_scale.conf.sample defines it, made by OpenSSL rather
/// than by the module's code: `v1=` and HMAC-SHA256 in hex.
fn signature(key: &str, body: &[u8]) -> String {
    let mut openssl = Command::new("openssl").args(["dgst", "-sha256", "-hmac", key]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("openssl");
    openssl.stdin.take().unwrap().write_all(body).unwrap();
    let out = openssl.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst: {out:?}");
    // `SHA2-256(stdin)= <hex>` (or `(stdin)= <hex>` with older versions).
    let text = String::from_utf8(out.stdout).unwrap();
    format!("v1={}", text.split_whitespace().last().unwrap())
}

/// How many messages `scale show <what>` counts as rejected for `reason`.
fn rejected(node: &Node, what: &str, reason: &str) -> u64 {
    let out = node.cli(&format!("scale show {what}"));
    let line = out.lines().find(|l| l.trim_start().starts_with("Rejected:")).unwrap_or_else(|| panic!("no Rejected line in: {out}"));
    let prefix = format!("{reason}=");
    line.split(|c: char| c.is_whitespace() || c == '(' || c == ')').find_map(|w| w.strip_prefix(prefix.as_str())).map_or(0, |n| n.parse().unwrap())
}

fn announce(aor: &str, uri: &str, origin: &str) -> Vec<u8> {
    format!(r#"{{"type":"ANNOUNCE","aor":"{aor}","contact":{{"uri":"{uri}","expires":4102444800}},"origin":"{origin}","seq":7}}"#).into_bytes()
}

#[test]
fn with_a_pool_key_only_signed_messages_apply_and_kamailio_passes_as_an_unsigned_origin() {
    let conf = format!(
        "[general]\npool_key = {POOL_KEY}\npool_key_accepted = {OLD_KEY}\n[consul]\nenabled = yes\nurl = {{consul_url}}\ncheck_ttl = 3s\n\
         [amqp]\nenabled = yes\nurl = {{amqp_url}}\n[registrations]\nenabled = yes\nunsigned_origins = kamailio\n"
    );
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().res_scale_conf(&conf).start();
    let (a, b) = (pool.node(0), pool.node(1));
    for node in &pool.nodes {
        node.wait_connected("registrations");
        node.wait_connected("states");
    }
    let rabbitmq = pool.rabbitmq.as_ref().unwrap();
    let probe = AmqpProbe::new(&rabbitmq.url());
    probe.bind_queue_to_existing("trust-tap", "res_scale.registrations", "registration.dave");

    // Nodes with the same key: a phone registered on node1 is dialable on node2, a device
    // state goes across, and what node1 put on the wire carries the signature of the contract.
    let dir = pool.dir.join("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    let dave = Register { user: "dave".into(), call_id: "dave-signed".into(), cseq: 1, expires: 120, user_agent: "SIPp".into(), local_port: free_port() };
    dave.send(&dir, a.sip_port).expect("dave registers with node1");
    wait::until("dave on node2", Duration::from_secs(10), Duration::from_millis(100), || has_contact(b, "dave", &dave.contact_uri()).then_some(()));
    let tapped = probe.drain("trust-tap", 1, Duration::from_secs(5));
    let announced = tapped.iter().find(|m| m.body.contains("ANNOUNCE")).unwrap_or_else(|| panic!("no ANNOUNCE of dave on the exchange: {:?}", tapped.iter().map(|m| &m.body).collect::<Vec<_>>()));
    assert_eq!(announced.headers.get(HEADER), Some(&signature(POOL_KEY, announced.body.as_bytes())), "{:?}", announced.headers);
    // SYNC answers (straight to the asker's queue) and re-announcements are signed too.
    state_crosses_live_and_by_sync(a, b);
    wait::until("node2 has dave again by SYNC", Duration::from_secs(10), Duration::from_millis(100), || has_contact(b, "dave", &dave.contact_uri()).then_some(()));

    // Kamailio cannot sign: its registrations pass as from an unsigned origin.
    let mut spec = KamailioSpec::new(&rabbitmq.url());
    spec.destinations = pool.nodes.iter().map(|n| format!("sip:127.0.0.1:{}", n.sip_port)).collect();
    let kamailio = Kamailio::start(&pool.dir.join("kamailio"), spec);
    let alice = Register { user: "alice".into(), call_id: "alice-unsigned".into(), cseq: 1, expires: 120, user_agent: "SIPp via Kamailio".into(), local_port: free_port() };
    alice.send(&dir, kamailio.sip_port).expect("alice registers with Kamailio");
    for node in &pool.nodes {
        wait::until(&format!("Kamailio's alice on {}", node.name), Duration::from_secs(10), Duration::from_millis(100), || has_contact(node, "alice", &alice.contact_uri()).then_some(()));
    }

    // Forgeries from a user that may write to the exchanges: unsigned from another origin,
    // signed with a key the pool does not have, an unsigned device state.
    let unsigned = announce("bob", "sip:bob@203.0.113.9:5060", "edge-registrar-1");
    probe.publish("res_scale.registrations", "registration.bob", &unsigned);
    let wrong = announce("bob", "sip:bob@203.0.113.10:5060", "02:00:00:00:00:99");
    probe.publish_burst("res_scale.registrations", |_| "registration.bob".into(), std::slice::from_ref(&wrong), &[(HEADER, &signature(WRONG_KEY, &wrong))], true);
    let state = br#"{"type":"DEVICE_STATE","device":"Custom:agent9","state":"BUSY","cachable":true,"origin":"02:00:00:00:00:99","seq":1}"#;
    probe.publish("res_scale.state", "device.Custom:agent9", state);
    for node in &pool.nodes {
        wait::until(&format!("{} to refuse the forgeries", node.name), Duration::from_secs(10), Duration::from_millis(100), || {
            (rejected(node, "registrations", "unsigned") == 1 && rejected(node, "registrations", "bad_signature") == 1 && rejected(node, "states", "unsigned") == 1).then_some(())
        });
        let bob = node.cli("pjsip show aor bob");
        assert!(!bob.contains("203.0.113."), "a forged registration applied on {}: {bob}", node.name);
        let agent9 = node.cli("scale show states Custom:agent9");
        assert!(agent9.contains("No state known"), "a forged state applied on {}: {agent9}", node.name);
    }
    let log = a.wait_logged("refused (bad_signature)");
    assert!(log.contains("message claiming origin edge-registrar-1 refused (unsigned)"), "{log}");

    // A node still on the previous key (a rotation half done) is heard.
    let rotated = announce("bob", "sip:bob@198.51.100.7:5060", "02:00:00:00:00:98");
    probe.publish_burst("res_scale.registrations", |_| "registration.bob".into(), std::slice::from_ref(&rotated), &[(HEADER, &signature(OLD_KEY, &rotated))], true);
    for node in &pool.nodes {
        wait::until(&format!("the previous key's message on {}", node.name), Duration::from_secs(10), Duration::from_millis(100), || {
            has_contact(node, "bob", "sip:bob@198.51.100.7:5060").then_some(())
        });
    }

    // The keys show nowhere.
    for node in &pool.nodes {
        let status = node.cli("scale show status");
        assert!(status.contains("pool_key=**** pool_key_accepted=****"), "{status}");
        for command in ["status", "amqp", "registrations", "states", "nodes", "apps"] {
            let out = node.cli(&format!("scale show {command}"));
            assert!(!out.contains(POOL_KEY) && !out.contains(OLD_KEY), "scale show {command} on {} shows a key: {out}", node.name);
        }
        let log = node.log();
        assert!(!log.contains(POOL_KEY) && !log.contains(OLD_KEY), "{}'s log shows a key", node.name);
    }
}

//! Trust on the bus: who may say what. The nodes, Kamailio and an application's consumer each
//! connect to a real RabbitMQ as their own user, with the permissions
//! `configs/rabbitmq/grant.sh` gives their role, and the pool still works; a user that may only
//! read events cannot inject a registration.

use std::time::Duration;

use res_scale_tests::amqp::AmqpProbe;
use res_scale_tests::kamailio::{Kamailio, KamailioSpec, Register};
use res_scale_tests::ports::free_port;
use res_scale_tests::{wait, Node, Pool};

fn has_contact(node: &Node, aor: &str, uri: &str) -> bool {
    node.cli(&format!("pjsip show aor {aor}")).contains(uri)
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
    a.cli("devstate change Custom:agent1 INUSE");
    b.wait_hint("agent1", "InUse");
    b.cli("module unload res_scale.so");
    a.cli("devstate change Custom:agent2 BUSY");
    b.cli("module load res_scale.so");
    let told = format!("{}=BUSY", a.eid);
    wait::until("node2 has node1's state by SYNC", Duration::from_secs(10), Duration::from_millis(100), || b.cli("scale show states Custom:agent2").contains(&told).then_some(()));
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

//! SIP registrations shared across the pool, end to end: real Asterisk 22 nodes with the module,
//! a real RabbitMQ (and Consul where node membership matters), SIPp as phone and as the user
//! agent that answers calls. A message "from a registrar" is published on the exchange the way
//! Kamailio's config does.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use res_scale_tests::amqp::{AmqpProbe, Received};
use res_scale_tests::kamailio::{Kamailio, KamailioSpec, Register, Sipp};
use res_scale_tests::ports::free_port;
use res_scale_tests::{wait, Node, Pool};

const EXCHANGE: &str = "res_scale.registrations";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn scratch(pool: &Pool, name: &str) -> PathBuf {
    let dir = pool.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn announce(aor: &str, uri: &str, expires: u64, origin: &str, seq: u64) -> Vec<u8> {
    format!(r#"{{"type":"ANNOUNCE","aor":"{aor}","contact":{{"uri":"{uri}","expires":{expires},"path":"","user_agent":"test-phone","via_addr":"127.0.0.1","via_port":5060,"call_id":"c-{seq}"}},"origin":"{origin}","seq":{seq}}}"#).into_bytes()
}

fn withdraw(aor: &str, uri: &str, origin: &str, seq: u64) -> Vec<u8> {
    format!(r#"{{"type":"WITHDRAW","aor":"{aor}","contact":{{"uri":"{uri}"}},"origin":"{origin}","seq":{seq}}}"#).into_bytes()
}

fn wait_bus(node: &Node) {
    node.wait_connected("registrations");
}

/// Whether `pjsip show aor <aor>` on the node lists a contact with this URI.
fn has_contact(node: &Node, aor: &str, uri: &str) -> bool {
    node.cli(&format!("pjsip show aor {aor}")).contains(uri)
}

fn wait_contact(node: &Node, aor: &str, uri: &str, present: bool, within: Duration) {
    let what = format!("{uri} {} in AOR {aor} on {}", if present { "present" } else { "gone" }, node.name);
    wait::until(&what, within, Duration::from_millis(50), || (has_contact(node, aor, uri) == present).then_some(()));
}

/// A SIPp UAS on `port` that answers one call; Ok once that call completed.
fn answering_phone(dir: &Path, port: u16) -> Sipp {
    answering_phone_for(dir, port, 1)
}

/// A SIPp UAS on `port` that answers `calls` calls, then exits.
fn answering_phone_for(dir: &Path, port: u16, calls: u32) -> Sipp {
    let args: Vec<String> = ["-sn", "uas", "-i", "127.0.0.1", "-p", &port.to_string(), "-m", &calls.to_string()].iter().map(|s| s.to_string()).collect();
    Sipp::spawn(dir, &format!("uas-{port}"), &args)
}

/// Originates `PJSIP/<aor>` on the node; when the phone answers, the channel runs extension
/// 100 (Answer, Wait 5): we hang up after it is Up. Returns whether it came Up.
fn call(node: &Node, aor: &str) -> bool {
    let reply = node.ari().post(&format!("/channels?endpoint=PJSIP/{aor}&context=from-sip&extension=100&priority=1&timeout=10"));
    if reply.status != 200 {
        return false;
    }
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let up = wait::try_until(Duration::from_secs(8), Duration::from_millis(50), || {
        let r = node.ari().get(&format!("/channels/{id}"));
        match r.status {
            200 if r.json()["state"] == "Up" => Some(true),
            404 => Some(false),
            _ => None,
        }
    })
    .unwrap_or(false);
    let _ = node.ari().delete(&format!("/channels/{id}"));
    up
}

/// The types of the messages `node` published on the exchange about contacts (its SYNC
/// requests left out), in order.
fn published_by(messages: &[Received], node: &Node) -> Vec<String> {
    messages.iter().filter(|m| m.json["origin"] == node.eid.as_str() && m.json["type"] != "SYNC_REQUEST").map(|m| m.json["type"].as_str().unwrap_or("?").to_string()).collect()
}

fn counter_line(node: &Node, label: &str) -> String {
    let text = node.cli("scale show registrations");
    text.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("no '{label}' in:\n{text}")).to_string()
}

#[test]
fn an_announced_phone_is_callable_from_every_node_until_withdrawn_or_expired() {
    let pool = Pool::builder().nodes(2).with_rabbitmq().start();
    pool.nodes.iter().for_each(wait_bus);
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    probe.bind_queue_to_existing("watch", EXCHANGE, "registration.#");
    let port = free_port();
    let uri = format!("sip:alice@127.0.0.1:{port}");
    let dir = scratch(&pool, "sipp");

    probe.publish(EXCHANGE, "registration.alice", &announce("alice", &uri, now() + 120, "registrar-1", 1));
    for node in &pool.nodes {
        wait_contact(node, "alice", &uri, true, Duration::from_secs(5));
        let shown = node.cli("scale show registrations alice");
        assert!(shown.contains(&uri) && shown.contains("registrar-1") && shown.contains("test-phone"), "{shown}");
    }
    let phone = answering_phone(&dir, port);
    assert!(call(pool.node(1), "alice"), "node2 could not reach the announced phone");
    phone.wait(Duration::from_secs(10)).expect("the phone answered one call");

    probe.publish(EXCHANGE, "registration.alice", &withdraw("alice", &uri, "registrar-1", 2));
    for node in &pool.nodes {
        wait_contact(node, "alice", &uri, false, Duration::from_secs(5));
    }

    // An older message (seq 1 again, as a duplicate or a late one would be) changes nothing.
    probe.publish(EXCHANGE, "registration.alice", &announce("alice", &uri, now() + 120, "registrar-1", 1));
    wait::until("the old ANNOUNCE ignored", Duration::from_secs(5), Duration::from_millis(50), || counter_line(pool.node(1), "Ignored:").contains("1 duplicate/old/not owner").then_some(()));
    assert!(!has_contact(pool.node(1), "alice", &uri), "an old ANNOUNCE brought back a withdrawn contact");

    // An announcement that expires in 6 s shows its time left, then disappears by itself.
    let short = format!("sip:alice@127.0.0.1:{}", free_port());
    probe.publish(EXCHANGE, "registration.alice", &announce("alice", &short, now() + 6, "registrar-1", 3));
    wait_contact(pool.node(1), "alice", &short, true, Duration::from_secs(5));
    let shown = pool.node(1).cli("scale show registrations alice");
    let row = shown.lines().find(|l| l.contains(&short)).unwrap_or_else(|| panic!("{shown}"));
    let left: u64 = row.split("registrar-1").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no time left in: {row}"));
    assert!((1..=6).contains(&left) && row.contains(&format!("{left} s  test-phone")), "{row}");
    wait_contact(pool.node(1), "alice", &short, false, Duration::from_secs(12));
    assert!(counter_line(pool.node(1), "Applied:").contains("2 created or refreshed, 1 removed"), "{}", counter_line(pool.node(1), "Applied:"));
    // The nodes only applied what a registrar announced: they never publish it themselves.
    for node in &pool.nodes {
        assert_eq!(published_by(&probe.drain("watch", 0, Duration::from_millis(500)), node), Vec::<String>::new(), "{} published", node.name);
    }
}

#[test]
fn a_phone_registered_on_one_node_is_callable_from_the_other_until_it_unregisters() {
    let pool = Pool::builder().nodes(2).with_rabbitmq().start();
    pool.nodes.iter().for_each(wait_bus);
    let (a, b) = (pool.node(0), pool.node(1));
    let watch = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    watch.bind_queue_to_existing("watch", EXCHANGE, "registration.#");
    let dir = scratch(&pool, "sipp");
    let port = free_port();
    let phone = Register { user: "dave".into(), call_id: "dave-reg-1".into(), cseq: 1, expires: 120, user_agent: "SIPp phone".into(), local_port: port };
    phone.send(&dir, a.sip_port).expect("dave registers with node1");
    let uri = phone.contact_uri();

    wait_contact(b, "dave", &uri, true, Duration::from_secs(5));
    let shown = b.cli("scale show registrations dave");
    assert!(shown.contains(&a.eid) && shown.contains("SIPp phone"), "node2 should show node1 as origin:\n{shown}");
    assert!(a.cli("scale show registrations dave").contains("this node"));

    let uas = answering_phone(&dir, port);
    assert!(call(b, "dave"), "node2 could not reach the phone registered on node1");
    uas.wait(Duration::from_secs(10)).expect("the phone answered one call");

    let bye = Register { cseq: 2, expires: 0, ..phone };
    bye.send(&dir, a.sip_port).expect("dave unregisters");
    wait_contact(b, "dave", &uri, false, Duration::from_secs(5));
    // The phone is still there to answer: only the missing contact may keep the call from it.
    let uas = answering_phone(&dir, port);
    assert!(!call(b, "dave"), "node2 still reached the phone after it unregistered");
    drop(uas);
    // node2 learned dave from node1 and never publishes it itself.
    let seen = watch.drain("watch", 2, Duration::from_secs(5));
    assert_eq!(published_by(&seen, a), ["ANNOUNCE", "WITHDRAW"], "node1 announced the registration and the unregistration");
    assert_eq!(published_by(&seen, b), Vec::<String>::new(), "node2 published what it learned from node1");
}

#[test]
fn malformed_messages_are_counted_and_the_next_valid_one_applies() {
    let pool = Pool::builder().nodes(1).with_rabbitmq().start();
    let node = pool.node(0);
    wait_bus(node);
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    let t = now() + 120;
    let cases: Vec<Vec<u8>> = vec![
        b"{this is not json".to_vec(),
        br#"{"type":"HELLO","origin":"x"}"#.to_vec(),
        br#"{"type":"ANNOUNCE","aor":"alice","origin":"x","seq":1}"#.to_vec(),
        format!(r#"{{"type":"ANNOUNCE","aor":"alice","contact":{{"uri":"http://nope","expires":{t}}},"origin":"x","seq":2}}"#).into_bytes(),
        announce("nosuchaor", "sip:x@127.0.0.1:5999", t, "x", 3),
        announce("alice", "sip:alice@127.0.0.1:5998", now() - 10, "x", 4),
        vec![b'x'; 1024 * 1024],
    ];
    for body in &cases {
        probe.publish(EXCHANGE, "registration.alice", body);
    }
    let valid = "sip:alice@127.0.0.1:5997";
    probe.publish(EXCHANGE, "registration.alice", &announce("alice", valid, t, "x", 5));
    wait_contact(node, "alice", valid, true, Duration::from_secs(5));
    let rejected = counter_line(node, "Rejected:");
    assert!(rejected.contains("7 (too_large=1 bad_json=1 unknown_type=1 missing_field=1 bad_field=1 unknown_aor=1 expired=1)"), "{rejected}");
    node.wait_logged("registrations: message refused (too_large)");
    for reason in ["bad_json", "unknown_type", "missing_field", "bad_field", "unknown_aor", "expired"] {
        node.wait_logged(&format!("({reason})"));
    }
    assert!(node.cli("core show version").contains("Asterisk 22"));
}

#[test]
fn a_node_that_loads_late_or_restarts_gets_the_registrations_by_sync() {
    let mut pool = Pool::builder().nodes(2).with_rabbitmq().without_module_loaded().start();
    pool.node(0).cli("module load res_scale.so");
    wait_bus(pool.node(0));
    let dir = scratch(&pool, "sipp");
    let port = free_port();
    let phone = Register { user: "dave".into(), call_id: "dave-sync".into(), cseq: 1, expires: 300, user_agent: "SIPp phone".into(), local_port: port };
    phone.send(&dir, pool.node(0).sip_port).expect("dave registers with node1");
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    let remote = "sip:alice@127.0.0.1:5996";
    probe.publish(EXCHANGE, "registration.alice", &announce("alice", remote, now() + 300, "registrar-1", 1));
    wait_contact(pool.node(0), "alice", remote, true, Duration::from_secs(5));

    // node2 was not listening when both registrations were published.
    pool.node(1).cli("module load res_scale.so");
    wait_contact(pool.node(1), "dave", &phone.contact_uri(), true, Duration::from_secs(5));
    wait_contact(pool.node(1), "alice", remote, true, Duration::from_secs(5));
    assert!(pool.node(1).cli("scale show registrations alice").contains("registrar-1"), "the origin is kept in SYNC replies");
    let uas = answering_phone(&dir, port);
    assert!(call(pool.node(1), "dave"), "node2 could not reach the phone it learned by SYNC");
    uas.wait(Duration::from_secs(10)).expect("the phone answered one call");

    // A restart forgets what was learned (prune on boot), then SYNC brings it back. In memory
    // any restart forgets, so node2 keeps its contacts in astdb, where only prune_on_boot
    // removes them, and is killed (an unload would remove them too).
    let node2 = pool.node_mut(1);
    node2.write_config("sorcery.conf", "[res_pjsip]\ncontact = astdb,registrar\n");
    node2.kill();
    node2.start();
    node2.cli("module load res_scale.so");
    for (aor, uri) in [("dave", phone.contact_uri()), ("alice", remote.to_string())] {
        wait_contact(node2, aor, &uri, true, Duration::from_secs(5));
        let db = node2.dir.join("lib/astdb.sqlite3");
        wait::until(&format!("{uri} written to {}", db.display()), Duration::from_secs(10), Duration::from_millis(100), || {
            let bytes = std::fs::read(&db).unwrap_or_default();
            bytes.windows(uri.len()).any(|w| w == uri.as_bytes()).then_some(())
        });
    }
    node2.kill();
    node2.start();
    let node2 = pool.node(1);
    node2.wait_logged(&format!("Removed contact '{remote}' from AOR 'alice' due to system boot"));
    assert!(!has_contact(node2, "alice", remote) && !has_contact(node2, "dave", &phone.contact_uri()), "a restarted node kept learned contacts");
    node2.cli("module load res_scale.so");
    wait_contact(node2, "dave", &phone.contact_uri(), true, Duration::from_secs(5));
    wait_contact(node2, "alice", remote, true, Duration::from_secs(5));
}

#[test]
fn a_phone_registered_with_kamailio_is_callable_from_every_node() {
    let pool = Pool::builder().nodes(2).with_rabbitmq().start();
    // The nodes declare the exchange; Kamailio's rabbitmq module declares none.
    pool.nodes.iter().for_each(wait_bus);
    let dir = scratch(&pool, "kamailio");
    let mut spec = KamailioSpec::new(&pool.rabbitmq.as_ref().unwrap().url());
    spec.registrar_id = "kamailio-e2e".into();
    spec.destinations = pool.nodes.iter().map(|n| format!("sip:127.0.0.1:{}", n.sip_port)).collect();
    let kamailio = Kamailio::start(&dir, spec);
    let port = free_port();
    let phone = Register { user: "alice".into(), call_id: "alice-kam".into(), cseq: 1, expires: 120, user_agent: "SIPp via Kamailio".into(), local_port: port };
    phone.send(&dir, kamailio.sip_port).expect("alice registers with Kamailio");
    for node in &pool.nodes {
        wait_contact(node, "alice", &phone.contact_uri(), true, Duration::from_secs(5));
        assert!(node.cli("scale show registrations alice").contains("kamailio-e2e-"), "origin is Kamailio's");
    }
    let uas = answering_phone_for(&dir, port, 2);
    for node in &pool.nodes {
        assert!(call(node, "alice"), "{} could not reach the phone registered with Kamailio", node.name);
    }
    uas.wait(Duration::from_secs(10)).expect("the phone answered both calls");
}

#[test]
fn contacts_of_a_node_that_leaves_the_pool_are_withdrawn_on_the_others() {
    let mut pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    pool.nodes.iter().for_each(wait_bus);
    let dir = scratch(&pool, "sipp");
    let phone = Register { user: "dave".into(), call_id: "dave-loss".into(), cseq: 1, expires: 300, user_agent: "SIPp phone".into(), local_port: free_port() };
    phone.send(&dir, pool.node(0).sip_port).expect("dave registers with node1");
    wait_contact(pool.node(1), "dave", &phone.contact_uri(), true, Duration::from_secs(5));
    // Both nodes in Consul before one goes: node loss is judged from Consul's list.
    wait::until("both nodes in Consul", Duration::from_secs(10), Duration::from_millis(100), || pool.node(1).cli("scale show nodes").contains(&pool.node(0).eid).then_some(()));

    pool.node_mut(0).kill();
    // The killed node's TTL check turns critical (3 s here) and, after a grace period of a few
    // seconds, its contacts go.
    wait_contact(pool.node(1), "dave", &phone.contact_uri(), false, Duration::from_secs(30));
    assert!(counter_line(pool.node(1), "Sync/loss:").contains("1 contact(s) withdrawn for lost nodes"));
}

/// The origin `scale show registrations` gives for a contact ("" when it lists none).
fn origin(node: &Node, aor: &str, uri: &str) -> String {
    let text = node.cli(&format!("scale show registrations {aor}"));
    let row = text.lines().find(|l| l.split_whitespace().nth(1) == Some(uri)).unwrap_or("");
    let rest = row.split_whitespace().skip(2).collect::<Vec<_>>().join(" ");
    if rest.starts_with("this node") {
        "this node".into()
    } else {
        rest.split(' ').next().unwrap_or("").to_string()
    }
}

#[test]
fn a_phone_that_registers_where_its_contact_was_learned_stays_callable_when_the_origin_withdraws() {
    let pool = Pool::builder().nodes(2).with_rabbitmq().start();
    pool.nodes.iter().for_each(wait_bus);
    let (a, b) = (pool.node(0), pool.node(1));
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    let dir = scratch(&pool, "sipp");
    let port = free_port();
    let phone = Register { user: "dave".into(), call_id: "dave-moved".into(), cseq: 1, expires: 300, user_agent: "SIPp phone".into(), local_port: port };
    let uri = phone.contact_uri();

    // The phone was registered with another registrar, which announced it...
    probe.publish(EXCHANGE, "registration.dave", &announce("dave", &uri, now() + 120, "registrar-1", 1));
    for node in &pool.nodes {
        wait_contact(node, "dave", &uri, true, Duration::from_secs(5));
    }
    // ...then it moves to node1 (a dispatcher fail-over): node1's registrar refreshes the
    // contact it had applied.
    phone.send(&dir, a.sip_port).expect("dave registers with node1");
    wait::until("node1 to own dave's contact", Duration::from_secs(10), Duration::from_millis(100), || (origin(a, "dave", &uri) == "this node").then_some(()));
    wait::until("node2 to learn dave's contact from node1", Duration::from_secs(10), Duration::from_millis(100), || (origin(b, "dave", &uri) == a.eid).then_some(()));

    // The old registrar withdraws what it announced: nobody owns that any more.
    probe.publish(EXCHANGE, "registration.dave", &withdraw("dave", &uri, "registrar-1", 2));
    for node in &pool.nodes {
        wait::until(&format!("{} to pass over the withdrawal", node.name), Duration::from_secs(10), Duration::from_millis(100), || {
            counter_line(node, "Ignored:").contains(", 1 duplicate/old/not owner").then_some(())
        });
        assert!(has_contact(node, "dave", &uri), "{} lost dave's live registration:\n{}", node.name, node.cli("scale show registrations dave"));
    }
    assert!(counter_line(a, "Applied:").contains("1 taken over by this node's registrar"), "{}", counter_line(a, "Applied:"));
    let uas = answering_phone_for(&dir, port, 2);
    for node in &pool.nodes {
        assert!(call(node, "dave"), "{} could not reach dave after the withdrawal", node.name);
    }
    uas.wait(Duration::from_secs(10)).expect("the phone answered both calls");
}

/// A batch as a SYNC reply carries it: `per` contacts of AOR alice, contact `i` with URI
/// `uri(i)` from origin `backlog-<i>` (so that every one applies), all with sequence number
/// `seq`.
fn batch(per: usize, seq: u64, expires: u64, uri: impl Fn(usize) -> String) -> Vec<u8> {
    let items: Vec<String> =
        (0..per).map(|i| format!(r#"{{"aor":"alice","contact":{{"uri":"{}","expires":{expires},"user_agent":"backlog-{seq}"}},"origin":"backlog-{i}","seq":{seq}}}"#, uri(i))).collect();
    format!(r#"{{"type":"ANNOUNCE","origin":"backlog","contacts":[{}]}}"#, items.join(",")).into_bytes()
}

#[test]
fn unload_with_thousands_of_messages_queued_returns_within_its_bound() {
    // The module's own limits for stopping registrations: 3 s for the bus, 3 s for the contact
    // observer, 3 s for the message at hand and 5 s of removing contacts; then 5 s for the
    // worker threads. Applying the whole backlog here takes minutes on these machines.
    const BOUND: Duration = Duration::from_secs(20);
    let pool = Pool::builder().nodes(1).with_rabbitmq().start();
    let node = pool.node(0);
    wait_bus(node);
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    let (messages, per) = (3000, 300);
    let expires = now() + 600;
    let bodies: Vec<Vec<u8>> = (1..=messages).map(|seq| batch(per, seq, expires, |i| format!("sip:alice@127.0.0.1:{}", 10_000 + i))).collect();
    probe.publish_burst(EXCHANGE, |_| "registration.batch".into(), &bodies, &[], false);
    // The applier is at work: the rest of the burst waits in its inbox and in the queue.
    wait::until("the first batch applied", Duration::from_secs(30), Duration::from_millis(20), || {
        counter_line(node, "Applied:").split_whitespace().nth(1).and_then(|n| n.parse::<usize>().ok()).filter(|n| *n >= per).map(|_| ())
    });

    let started = std::time::Instant::now();
    let show = std::thread::scope(|s| {
        let unload = s.spawn(|| node.cli("module unload res_scale.so"));
        std::thread::sleep(Duration::from_millis(200));
        let shown = node.cli("module show like res_scale");
        let show_took = started.elapsed();
        let out = unload.join().unwrap();
        let unload_took = started.elapsed();
        eprintln!("module unload returned after {unload_took:?}: {out:?}; module show after {show_took:?}");
        assert!(unload_took < BOUND, "module unload took {unload_took:?} with {messages} messages queued (bound {BOUND:?})");
        assert!(show_took < BOUND, "module show waited {show_took:?}");
        shown
    });
    assert!(show.contains("res_scale.so"), "{show}");
    assert!(node.cli("scale show status").contains("No such command"), "res_scale still running");
    assert!(node.cli("core show version").contains("Asterisk 22"));
}

#[test]
fn a_failed_start_leaves_no_contact_observer_behind() {
    let pool = Pool::builder().nodes(1).with_rabbitmq().start();
    let node = pool.node(0);
    wait_bus(node);
    let conf = std::fs::read_to_string(node.dir.join("etc/res_scale.conf")).unwrap();
    // A reload that restarts registrations, and fails to spawn its thread.
    node.cli("scale test fail registrations");
    node.write_config("res_scale.conf", &conf.replace("[registrations]\n", "[registrations]\nwithdraw_on_node_loss = no\n"));
    node.cli("module reload res_scale.so");
    node.wait_logged("cannot start the registrations thread: failure injected");
    // The next restart works.
    node.write_config("res_scale.conf", &conf);
    node.cli("module reload res_scale.so");
    wait_bus(node);

    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    probe.bind_queue("test-observer", EXCHANGE, "registration.dave");
    let dir = scratch(&pool, "sipp");
    let phone = Register { user: "dave".into(), call_id: "dave-observer".into(), cseq: 1, expires: 120, user_agent: "SIPp phone".into(), local_port: free_port() };
    phone.send(&dir, node.sip_port).expect("dave registers");
    Register { cseq: 2, expires: 0, ..phone }.send(&dir, node.sip_port).expect("dave unregisters");
    // The WITHDRAW comes after every ANNOUNCE of the registration (one queue, in order).
    let mut got = Vec::new();
    while !got.iter().any(|m: &res_scale_tests::amqp::Received| m.json["type"] == "WITHDRAW") {
        let more = probe.drain("test-observer", 1, Duration::from_secs(5));
        assert!(!more.is_empty(), "no WITHDRAW for dave; got {:?}", got.iter().map(|m| &m.body).collect::<Vec<_>>());
        got.extend(more);
    }
    let announces = got.iter().filter(|m| m.json["type"] == "ANNOUNCE").count();
    assert_eq!(announces, 1, "each change announced once: {:?}", got.iter().map(|m| &m.body).collect::<Vec<_>>());
}

#[test]
fn the_cli_reads_the_registrations_between_the_updates_of_a_batch() {
    let pool = Pool::builder().nodes(1).with_rabbitmq().start();
    let node = pool.node(0);
    wait_bus(node);
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    let (messages, per) = (40, 1000);
    let expires = now() + 600;
    let bodies: Vec<Vec<u8>> = (1..=messages).map(|seq| batch(per, seq, expires, |i| format!("sip:alice-{seq}-{i}@127.0.0.1:5060"))).collect();
    probe.publish_burst(EXCHANGE, |_| "registration.batch".into(), &bodies, &[], false);
    // While the batches apply, `scale show status` counts the contacts learned so far. Holding
    // the book for a whole batch, the module could only ever show whole batches.
    let remote = |status: &str| -> usize {
        let line = status.lines().find(|l| l.trim_start().starts_with("registrations")).unwrap_or_else(|| panic!("{status}"));
        line.split_whitespace().find_map(|w| w.strip_prefix("remote=")).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    let mut seen = Vec::new();
    wait::until("every batch applied", Duration::from_secs(120), Duration::from_millis(1), || {
        let n = remote(&node.cli("scale show status"));
        seen.push(n);
        (n == messages as usize * per).then_some(())
    });
    eprintln!("{} reads, {} of them between the updates of a batch", seen.len(), seen.iter().filter(|n| *n % per != 0).count());
    assert!(seen.iter().any(|n| n % per != 0), "only whole batches seen: {seen:?}");
}

#[test]
fn a_refresh_moves_a_contact_to_its_new_path() {
    let pool = Pool::builder().nodes(1).with_rabbitmq().start();
    let node = pool.node(0);
    // An AOR whose phones register through edge proxies (Path, RFC 3327).
    let pjsip = std::fs::read_to_string(node.dir.join("etc/pjsip.conf")).unwrap();
    node.write_config("pjsip.conf", &format!("{pjsip}[edge]\ntype = aor\nsupport_path = yes\nmax_contacts = 5\n"));
    node.cli("module reload res_pjsip.so");
    wait::until("AOR edge", Duration::from_secs(10), Duration::from_millis(100), || node.cli("pjsip show aor edge").contains("support_path").then_some(()));
    wait_bus(node);
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    let uri = "sip:edge@127.0.0.1:5995";
    let via =
        |proxy: &str, seq: u64| String::from_utf8(announce("edge", uri, now() + 120, "registrar-1", seq)).unwrap().replace(r#""path":"""#, &format!(r#""path":"<sip:{proxy}@127.0.0.1:5070;lr>""#));
    let path_shown = |proxy: &str| node.cli(&format!("pjsip show contact edge/{uri}")).lines().any(|l| l.contains("path") && l.contains(&format!("<sip:{proxy}@")));

    probe.publish(EXCHANGE, "registration.edge", via("p1", 1).as_bytes());
    wait::until("the contact through p1", Duration::from_secs(5), Duration::from_millis(50), || path_shown("p1").then_some(()));
    // The phone re-registered through another edge proxy.
    probe.publish(EXCHANGE, "registration.edge", via("p2", 2).as_bytes());
    wait::until("the contact through p2", Duration::from_secs(5), Duration::from_millis(50), || path_shown("p2").then_some(()));
}

#[test]
fn with_withdraw_on_node_loss_off_the_contacts_of_a_lost_node_stay() {
    let conf = "[consul]\nurl = {consul_url}\ncheck_ttl = 3s\n[amqp]\nurl = {amqp_url}\n[registrations]\nenabled = yes\nwithdraw_on_node_loss = no\n";
    let mut pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().res_scale_conf(conf).start();
    pool.nodes.iter().for_each(wait_bus);
    let dir = scratch(&pool, "sipp");
    let phone = Register { user: "dave".into(), call_id: "dave-kept".into(), cseq: 1, expires: 300, user_agent: "SIPp phone".into(), local_port: free_port() };
    phone.send(&dir, pool.node(0).sip_port).expect("dave registers with node1");
    wait_contact(pool.node(1), "dave", &phone.contact_uri(), true, Duration::from_secs(5));
    wait::until("both nodes in Consul", Duration::from_secs(10), Duration::from_millis(100), || pool.node(1).cli("scale show nodes").contains(&pool.node(0).eid).then_some(()));

    let lost = pool.node(0).eid.clone();
    pool.node_mut(0).kill();
    let node2 = pool.node(1);
    wait::until("node2 to judge node1 lost", Duration::from_secs(30), Duration::from_millis(100), || {
        node2.log().contains(&format!("node {lost} left the pool; keeping the contacts it announced")).then_some(())
    });
    assert!(has_contact(node2, "dave", &phone.contact_uri()), "the contact was withdrawn although withdraw_on_node_loss = no");
    assert!(counter_line(node2, "Sync/loss:").contains("0 contact(s) withdrawn for lost nodes"), "{}", counter_line(node2, "Sync/loss:"));
}

#[test]
fn the_cli_reads_the_registrations_while_a_lost_nodes_contacts_go() {
    let mut pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    pool.nodes.iter().for_each(wait_bus);
    wait::until("both nodes in Consul", Duration::from_secs(10), Duration::from_millis(100), || pool.node(1).cli("scale show nodes").contains(&pool.node(0).eid).then_some(()));
    // node1 "announced" many contacts (node1 itself ignores them: its own origin).
    let eid = pool.node(0).eid.clone();
    let (messages, per) = (30, 1000);
    let total = messages * per;
    let expires = now() + 600;
    let bodies: Vec<Vec<u8>> = (0..messages)
        .map(|m| {
            let items: Vec<String> =
                (0..per).map(|i| format!(r#"{{"aor":"alice","contact":{{"uri":"sip:alice-{m}-{i}@127.0.0.1:5060","expires":{expires}}},"origin":"{eid}","seq":{}}}"#, m * per + i + 1)).collect();
            format!(r#"{{"type":"ANNOUNCE","origin":"{eid}","contacts":[{}]}}"#, items.join(",")).into_bytes()
        })
        .collect();
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    probe.publish_burst(EXCHANGE, |_| "registration.batch".into(), &bodies, &[], false);
    let node2_remote = |pool: &Pool| -> usize {
        let status = pool.node(1).cli("scale show status");
        let line = status.lines().find(|l| l.trim_start().starts_with("registrations")).unwrap_or_else(|| panic!("{status}"));
        line.split_whitespace().find_map(|w| w.strip_prefix("remote=")).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    wait::until("node2 to learn every contact", Duration::from_secs(120), Duration::from_millis(100), || (node2_remote(&pool) == total).then_some(()));

    pool.node_mut(0).kill();
    // While node2 withdraws them, one by one, the CLI sees the count go down.
    let mut seen = Vec::new();
    wait::until("node2 to withdraw them", Duration::from_secs(120), Duration::from_millis(1), || {
        let n = node2_remote(&pool);
        seen.push(n);
        (n == 0).then_some(())
    });
    eprintln!("{} reads, {} of them during the withdrawal", seen.len(), seen.iter().filter(|n| **n != 0 && **n != total).count());
    assert!(seen.iter().any(|n| *n != 0 && *n != total), "only all or nothing seen: {seen:?}");
}

/// The contact observers' serializer (`sorcery/contact-...`): its deepest queue since the last
/// reset, and its high-water mark (over it, res_pjsip turns SIP requests away).
fn contact_queue(node: &Node) -> (u64, u64) {
    let text = node.cli("core show taskprocessors like sorcery/contact");
    let fields: Vec<&str> = text.lines().find(|l| l.starts_with("sorcery/contact-")).unwrap_or_else(|| panic!("{text}")).split_whitespace().collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse().ok()).unwrap_or_else(|| panic!("{text}"));
    (number(3), number(5))
}

fn reset_contact_queue(node: &Node) {
    let text = node.cli("core show taskprocessors like sorcery/contact");
    for name in text.lines().filter_map(|l| l.split_whitespace().next()).filter(|w| w.starts_with("sorcery/contact-")) {
        node.cli(&format!("core reset taskprocessor {name}"));
    }
}

/// "N contact(s): ..." of `scale show registrations`.
fn contact_count(node: &Node) -> usize {
    let text = node.cli("scale show registrations");
    text.lines().find_map(|l| l.split_once(" contact(s):")).and_then(|(n, _)| n.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn ten_thousand_contacts_apply_and_withdraw_without_overloading_asterisk() {
    const N: usize = 10_000;
    let pool = Pool::builder().nodes(1).with_rabbitmq().extra_aors(N).start();
    let node = pool.node(0);
    wait_bus(node);
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    let uri = |i: usize| format!("sip:phone-{i}@10.0.0.1:5060");
    reset_contact_queue(node);

    // As a SYNC answer brings them: batches of 500.
    let expires = now() + 600;
    let batches: Vec<Vec<u8>> = (0..N)
        .step_by(500)
        .map(|first| {
            let items: Vec<String> =
                (first..first + 500).map(|i| format!(r#"{{"aor":"bench-aor-{i}","contact":{{"uri":"{}","expires":{expires},"user_agent":"bulk"}},"origin":"registrar-9","seq":1}}"#, uri(i))).collect();
            format!(r#"{{"type":"ANNOUNCE","origin":"registrar-9","contacts":[{}]}}"#, items.join(",")).into_bytes()
        })
        .collect();
    probe.publish_burst(EXCHANGE, |_| "registration.batch".into(), &batches, &[], false);
    wait::until("10,000 contacts applied", Duration::from_secs(120), Duration::from_millis(200), || (contact_count(node) == N).then_some(()));
    for i in [0, N / 2, N - 1] {
        assert!(has_contact(node, &format!("bench-aor-{i}"), &uri(i)), "bench-aor-{i} in PJSIP");
    }
    let (depth, high) = contact_queue(node);
    assert!(depth < high, "the contact observers' queue reached {depth} of its high-water mark {high} while applying");

    reset_contact_queue(node);
    let withdrawals: Vec<Vec<u8>> = (0..N).map(|i| withdraw(&format!("bench-aor-{i}"), &uri(i), "registrar-9", 2)).collect();
    probe.publish_burst(EXCHANGE, |_| "registration.bench".into(), &withdrawals, &[], false);
    wait::until("10,000 contacts withdrawn", Duration::from_secs(120), Duration::from_millis(200), || (contact_count(node) == 0).then_some(()));
    assert!(!has_contact(node, &format!("bench-aor-{}", N - 1), &uri(N - 1)), "gone from PJSIP too");
    let (depth, high) = contact_queue(node);
    assert!(depth < high, "the contact observers' queue reached {depth} of its high-water mark {high} while withdrawing");
    assert!(!node.log().contains("task processor queue reached"), "Asterisk logged a taskprocessor overload");
}

#[test]
fn contacts_move_into_the_indexed_store_at_load_and_back_at_unload_with_nothing_lost() {
    let pool = Pool::builder().nodes(1).with_rabbitmq().without_module_loaded().start();
    let node = pool.node(0);
    let dir = scratch(&pool, "sipp");
    let port = free_port();
    // A phone that registered before res_scale was loaded: its contact is in sorcery's `memory`.
    let phone = Register { user: "1001".into(), call_id: "1001-reg-1".into(), cseq: 1, expires: 300, user_agent: "SIPp phone".into(), local_port: port };
    phone.send(&dir, node.sip_port).expect("1001 registers");
    let uri = phone.contact_uri();
    wait_contact(node, "1001", &uri, true, Duration::from_secs(5));

    let log_from = node.log().len();
    node.cli("module load res_scale.so");
    wait_bus(node);
    assert!(counter_line(node, "PJSIP store:").contains("indexed by res_scale (1 contact(s)"), "{}", counter_line(node, "PJSIP store:"));
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    probe.publish(EXCHANGE, "registration.alice", &announce("alice", "sip:alice@10.0.0.7:5060", now() + 300, "registrar-1", 1));
    wait_contact(node, "alice", "sip:alice@10.0.0.7:5060", true, Duration::from_secs(5));
    assert!(counter_line(node, "PJSIP store:").contains("(2 contact(s)"), "{}", counter_line(node, "PJSIP store:"));

    // Found by its AOR (an id prefix search) in the new store: it is dialled, and a refresh
    // changes the one contact instead of adding a second.
    let uas = answering_phone(&dir, port);
    assert!(call(node, "1001"), "the phone registered before the load is not reachable from the indexed store");
    uas.wait(Duration::from_secs(10)).expect("the phone answered one call");
    Register { cseq: 2, ..phone.clone() }.send(&dir, node.sip_port).expect("1001 refreshes");
    assert_eq!(node.pjsip_contacts(), 2, "{}", node.cli("pjsip show contacts"));

    // At unload the learned contact goes and the phone's goes back to `memory`, still reachable.
    node.cli("module unload res_scale.so");
    assert!(!has_contact(node, "alice", "sip:alice@10.0.0.7:5060"), "the learned contact outlived the module");
    assert!(has_contact(node, "1001", &uri), "the phone's contact went with the module");
    assert_eq!(node.pjsip_contacts(), 1, "{}", node.cli("pjsip show contacts"));
    let uas = answering_phone(&dir, port);
    assert!(call(node, "1001"), "the phone is not reachable after the unload");
    uas.wait(Duration::from_secs(10)).expect("the phone answered one call");
    Register { cseq: 3, expires: 0, ..phone }.send(&dir, node.sip_port).expect("1001 unregisters");
    wait_contact(node, "1001", &uri, false, Duration::from_secs(5));
    assert_eq!(node.pjsip_contacts(), 0, "a copy of the contact stayed behind: {}", node.cli("pjsip show contacts"));
    let log = node.log();
    assert!(!log[log_from..].contains("ERROR["), "errors in the log:\n{}", &log[log_from..]);
}

#[test]
fn with_indexed_contacts_off_the_contacts_stay_in_sorcerys_store() {
    let conf = "[consul]\nenabled = no\n[amqp]\nenabled = yes\nurl = {amqp_url}\n[registrations]\nenabled = yes\nindexed_contacts = no\n";
    let pool = Pool::builder().nodes(1).with_rabbitmq().res_scale_conf(conf).start();
    let node = pool.node(0);
    wait_bus(node);
    assert!(counter_line(node, "PJSIP store:").contains("sorcery.conf's (not indexed)"), "{}", counter_line(node, "PJSIP store:"));
}

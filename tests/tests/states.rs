//! Device and mailbox (MWI) state shared across the pool, end to end: real Asterisk 22 nodes
//! with the module, a real RabbitMQ and Consul. A state changed on one node (`devstate change`
//! of func_devstate's Custom: devices, or a call to a SIPp phone) is what the other nodes'
//! DEVICE_STATE() (through ARI) and hints report; a mailbox count set on one node (app_minivm's
//! MinivmMWI, as a voicemail system publishes it) is what a SIPp phone subscribed for MWI on
//! another node is NOTIFYed of; hostile messages are published straight to the exchange.

use std::path::{Path, PathBuf};
use std::time::Duration;

use res_scale_tests::amqp::{AmqpProbe, Received};
use res_scale_tests::kamailio::{sipp_dir, Register, Sipp};
use res_scale_tests::ports::free_port;
use res_scale_tests::{wait, Node, Pool};

const EXCHANGE: &str = "res_scale.state";

/// What DEVICE_STATE(<device>) says on the node: the aggregate over every origin.
fn device_state(node: &Node, device: &str) -> String {
    let reply = node.ari().get(&format!("/deviceStates/{}", device.replace('/', "%2F")));
    assert_eq!(reply.status, 200, "GET /deviceStates/{device} on {}: {}", node.name, reply.body);
    reply.json()["state"].as_str().unwrap_or("?").to_string()
}

fn wait_device_state(node: &Node, device: &str, state: &str) {
    wait::until(&format!("{device} {state} on {}", node.name), Duration::from_secs(5), Duration::from_millis(20), || {
        (device_state(node, device) == state).then_some(())
    });
}

fn counter_line(node: &Node, label: &str) -> String {
    let text = node.cli("scale show states");
    text.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("no '{label}' in:\n{text}")).to_string()
}

fn state_message(device: &str, state: &str, origin: &str, seq: u64) -> Vec<u8> {
    format!(r#"{{"type":"DEVICE_STATE","device":"{device}","state":"{state}","cachable":true,"origin":"{origin}","seq":{seq}}}"#).into_bytes()
}

/// The messages about `device`, as (origin, state).
fn about(messages: &[Received], device: &str) -> Vec<(String, String)> {
    messages
        .iter()
        .filter(|m| m.json["device"] == device)
        .map(|m| (m.json["origin"].as_str().unwrap_or("?").to_string(), m.json["state"].as_str().unwrap_or("?").to_string()))
        .collect()
}

#[test]
fn a_state_changed_on_one_node_is_what_every_node_sees_and_it_is_published_once() {
    let pool = Pool::builder().nodes(3).with_consul().with_rabbitmq().start();
    pool.nodes.iter().for_each(|n| n.wait_connected("states"));
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    probe.bind_queue_to_existing("watch", EXCHANGE, "device.#");
    let (a, others) = (pool.node(0), [pool.node(1), pool.node(2)]);

    a.cli("devstate change Custom:agent1 INUSE");
    for node in others {
        wait_device_state(node, "Custom:agent1", "INUSE");
        node.wait_hint("agent1", "InUse");
        let shown = node.cli("scale show states Custom:agent1");
        assert!(shown.contains(&format!("{}=INUSE", a.eid)), "{shown}");
    }
    a.cli("devstate change Custom:agent1 NOT_INUSE");
    for node in others {
        wait_device_state(node, "Custom:agent1", "NOT_INUSE");
        node.wait_hint("agent1", "Idle");
    }

    // Each change went out once, from the node it happened on: the others applied it under
    // that node's EID and never sent it on.
    let messages = probe.drain("watch", 2, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    let late = probe.drain("watch", 0, Duration::ZERO);
    let all: Vec<Received> = messages.into_iter().chain(late).collect();
    let expected = vec![(a.eid.clone(), "INUSE".to_string()), (a.eid.clone(), "NOT_INUSE".to_string())];
    assert_eq!(about(&all, "Custom:agent1"), expected, "{:#?}", all.iter().map(|m| &m.body).collect::<Vec<_>>());
    let status = others[0].cli("scale show status");
    let line = status.lines().find(|l| l.trim_start().starts_with("state ")).unwrap_or_else(|| panic!("{status}"));
    // Applied: these two changes, and what node1 and node3 told by SYNC at start.
    let applied: u64 = line.split("applied=").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(line.contains("connected") && applied >= 2, "{line}");
}

/// The SYNC line's counts: (asked, answered, cleared for nodes that left).
fn sync_counts(node: &Node) -> (u64, u64, u64) {
    let line = counter_line(node, "SYNC:");
    let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    match numbers[..] {
        [asked, answered, cleared] => (asked, answered, cleared),
        _ => panic!("{line}"),
    }
}

/// The count of the node's own messages it ignored (`Ignored:     6 own, ...`).
fn own_ignored(node: &Node) -> u64 {
    let line = counter_line(node, "Ignored:");
    line.trim_start().trim_start_matches("Ignored:").split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn hostile_messages_are_counted_and_refused_and_the_next_valid_one_applies() {
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    pool.nodes.iter().for_each(|n| n.wait_connected("states"));
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    let b = pool.node(1);
    let key = "device.Custom:agent9";
    let stranger = "02:00:00:00:00:99";

    // The node's own states come back to it too (and are ignored as its own): count from here.
    let own_before = own_ignored(b);
    probe.publish(EXCHANGE, key, b"{not json");
    probe.publish(EXCHANGE, key, &state_message("Custom:agent9", "SLEEPING", stranger, 1));
    probe.publish(EXCHANGE, key, &state_message(&format!("Custom:{}", "x".repeat(10_000)), "INUSE", stranger, 2));
    // This node's own EID, in capitals: Asterisk would take it for the local state.
    probe.publish(EXCHANGE, key, &state_message("Custom:agent9", "BUSY", &b.eid.to_uppercase(), 3));
    let mut huge = state_message("Custom:agent9", "BUSY", stranger, 4);
    huge.resize(1024 * 1024, b' ');
    probe.publish(EXCHANGE, key, &huge);

    wait::until("the four refusals counted", Duration::from_secs(5), Duration::from_millis(50), || {
        counter_line(b, "Rejected:").contains("4 (").then_some(())
    });
    assert_eq!(counter_line(b, "Rejected:").trim(), "Rejected:    4 (too_large=1 bad_json=1 bad_field=1 unknown_state=1)");
    // The spoofed message came before the last refused one: it was handled too.
    assert_ne!(device_state(b, "Custom:agent9"), "BUSY", "no refused or spoofed state was applied");
    assert!(own_ignored(b) > own_before, "the spoof was ignored as the node's own: {}", counter_line(b, "Ignored:"));
    assert!(b.cli("core show uptime").contains("System uptime"), "Asterisk still answers");

    probe.publish(EXCHANGE, key, &state_message("Custom:agent9", "INUSE", stranger, 5));
    wait_device_state(b, "Custom:agent9", "INUSE");
    // An older one (seq 4 < 5) changes nothing.
    probe.publish(EXCHANGE, key, &state_message("Custom:agent9", "NOT_INUSE", stranger, 4));
    wait::until("the old message ignored", Duration::from_secs(5), Duration::from_millis(50), || {
        counter_line(b, "Ignored:").contains("1 duplicate/old").then_some(())
    });
    assert_eq!(device_state(b, "Custom:agent9"), "INUSE");
}

#[test]
fn unloading_the_module_takes_back_what_it_learned_and_hints_follow() {
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    pool.nodes.iter().for_each(|n| n.wait_connected("states"));
    let (a, b) = (pool.node(0), pool.node(1));
    a.cli("devstate change Custom:agent1 INUSE");
    b.wait_hint("agent1", "InUse");

    b.cli("module unload res_scale.so");
    // Custom:agent1 has no state of node2's own: taking node1's back leaves nothing to
    // aggregate, so unless the module has Asterisk work it out again the hint stays InUse.
    b.wait_hint("agent1", "Idle");
    assert_ne!(device_state(b, "Custom:agent1"), "INUSE");

    b.cli("module load res_scale.so");
    b.wait_connected("states");
    a.cli("devstate change Custom:agent1 BUSY");
    b.wait_hint("agent1", "Busy");
}

#[test]
fn a_call_on_one_node_makes_the_phone_busy_on_the_others_until_it_hangs_up() {
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    pool.nodes.iter().for_each(|n| n.wait_connected("states"));
    let (a, b) = (pool.node(0), pool.node(1));
    let dir = pool.dir.join("sipp");
    let port = free_port();
    let phone = Register { user: "dave".into(), call_id: "dave-state".into(), cseq: 1, expires: 120, user_agent: "SIPp phone".into(), local_port: port };
    phone.send(&dir, a.sip_port).expect("dave registers with node1");
    b.wait_hint("dave", "Idle");

    let uas = Sipp::spawn(&dir, "uas-dave", &["-sn", "uas", "-i", "127.0.0.1", "-p", &port.to_string(), "-m", "1"].map(String::from));
    let reply = a.ari().post("/channels?endpoint=PJSIP/dave&context=from-sip&extension=101&priority=1&timeout=10");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.json()["id"].as_str().unwrap().to_string();
    wait::until("the call up on node1", Duration::from_secs(8), Duration::from_millis(50), || (a.ari().get(&format!("/channels/{id}")).json()["state"] == "Up").then_some(()));
    // node2 has no call: what it reports is node1's state of the phone.
    b.wait_hint("dave", "InUse");
    assert_eq!(device_state(b, "PJSIP/dave"), "INUSE");

    assert_eq!(a.ari().delete(&format!("/channels/{id}")).status, 204);
    uas.wait(Duration::from_secs(10)).expect("the phone saw the call end");
    b.wait_hint("dave", "Idle");
    assert_eq!(device_state(b, "PJSIP/dave"), "NOT_INUSE");
}

/// The mailbox of AOR erin (tests/src/node.rs), the one its SIPp phone subscribes to.
const MAILBOX: &str = "1001@default";

/// Sets the mailbox's counts on `node` as a voicemail system publishes them: app_minivm's
/// MinivmMWI(mailbox,urgent,new,old) on a Local channel.
fn set_mailbox(node: &Node, new: u32, old: u32) {
    let out = node.cli(&format!("channel originate Local/100@from-sip application MinivmMWI {MAILBOX},0,{new},{old}"));
    assert!(!out.contains("No such command"), "{out}");
}

/// A SIPp phone (`tests/sipp/mwi_subscribe.xml`) that subscribes for erin's MWI on `node` and
/// ends after `notifies` NOTIFYs; the messages it saw go to the returned file.
fn mwi_phone(dir: &Path, node: &Node, name: &str, notifies: u32) -> (Sipp, PathBuf) {
    let trace = dir.join(format!("{name}-messages.log"));
    let args = [
        "-sf", &sipp_dir().join("mwi_subscribe.xml").display().to_string(), "-s", "erin", "-i", "127.0.0.1", "-p", &free_port().to_string(),
        "-m", "1", "-key", "notifies", &notifies.to_string(), "-key", "sub_expires", "600", "-timeout", "120s", "-timeout_error",
        "-trace_msg", "-message_file", &trace.display().to_string(), &format!("127.0.0.1:{}", node.sip_port),
    ]
    .map(String::from);
    (Sipp::spawn(dir, name, &args), trace)
}

/// What each NOTIFY the phone received said: (Messages-Waiting, Voice-Message counts), e.g.
/// ("yes", "2/1").
fn notified(trace: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(trace).unwrap_or_default();
    let header = |message: &str, name: &str| {
        message.lines().find_map(|l| l.trim().strip_prefix(name)).map(|v| v.split_whitespace().next().unwrap_or("").to_string()).unwrap_or_default()
    };
    text.split("message received")
        .skip(1)
        .filter_map(|m| m.lines().find(|l| !l.trim().is_empty() && !l.contains("bytes :")).filter(|l| l.trim_start().starts_with("NOTIFY ")).map(|_| m))
        .map(|m| (header(m, "Messages-Waiting:"), header(m, "Voice-Message:")))
        .collect()
}

/// Waits until the phone has received its `n`-th NOTIFY and returns what it said.
fn wait_notify(trace: &Path, n: usize) -> (String, String) {
    wait::until(&format!("NOTIFY #{n} in {}", trace.display()), Duration::from_secs(10), Duration::from_millis(20), || notified(trace).get(n - 1).cloned())
}

fn notify(waiting: &str, counts: &str) -> (String, String) {
    (waiting.to_string(), counts.to_string())
}

fn mwi_message(mailbox: &str, new: i64, old: i64, origin: &str, seq: u64) -> Vec<u8> {
    format!(r#"{{"type":"MWI","mailbox":"{mailbox}","new":{new},"old":{old},"origin":"{origin}","seq":{seq}}}"#).into_bytes()
}

#[test]
fn a_mailbox_count_set_on_one_node_is_what_another_reports_and_notifies_its_phone_of() {
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    pool.nodes.iter().for_each(|n| n.wait_connected("states"));
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    probe.bind_queue_to_existing("watch-mwi", EXCHANGE, "mwi.#");
    let (a, b) = (pool.node(0), pool.node(1));
    let (phone, trace) = mwi_phone(&pool.dir.join("sipp"), b, "mwi-erin", 3);
    assert_eq!(wait_notify(&trace, 1), notify("no", "0/0"), "the first NOTIFY: nothing waits yet");

    set_mailbox(a, 2, 1);
    assert_eq!(wait_notify(&trace, 2), notify("yes", "2/1"), "node2's phone hears of node1's voicemail");
    let shown = b.cli(&format!("scale show states {MAILBOX}"));
    assert!(shown.contains(&format!("{}=2/1", a.eid)) && shown.contains(&format!("2/1 from {}", a.eid)), "{shown}");
    assert_eq!(counter_line(b, "MWI applied:").trim(), "MWI applied:  1", "{shown}");
    let own = a.cli(&format!("scale show states {MAILBOX}"));
    assert!(own.contains(&format!("{MAILBOX}  2/1")) && own.contains("2/1 from this node"), "{own}");

    set_mailbox(a, 0, 0);
    assert_eq!(wait_notify(&trace, 3), notify("no", "0/0"), "and of the mailbox emptied");
    phone.wait(Duration::from_secs(10)).expect("the phone answered its three NOTIFYs");

    // Each change went out once, from node1: node2 applied it under node1's EID, never sent it on.
    let messages = probe.drain("watch-mwi", 2, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    let all: Vec<Received> = messages.into_iter().chain(probe.drain("watch-mwi", 0, Duration::ZERO)).collect();
    let seen: Vec<(String, String, u64, u64)> = all
        .iter()
        .map(|m| (m.routing_key.clone(), m.json["origin"].as_str().unwrap_or("?").to_string(), m.json["new"].as_u64().unwrap_or(99), m.json["old"].as_u64().unwrap_or(99)))
        .collect();
    let key = format!("mwi.{MAILBOX}");
    assert_eq!(seen, vec![(key.clone(), a.eid.clone(), 2, 1), (key, a.eid.clone(), 0, 0)], "{:#?}", all.iter().map(|m| &m.body).collect::<Vec<_>>());
}

#[test]
fn hostile_mwi_messages_are_counted_and_refused_and_the_next_valid_one_applies() {
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    pool.nodes.iter().for_each(|n| n.wait_connected("states"));
    let probe = AmqpProbe::new(&pool.rabbitmq.as_ref().unwrap().url());
    let b = pool.node(1);
    let key = format!("mwi.{MAILBOX}");
    let stranger = "02:00:00:00:00:99";
    let (phone, trace) = mwi_phone(&pool.dir.join("sipp"), b, "mwi-erin", 2);
    assert_eq!(wait_notify(&trace, 1), notify("no", "0/0"));

    let own_before = counter_line(b, "MWI ignored:");
    probe.publish(EXCHANGE, &key, br#"{"type":"MWI","mailbox":"1001@default","new":7,"#);
    probe.publish(EXCHANGE, &key, &mwi_message(MAILBOX, -7, 0, stranger, 1));
    // This node's own EID, in capitals: Asterisk would take it for the node's own voicemail.
    probe.publish(EXCHANGE, &key, &mwi_message(MAILBOX, 7, 7, &b.eid.to_uppercase(), 2));
    let mut huge = mwi_message(MAILBOX, 7, 7, stranger, 3);
    huge.resize(1024 * 1024, b' ');
    probe.publish(EXCHANGE, &key, &huge);

    // What cannot be decoded counts with the exchange's refusals, by reason.
    wait::until("the three refusals counted", Duration::from_secs(5), Duration::from_millis(50), || counter_line(b, "Rejected:").contains("3 (").then_some(()));
    assert_eq!(counter_line(b, "Rejected:").trim(), "Rejected:    3 (too_large=1 bad_json=1 bad_field=1)");
    assert_ne!(counter_line(b, "MWI ignored:"), own_before, "the spoof was ignored as the node's own");
    assert!(b.cli(&format!("scale show states {MAILBOX}")).contains("No MWI state known"), "nothing refused or spoofed was applied");
    assert!(b.cli("core show uptime").contains("System uptime"), "Asterisk still answers");

    probe.publish(EXCHANGE, &key, &mwi_message(MAILBOX, 3, 0, stranger, 5));
    assert_eq!(wait_notify(&trace, 2), notify("yes", "3/0"), "the next valid message applies: the phone hears of it");
    // An older one (seq 4 < 5) changes nothing.
    probe.publish(EXCHANGE, &key, &mwi_message(MAILBOX, 0, 0, stranger, 4));
    wait::until("the old message ignored", Duration::from_secs(5), Duration::from_millis(50), || counter_line(b, "MWI ignored:").contains("1 duplicate/old").then_some(()));
    assert!(b.cli(&format!("scale show states {MAILBOX}")).contains(&format!("3/0 from {stranger}")));
    phone.wait(Duration::from_secs(10)).expect("the phone answered its NOTIFYs");
    assert_eq!(notified(&trace).len(), 2, "no NOTIFY for a refused message");
}

#[test]
fn unloading_takes_back_a_mailbox_state_learned_but_not_one_written_here_since() {
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    pool.nodes.iter().for_each(|n| n.wait_connected("states"));
    let (a, b) = (pool.node(0), pool.node(1));
    let dir = pool.dir.join("sipp");
    let (phone, trace) = mwi_phone(&dir, b, "mwi-erin", 6);
    assert_eq!(wait_notify(&trace, 1), notify("no", "0/0"));

    set_mailbox(a, 2, 1);
    assert_eq!(wait_notify(&trace, 2), notify("yes", "2/1"));
    b.cli("module unload res_scale.so");
    assert_eq!(wait_notify(&trace, 3), notify("no", "0/0"), "node1's state taken back: without the module nothing would keep it right");
    b.wait_logged("took back 1 mailbox state(s) learned from other nodes (0 kept");

    b.cli("module load res_scale.so");
    assert_eq!(wait_notify(&trace, 4), notify("yes", "2/1"), "back by SYNC: node1 still has it");
    set_mailbox(a, 3, 0);
    assert_eq!(wait_notify(&trace, 5), notify("yes", "3/0"));
    // node2's own voicemail writes the mailbox after node1 did: that is its state now.
    set_mailbox(b, 0, 4);
    assert_eq!(wait_notify(&trace, 6), notify("no", "0/4"));
    phone.wait(Duration::from_secs(10)).expect("the phone answered its six NOTIFYs");
    b.cli("module unload res_scale.so");
    b.wait_logged("took back 0 mailbox state(s) learned from other nodes (1 kept");
    // A phone subscribing now is told what Asterisk holds: node2's own state stayed.
    let (late, late_trace) = mwi_phone(&dir, b, "mwi-erin-late", 1);
    assert_eq!(wait_notify(&late_trace, 1), notify("no", "0/4"));
    late.wait(Duration::from_secs(10)).expect("the late phone got its NOTIFY");
}

#[test]
fn a_node_that_reconnects_gets_the_pools_states_by_sync_and_tells_its_own() {
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    pool.nodes.iter().for_each(|n| n.wait_connected("states"));
    let (a, b) = (pool.node(0), pool.node(1));
    a.cli("devstate change Custom:agent1 INUSE");
    b.wait_hint("agent1", "InUse");

    // node2 away: what changes meanwhile on node1 it can only learn by asking.
    b.cli("module unload res_scale.so");
    b.wait_hint("agent1", "Idle");
    a.cli("devstate change Custom:agent2 BUSY");
    let (_, answered, _) = sync_counts(a);
    b.cli("module load res_scale.so");
    b.wait_hint("agent1", "InUse");
    wait_device_state(b, "Custom:agent2", "BUSY");
    assert_eq!(sync_counts(a).1, answered + 1, "node1 answered node2's SYNC");

    // A state set on node1 while its module was not loaded: nobody heard of it, so node1 tells
    // the pool when it is back.
    a.cli("module unload res_scale.so");
    a.cli("devstate change Custom:agent3 RINGING");
    a.cli("module load res_scale.so");
    wait_device_state(b, "Custom:agent3", "RINGING");
    wait_device_state(b, "Custom:agent2", "BUSY");
}

#[test]
fn the_states_of_a_node_that_leaves_the_pool_are_cleared_and_it_catches_up_when_back() {
    let mut pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    pool.nodes.iter().for_each(|n| n.wait_connected("states"));
    let dir = pool.dir.join("sipp");
    let port = free_port();
    // dave is registered with node2, so node2 has a state of its own for him (Idle): when
    // node1's InUse goes, that is what is left.
    let phone = Register { user: "dave".into(), call_id: "dave-loss".into(), cseq: 1, expires: 300, user_agent: "SIPp phone".into(), local_port: port };
    phone.send(&dir, pool.node(1).sip_port).expect("dave registers with node2");
    pool.node(0).wait_hint("dave", "Idle");
    wait::until("both nodes in Consul", Duration::from_secs(10), Duration::from_millis(100), || pool.node(1).cli("scale show nodes").contains(&pool.node(0).eid).then_some(()));

    let _uas = Sipp::spawn(&dir, "uas-dave", &["-sn", "uas", "-i", "127.0.0.1", "-p", &port.to_string(), "-m", "1"].map(String::from));
    let reply = pool.node(0).ari().post("/channels?endpoint=PJSIP/dave&context=from-sip&extension=101&priority=1&timeout=10");
    assert_eq!(reply.status, 200, "{}", reply.body);
    pool.node(1).wait_hint("dave", "InUse");

    // node1 dies with the call up: nothing will ever say the call ended.
    pool.node_mut(0).kill();
    let b = pool.node(1);
    wait::until("node2's hint back to Idle", Duration::from_secs(30), Duration::from_millis(100), || (b.hint_state("dave") == "Idle").then_some(()));
    assert!(sync_counts(b).2 >= 1, "{}", counter_line(b, "SYNC:"));

    // While node1 is down, node2 changes a state; node1, restarted, has it by SYNC.
    b.cli("devstate change Custom:agent1 BUSY");
    pool.node_mut(0).start();
    let a = pool.node(0);
    a.wait_connected("states");
    a.wait_hint("agent1", "Busy");
}

#[test]
fn mailbox_states_come_back_by_sync_and_go_with_a_node_that_left_the_pool() {
    let mut pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    pool.nodes.iter().for_each(|n| n.wait_connected("states"));
    let dir = pool.dir.join("sipp");
    let (phone, trace) = mwi_phone(&dir, pool.node(1), "mwi-erin", 3);
    assert_eq!(wait_notify(&trace, 1), notify("no", "0/0"));

    // node2 away while node1's voicemail changes: node2 can only learn it by asking.
    pool.node(1).cli("module unload res_scale.so");
    set_mailbox(pool.node(0), 2, 1);
    pool.node(1).cli("module load res_scale.so");
    assert_eq!(wait_notify(&trace, 2), notify("yes", "2/1"), "node2 asked for a SYNC and node1's answer held its mailbox");

    // node1 dies: nothing keeps its state right on node2 any more.
    pool.node_mut(0).kill();
    let b = pool.node(1);
    let gone = wait::try_until(Duration::from_secs(30), Duration::from_millis(100), || notified(&trace).get(2).cloned());
    assert_eq!(gone, Some(notify("no", "0/0")), "node1's mailbox state taken back on node2 once it left the pool");
    phone.wait(Duration::from_secs(10)).expect("the phone answered its three NOTIFYs");
    b.wait_logged("left the pool; took back 1 mailbox state(s) it had shared (0 kept");
}

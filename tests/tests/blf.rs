//! Busy lamps (BLF) through Kamailio's presence server, end to end: two Asterisk 22 nodes with
//! res_scale, a real RabbitMQ and Consul, Kamailio with configs/kamailio/kamailio.cfg, SIPp as
//! the phone and as the lamp. Each extension is PUBLISHed by one node only (node2 publishes
//! 1001, node1 1002); the call to 1001 is on node1, so the lamp can only light through the
//! device state node2 learned from node1.

use std::fs;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::Duration;

use res_scale_tests::kamailio::{sipp_dir, Kamailio, Register, Sipp};
use res_scale_tests::ports::free_port;
use res_scale_tests::{wait, Node, Pool};

/// Kamailio's log lines of the PUBLISHes for `exten` (route[PRESENCE] logs each one).
fn publishes<'a>(log: &'a str, exten: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(&format!("PUBLISH sip:{exten}@"))).collect()
}

/// Whether a PUBLISH log line came from the node's SIP socket.
fn from_node(line: &str, node: &Node) -> bool {
    line.contains(&format!(" from 127.0.0.1:{} ", node.sip_port))
}

/// A SIPp lamp for `exten` (tests/sipp/watch_dialog.xml) subscribed through Kamailio: it exits
/// 0 once it was NOTIFYed `confirmed` and then `terminated`. Returns it and the file its SIP
/// messages go to.
fn watch(dir: &Path, kamailio: &Kamailio, exten: &str, name: &str) -> (Sipp, PathBuf) {
    let port = free_port().to_string();
    let scenario = sipp_dir().join("watch_dialog.xml").display().to_string();
    let messages = dir.join(format!("{name}-messages.log"));
    let target = format!("127.0.0.1:{}", kamailio.sip_port);
    let args = ["-sf", &scenario, "-s", exten, "-i", "127.0.0.1", "-p", &port, "-m", "1", "-timeout", "60s", "-timeout_error"];
    let mut args: Vec<String> = args.map(String::from).to_vec();
    args.extend(["-trace_msg".into(), "-message_file".into(), messages.display().to_string(), target]);
    (Sipp::spawn(dir, name, &args), messages)
}

#[test]
fn a_call_on_one_node_lights_the_lamp_another_node_publishes_and_the_hang_up_puts_it_out() {
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    pool.nodes.iter().for_each(|n| n.wait_connected("states"));
    let (a, b) = (pool.node(0), pool.node(1));
    let kamailio = Kamailio::in_front_of(&pool);
    let server = format!("127.0.0.1:{}", kamailio.sip_port);
    a.publish_extension_state(&server, "^1002$");
    b.publish_extension_state(&server, "^1001$");

    // The phone registers with node1 only; node2's hint follows node1's device state, and
    // node2's publisher tells Kamailio (its first PUBLISH: 1001 is idle).
    let dir = pool.dir.join("sipp");
    let phone_port = free_port();
    let phone = Register { user: "1001".into(), call_id: "1001-blf".into(), cseq: 1, expires: 120, user_agent: "SIPp phone".into(), local_port: phone_port };
    phone.send(&dir, a.sip_port).expect("1001 registers with node1");
    b.wait_hint("1001", "Idle");
    wait::until("node2's first PUBLISH of 1001", Duration::from_secs(10), Duration::from_millis(100), || {
        publishes(&kamailio.log(), "1001").iter().any(|l| from_node(l, b)).then_some(())
    });

    // A phone that rings first (SIPp's uas: 180, then 200), and one that answers at once: from
    // idle straight to in a call, the change Kamailio refuses to make to a publication that says
    // "terminated" unless the config takes SIP-If-Match off (configs/kamailio/README.md).
    let answer_at_once = sipp_dir().join("uas_answer.xml").display().to_string();
    let phones: [(&str, &[&str]); 2] = [("ringing", &["-sn", "uas"]), ("answering", &["-sf", &answer_at_once])];
    for (name, phone_args) in phones {
        let (lamp, messages) = watch(&dir, &kamailio, "1001", &format!("lamp-1001-{name}"));
        wait::until("the lamp's first NOTIFY", Duration::from_secs(10), Duration::from_millis(50), || {
            fs::read_to_string(&messages).ok()?.contains("NOTIFY sip:watcher@").then_some(())
        });

        let mut args: Vec<String> = phone_args.iter().map(|a| a.to_string()).collect();
        args.extend(["-i", "127.0.0.1", "-p", &phone_port.to_string(), "-m", "1"].map(String::from));
        let uas = Sipp::spawn(&dir, &format!("uas-1001-{name}"), &args);
        let reply = a.ari().post("/channels?endpoint=PJSIP/1001&context=from-sip&extension=101&priority=1&timeout=10");
        assert_eq!(reply.status, 200, "{}", reply.body);
        let id = reply.json()["id"].as_str().unwrap().to_string();
        wait::until(&format!("the call to the {name} phone up on node1"), Duration::from_secs(8), Duration::from_millis(50), || {
            (a.ari().get(&format!("/channels/{id}")).json()["state"] == "Up").then_some(())
        });
        wait::until(&format!("the lamp NOTIFYed confirmed (the {name} phone)"), Duration::from_secs(10), Duration::from_millis(50), || {
            fs::read_to_string(&messages).ok()?.contains("<state>confirmed</state>").then_some(())
        });
        assert_eq!(b.hint_state("1001"), "InUse", "what node2 published");

        assert_eq!(a.ari().delete(&format!("/channels/{id}")).status, 204);
        uas.wait(Duration::from_secs(10)).expect("the phone saw the call end");
        lamp.wait(Duration::from_secs(30)).expect("the lamp was NOTIFYed confirmed, then terminated");
        b.wait_hint("1001", "Idle");
    }

    // Only node2 published 1001 (node1 had the calls but publishes 1002 only): idle, then in
    // a call and idle again twice, at least.
    let log = kamailio.log();
    let lines = publishes(&log, "1001");
    assert!(lines.len() >= 5, "PUBLISHes of 1001:\n{}", lines.join("\n"));
    assert!(lines.iter().all(|l| from_node(l, b)), "a PUBLISH of 1001 not from node2:\n{}", lines.join("\n"));
}

#[test]
fn a_publish_from_an_address_that_is_not_a_node_is_refused() {
    let pool = Pool::builder().nodes(1).with_rabbitmq().start();
    let kamailio = Kamailio::in_front_of(&pool);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let local = socket.local_addr().unwrap();
    let body = r#"<?xml version="1.0"?><dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full" entity="sip:1001@127.0.0.1"><dialog id="1001"><state>confirmed</state></dialog></dialog-info>"#;
    let request = format!(
        "PUBLISH sip:1001@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKforged{p}\r\nMax-Forwards: 70\r\n\
         From: <sip:1001@127.0.0.1>;tag=forged\r\nTo: <sip:1001@127.0.0.1>\r\nCall-ID: forged-{p}\r\nCSeq: 1 PUBLISH\r\n\
         Event: dialog\r\nExpires: 60\r\nContent-Type: application/dialog-info+xml\r\nContent-Length: {len}\r\n\r\n{body}",
        port = kamailio.sip_port,
        p = local.port(),
        len = body.len()
    );
    socket.send_to(request.as_bytes(), ("127.0.0.1", kamailio.sip_port)).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("Kamailio answers the PUBLISH");
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(reply.starts_with("SIP/2.0 403"), "{reply}");
    assert!(kamailio.log().contains("refused: not an Asterisk node"), "{}", kamailio.log());
}

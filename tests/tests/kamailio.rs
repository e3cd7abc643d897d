//! Kamailio as registrar (`configs/kamailio/kamailio.cfg`) publishes registration changes to
//! RabbitMQ in the wire format of DESIGN.md section 5: ANNOUNCE on REGISTER, WITHDRAW on
//! de-REGISTER and when usrloc expires a contact. Needs no Asterisk: a private RabbitMQ, a
//! private Kamailio and SIPp, all on loopback. SIPp also plays two Asterisk nodes for the
//! dispatcher (round robin, record-routed dialogs).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use res_scale_tests::amqp::{AmqpProbe, Received};
use res_scale_tests::kamailio::{Kamailio, KamailioSpec, Register, Sipp};
use res_scale_tests::ports::free_port;
use res_scale_tests::rabbitmq::RabbitMq;
use res_scale_tests::wait;
use serde_json::Value;

const EXCHANGE: &str = "res_scale.registrations";
const QUEUE: &str = "kamailio-probe";
const ORIGIN: &str = "kamailio-test";
/// Has a double quote and a backslash: the JSON must escape both.
const USER_AGENT: &str = r#"SIPp "res_scale" test\agent"#;

fn scratch_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let id = format!("{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/kamailio-tests").join(id);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes a passed test's folder, unless RES_SCALE_KEEP_KAMAILIO_DIRS is set (a failed test
/// never gets here and keeps its folder).
fn cleanup(dir: &std::path::Path) {
    if std::env::var_os("RES_SCALE_KEEP_KAMAILIO_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Exactly one message within `within`, with the routing key and content type of the contract.
fn one_message(probe: &AmqpProbe, within: Duration, what: &str) -> Received {
    let got = probe.drain(QUEUE, 1, within);
    assert_eq!(got.len(), 1, "expected exactly one message ({what}), got {got:#?}");
    let message = got.into_iter().next().unwrap();
    assert_eq!(message.content_type.as_deref(), Some("application/json"), "{message:?}");
    assert_eq!(message.delivery_mode, Some(2), "{message:?}");
    assert!(message.json.is_object(), "body is not a JSON object: {}", message.body);
    message
}

/// `REGISTRAR_ID-<Kamailio's start time>`: a restarted Kamailio (seq from 1 again) is a new origin.
fn assert_origin(json: &Value, body: &str) {
    let origin = json["origin"].as_str().unwrap_or_default();
    let started: u64 = origin.strip_prefix(&format!("{ORIGIN}-")).and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("origin is not {ORIGIN}-<start time>: {body}"));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(started <= now && now - started < 600, "origin's start time {started} is not Kamailio's start ({now}): {body}");
}

fn seq(message: &Received) -> u64 {
    message.json["seq"].as_u64().unwrap_or_else(|| panic!("seq is not a non-negative integer: {}", message.body))
}

fn assert_withdraw(message: &Received, aor: &str, uri: &str) {
    let json = &message.json;
    assert_eq!(message.routing_key, format!("registration.{aor}"), "{}", message.body);
    assert_eq!(json["type"], "WITHDRAW", "{}", message.body);
    assert_eq!(json["aor"], aor, "{}", message.body);
    assert_eq!(json["contact"]["uri"], uri, "{}", message.body);
    assert_origin(json, &message.body);
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 5, "unexpected fields in {}", message.body);
}

/// A private broker with the probe's queue bound, and a registrar publishing to it.
fn registrar(dir: &Path, defines: &[&str]) -> (RabbitMq, AmqpProbe, Kamailio) {
    let mq = RabbitMq::start(&dir.join("rabbitmq"), false);
    let probe = AmqpProbe::new(&mq.url());
    // Declares the exchange (durable topic, as res_scale nodes do): Kamailio's rabbitmq module
    // only publishes, it declares nothing.
    probe.bind_queue(QUEUE, EXCHANGE, "registration.#");
    let mut spec = KamailioSpec::new(&mq.url());
    spec.registrar_id = ORIGIN.to_string();
    // Nobody listens there: the dispatcher just marks it inactive. REGISTER never goes there.
    spec.destinations = vec![format!("sip:127.0.0.1:{}", free_port())];
    spec.defines = defines.iter().map(|d| d.to_string()).collect();
    let kamailio = Kamailio::start(&dir.join("kamailio"), spec);
    (mq, probe, kamailio)
}

#[test]
fn registrations_are_published_as_announce_and_withdraw() {
    let started = Instant::now();
    let dir = scratch_dir();
    let (mq, probe, kamailio) = registrar(&dir, &["UL_TIMER_INTERVAL=1", "REG_MIN_EXPIRES=1", "LOG_LEVEL=2"]);
    eprintln!("broker and kamailio up after {:?}", started.elapsed());

    // 1. REGISTER alice, Expires: 60 -> ANNOUNCE.
    let register = Register { user: "alice".into(), call_id: format!("reg-{}@127.0.0.1", std::process::id()), cseq: 1, expires: 60, user_agent: USER_AGENT.into(), local_port: free_port() };
    let sipp_dir = dir.join("sipp");
    let before = now();
    register.send(&sipp_dir, kamailio.sip_port).unwrap();
    let after = now();
    let announce = one_message(&probe, Duration::from_secs(5), "ANNOUNCE of alice");
    eprintln!("ANNOUNCE: {}", announce.body);
    let json = &announce.json;
    assert_eq!(announce.routing_key, "registration.alice");
    assert_eq!(json["type"], "ANNOUNCE", "{}", announce.body);
    assert_eq!(json["aor"], "alice", "{}", announce.body);
    assert_origin(json, &announce.body);
    let contact = &json["contact"];
    assert_eq!(contact["uri"], register.contact_uri().as_str(), "{}", announce.body);
    let expires = contact["expires"].as_i64().unwrap_or_else(|| panic!("expires is not an integer: {}", announce.body));
    assert!((before + 55..=after + 65).contains(&expires), "expires {expires} not within [{}, {}]", before + 55, after + 65);
    assert_eq!(contact["path"], "", "{}", announce.body);
    assert_eq!(contact["user_agent"], USER_AGENT, "{}", announce.body);
    assert_eq!(contact["via_addr"], "127.0.0.1", "{}", announce.body);
    assert_eq!(contact["via_port"], Value::from(register.local_port), "{}", announce.body);
    assert_eq!(contact["call_id"], register.call_id.as_str(), "{}", announce.body);
    assert_eq!(contact.as_object().unwrap().len(), 7, "unexpected contact fields in {}", announce.body);
    assert_eq!(json.as_object().unwrap().len(), 5, "unexpected fields in {}", announce.body);
    let seq_announce = seq(&announce);

    // 2. The same binding with Expires: 0 -> WITHDRAW with a larger seq.
    let deregister = Register { cseq: 2, expires: 0, ..register.clone() };
    deregister.send(&sipp_dir, kamailio.sip_port).unwrap();
    let withdraw = one_message(&probe, Duration::from_secs(5), "WITHDRAW of alice after Expires: 0");
    eprintln!("WITHDRAW: {}", withdraw.body);
    assert_withdraw(&withdraw, "alice", &register.contact_uri());
    let seq_withdraw = seq(&withdraw);
    assert!(seq_withdraw > seq_announce, "seq {seq_withdraw} not above {seq_announce}");
    let contacts = kamailio.kamcmd(&["ul.dump"]).unwrap_or_default();
    assert!(!contacts.contains(&register.contact_uri()), "alice still bound after Expires: 0:\n{contacts}");

    // 3. REGISTER with Expires: 3 and let it run out -> ANNOUNCE, then WITHDRAW from usrloc's timer.
    let short = Register { call_id: format!("short-{}@127.0.0.1", std::process::id()), cseq: 1, expires: 3, local_port: free_port(), ..register.clone() };
    let before = now();
    short.send(&sipp_dir, kamailio.sip_port).unwrap();
    let announce = one_message(&probe, Duration::from_secs(5), "ANNOUNCE of the short registration");
    assert_eq!(announce.json["type"], "ANNOUNCE", "{}", announce.body);
    assert_eq!(announce.json["contact"]["uri"], short.contact_uri().as_str(), "{}", announce.body);
    let expires = announce.json["contact"]["expires"].as_i64().unwrap();
    assert!((before + 2..=now() + 4).contains(&expires), "expires {expires} is not about now+3");
    let seq_short = seq(&announce);
    assert!(seq_short > seq_withdraw, "seq {seq_short} not above {seq_withdraw}");

    let waiting = Instant::now();
    let expired = one_message(&probe, Duration::from_secs(15), "WITHDRAW of the expired contact");
    eprintln!("WITHDRAW after expiry ({:?} after the ANNOUNCE): {}", waiting.elapsed(), expired.body);
    assert_withdraw(&expired, "alice", &short.contact_uri());
    assert!(seq(&expired) > seq_short, "seq {} not above {seq_short}", seq(&expired));
    assert!(now() >= expires, "WITHDRAW before the contact expired ({expires})");

    // Nothing else was published.
    let rest = probe.drain(QUEUE, 0, Duration::from_millis(1500));
    assert!(rest.is_empty(), "unexpected messages: {rest:#?}");
    eprintln!("test body done after {:?}", started.elapsed());
    drop(kamailio);
    drop(mq);
    cleanup(&dir);
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn initial_requests_are_dispatched_round_robin_and_dialogs_follow_the_record_route() {
    let started = Instant::now();
    let dir = scratch_dir();
    let mq = RabbitMq::start(&dir.join("rabbitmq"), false);
    let sipp_dir = dir.join("sipp");
    // Two "Asterisk nodes": SIPp UAS that answer calls (and, with -aa, the OPTIONS pings, which
    // SIPp counts as calls too, so the INVITEs are counted in their message traces instead).
    let uas_ports = [free_port(), free_port()];
    let traces: Vec<PathBuf> = (0..2).map(|i| sipp_dir.join(format!("uas{i}-messages.log"))).collect();
    let _uas: Vec<Sipp> = uas_ports
        .iter()
        .zip(&traces)
        .enumerate()
        .map(|(i, (port, trace))| {
            let port = port.to_string();
            let trace = trace.display().to_string();
            let scenario = res_scale_tests::kamailio::sipp_dir().join("uas_rr.xml").display().to_string();
            Sipp::spawn(&sipp_dir, &format!("uas{i}"), &args(&["-sf", &scenario, "-i", "127.0.0.1", "-p", &port, "-aa", "-trace_msg", "-message_file", &trace, "-timeout", "60s"]))
        })
        .collect();

    let mut spec = KamailioSpec::new(&mq.url());
    spec.destinations = uas_ports.iter().map(|p| format!("sip:127.0.0.1:{p}")).collect();
    spec.defines = vec!["DS_PING_INTERVAL=1".into()];
    let kamailio = Kamailio::start(&dir.join("kamailio"), spec);

    // Pinged (every second) and answered: both stay active (flags A, P = probing).
    let count = |trace: &PathBuf, prefix: &str| std::fs::read_to_string(trace).unwrap_or_default().lines().filter(|l| l.starts_with(prefix)).count();
    wait::until("two OPTIONS pings at each node", Duration::from_secs(10), Duration::from_millis(100), || traces.iter().all(|t| count(t, "OPTIONS sip:") >= 2).then_some(()));
    let list = kamailio.kamcmd(&["dispatcher.list"]).unwrap();
    assert_eq!(list.matches("FLAGS: AP").count(), 2, "both destinations active and probed:\n{list}");

    // 4 calls through Kamailio: INVITE dispatched, ACK/BYE along the Record-Route.
    let uac_port = free_port().to_string();
    let target = format!("127.0.0.1:{}", kamailio.sip_port);
    Sipp::spawn(
        &sipp_dir,
        "uac",
        &args(&[
            "-sf",
            &res_scale_tests::kamailio::sipp_dir().join("uac_rr.xml").display().to_string(),
            "-s",
            "100",
            "-i",
            "127.0.0.1",
            "-p",
            &uac_port,
            "-m",
            "4",
            "-r",
            "4",
            "-timeout",
            "20s",
            "-timeout_error",
            &target,
        ]),
    )
    .wait(Duration::from_secs(25))
    .unwrap();
    // Round robin: each node got 2 of the 4 INVITEs, and the ACK and BYE of its calls came
    // through Kamailio (SIPp may write its message trace a moment later).
    let calls = |trace: &PathBuf| (count(trace, "INVITE sip:"), count(trace, "ACK sip:"), count(trace, "BYE sip:"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !traces.iter().all(|t| calls(t) == (2, 2, 2)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, trace) in traces.iter().enumerate() {
        assert_eq!(calls(trace), (2, 2, 2), "node {i}: (INVITE, ACK, BYE) counts in\n{}", std::fs::read_to_string(trace).unwrap_or_default());
    }
    eprintln!("dispatcher test done after {:?}", started.elapsed());
    drop(kamailio);
    drop(mq);
    cleanup(&dir);
}

#[test]
fn a_missing_exchange_does_not_break_registration_and_publishing_resumes_once_it_exists() {
    let dir = scratch_dir();
    let mq = RabbitMq::start(&dir.join("rabbitmq"), false);
    let mut spec = KamailioSpec::new(&mq.url());
    spec.registrar_id = ORIGIN.to_string();
    spec.destinations = vec![format!("sip:127.0.0.1:{}", free_port())];
    let kamailio = Kamailio::start(&dir.join("kamailio"), spec);
    let sipp_dir = dir.join("sipp");

    // No exchange yet: the broker closes the channel of the publish (404), the REGISTER still
    // gets its 200 and the binding is kept.
    let register = |user: &str, call_id: &str| Register { user: user.into(), call_id: call_id.into(), cseq: 1, expires: 120, user_agent: "SIPp".into(), local_port: free_port() };
    let bob = register("bob", "bob-1@127.0.0.1");
    bob.send(&sipp_dir, kamailio.sip_port).unwrap();
    let contacts = kamailio.kamcmd(&["ul.dump"]).unwrap_or_default();
    assert!(contacts.contains(&bob.contact_uri()), "bob not bound:\n{contacts}");

    // The exchange appears (a res_scale node declared it): the next REGISTER is published.
    let probe = AmqpProbe::new(&mq.url());
    probe.bind_queue(QUEUE, EXCHANGE, "registration.#");
    // Every SIP worker may take it; register a few times so that more than one worker that
    // hit the 404 above has to publish again.
    for n in 0..4 {
        let carol = Register { cseq: n + 1, ..register("carol", "carol-1@127.0.0.1") };
        carol.send(&sipp_dir, kamailio.sip_port).unwrap();
        let announce = one_message(&probe, Duration::from_secs(5), "ANNOUNCE of carol after the exchange appeared");
        assert_eq!(announce.routing_key, "registration.carol");
        assert_eq!(announce.json["type"], "ANNOUNCE", "{}", announce.body);
        assert_eq!(announce.json["contact"]["uri"], carol.contact_uri().as_str(), "{}", announce.body);
    }
    drop(kamailio);
    drop(mq);
    cleanup(&dir);
}

#[test]
fn contact_star_withdraws_every_binding_of_the_aor() {
    let dir = scratch_dir();
    let (mq, probe, kamailio) = registrar(&dir, &[]);
    let sipp_dir = dir.join("sipp");

    // Two phones of dave, two bindings.
    let phones: Vec<Register> =
        (0..2).map(|i| Register { user: "dave".into(), call_id: format!("dave-{i}@127.0.0.1"), cseq: 1, expires: 300, user_agent: format!("phone {i}"), local_port: free_port() }).collect();
    let mut last_seq = 0;
    for phone in &phones {
        phone.send(&sipp_dir, kamailio.sip_port).unwrap();
        let announce = one_message(&probe, Duration::from_secs(5), "ANNOUNCE of dave");
        assert_eq!(announce.json["type"], "ANNOUNCE", "{}", announce.body);
        assert_eq!(announce.json["contact"]["uri"], phone.contact_uri().as_str(), "{}", announce.body);
        assert_eq!(announce.json["contact"]["user_agent"], phone.user_agent.as_str(), "{}", announce.body);
        assert!(seq(&announce) > last_seq);
        last_seq = seq(&announce);
    }

    // Contact: *, Expires: 0 from the first phone: one WITHDRAW per binding.
    let star = Register { cseq: 2, ..phones[0].clone() };
    star.send_scenario(&sipp_dir, kamailio.sip_port, "unregister_all.xml").unwrap();
    let got = probe.drain(QUEUE, 2, Duration::from_secs(5));
    assert_eq!(got.len(), 2, "two WITHDRAWs expected: {got:#?}");
    let mut uris: Vec<String> = Vec::new();
    for message in &got {
        assert_eq!(message.json["type"], "WITHDRAW", "{}", message.body);
        assert_eq!(message.routing_key, "registration.dave");
        assert!(seq(message) > last_seq, "{}", message.body);
        last_seq = seq(message);
        uris.push(message.json["contact"]["uri"].as_str().unwrap().to_string());
    }
    uris.sort();
    let mut expected: Vec<String> = phones.iter().map(Register::contact_uri).collect();
    expected.sort();
    assert_eq!(uris, expected);
    drop(kamailio);
    drop(mq);
    cleanup(&dir);
}

//! scale-gateway against a real pool: two Asterisk 22 nodes with res_scale, Consul, RabbitMQ,
//! and unmodified third-party ARI clients (asyncari, aioari, a plain aiohttp WebSocket).

use std::time::Duration;

use res_scale_tests::ari_app::AriApp;
use res_scale_tests::gateway::{raw_request, Gateway, CLIENT_PASSWORD, CLIENT_USER};
use res_scale_tests::node::{ARI_PASSWORD, ARI_USER};
use res_scale_tests::{wait, Pool};
use serde_json::Value;

const SECONDS_20: Duration = Duration::from_secs(20);

fn pool(nodes: usize) -> Pool {
    Pool::builder().nodes(nodes).with_consul().with_rabbitmq().start()
}

/// Waits until every node created the Stasis app (the gateway wrote its key into Consul).
fn wait_app_on_nodes(pool: &Pool, app: &str) {
    for node in &pool.nodes {
        wait::until(&format!("app {app} on {}", node.name), SECONDS_20, Duration::from_millis(100), || {
            let apps = node.ari().get("/applications");
            (apps.status == 200 && apps.json().as_array()?.iter().any(|a| a["name"] == app)).then_some(())
        });
    }
}

/// Originates a long call (extension 101 answers and waits) on `node`'s own ARI, into `app`.
fn originate_on(node: &res_scale_tests::Node, app: &str, channel_id: &str) {
    let r = node.ari().post(&format!("/channels?endpoint=Local/101@from-sip&app={app}&channelId={channel_id}"));
    assert_eq!(r.status, 200, "originate {channel_id} on {}: {}", node.name, r.body);
}

fn is_event(line: &Value, kind: &str, channel: &str) -> bool {
    line["type"] == kind && line["channel"]["id"] == channel
}

fn count(lines: &[Value], kind: &str, channel: &str) -> usize {
    lines.iter().filter(|l| is_event(l, kind, channel)).count()
}

#[test]
fn an_unmodified_asyncari_app_answers_and_plays_on_both_nodes() {
    let pool = pool(2);
    let gw = Gateway::start(&pool, "gw-a", &[]);
    gw.wait_healthy(2);
    let app = AriApp::start("asyncari_app.py", &[&gw.url(), "conf-a", CLIENT_USER, CLIENT_PASSWORD]);
    app.expect("ready", SECONDS_20, |l| l["ready"] == true);
    wait_app_on_nodes(&pool, "conf-a");

    let ids = ["gw-call-1", "gw-call-2"];
    for (node, id) in pool.nodes.iter().zip(ids) {
        originate_on(node, "conf-a", id);
    }
    for (i, id) in ids.iter().enumerate() {
        let (owner, other) = (&pool.nodes[i], &pool.nodes[1 - i]);
        let start = app.expect(&format!("StasisStart of {id}"), SECONDS_20, |l| is_event(l, "StasisStart", id));
        assert_eq!(start["asterisk_id"], owner.eid.as_str(), "{start}");
        let playing = app.expect(&format!("a playback on {id}"), SECONDS_20, |l| l["playing"] == *id);
        // The app's answer and play went to the node that owns the channel.
        let channel = owner.ari().get(&format!("/channels/{id}")).json();
        assert_eq!(channel["state"], "Up", "{channel}");
        let playback = playing["playback"].as_str().unwrap();
        let started = app.expect(&format!("PlaybackStarted of {playback}"), SECONDS_20, |l| l["type"] == "PlaybackStarted" && l["playback"]["id"] == playback);
        assert_eq!(started["asterisk_id"], owner.eid.as_str(), "the playback ran on the channel's node, not on {}: {started}", other.name);
    }
    assert!(!app.lines().iter().any(|l| l.get("error").is_some()), "the app saw an error: {:?}", app.lines());

    for id in ids {
        let r = gw.ari().delete(&format!("/channels/{id}"));
        assert_eq!(r.status, 204, "hang up {id} through the gateway: {}", r.body);
    }
    for id in ids {
        app.expect(&format!("StasisEnd of {id}"), SECONDS_20, |l| is_event(l, "StasisEnd", id));
    }
    let lines = app.lines();
    for id in ids {
        assert_eq!(count(&lines, "StasisStart", id), 1, "StasisStart of {id} once: {lines:?}");
        assert_eq!(count(&lines, "StasisEnd", id), 1, "StasisEnd of {id} once: {lines:?}");
    }
}

#[test]
fn a_swagger_client_loads_the_api_docs_and_lists_the_whole_pool() {
    let pool = pool(2);
    let gw = Gateway::start(&pool, "gw-a", &[]);
    gw.wait_healthy(2);
    // One channel on each node, outside Stasis: only a pool-wide read sees both.
    for (i, node) in pool.nodes.iter().enumerate() {
        let r = node.ari().post(&format!("/channels?endpoint=Local/101@from-sip&extension=101&context=from-sip&channelId=list-{i}"));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let app = AriApp::start("aioari_list.py", &[&gw.url(), CLIENT_USER, CLIENT_PASSWORD]);
    let listed = app.expect("the channel list", SECONDS_20, |l| l.get("channels").is_some());
    let ids: Vec<&str> = listed["channels"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for id in ["list-0", "list-1"] {
        assert!(ids.contains(&id), "{id} missing from the pool-wide list {ids:?}");
    }
    let info = app.expect("asterisk info", SECONDS_20, |l| l.get("info").is_some());
    assert!(info["info"]["system"]["version"].as_str().is_some_and(|v| v.starts_with("22.")), "{info}");

    // Every api-docs file names the gateway as its basePath, never a node.
    let docs = gw.ari().get("/api-docs/resources.json").json();
    assert_eq!(docs["basePath"], format!("{}/ari", gw.url()));
    let events = gw.ari().get("/api-docs/events.json").json();
    assert_eq!(events["basePath"], format!("{}/ari", gw.url()));
    assert!(events["models"].get("EventsLost").is_some(), "events.json lacks the EventsLost model");
    assert!(events["models"].get("StasisStart").is_some());
}

/// What the gateway answers must be what a node answers, for the refusals clients meet.
#[test]
fn refusals_are_the_ones_asterisk_sends() {
    let pool = pool(1);
    let gw = Gateway::start(&pool, "gw-a", &[]);
    gw.wait_healthy(1);
    let node_port = pool.nodes[0].http_port;
    let node_auth = format!("Basic {}", base64_of(&format!("{ARI_USER}:{ARI_PASSWORD}")));
    let gw_auth = format!("Basic {}", base64_of(&format!("{CLIENT_USER}:{CLIENT_PASSWORD}")));
    let wrong = format!("Basic {}", base64_of("app:wrong"));

    let cases: [(&str, &str, Option<&str>); 7] = [
        ("wrong password", "/ari/asterisk/info", Some(&wrong)),
        ("no credentials", "/ari/channels", None),
        ("unknown channel", "/ari/channels/no-such-channel", Some("")),
        ("unknown bridge", "/ari/bridges/no-such-bridge", Some("")),
        ("unknown playback", "/ari/playbacks/no-such-playback", Some("")),
        ("unknown resource", "/ari/no-such-resource", Some("")),
        ("trailing slash", "/ari/channels/", Some("")),
    ];
    for (what, path, auth) in cases {
        let (node_header, gw_header) = match auth {
            Some("") => (node_auth.clone(), gw_auth.clone()),
            Some(a) => (a.to_string(), a.to_string()),
            None => (String::new(), String::new()),
        };
        let headers = |h: &str| if h.is_empty() { vec![] } else { vec![("Authorization", h.to_string())] };
        let node_h = headers(&node_header);
        let gw_h = headers(&gw_header);
        let node = raw_request(node_port, "GET", path, &node_h.iter().map(|(n, v)| (*n, v.as_str())).collect::<Vec<_>>());
        let ours = raw_request(gw.port, "GET", path, &gw_h.iter().map(|(n, v)| (*n, v.as_str())).collect::<Vec<_>>());
        assert_eq!((ours.status, ours.body.trim()), (node.status, node.body.trim()), "{what}: gateway vs node");
        assert_eq!(ours.header("content-type").map(str::to_ascii_lowercase), node.header("content-type").map(str::to_ascii_lowercase), "{what}: content type");
        assert_eq!(ours.header("www-authenticate"), node.header("www-authenticate"), "{what}: WWW-Authenticate");
    }

    // Nothing outside /ari/ (but /healthz and /metrics) is reachable, whatever the path says.
    let auth = [("Authorization", gw_auth.as_str())];
    for path in [
        "/ari/../metrics",
        "/ari/%2e%2e/metrics",
        "/ari/..%2fmetrics",
        "/ari/api-docs/../../../../etc/passwd",
        "/ari/api-docs/..%2f..%2fetc%2fpasswd",
        "/ari/channels/..%5c..%5cmetrics",
        "/httpstatus",
        "/static/index.html",
    ] {
        let r = raw_request(gw.port, "GET", path, &auth);
        assert!(matches!(r.status, 400 | 403 | 404), "{path}: {} {}", r.status, r.body);
        assert!(!r.body.contains("scale_gateway_") && !r.body.contains("root:"), "{path} escaped /ari/: {}", r.body);
    }
    let r = raw_request(gw.port, "GET", "/ari/api-docs/resources.json", &[]);
    assert_eq!(r.status, 401, "api-docs need credentials, as on Asterisk");
}

#[test]
fn any_gateway_routes_any_channel_without_shared_memory() {
    let pool = pool(2);
    let mut a = Gateway::start(&pool, "gw-a", &[]);
    let b = Gateway::start(&pool, "gw-b", &[]);
    a.wait_healthy(2);
    b.wait_healthy(2);
    // The app's socket is on A; A places its new channel; B never saw it created and must
    // still find its node.
    let app = AriApp::start("ws_events.py", &[&a.url(), "shared", CLIENT_USER, CLIENT_PASSWORD]);
    app.expect("ready", SECONDS_20, |l| l["ready"] == true);
    wait_app_on_nodes(&pool, "shared");
    let r = a.ari().post("/channels?endpoint=Local/101@from-sip&app=shared&channelId=shared-1");
    assert_eq!(r.status, 200, "{}", r.body);
    app.expect("StasisStart of shared-1", SECONDS_20, |l| is_event(l, "StasisStart", "shared-1"));
    let owner = pool.nodes.iter().find(|n| n.ari().get("/channels/shared-1").status == 200).expect("the channel is on a node");
    assert_eq!(b.ari().get("/channels/shared-1").json()["id"], "shared-1");
    let r = b.ari().post("/channels/shared-1/variable?variable=ROUTED_BY&value=gw-b");
    assert_eq!(r.status, 204, "set a variable through B: {}", r.body);
    assert_eq!(owner.ari().get("/channels/shared-1/variable?variable=ROUTED_BY").json()["value"], "gw-b");

    // A restarted mid-call has forgotten everything and still routes it.
    a.restart();
    a.wait_healthy(2);
    assert_eq!(a.ari().get("/channels/shared-1").json()["id"], "shared-1");
    let r = b.ari().delete("/channels/shared-1");
    assert_eq!(r.status, 204, "hang up through B: {}", r.body);
    wait::until("the channel is gone", SECONDS_20, Duration::from_millis(100), || (owner.ari().get("/channels/shared-1").status == 404).then_some(()));
    assert_eq!(a.ari().get("/channels/shared-1").status, 404);
}

#[test]
fn a_reconnecting_app_gets_the_events_it_missed_in_order() {
    let pool = pool(2);
    let gw = Gateway::start(&pool, "gw-a", &[("SCALE_GATEWAY_APPS_LINGER", "60s")]);
    gw.wait_healthy(2);
    let first = AriApp::start("ws_events.py", &[&gw.url(), "replay", CLIENT_USER, CLIENT_PASSWORD]);
    first.expect("ready", SECONDS_20, |l| l["ready"] == true);
    wait_app_on_nodes(&pool, "replay");
    originate_on(&pool.nodes[0], "replay", "before-1");
    first.expect("StasisStart of before-1", SECONDS_20, |l| is_event(l, "StasisStart", "before-1"));
    drop(first);

    // While no socket holds the app, calls go on and produce events on both nodes.
    for (i, node) in pool.nodes.iter().enumerate() {
        originate_on(node, "replay", &format!("away-{i}"));
    }
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..2 {
        assert_eq!(gw.ari().delete(&format!("/channels/away-{i}")).status, 204);
    }
    assert_eq!(gw.ari().delete("/channels/before-1").status, 204);
    std::thread::sleep(Duration::from_secs(2));

    let second = AriApp::start("ws_events.py", &[&gw.url(), "replay", CLIENT_USER, CLIENT_PASSWORD, "--idle", "5"]);
    second.expect("the summary", Duration::from_secs(40), |l| l.get("summary").is_some());
    let events = second.events();
    for id in ["away-0", "away-1", "before-1"] {
        for kind in ["StasisStart", "StasisEnd"] {
            if id == "before-1" && kind == "StasisStart" {
                continue;
            }
            assert_eq!(count(&events, kind, id), 1, "{kind} of {id} once after the reconnect: {events:?}");
        }
    }
    // Per node, in the order the node made them.
    for node in &pool.nodes {
        // Per channel, not by timestamp: Asterisk stamps events on several threads, so two
        // channels' stamps may interleave out of order in the order the node published them.
        let kinds: Vec<(&str, &str)> = events.iter().filter(|e| e["asterisk_id"] == node.eid.as_str()).filter_map(|e| Some((e["type"].as_str()?, e["channel"]["id"].as_str()?))).collect();
        for (id, _) in kinds.iter().filter(|(k, _)| *k == "StasisStart").map(|(_, id)| (*id, ())) {
            let start = kinds.iter().position(|k| *k == ("StasisStart", id)).unwrap();
            let end = kinds.iter().position(|k| *k == ("StasisEnd", id)).unwrap_or_else(|| panic!("no StasisEnd for {id}: {kinds:?}"));
            assert!(start < end, "{id}: StasisEnd before StasisStart: {kinds:?}");
        }
    }
}

#[test]
fn a_slow_socket_gets_every_event_or_an_exact_loss_count_and_slows_no_other_app() {
    // The node's own queue holds the whole burst, so every loss is the gateway's queue bound
    // (5,000 here), which drops the oldest: the gateway must count each one.
    let conf = "[consul]\nurl = {consul_url}\ncheck_ttl = 3s\n[amqp]\nurl = {amqp_url}\nqueue_capacity = 100000\n[registrations]\nenabled = no\n";
    let pool = Pool::builder().nodes(1).with_consul().with_rabbitmq().res_scale_conf(conf).start();
    let gw = Gateway::start(&pool, "gw-a", &[("SCALE_GATEWAY_AMQP_QUEUE_MAX_LENGTH", "5000")]);
    gw.wait_healthy(1);
    // At most 2,500 frames/s: slower than the node publishes even on a busy machine (at 10,000/s
    // a burst slowed by other processes' builds fitted into the queue, and nothing was lost).
    let slow = AriApp::start("ws_events.py", &[&gw.url(), "slow-app", CLIENT_USER, CLIENT_PASSWORD, "--expect", "50000", "--idle", "30", "--slow", "50:20", "--report-gaps"]);
    let fast = AriApp::start("ws_events.py", &[&gw.url(), "fast-app", CLIENT_USER, CLIENT_PASSWORD, "--expect", "2000", "--idle", "30"]);
    slow.expect("ready", SECONDS_20, |l| l["ready"] == true);
    fast.expect("ready", SECONDS_20, |l| l["ready"] == true);
    wait_app_on_nodes(&pool, "slow-app");
    wait_app_on_nodes(&pool, "fast-app");
    let node = &pool.nodes[0];
    node.cli("scale test events slow-app 50000");
    // The slow socket is still far behind when the fast app's burst goes out.
    node.cli("scale test events fast-app 2000");
    let fast_summary = fast.expect("the fast app's summary", Duration::from_secs(60), |l| l.get("summary").is_some())["summary"].clone();
    let slow_done = slow.lines().iter().any(|l| l.get("summary").is_some());
    assert_eq!(fast_summary["bench"], 2000, "{fast_summary}");
    assert_eq!(fast_summary["out_of_order"], 0, "{fast_summary}");
    assert!(!slow_done, "the slow socket finished before the fast one: the test did not make it slow");
    let summary = slow.expect("the slow app's summary", Duration::from_secs(240), |l| l.get("summary").is_some())["summary"].clone();
    assert!(node.cli("scale show amqp").contains("Dropped:       0"), "the node dropped events itself: {}", node.cli("scale show amqp"));
    assert_eq!(summary["out_of_order"], 0, "{summary}");
    let (delivered, lost) = (summary["bench"].as_u64().unwrap(), summary["lost"].as_u64().unwrap());
    assert!(lost > 0, "a 5,000-event queue cannot hold a burst to a slow socket: {summary}");
    assert_eq!(delivered + lost, 50_000, "every event delivered or counted lost: {summary}");
}

#[test]
fn sigterm_closes_sockets_normally_and_exits_zero() {
    let pool = pool(1);
    let mut gw = Gateway::start(&pool, "gw-a", &[]);
    gw.wait_healthy(1);
    let app = AriApp::start("ws_events.py", &[&gw.url(), "stopper", CLIENT_USER, CLIENT_PASSWORD]);
    app.expect("ready", SECONDS_20, |l| l["ready"] == true);
    wait_app_on_nodes(&pool, "stopper");
    let status = gw.stop().expect("the gateway exited");
    assert!(status.success(), "exit status {status:?}");
    let closed = app.expect("a close frame", SECONDS_20, |l| l.get("closed").is_some());
    assert_eq!(closed["closed"], 1000, "{closed}");
    // The gateway deregistered from Consul.
    let consul = pool.consul.as_ref().unwrap();
    assert!(consul.health("scale-gateway").is_empty(), "still registered: {:?}", consul.health("scale-gateway"));
}

#[test]
fn a_dead_node_answers_404_and_the_other_node_stays_fully_controllable() {
    let mut pool = pool(2);
    let gw = Gateway::start(&pool, "gw-a", &[]);
    gw.wait_healthy(2);
    let app = AriApp::start("asyncari_app.py", &[&gw.url(), "faults", CLIENT_USER, CLIENT_PASSWORD]);
    app.expect("ready", SECONDS_20, |l| l["ready"] == true);
    wait_app_on_nodes(&pool, "faults");
    for (i, node) in pool.nodes.iter().enumerate() {
        originate_on(node, "faults", &format!("fault-{i}"));
    }
    for i in 0..2 {
        app.expect("answered", SECONDS_20, |l| l["playing"] == format!("fault-{i}"));
    }
    pool.node_mut(1).kill();
    // Within one TTL (3 s in the test config, plus Consul's reaction) the dead node's channel
    // is an ordinary unknown channel.
    let gone = wait::try_until(Duration::from_secs(15), Duration::from_millis(200), || {
        let r = gw.ari().get("/channels/fault-1");
        (r.status == 404).then_some(r)
    })
    .expect("the dead node's channel answers 404");
    assert_eq!(gone.json()["message"], "Channel not found");
    // The live node's call never saw an error, before, during or after.
    assert_eq!(gw.ari().get("/channels/fault-0").status, 200);
    assert_eq!(gw.ari().post("/channels/fault-0/variable?variable=STILL&value=here").status, 204);
    let r = gw.ari().post("/channels?endpoint=Local/101@from-sip&app=faults&channelId=after-fault");
    assert_eq!(r.status, 200, "a new call is placed on the live node: {}", r.body);
    assert_eq!(pool.nodes[0].ari().get("/channels/after-fault").status, 200, "placed on the live node");
    app.expect("the new call answered", SECONDS_20, |l| l["playing"] == "after-fault");

    // RabbitMQ restarts: events resume, and the gateway counts no gap.
    pool.rabbitmq.as_mut().unwrap().restart();
    assert_eq!(gw.ari().delete("/channels/fault-0").status, 204);
    app.expect("StasisEnd of fault-0 after the broker restart", Duration::from_secs(40), |l| is_event(l, "StasisEnd", "fault-0"));
    let lost: Vec<String> = gw.metrics().lines().filter(|l| l.starts_with("scale_gateway_events_lost_total") && !l.ends_with(" 0")).map(str::to_string).collect();
    assert!(lost.is_empty(), "events lost across the broker restart: {lost:?}");

    // After the broker restart, the live node's call is still controlled through the gateway.
    assert_eq!(gw.ari().delete("/channels/after-fault").status, 204);
}

#[test]
fn the_listener_speaks_tls_and_the_api_docs_say_https() {
    let pool = pool(1);
    // A CA of the test's own and a certificate for 127.0.0.1 signed by it.
    let certs = res_scale_tests::rabbitmq::make_certificates(&pool.dir.join("gateway-tls"));
    let (cert, key) = (certs.join("server.pem").display().to_string(), certs.join("server.key").display().to_string());
    let gw = Gateway::start(&pool, "gw-tls", &[("SCALE_GATEWAY_TLS_CERT_FILE", &cert), ("SCALE_GATEWAY_TLS_KEY_FILE", &key)]);
    let curl = |path: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "--cacert", &certs.join("ca.pem").display().to_string(), "-u", &format!("{CLIENT_USER}:{CLIENT_PASSWORD}"), "-w", "\n%{http_code}"])
            .arg(format!("https://127.0.0.1:{}{path}", gw.port))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
        (code.to_string(), body.to_string())
    };
    wait::until("the gateway healthy over TLS", SECONDS_20, Duration::from_millis(200), || (curl("/healthz").0 == "200").then_some(()));
    let (code, body) = curl("/ari/api-docs/resources.json");
    assert_eq!(code, "200", "{body}");
    let docs: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(docs["basePath"], format!("https://127.0.0.1:{}/ari", gw.port), "swagger clients must come back over TLS");
    let (code, body) = curl("/ari/asterisk/info");
    assert_eq!(code, "200", "{body}");
    // Plain HTTP on the TLS port gets no ARI answer.
    let plain = ureq::get(&format!("http://127.0.0.1:{}/ari/asterisk/info", gw.port)).call();
    assert!(!matches!(plain, Ok(ref r) if r.status() == 200), "plain HTTP answered on the TLS listener");
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

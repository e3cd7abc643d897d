//! Cross-node bridges through scale-gateway, against a real pool: two Asterisk 22 nodes with
//! res_scale, Consul, RabbitMQ, the gateway, and an application that talks to the gateway
//! only (REST from the test, events over a plain aiohttp WebSocket).

use std::time::Duration;

use res_scale_tests::ari_app::AriApp;
use res_scale_tests::gateway::{Gateway, CLIENT_PASSWORD, CLIENT_USER};
use res_scale_tests::{wait, Node, Pool};
use serde_json::Value;

const SECONDS_20: Duration = Duration::from_secs(20);
const APP: &str = "bridging-app";

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list.as_array().into_iter().flatten().filter_map(|v| v.as_str().or_else(|| v["id"].as_str()).map(str::to_string)).collect();
    ids.sort();
    ids
}

/// Everything an idle node has of channels and bridges.
fn leftovers(node: &Node) -> (Vec<String>, Vec<String>) {
    (ids(&node.ari().get("/channels").json()), ids(&node.ari().get("/bridges").json()))
}

/// Two nodes with Consul and RabbitMQ, a gateway in front, and the app's event socket on it.
fn pool_gateway_app(instance_id: &str) -> (Pool, Gateway, AriApp) {
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    let gw = Gateway::start(&pool, instance_id, &[]);
    gw.wait_healthy(2);
    let app = listen(&pool, &gw);
    (pool, gw, app)
}

/// The app's event socket (a plain aiohttp WebSocket printing every event), once every node
/// has the app.
fn listen(pool: &Pool, gw: &Gateway) -> AriApp {
    let app = AriApp::start("ws_events.py", &[&gw.url(), APP, CLIENT_USER, CLIENT_PASSWORD, "--idle", "120"]);
    app.expect("ready", SECONDS_20, |l| l["ready"] == true);
    wait_app_on_nodes(pool, APP);
    app
}

fn wait_app_on_nodes(pool: &Pool, app: &str) {
    for node in &pool.nodes {
        wait::until(&format!("app {app} on {}", node.name), SECONDS_20, Duration::from_millis(100), || {
            let apps = node.ari().get("/applications");
            (apps.status == 200 && apps.json().as_array()?.iter().any(|a| a["name"] == app)).then_some(())
        });
    }
}

/// A long call (extension 101 answers and waits) on `node`, into the app, as caller `id`.
fn call_into_app(node: &Node, id: &str) {
    let r = node.ari().post(&format!("/channels?endpoint=Local/101@from-sip&app={APP}&channelId={id}&formats=ulaw"));
    assert_eq!(r.status, 200, "originate {id} on {}: {}", node.name, r.body);
}

/// Callers (node index, id) enter the app; the app puts them all in bridge `conf` on node A.
fn conf_on_a(pool: &Pool, ari: &res_scale_tests::ari::Ari, app: &AriApp, callers: &[(usize, &str)]) {
    for (node, id) in callers {
        call_into_app(&pool.nodes[*node], id);
    }
    for (_, id) in callers {
        app.expect(&format!("StasisStart of {id}"), SECONDS_20, |l| l["type"] == "StasisStart" && l["channel"]["id"] == *id);
    }
    let r = ari.post(&format!("/bridges/conf?type=mixing&ast_id={}", pool.nodes[0].eid));
    assert_eq!(r.status, 200, "{}", r.body);
    for (_, id) in callers {
        let r = ari.post(&format!("/bridges/conf/addChannel?channel={id}"));
        assert_eq!(r.status, 204, "add {id}: {}", r.body);
    }
    let (_, last) = callers.last().expect("a caller");
    entered(app, last);
}

fn entered(app: &AriApp, channel: &str) -> Value {
    app.expect(&format!("ChannelEnteredBridge of {channel}"), SECONDS_20, |l| l["type"] == "ChannelEnteredBridge" && l["channel"]["id"] == channel)
}

#[test]
fn a_channel_of_another_node_joins_the_bridge_through_one_shared_leg_and_nothing_is_left() {
    let (pool, gw, app) = pool_gateway_app("gw-bridging");
    let (a, b) = (&pool.nodes[0], &pool.nodes[1]);
    let ari = gw.ari();

    // The bridge lives on node A; callers on A and B, and a second caller on B later.
    call_into_app(a, "caller-a");
    call_into_app(b, "caller-b1");
    for id in ["caller-a", "caller-b1"] {
        app.expect(&format!("StasisStart of {id}"), SECONDS_20, |l| l["type"] == "StasisStart" && l["channel"]["id"] == id);
    }
    let r = ari.post(&format!("/bridges/conf?type=mixing&ast_id={}", a.eid));
    assert_eq!(r.status, 200, "{}", r.body);
    for id in ["caller-a", "caller-b1"] {
        let r = ari.post(&format!("/bridges/conf/addChannel?channel={id}"));
        assert_eq!(r.status, 204, "add {id}: {}", r.body);
    }
    let joined = entered(&app, "caller-b1");
    assert_eq!(joined["bridge"]["id"], "conf", "the app sees its own bridge: {joined}");
    assert_eq!(ids(&joined["bridge"]["channels"]), ["caller-a", "caller-b1"], "{joined}");
    assert_eq!(joined["asterisk_id"], b.eid.as_str());

    // The app's view and the nodes' own: A's bridge holds its caller and one helper call, B
    // holds the remote caller with the helper call's other end.
    let view = ari.get("/bridges/conf").json();
    assert_eq!(ids(&view["channels"]), ["caller-a", "caller-b1"], "{view}");
    let on_a = a.ari().get("/bridges/conf").json();
    let helpers_on_a: Vec<String> = ids(&on_a["channels"]).into_iter().filter(|c| c != "caller-a").collect();
    assert_eq!(helpers_on_a.len(), 1, "one helper call in A's bridge: {on_a}");
    let (b_channels, b_bridges) = leftovers(b);
    assert_eq!(b_bridges.len(), 1, "one helper bridge on B: {b_bridges:?}");

    // A second caller of B shares the leg.
    call_into_app(b, "caller-b2");
    app.expect("StasisStart of caller-b2", SECONDS_20, |l| l["type"] == "StasisStart" && l["channel"]["id"] == "caller-b2");
    let r = ari.post("/bridges/conf/addChannel?channel=caller-b2");
    assert_eq!(r.status, 204, "{}", r.body);
    entered(&app, "caller-b2");
    assert_eq!(ids(&a.ari().get("/bridges/conf").json()["channels"]).len(), 2, "still one helper call on A");
    assert_eq!(leftovers(b).1, b_bridges, "still one helper bridge on B");
    assert_eq!(ids(&ari.get("/bridges/conf").json()["channels"]), ["caller-a", "caller-b1", "caller-b2"]);
    // (Each caller is a Local channel pair; its `;2` half runs the dialplan.)
    let listed: Vec<String> = ids(&ari.get("/channels").json()).into_iter().filter(|c| !c.ends_with(";2")).collect();
    assert_eq!(listed, ["caller-a", "caller-b1", "caller-b2"], "no helper call in the pool-wide listing (B had {b_channels:?})");
    assert!(ids(&ari.get("/bridges").json()) == ["conf"], "no helper bridge in the listing");
    let apps = ari.get("/applications").json();
    let names: Vec<&str> = apps.as_array().unwrap().iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, [APP], "the gateway's own app is not listed: {apps}");
    let own = ari.get(&format!("/applications/{APP}")).json();
    assert!(own["bridge_ids"].as_array().unwrap().iter().all(|b| b == "conf"), "no helper bridge in the app's subscriptions: {own}");
    assert!(gw.metrics().contains("scale_gateway_bridging_legs 1"), "{}", gw.metrics());

    // Removing one remote caller keeps the leg; hanging up the other takes it down.
    let r = ari.post("/bridges/conf/removeChannel?channel=caller-b1");
    assert_eq!(r.status, 204, "{}", r.body);
    let left = app.expect("ChannelLeftBridge of caller-b1", SECONDS_20, |l| l["type"] == "ChannelLeftBridge" && l["channel"]["id"] == "caller-b1");
    assert_eq!((&left["bridge"]["id"], ids(&left["bridge"]["channels"])), (&Value::from("conf"), vec!["caller-a".to_string(), "caller-b2".to_string()]));
    for id in ["caller-b1", "caller-b2", "caller-a"] {
        assert_eq!(ari.delete(&format!("/channels/{id}")).status, 204, "hang up {id}");
    }
    let r = ari.delete("/bridges/conf");
    assert_eq!(r.status, 204, "{}", r.body);
    for node in [a, b] {
        wait::until(&format!("nothing left on {}", node.name), SECONDS_20, Duration::from_millis(200), || {
            let (channels, bridges) = leftovers(node);
            (channels.is_empty() && bridges.is_empty()).then_some(())
        });
    }

    // The app never saw a helper: every channel and bridge it heard of is its own.
    let events = app.events();
    for event in &events {
        let channel = event["channel"]["id"].as_str().unwrap_or("caller-");
        assert!(channel.starts_with("caller-"), "a helper call reached the app: {event}");
        let bridge = event["bridge"]["id"].as_str().unwrap_or("conf");
        assert_eq!(bridge, "conf", "a helper bridge reached the app: {event}");
    }
    let starts = events.iter().filter(|e| e["type"] == "StasisStart").count();
    assert_eq!(starts, 3, "one StasisStart per caller, none for helper calls");
}

#[test]
fn when_the_bridges_node_dies_its_remote_members_leave_it_and_nothing_stays_on_the_survivor() {
    let (mut pool, gw, app) = pool_gateway_app("gw-bridging-kill");
    let ari = gw.ari();
    conf_on_a(&pool, &ari, &app, &[(0, "caller-a"), (1, "caller-b")]);

    pool.node_mut(0).kill();
    let left = app.expect("ChannelLeftBridge of caller-b", SECONDS_20, |l| l["type"] == "ChannelLeftBridge" && l["channel"]["id"] == "caller-b");
    assert_eq!(left["bridge"]["id"], "conf", "{left}");
    let survivor = &pool.nodes[1];
    wait::until("only the caller left on the survivor", SECONDS_20, Duration::from_millis(200), || {
        let (channels, bridges) = leftovers(survivor);
        (channels == ["caller-b", "caller-b;2"] && bridges.is_empty()).then_some(())
    });
    // The caller is still the app's, in Stasis, and goes on in a new bridge.
    let r = ari.post("/bridges/conf-2?type=mixing");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ari.post("/bridges/conf-2/addChannel?channel=caller-b").status, 204);
    app.expect("caller-b in conf-2", SECONDS_20, |l| l["type"] == "ChannelEnteredBridge" && l["channel"]["id"] == "caller-b" && l["bridge"]["id"] == "conf-2");
    assert_eq!(ari.delete("/channels/caller-b").status, 204);
}

#[test]
fn a_killed_and_restarted_gateway_removes_the_helpers_it_no_longer_knows() {
    let (pool, mut gw, app) = pool_gateway_app("gw-bridging-restart");
    let (a, b) = (&pool.nodes[0], &pool.nodes[1]);
    conf_on_a(&pool, &gw.ari(), &app, &[(1, "caller-b")]);
    assert_eq!(leftovers(b).1.len(), 1, "a helper bridge on B");

    // Killed: no chance to tear its legs down (a SIGTERM does that, see the next test).
    let pid = gw.pid().expect("the gateway runs").to_string();
    assert!(std::process::Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    gw.restart();
    gw.wait_healthy(2);
    // The new process knows no leg: what the old one set up is removed from both nodes, and
    // the caller is back in the app, out of any bridge.
    wait::until("the forgotten helpers removed", SECONDS_20, Duration::from_millis(200), || {
        let on_a = ids(&a.ari().get("/bridges/conf").json()["channels"]);
        (on_a.is_empty() && leftovers(b).1.is_empty() && leftovers(b).0 == ["caller-b", "caller-b;2"]).then_some(())
    });
    assert!(gw.log().contains("removed helpers left from before this gateway started"), "{}", gw.log());
}

#[test]
fn a_stopping_gateway_takes_its_legs_down_and_the_remote_member_leaves_the_bridge() {
    let (pool, mut gw, app) = pool_gateway_app("gw-bridging-stop");
    let (a, b) = (&pool.nodes[0], &pool.nodes[1]);
    conf_on_a(&pool, &gw.ari(), &app, &[(1, "caller-b")]);
    assert_eq!(gw.stop().map(|s| s.success()), Some(true), "exit 0 after SIGTERM");
    assert!(ids(&a.ari().get("/bridges/conf").json()["channels"]).is_empty(), "no helper call left in A's bridge");
    assert_eq!(leftovers(b), (vec!["caller-b".to_string(), "caller-b;2".to_string()], vec![]), "no helper left on B");
}

#[test]
fn a_new_bridge_goes_where_the_app_acted_last_and_ten_callers_over_two_nodes_share_one_leg() {
    let (pool, gw, app) = pool_gateway_app("gw-bridging-ten");
    let ari = gw.ari();
    let callers: Vec<String> = (0..10).map(|i| format!("caller-{i}")).collect();
    // Round robin, starting on the second node.
    for (i, id) in callers.iter().enumerate() {
        call_into_app(&pool.nodes[(i + 1) % 2], id);
    }
    for id in &callers {
        app.expect(&format!("StasisStart of {id}"), SECONDS_20, |l| l["type"] == "StasisStart" && l["channel"]["id"] == id.as_str());
    }
    // The app acts on its first caller, then creates the bridge without saying where.
    assert_eq!(ari.post("/channels/caller-0/variable?variable=SEEN&value=1").status, 204);
    assert_eq!(ari.post("/bridges/conf?type=mixing").status, 200);
    assert_eq!(pool.nodes[1].ari().get("/bridges/conf").status, 200, "placed on the node of the channel acted on last");
    for id in &callers {
        let r = ari.post(&format!("/bridges/conf/addChannel?channel={id}"));
        assert_eq!(r.status, 204, "add {id}: {}", r.body);
    }
    for id in &callers {
        entered(&app, id);
    }
    assert!(gw.metrics().contains("scale_gateway_bridging_legs 1\n"), "one leg for five remote callers: {}", gw.metrics());
    assert!(gw.metrics().contains("scale_gateway_bridging_members 5\n"));
    assert_eq!(ids(&ari.get("/bridges/conf").json()["channels"]), {
        let mut c = callers.clone();
        c.sort();
        c
    });
    for id in &callers {
        assert_eq!(ari.delete(&format!("/channels/{id}")).status, 204);
    }
    wait::until("the leg gone with the last remote caller", SECONDS_20, Duration::from_millis(200), || gw.metrics().contains("scale_gateway_bridging_legs 0\n").then_some(()));
}

#[test]
fn a_helper_call_that_ends_by_itself_makes_its_members_leave_the_bridge() {
    let (pool, gw, app) = pool_gateway_app("gw-bridging-broken");
    let (a, b) = (&pool.nodes[0], &pool.nodes[1]);
    conf_on_a(&pool, &gw.ari(), &app, &[(0, "caller-a"), (1, "caller-b")]);
    // Someone hangs the helper call up on A, behind the gateway's back.
    let helper = ids(&a.ari().get("/bridges/conf").json()["channels"]).into_iter().find(|c| c != "caller-a").expect("a helper call in A's bridge");
    assert_eq!(a.ari().delete(&format!("/channels/{helper}")).status, 204);
    let left = app.expect("ChannelLeftBridge of caller-b", SECONDS_20, |l| l["type"] == "ChannelLeftBridge" && l["channel"]["id"] == "caller-b");
    assert_eq!((&left["bridge"]["id"], ids(&left["bridge"]["channels"])), (&Value::from("conf"), vec!["caller-a".to_string()]));
    wait::until("B holds only its caller", SECONDS_20, Duration::from_millis(200), || (leftovers(b) == (vec!["caller-b".to_string(), "caller-b;2".to_string()], vec![])).then_some(()));
    // The app can join it again: a new leg.
    assert_eq!(gw.ari().post("/bridges/conf/addChannel?channel=caller-b").status, 204);
    assert_eq!(ids(&gw.ari().get("/bridges/conf").json()["channels"]), ["caller-a", "caller-b"]);
}

#[test]
fn a_leg_set_up_by_one_replica_is_hidden_from_an_app_on_another() {
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    let (events_gw, rest_gw) = (Gateway::start(&pool, "gw-bridging-r1", &[]), Gateway::start(&pool, "gw-bridging-r2", &[]));
    events_gw.wait_healthy(2);
    rest_gw.wait_healthy(2);
    let app = listen(&pool, &events_gw);
    // The app's REST calls go to the other replica (say, a load balancer's choice).
    let rest = rest_gw.ari();
    conf_on_a(&pool, &rest, &app, &[(0, "caller-a"), (1, "caller-b")]);
    let joined = entered(&app, "caller-b");
    assert_eq!((&joined["bridge"]["id"], ids(&joined["bridge"]["channels"])), (&Value::from("conf"), vec!["caller-a".to_string(), "caller-b".to_string()]), "{joined}");
    let listed: Vec<String> = ids(&events_gw.ari().get("/channels").json()).into_iter().filter(|c| !c.ends_with(";2")).collect();
    assert_eq!(listed, ["caller-a", "caller-b"], "no helper call listed by the replica that did not set it up");
    assert_eq!(ids(&events_gw.ari().get("/bridges").json()), ["conf"]);
    assert_eq!(ids(&events_gw.ari().get("/bridges/conf").json()["channels"]), ["caller-a", "caller-b"]);
    assert_eq!(rest.delete("/channels/caller-b").status, 204);
    app.expect("ChannelLeftBridge of caller-b", SECONDS_20, |l| l["type"] == "ChannelLeftBridge" && l["channel"]["id"] == "caller-b" && l["bridge"]["id"] == "conf");
    for event in app.events() {
        let channel = event["channel"]["id"].as_str().unwrap_or("caller-");
        assert!(channel.starts_with("caller-"), "a helper call reached the app: {event}");
        assert_eq!(event["bridge"]["id"].as_str().unwrap_or("conf"), "conf", "a helper bridge reached the app: {event}");
    }
}

#[test]
fn a_consul_agent_that_restarts_empty_leaves_the_legs_and_routing_alone() {
    let (mut pool, gw, app) = pool_gateway_app("gw-bridging-consul");
    let ari = gw.ari();
    conf_on_a(&pool, &ari, &app, &[(0, "caller-a"), (1, "caller-b")]);
    pool.consul.as_mut().unwrap().restart();
    // For a moment the agent lists no node: neither the leg nor the calls' routes go.
    for _ in 0..20 {
        assert_eq!(ari.get("/channels/caller-b").status, 200, "caller-b stays routable");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(gw.metrics().contains("scale_gateway_bridging_legs 1\n"), "the leg stayed: {}", gw.metrics());
    assert_eq!(ids(&ari.get("/bridges/conf").json()["channels"]), ["caller-a", "caller-b"]);
    assert!(!app.events().iter().any(|e| e["type"] == "ChannelLeftBridge"), "nobody left the bridge");
}

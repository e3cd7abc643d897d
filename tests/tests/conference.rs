//! The conference sample (examples/conference, unmodified asyncari) through scale-gateway:
//! SIP phones dial 8000 through Kamailio, which spreads them round robin over two Asterisk 22
//! nodes with res_scale; every caller ends up in the one bridge `conf`, and each hears the
//! others (checked by the tones they send, not by packet counts).

use std::time::Duration;

use res_scale_tests::ari_app::AriApp;
use res_scale_tests::gateway::{Gateway, CLIENT_PASSWORD, CLIENT_USER};
use res_scale_tests::kamailio::Kamailio;
use res_scale_tests::phone::{Caller, TonePhone};
use res_scale_tests::{wait, Node, Pool};
use serde_json::Value;

const SECONDS_20: Duration = Duration::from_secs(20);
/// How long the callers talk before they hang up.
const TALK: Duration = Duration::from_secs(4);

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list.as_array().into_iter().flatten().filter_map(|v| v.as_str().or_else(|| v["id"].as_str()).map(str::to_string)).collect();
    ids.sort();
    ids
}

/// The callers (PJSIP/sipp channels) a node holds, by id.
fn callers_on(node: &Node) -> Vec<String> {
    let list = node.ari().get("/channels").json();
    let mut callers: Vec<String> = list.as_array().into_iter().flatten().filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with("PJSIP/sipp-"))).filter_map(|c| c["id"].as_str().map(str::to_string)).collect();
    callers.sort();
    callers
}

fn joined(app: &AriApp) -> usize {
    app.lines().iter().filter(|l| l["unparsed"].as_str().is_some_and(|t| t.contains(" joined conf"))).count()
}

#[test]
fn callers_on_two_nodes_hear_each_other_in_one_conference_and_nothing_is_left() {
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    let gw = Gateway::start(&pool, "gw-conference", &[]);
    gw.wait_healthy(2);
    let kamailio = Kamailio::in_front_of(&pool);
    let app = AriApp::example("conference/conference.py", &["--url", &gw.url(), "--user", CLIENT_USER, "--password", CLIENT_PASSWORD, "--app", "conference"]);
    app.expect("the app connected", SECONDS_20, |l| l["unparsed"].as_str().is_some_and(|t| t.contains("connected to")));
    for node in &pool.nodes {
        wait::until(&format!("app conference on {}", node.name), SECONDS_20, Duration::from_millis(100), || {
            node.ari().get("/applications").json().as_array()?.iter().any(|a| a["name"] == "conference").then_some(())
        });
    }

    let uri = format!("sip:8000@127.0.0.1:{}", kamailio.sip_port);
    let listen = [1000, 1400, 1800];
    let first = TonePhone::call(&uri, Some(1000), &Caller::user("sipp"), &listen);
    first.wait_connected();
    let second = TonePhone::call(&uri, Some(1400), &Caller::user("sipp"), &listen);
    second.wait_connected();
    wait::until("both callers joined conf", SECONDS_20, Duration::from_millis(100), || (joined(&app) == 2).then_some(()));

    // Kamailio put them on different nodes; the app's bridge lists both, as do the nodes: the
    // bridge's node holds its caller and the helper call, the other a helper bridge.
    let (on_a, on_b) = (callers_on(&pool.nodes[0]), callers_on(&pool.nodes[1]));
    assert_eq!((on_a.len(), on_b.len()), (1, 1), "one caller per node: {on_a:?} {on_b:?}");
    let conf = gw.ari().get("/bridges/conf").json();
    let mut both = [on_a.clone(), on_b.clone()].concat();
    both.sort();
    assert_eq!(ids(&conf["channels"]), both, "the app's view: {conf}");
    let home = pool.nodes.iter().position(|n| n.ari().get("/bridges/conf").status == 200).expect("conf lives on a node");
    let (bridge_node, other) = (&pool.nodes[home], &pool.nodes[1 - home]);
    assert_eq!(ids(&bridge_node.ari().get("/bridges/conf").json()["channels"]).len(), 2, "its caller and one helper call");
    let helper_bridges = ids(&other.ari().get("/bridges").json());
    assert_eq!(helper_bridges.len(), 1, "one helper bridge on the other node: {helper_bridges:?}");

    // A third caller (round robin: the first caller's node) joins without a new leg.
    let third = TonePhone::call(&uri, Some(1800), &Caller::user("sipp"), &listen);
    third.wait_connected();
    wait::until("the third caller joined conf", SECONDS_20, Duration::from_millis(100), || (joined(&app) == 3).then_some(()));
    assert!(gw.metrics().contains("scale_gateway_bridging_legs 1\n"), "one helper leg for all: {}", gw.metrics());
    assert_eq!(ids(&gw.ari().get("/bridges/conf").json()["channels"]).len(), 3);

    std::thread::sleep(TALK);
    let heard = [first.hang_up(), second.hang_up(), third.hang_up()];
    // Each caller hears the others, whichever node they are on, and never only silence.
    for (who, (heard, own)) in heard.iter().zip([1000, 1400, 1800]).enumerate() {
        for tone in listen.into_iter().filter(|t| *t != own) {
            assert!(heard.tone_seconds(tone) >= 1.5, "caller {} ({own} Hz) heard {tone} Hz for only {:.2} s: {heard:?}", who + 1, heard.tone_seconds(tone));
        }
    }

    // Nothing of the helpers stays: no channel on either node, only the app's own bridge.
    for node in &pool.nodes {
        wait::until(&format!("no call left on {}", node.name), SECONDS_20, Duration::from_millis(200), || node.ari().get("/channels").json().as_array()?.is_empty().then_some(()));
    }
    assert_eq!(ids(&bridge_node.ari().get("/bridges").json()), ["conf"]);
    wait::until("no helper bridge left", SECONDS_20, Duration::from_millis(200), || ids(&other.ari().get("/bridges").json()).is_empty().then_some(()));
    assert!(gw.metrics().contains("scale_gateway_bridging_legs 0\n"));
    assert!(!app.lines().iter().any(|l| l["unparsed"].as_str().is_some_and(|t| t.contains("ERROR") || t.contains("could not join"))), "the app saw an error: {:?}", app.lines());
    assert_eq!(joined(&app), 3, "one join per caller, none for a helper call");
}

#[test]
fn a_tone_played_to_the_bridge_reaches_the_callers_of_every_node() {
    let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
    let gw = Gateway::start(&pool, "gw-conference-play", &[]);
    gw.wait_healthy(2);
    let app = AriApp::example("conference/conference.py", &["--url", &gw.url(), "--user", CLIENT_USER, "--password", CLIENT_PASSWORD, "--app", "conference"]);
    app.expect("the app connected", SECONDS_20, |l| l["unparsed"].as_str().is_some_and(|t| t.contains("connected to")));
    for node in &pool.nodes {
        wait::until(&format!("app conference on {}", node.name), SECONDS_20, Duration::from_millis(100), || {
            node.ari().get("/applications").json().as_array()?.iter().any(|a| a["name"] == "conference").then_some(())
        });
    }
    // Silent callers, one straight to each node.
    let phones: Vec<TonePhone> = pool.nodes.iter().map(|n| TonePhone::call(&format!("sip:8000@127.0.0.1:{}", n.sip_port), None, &Caller::user("sipp"), &[2000])).collect();
    for phone in &phones {
        phone.wait_connected();
    }
    wait::until("both callers joined conf", SECONDS_20, Duration::from_millis(100), || (joined(&app) == 2).then_some(()));
    let r = gw.ari().post("/bridges/conf/play?media=tone:2000");
    assert_eq!(r.status, 201, "{}", r.body);
    std::thread::sleep(TALK);
    for (i, phone) in phones.into_iter().enumerate() {
        let heard = phone.hang_up();
        assert!(heard.tone_seconds(2000) >= 2.0, "the caller on node{} heard the bridge's tone for only {:.2} s: {heard:?}", i + 1, heard.tone_seconds(2000));
    }
}

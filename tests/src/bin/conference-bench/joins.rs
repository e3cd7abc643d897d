//! Join time as the application sees it, same-node against cross-node, and the helper leg's
//! teardown, in the same rounds.

use std::time::{Duration, Instant};

use res_scale_tests::event_socket::EventSocket;
use res_scale_tests::gateway::{Gateway, CLIENT_PASSWORD, CLIENT_USER};
use res_scale_tests::{wait, Pool};

use crate::{listed, spread, wait_app_on, wait_idle, SECONDS_20};

/// Join rounds: each gives one join of each kind and one leg teardown.
const ROUNDS: usize = 200;
/// How often the teardown is polled (the node's bridges, the gateway's metrics).
const POLL: Duration = Duration::from_millis(2);

/// A value of the gateway's Prometheus text, e.g. `scale_gateway_bridging_legs`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The callers of a round, in the order they join.
const JOINS: [&str; 4] = ["bridge's node, into the empty bridge", "other node, first of its node (leg set up)", "other node, further (leg reused)", "bridge's node, into the bridge of 3"];

/// Per kind of join (`JOINS`): until the event, and until the gateway answered addChannel.
#[derive(Default)]
struct JoinTimes {
    entered: [Vec<Duration>; 4],
    answered: [Vec<Duration>; 4],
}

/// Per way of leaving: (helper bridge gone on the member's node, the gateway's leg count at 0).
#[derive(Default)]
struct Teardowns {
    hang_up: (Vec<Duration>, Vec<Duration>),
    remove: (Vec<Duration>, Vec<Duration>),
}

pub fn joins(pool: &Pool, gw: &Gateway) {
    const APP: &str = "bench-conf";
    let socket = EventSocket::connect(&gw.url(), APP, CLIENT_USER, CLIENT_PASSWORD);
    wait_app_on(&pool.nodes.iter().collect::<Vec<_>>(), APP);
    let (a, b) = (&pool.nodes[0], &pool.nodes[1]);
    let ari = gw.ari();
    let mut times = JoinTimes::default();
    let mut teardowns = Teardowns::default();
    let started = Instant::now();
    for round in 0..ROUNDS {
        let bridge = format!("cb-{round}");
        let callers = [(a, format!("{bridge}-a1")), (b, format!("{bridge}-b1")), (b, format!("{bridge}-b2")), (a, format!("{bridge}-a2"))];
        for (node, id) in &callers {
            let r = node.ari().post(&format!("/channels?endpoint=Local/101@from-sip&app={APP}&channelId={id}&formats=ulaw"));
            assert_eq!(r.status, 200, "originate {id} on {}: {}", node.name, r.body);
        }
        for (_, id) in &callers {
            socket.wait_for(&format!("StasisStart of {id}"), SECONDS_20, |e| e["type"] == "StasisStart" && e["channel"]["id"] == id.as_str());
        }
        let r = ari.post(&format!("/bridges/{bridge}?type=mixing&ast_id={}", a.eid));
        assert_eq!(r.status, 200, "{}", r.body);
        for (kind, (_, id)) in callers.iter().enumerate() {
            let sent = Instant::now();
            let r = ari.post(&format!("/bridges/{bridge}/addChannel?channel={id}"));
            assert_eq!(r.status, 204, "add {id}: {}", r.body);
            let entered = socket.wait_for(&format!("{id} in {bridge}"), SECONDS_20, |e| e["type"] == "ChannelEnteredBridge" && e["channel"]["id"] == id.as_str());
            times.entered[kind].push(entered.at - sent);
            times.answered[kind].push(r.elapsed);
        }

        // The second remote caller leaves (the leg stays), then the last one, by hang-up in
        // even rounds and by removeChannel in odd ones.
        let (b1, b2) = (&callers[1].1, &callers[2].1);
        assert_eq!(ari.post(&format!("/bridges/{bridge}/removeChannel?channel={b2}")).status, 204);
        socket.wait_for(&format!("{b2} left"), SECONDS_20, |e| e["type"] == "ChannelLeftBridge" && e["channel"]["id"] == b2.as_str());
        assert_eq!(listed(b, "/bridges"), 1, "the helper bridge stays while {b1} is in {bridge}");
        let hang_up = round % 2 == 0;
        let sent = Instant::now();
        let status = if hang_up { ari.delete(&format!("/channels/{b1}")).status } else { ari.post(&format!("/bridges/{bridge}/removeChannel?channel={b1}")).status };
        assert_eq!(status, 204, "{b1} leaves {bridge}");
        let (mut bridge_gone, mut legs_zero) = (None, None);
        let gone = wait::try_until(Duration::from_secs(10), POLL, || {
            if bridge_gone.is_none() && listed(b, "/bridges") == 0 {
                bridge_gone = Some(sent.elapsed());
            }
            if legs_zero.is_none() && metric(&gw.metrics(), "scale_gateway_bridging_legs") == Some(0.0) {
                legs_zero = Some(sent.elapsed());
            }
            bridge_gone.zip(legs_zero)
        });
        let (bridge_gone, legs_zero) = gone.unwrap_or_else(|| panic!("round {round}: the leg did not go within 10 s (helper bridge gone: {bridge_gone:?}, legs 0: {legs_zero:?})"));
        let kind = if hang_up { &mut teardowns.hang_up } else { &mut teardowns.remove };
        kind.0.push(bridge_gone);
        kind.1.push(legs_zero);

        for (_, id) in &callers {
            let _ = ari.delete(&format!("/channels/{id}"));
        }
        assert_eq!(ari.delete(&format!("/bridges/{bridge}")).status, 204);
        wait_idle(&pool.nodes);
    }
    let metrics = gw.metrics();

    println!("\n## Conference join time, addChannel request -> ChannelEnteredBridge on the gateway's socket");
    println!("command: cargo run --release -p res-scale-tests --bin conference-bench -- joins ({ROUNDS} rounds in {:.0} s)", started.elapsed().as_secs_f64());
    println!("| joining caller | n | p50 ms | p99 ms | max ms | addChannel answered p50 / p99 ms |");
    println!("|---|---|---|---|---|---|");
    let mut entered = Vec::new();
    for (kind, label) in JOINS.iter().enumerate() {
        let (p50, p99, max) = spread(&mut times.entered[kind]);
        let (a50, a99, _) = spread(&mut times.answered[kind]);
        println!("| {label} | {} | {p50:.1} | {p99:.1} | {max:.1} | {a50:.1} / {a99:.1} |", times.entered[kind].len());
        entered.push((p50, p99));
    }
    let [empty, first, further, occupied] = [entered[0], entered[1], entered[2], entered[3]];
    println!(
        "p50 ratio to the same-node join into the empty bridge / into the bridge of 3: first remote {:.2}x / {:.2}x, further remote {:.2}x / {:.2}x (target: within 2x)",
        first.0 / empty.0,
        first.0 / occupied.0,
        further.0 / empty.0,
        further.0 / occupied.0
    );
    println!("p99 cross-node: first {:.1} ms, further {:.1} ms (target: under 500 ms)", first.1, further.1);
    if let (Some(sum), Some(count)) = (metric(&metrics, "scale_gateway_bridging_setup_seconds_sum"), metric(&metrics, "scale_gateway_bridging_setup_seconds_count")) {
        println!("the gateway's own scale_gateway_bridging_setup_seconds: {count} legs, mean {:.1} ms", sum / count.max(1.0) * 1e3);
    }

    println!("\n## Helper leg teardown after the last remote caller leaves (polled every {} ms)", POLL.as_millis());
    println!("| the caller leaves by | n | helper bridge gone on its node p50 / p99 ms | scale_gateway_bridging_legs 0 p50 / p99 ms |");
    println!("|---|---|---|---|");
    for (label, (bridge_gone, legs_zero)) in [("hang-up (DELETE /channels)", &mut teardowns.hang_up), ("removeChannel", &mut teardowns.remove)] {
        let (g50, g99, _) = spread(bridge_gone);
        let (l50, l99, _) = spread(legs_zero);
        println!("| {label} | {} | {g50:.1} / {g99:.1} | {l50:.1} / {l99:.1} |", bridge_gone.len());
    }
}

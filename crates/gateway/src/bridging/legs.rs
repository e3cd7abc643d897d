//! Setting helper legs up and tearing them down, with the nodes' own ARI.
//!
//! Up, for a member on node B joining bridge X on node A: a helper bridge on B; a helper call
//! created on B (in the gateway's Stasis app, so it can be bridged before it is dialed), put
//! in the helper bridge, dialed to `sip:<leg>~<app>@<A>` over the pool endpoint; A's dialplan
//! (context res-scale-pool) hands the incoming call to the gateway's app with the leg id; the
//! gateway puts it in X and answers it. Then the member joins the helper bridge.
//! Down: the members leave the helper bridge (when the bridge goes, not when they did), the
//! call is hung up on both ends, the helper bridge destroyed.

use axum::http::StatusCode;
use tokio::sync::oneshot;

use super::lock;
use super::registry::Leg;
use crate::owners::Eid;
use crate::pool::Node;
use crate::routing::params::encode_value;
use crate::routing::path::encode_segment;
use crate::routing::upstream::{send, Answer, Outgoing};
use crate::state::Gateway;

fn request(method: reqwest::Method, path: String, query: String) -> Outgoing {
    Outgoing { method, path, query, content_type: None, body: Default::default() }
}

/// One ARI call of the gateway's own; anything but a 2xx is an error naming the call.
async fn call(gw: &Gateway, node: &Node, method: reqwest::Method, path: String, query: String) -> Result<Answer, String> {
    let out = request(method.clone(), path, query);
    match send(gw, node, &out, Some(gw.config.bridging.leg_timeout)).await {
        Ok(answer) if answer.status.is_success() => Ok(answer),
        Ok(answer) => Err(format!("{method} {} on node {}: {} {}", out.path, node.eid, answer.status.as_u16(), String::from_utf8_lossy(&answer.body).trim())),
        Err(_) => Err(format!("{method} {} on node {}: no answer", out.path, node.eid)),
    }
}

/// Adds `channel` (on `channel_node`) to `bridge` (on `bridge_node`), through the leg between
/// the two nodes, set up first if there is none. `query` carries the request's other
/// parameters (role, mute, ...) for the member's own join.
pub async fn add(gw: &Gateway, bridge: &str, bridge_node: &Node, channel: &str, channel_node: &Node, query: &str) -> Answer {
    let _one_at_a_time = gw.bridging.ops.lock().await;
    let existing = lock(&gw.bridging.registry).leg(bridge, &channel_node.eid).map(|l| l.helper_bridge.clone());
    let helper = match existing {
        Some(helper) => helper,
        None => match open(gw, bridge, bridge_node, channel_node).await {
            Ok(helper) => helper,
            Err(why) => {
                tracing::warn!(bridge, node = %channel_node.eid, error = %why, "bridging: could not join the nodes");
                gw.metrics.bridging_failures.inc();
                return Answer::error(StatusCode::INTERNAL_SERVER_ERROR, &format!("Could not join node {} to the bridge's node: {why}", channel_node.eid));
            }
        },
    };
    if let Some(leg) = lock(&gw.bridging.registry).leg_mut(bridge, &channel_node.eid) {
        leg.members.insert(channel.to_string());
    }
    let mut query_of_member = format!("channel={}", encode_value(channel));
    if !query.is_empty() {
        query_of_member.push('&');
        query_of_member.push_str(query);
    }
    let out = request(reqwest::Method::POST, format!("bridges/{}/addChannel", encode_segment(&helper)), query_of_member);
    let answer = match send(gw, channel_node, &out, None).await {
        Ok(answer) => answer,
        Err(_) => Answer::error(StatusCode::SERVICE_UNAVAILABLE, "The Asterisk node did not answer"),
    };
    if !answer.status.is_success() {
        let empty = lock(&gw.bridging.registry).leg_mut(bridge, &channel_node.eid).is_some_and(|leg| {
            leg.members.remove(channel);
            leg.members.is_empty()
        });
        if empty {
            close(gw, bridge, &channel_node.eid, false).await;
        }
    }
    answer
}

/// Takes a remote member out of `bridge`: `None` when `channel` is not one (the bridge's own
/// node answers then, as for any channel).
pub async fn remove(gw: &Gateway, bridge: &str, channel: &str) -> Option<Answer> {
    let _one_at_a_time = gw.bridging.ops.lock().await;
    let (helper, member_node) = {
        let registry = lock(&gw.bridging.registry);
        let (b, node) = registry.leg_of_member(channel).filter(|(b, _)| b == bridge)?;
        (registry.leg(&b, &node)?.helper_bridge.clone(), node)
    };
    let node = gw.pool.node(&member_node)?;
    let out = request(reqwest::Method::POST, format!("bridges/{}/removeChannel", encode_segment(&helper)), format!("channel={}", encode_value(channel)));
    let answer = send(gw, &node, &out, None).await.unwrap_or_else(|_| Answer::error(StatusCode::SERVICE_UNAVAILABLE, "The Asterisk node did not answer"));
    if answer.status.is_success() {
        forget_member(gw, bridge, &member_node, channel).await;
    }
    Some(answer)
}

/// Tears down every leg of `bridge` (it is being destroyed): its remote members leave it.
pub async fn destroy(gw: &Gateway, bridge: &str) {
    let _one_at_a_time = gw.bridging.ops.lock().await;
    let nodes: Vec<Eid> = lock(&gw.bridging.registry).bridges.get(bridge).map(|c| c.legs.keys().cloned().collect()).unwrap_or_default();
    for node in nodes {
        close(gw, bridge, &node, true).await;
    }
}

/// A member left its helper bridge (hung up, moved, removed): the leg goes with its last one.
pub async fn member_left(gw: &Gateway, helper_bridge: &str, channel: &str) {
    let _one_at_a_time = gw.bridging.ops.lock().await;
    let Some((bridge, node)) = lock(&gw.bridging.registry).leg_of_helper_bridge(helper_bridge) else { return };
    forget_member(gw, &bridge, &node, channel).await;
}

/// One end of a helper call is gone (hung up by a node, not by the gateway): its members leave
/// the bridge, so the application sees them go instead of silence.
pub async fn helper_gone(gw: &Gateway, channel: &str) {
    let _one_at_a_time = gw.bridging.ops.lock().await;
    let Some((bridge, node)) = lock(&gw.bridging.registry).leg_of_helper(channel) else { return };
    tracing::warn!(bridge, node = %node, channel, "bridging: a helper call ended by itself; its members leave the bridge");
    close(gw, &bridge, &node, true).await;
}

/// A node cannot be reached: the legs into its bridges (their members elsewhere leave them)
/// and the legs of its channels go.
pub async fn node_lost(gw: &Gateway, lost: &Eid) {
    let _one_at_a_time = gw.bridging.ops.lock().await;
    let legs: Vec<(String, Eid)> =
        lock(&gw.bridging.registry).bridges.iter().flat_map(|(b, cross)| cross.legs.keys().filter(|n| cross.node == *lost || *n == lost).map(|n| (b.clone(), n.clone()))).collect();
    for (bridge, node) in legs {
        tracing::warn!(bridge, node = %node, lost = %lost, "bridging: a node of this leg is unreachable; tearing the leg down");
        close(gw, &bridge, &node, true).await;
    }
}

/// Removes what this gateway's helper application holds on `node` and no leg names: helpers
/// of a gateway that restarted (with the same instance id) while its legs were up.
pub async fn sweep(gw: &Gateway, node: &Node) {
    let _one_at_a_time = gw.bridging.ops.lock().await;
    let path = format!("applications/{}", encode_segment(&gw.bridging.app));
    let Some(app) = call(gw, node, reqwest::Method::GET, path, String::new()).await.ok().and_then(|a| a.json()) else { return };
    let known: std::collections::HashSet<String> = {
        let registry = lock(&gw.bridging.registry);
        registry.bridges.values().flat_map(|c| c.legs.values()).flat_map(|l| [Some(l.far.clone()), l.near.clone(), Some(l.helper_bridge.clone())]).flatten().collect()
    };
    let listed = |key: &str| app[key].as_array().into_iter().flatten().filter_map(|v| v.as_str()).filter(|id| !known.contains(*id)).map(str::to_string).collect::<Vec<_>>();
    let (channels, bridges) = (listed("channel_ids"), listed("bridge_ids"));
    // The app also sees the applications' bridges its calls were in: only helper bridges go.
    let bridges: Vec<String> = bridges.into_iter().filter(|b| b.starts_with(super::registry::HELPER_BRIDGE_PREFIX)).collect();
    for channel in &channels {
        let _ = call(gw, node, reqwest::Method::DELETE, format!("channels/{}", encode_segment(channel)), String::new()).await;
    }
    for bridge in &bridges {
        let _ = call(gw, node, reqwest::Method::DELETE, format!("bridges/{}", encode_segment(bridge)), String::new()).await;
    }
    if !channels.is_empty() || !bridges.is_empty() {
        tracing::warn!(node = %node.eid, channels = channels.len(), bridges = bridges.len(), "bridging: removed helpers left from before this gateway started");
    }
}

async fn forget_member(gw: &Gateway, bridge: &str, node: &Eid, channel: &str) {
    let empty = lock(&gw.bridging.registry).leg_mut(bridge, node).is_some_and(|leg| leg.members.remove(channel) && leg.members.is_empty());
    if empty {
        close(gw, bridge, node, false).await;
    }
}

/// Sets up the leg from `member_node` into `bridge`; its helper bridge's id.
async fn open(gw: &Gateway, bridge: &str, bridge_node: &Node, member_node: &Node) -> Result<String, String> {
    let sip = bridge_node.sip.clone().ok_or_else(|| format!("node {} has no SIP address in Consul (res_scale.conf [general] sip_address)", bridge_node.eid))?;
    for node in [bridge_node, member_node] {
        // A node that just joined the pool gets its socket within a moment.
        let deadline = tokio::time::Instant::now() + gw.config.bridging.leg_timeout;
        while !gw.bridging.is_connected(&node.eid) {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("the gateway's Stasis application {} is not connected to node {}", gw.bridging.app, node.eid));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let leg = Leg::new(&format!("{:016x}", rand::random::<u64>()));
    let (arrived, arrival) = oneshot::channel();
    lock(&gw.bridging.waiters).insert(leg.id.clone(), arrived);
    lock(&gw.bridging.registry).open(bridge, &bridge_node.eid, &member_node.eid, leg.clone());
    let started = std::time::Instant::now();
    let result = connect(gw, bridge, bridge_node, member_node, &leg, &sip, arrival).await;
    lock(&gw.bridging.waiters).remove(&leg.id);
    match result {
        Ok(()) => {
            gw.metrics.bridging_setup_seconds.observe(started.elapsed().as_secs_f64());
            tracing::info!(bridge, from = %member_node.eid, to = %bridge_node.eid, leg = %leg.id, "bridging: helper leg up");
            Ok(leg.helper_bridge)
        }
        Err(why) => {
            close(gw, bridge, &member_node.eid, false).await;
            Err(why)
        }
    }
}

async fn connect(gw: &Gateway, bridge: &str, bridge_node: &Node, member: &Node, leg: &Leg, sip: &str, arrival: oneshot::Receiver<String>) -> Result<(), String> {
    use reqwest::Method;
    let app = &gw.bridging.app;
    let timeout = gw.config.bridging.leg_timeout;
    let helper = encode_segment(&leg.helper_bridge);
    // Its name says which bridge it extends, so every replica can tell from the events alone.
    let name = format!("{}{bridge}", super::registry::HELPER_NAME_PREFIX);
    let endpoint = format!("PJSIP/{}/sip:{}~{}@{}", gw.config.bridging.endpoint, leg.id, app, sip);
    // The helper bridge and the helper call are made at once. A created channel enters the app
    // a moment after the answer: it is bridged only once it has.
    let (entered, entry) = oneshot::channel();
    lock(&gw.bridging.waiters).insert(leg.far.clone(), entered);
    let make_bridge = call(gw, member, Method::POST, "bridges".into(), format!("type=mixing&bridgeId={}&name={}", encode_value(&leg.helper_bridge), encode_value(&name)));
    let make_call = async {
        call(gw, member, Method::POST, "channels/create".into(), format!("endpoint={}&app={}&channelId={}", encode_value(&endpoint), encode_value(app), encode_value(&leg.far))).await?;
        match tokio::time::timeout(timeout, entry).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(format!("the helper call on node {} did not enter the gateway's application in {timeout:?}", member.eid)),
        }
    };
    let (made_bridge, made_call) = tokio::join!(make_bridge, make_call);
    lock(&gw.bridging.waiters).remove(&leg.far);
    made_bridge?;
    made_call?;
    call(gw, member, Method::POST, format!("bridges/{helper}/addChannel"), format!("channel={}", encode_value(&leg.far))).await?;
    call(gw, member, Method::POST, format!("channels/{}/dial", encode_segment(&leg.far)), format!("timeout={}", timeout.as_secs().max(1))).await?;
    let near = match tokio::time::timeout(timeout, arrival).await {
        Ok(Ok(near)) => near,
        _ => return Err(format!("the helper call from node {} did not reach node {} ({sip}) in {timeout:?}; check the {} endpoint on both", member.eid, bridge_node.eid, gw.config.bridging.endpoint)),
    };
    lock(&gw.bridging.registry).set_near(bridge, &member.eid, &near);
    call(gw, bridge_node, Method::POST, format!("bridges/{}/addChannel", encode_segment(bridge)), format!("channel={}", encode_value(&near))).await?;
    // Answered while the bridge's snapshot (with the helper call in it) is read.
    let answer = call(gw, bridge_node, Method::POST, format!("channels/{}/answer", encode_segment(&near)), String::new());
    let snapshot = call(gw, bridge_node, Method::GET, format!("bridges/{}", encode_segment(bridge)), String::new());
    let (answered, snapshot) = tokio::join!(answer, snapshot);
    answered?;
    if let Some(snapshot) = snapshot.ok().and_then(|a| a.json()) {
        lock(&gw.bridging.registry).snapshots.insert(bridge.to_string(), snapshot);
    }
    Ok(())
}

/// Tears one leg down; a node that cannot be reached is not waited for.
async fn close(gw: &Gateway, bridge: &str, member: &Eid, remove_members: bool) {
    let (leg, bridge_node) = {
        let mut registry = lock(&gw.bridging.registry);
        let bridge_node = registry.bridges.get(bridge).map(|c| c.node.clone());
        match registry.close(bridge, member) {
            Some(leg) => (leg, bridge_node),
            None => return,
        }
    };
    use reqwest::Method;
    let reachable = |eid: &Eid| gw.pool.node(eid).filter(|_| gw.bridging.is_connected(eid));
    if let Some(node) = reachable(member) {
        let helper = encode_segment(&leg.helper_bridge);
        if remove_members {
            for channel in &leg.members {
                let _ = call(gw, &node, Method::POST, format!("bridges/{helper}/removeChannel"), format!("channel={}", encode_value(channel))).await;
            }
        }
        let _ = call(gw, &node, Method::DELETE, format!("channels/{}", encode_segment(&leg.far)), String::new()).await;
        let _ = call(gw, &node, Method::DELETE, format!("bridges/{helper}"), String::new()).await;
    }
    if let (Some(near), Some(node)) = (&leg.near, bridge_node.as_ref().and_then(reachable)) {
        // Normally already gone with the far end's BYE; a 404 then is fine.
        let _ = call(gw, &node, Method::DELETE, format!("channels/{}", encode_segment(near)), String::new()).await;
    }
    tracing::info!(bridge, node = %member, leg = %leg.id, members = leg.members.len(), "bridging: helper leg torn down");
}

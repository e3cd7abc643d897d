//! `POST /bridges/{id}/addChannel` and `removeChannel`: the bridge's own node takes its own
//! channels as they are; a channel of another node joins (and leaves) through a helper leg
//! between the two nodes (see `bridging`), so the application never learns there are two.

use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::params::encode_value;
use super::routes::Route;
use super::{own, owner, to_node, Incoming, Routed};
use crate::bridging;
use crate::owners::Kind;
use crate::pool::Node;

pub async fn route(r: &Incoming<'_>, route: &Route, index: usize, adding: bool) -> Routed {
    let gw = r.gw;
    let bridge = r.id(index);
    let Some(node) = owner::locate(gw, Kind::Bridge, bridge).await else { return own(owner::not_found(Kind::Bridge, r.method)) };
    let mut local = Vec::new();
    let mut remote: Vec<(String, Node)> = Vec::new();
    for channel in r.params.list("channel") {
        let elsewhere = if adding {
            owner::locate(gw, Kind::Channel, &channel).await.filter(|n| n.eid != node.eid)
        } else {
            gw.bridging.remote_member(&channel).filter(|(b, _)| b == bridge).and_then(|(_, eid)| gw.pool.node(&eid))
        };
        match elsewhere {
            Some(n) => remote.push((channel, n)),
            None => local.push(channel),
        }
    }
    if remote.is_empty() {
        return to_node(r, &node, route, &r.out).await;
    }
    let rest = r.params.forwarded_query(&["channel"]);
    if !local.is_empty() {
        let mut out = r.out.clone();
        out.query = std::iter::once(format!("channel={}", encode_value(&local.join(",")))).chain(Some(rest.clone()).filter(|q| !q.is_empty())).collect::<Vec<_>>().join("&");
        let routed = to_node(r, &node, route, &out).await;
        if !routed.0.status().is_success() {
            return routed;
        }
    }
    for (channel, member_node) in remote {
        let answer = if adding {
            bridging::add(gw, bridge, &node, &channel, &member_node, &rest).await
        } else {
            match bridging::remove(gw, bridge, &channel).await {
                Some(answer) => answer,
                None => continue,
            }
        };
        if !answer.status.is_success() {
            return (answer.into_response(), member_node.eid.to_string());
        }
    }
    (StatusCode::NO_CONTENT.into_response(), node.eid.to_string())
}

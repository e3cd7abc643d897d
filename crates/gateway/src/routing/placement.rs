//! Where a new resource goes: the node the client names (`X-Asterisk-ID` header or `ast_id`
//! parameter, the Wazo proof of concept's convention), else the node of the channel it relates
//! to (`originator`), else, for a bridge, the node of the channel the application acted on
//! last (its callers then need the fewest helper legs), else the placeable node with the
//! fewest channels.

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::owner::locate;
use super::params::Params;
use crate::ari::errors::ari_error;
use crate::owners::{Eid, Kind};
use crate::pool::Node;
use crate::state::Gateway;

pub const HINT_HEADER: &str = "x-asterisk-id";

/// The nodes to try, in order. Only an unpinned placement has more than one (a node that
/// refuses the connection is passed over).
pub async fn candidates(gw: &Gateway, headers: &HeaderMap, params: &Params<'_>, kind: Kind) -> Result<Vec<Node>, Response> {
    let hint = headers.get(HINT_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string).or_else(|| params.get("ast_id"));
    if let Some(hint) = hint {
        let hint = hint.trim();
        return match gw.pool.nodes().into_iter().find(|n| n.eid.eq_ignore_ascii_case(hint)) {
            Some(node) if node.serving() => Ok(vec![node]),
            _ => Err(ari_error(StatusCode::BAD_REQUEST, &format!("No serving Asterisk node has the ID '{hint}'"))),
        };
    }
    if let Some(originator) = params.get("originator") {
        // The originator's node, so both can meet in a bridge; an unknown originator is the
        // node's to refuse, as ARI does.
        if let Some(node) = locate(gw, Kind::Channel, &originator).await {
            return Ok(vec![node]);
        }
    }
    let mut nodes = by_load(gw.pool.placeable(), &gw.owners.channels_per_node());
    if kind == Kind::Bridge {
        if let Some(last) = gw.bridging.last_channel_node() {
            if let Some(i) = nodes.iter().position(|n| n.eid == last) {
                let node = nodes.remove(i);
                nodes.insert(0, node);
            }
        }
    }
    if nodes.is_empty() {
        return Err(ari_error(StatusCode::SERVICE_UNAVAILABLE, "No Asterisk node can take new channels"));
    }
    Ok(nodes)
}

/// Nodes ordered by their known channel count, fewest first (ties in EID order).
fn by_load(mut nodes: Vec<Node>, channels: &HashMap<Eid, usize>) -> Vec<Node> {
    nodes.sort_by_key(|n| (channels.get(&n.eid).copied().unwrap_or(0), n.eid.clone()));
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(eid: &str) -> Node {
        Node { eid: eid.into(), id: format!("asterisk-{eid}"), ari_url: "http://127.0.0.1:1/ari".into(), health: "passing", sip: None }
    }

    #[test]
    fn the_least_loaded_node_comes_first() {
        let counts: HashMap<Eid, usize> = [("a".into(), 3), ("b".into(), 1)].into_iter().collect();
        let order: Vec<_> = by_load(vec![node("a"), node("b"), node("c")], &counts).into_iter().map(|n| n.eid.to_string()).collect();
        assert_eq!(order, ["c", "b", "a"]);
    }
}

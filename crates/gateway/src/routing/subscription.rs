//! `POST`/`DELETE /applications/{app}/subscription?eventSource=...`: a channel or bridge
//! source is (un)subscribed on the node that owns it, an endpoint or device state source on
//! every node (a phone or device can be used from any of them). The answer is the
//! application as the pool sees it; any node's refusal is the answer instead.

use std::collections::BTreeMap;

use axum::http::StatusCode;

use super::merge::Merge;
use super::owner::locate;
use super::params::encode_value;
use super::routes::Route;
use super::upstream::{send, Outgoing};
use super::{merged_answer, own, successes, Incoming, Routed, POOL};
use crate::ari::errors::ari_error;
use crate::owners::{Eid, Kind};
use crate::pool::Node;

pub async fn route(r: &Incoming<'_>, route: &Route) -> Routed {
    let sources = r.params.list("eventSource");
    let serving = r.gw.pool.serving();
    let Some(first) = serving.first().cloned() else { return own(ari_error(StatusCode::SERVICE_UNAVAILABLE, "No Asterisk node is serving")) };
    if sources.is_empty() {
        // The node answers with ARI's 400 for the missing parameter.
        return super::any(r, route).await;
    }
    let mut per_node: BTreeMap<Eid, (Node, Vec<String>)> = BTreeMap::new();
    let mut add = |node: &Node, source: &str| per_node.entry(node.eid.clone()).or_insert_with(|| (node.clone(), Vec::new())).1.push(source.to_string());
    for source in &sources {
        let owned = match source.split_once(':') {
            Some(("channel", id)) => Some((Kind::Channel, id)),
            Some(("bridge", id)) => Some((Kind::Bridge, id)),
            _ => None,
        };
        match owned {
            // A source no node has goes to one node, which refuses it as ARI does (422).
            Some((kind, id)) => add(&locate(r.gw, kind, id).await.unwrap_or_else(|| first.clone()), source),
            None => serving.iter().for_each(|n| add(n, source)),
        }
    }
    let base = r.params.forwarded_query(&["eventSource"]);
    let requests: Vec<(Node, Outgoing)> = per_node
        .into_values()
        .map(|(node, sources)| {
            let mut query = base.clone();
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str("eventSource=");
            query.push_str(&encode_value(&sources.join(",")));
            // The sources travel in the query; a JSON body carried nothing else.
            let out = Outgoing { query, content_type: None, body: Default::default(), ..r.out.clone() };
            (node, out)
        })
        .collect();
    let nodes: Vec<Node> = requests.iter().map(|(n, _)| n.clone()).collect();
    let answers = futures_util::future::join_all(requests.iter().map(|(node, out)| async move { send(r.gw, node, out, None).await.ok() })).await;
    if let Some(refusal) = answers.iter().position(|a| a.as_ref().is_some_and(|a| !a.status.is_success())) {
        let answer = answers.into_iter().nth(refusal).flatten().expect("the refusal is an answer");
        return (answer.into_response(), POOL.into());
    }
    match successes(&nodes, answers) {
        Ok(ok) => (merged_answer(r.gw, Merge::Application, ok), POOL.into()),
        Err(refusal) => (refusal, POOL.into()),
    }
}

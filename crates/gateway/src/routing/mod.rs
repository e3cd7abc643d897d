//! A REST request's way through the gateway, top to bottom: authenticate as ARI does, check
//! the path and the body size, find the route (owner / placement / every node / any node),
//! send it upstream, learn ownership from the answer, answer the client.

pub mod merge;
mod owner;
mod params;
mod path;
mod placement;
mod routes;
mod subscription;
mod upstream;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::future::join_all;

use crate::ari::auth::authenticate;
use crate::ari::errors::{ari_error, resource_not_found};
use crate::metrics::RequestLabels;
use crate::owners::Kind;
use crate::pool::Node;
use crate::state::Gateway;
use merge::Merge;
use params::Params;
use path::{PathError, Segment};
use routes::{Action, Route};
use upstream::{send, Answer, Outgoing};

/// The label of answers the gateway gives itself, and of merged answers.
const GATEWAY: &str = "gateway";
const POOL: &str = "pool";

/// `/ari`, `/ari/` and `/ari/{*path}` (except `/ari/events` and `/ari/api-docs/`).
pub async fn ari(State(gw): State<Arc<Gateway>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let method = parts.method.as_str();
    let query = parts.uri.query();
    if let Err(refusal) = authenticate(&gw.config.clients, &parts.method, &parts.headers, query) {
        gw.metrics.refuse("auth");
        return counted(&gw, method, "/{auth}", GATEWAY, refusal);
    }
    let rest = match parts.uri.path().strip_prefix("/ari").unwrap_or_default() {
        // ARI's root answers only OPTIONS.
        "" | "/" => {
            let mut r = ari_error(StatusCode::METHOD_NOT_ALLOWED, "Invalid method");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("OPTIONS"));
            return counted(&gw, method, "/", GATEWAY, r);
        }
        rest => rest.strip_prefix('/').unwrap_or(rest),
    };
    let segments = match path::segments(rest) {
        Ok(s) => s,
        Err(PathError::TrailingSlash(p)) => return counted(&gw, method, "/{trailing slash}", GATEWAY, ari_error(StatusCode::NOT_FOUND, &format!("ARI URLs do not end with a slash. Try /ari/{p}"))),
        Err(PathError::Unsafe) => {
            gw.metrics.refuse("path");
            tracing::info!(path = %parts.uri.path(), "refused a path that could leave /ari/");
            return counted(&gw, method, "/{refused}", GATEWAY, resource_not_found());
        }
    };
    let limit = gw.config.limits.max_body_bytes;
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let body = match declared {
        Some(n) if n > limit as u64 => None,
        _ => axum::body::to_bytes(body, limit).await.ok(),
    };
    let Some(body) = body else {
        gw.metrics.refuse("body_too_large");
        tracing::info!(limit, "refused a request body over [limits] max_body_bytes");
        return counted(&gw, method, "/{too large}", GATEWAY, ari_error(StatusCode::PAYLOAD_TOO_LARGE, &format!("Request body too large: at most {limit} bytes")));
    };

    let texts: Vec<&str> = segments.iter().map(|s| s.text.as_str()).collect();
    let route = routes::classify(method, &texts);
    let template = routes::template(&texts);
    let content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
    let params = Params::new(query, content_type.as_ref().and_then(|c| c.to_str().ok()), &body);
    let out = Outgoing {
        method: parts.method.clone(),
        path: segments.iter().map(|s| s.raw.as_str()).collect::<Vec<_>>().join("/"),
        query: params.forwarded_query(&[]),
        content_type,
        body,
    };
    let request = Incoming { gw: &gw, method, headers: &parts.headers, segments: &segments, params, out };
    let (response, node) = dispatch(&request, &route).await;
    counted(&gw, method, &template, &node, response)
}

fn counted(gw: &Gateway, method: &str, template: &str, node: &str, response: Response) -> Response {
    let labels = RequestLabels { route: format!("{method} {template}"), node: node.to_string(), status: response.status().as_u16() };
    gw.metrics.requests.get_or_create(&labels).inc();
    response
}

/// A checked request, ready to go upstream.
struct Incoming<'a> {
    gw: &'a Gateway,
    method: &'a str,
    headers: &'a HeaderMap,
    segments: &'a [Segment],
    params: Params<'a>,
    out: Outgoing,
}

impl Incoming<'_> {
    fn id(&self, index: usize) -> &str {
        &self.segments[index].text
    }

    fn is_read(&self) -> bool {
        matches!(self.method, "GET" | "HEAD" | "OPTIONS")
    }
}

type Routed = (Response, String);

fn own(response: Response) -> Routed {
    (response, GATEWAY.to_string())
}

async fn dispatch(r: &Incoming<'_>, route: &Route) -> Routed {
    match &route.action {
        Action::Owner(kind, index) => match owner::locate(r.gw, *kind, r.id(*index)).await {
            Some(node) => {
                let routed = to_node(r, &node, route, &r.out).await;
                if routed.0.status() == StatusCode::NOT_FOUND {
                    r.gw.owners.forget(*kind, r.id(*index));
                }
                routed
            }
            None => own(owner::not_found(*kind, r.method)),
        },
        Action::Create { kind, id_param, id_index } => {
            let chosen = id_index.map(|i| r.id(i).to_string()).or_else(|| r.params.get(id_param));
            let known = chosen.and_then(|id| r.gw.owners.lookup(*kind, &id)).and_then(|eid| r.gw.pool.node(&eid)).filter(Node::serving);
            match known {
                Some(node) => to_node(r, &node, route, &r.out).await,
                None => placed(r, route).await,
            }
        }
        Action::OwnerOrCreate(kind, index) => match owner::locate(r.gw, *kind, r.id(*index)).await {
            Some(node) => to_node(r, &node, route, &r.out).await,
            None => placed(r, route).await,
        },
        Action::Merge(merge) => merged(r, *merge).await,
        Action::Broadcast(merge) => broadcast(r, *merge).await,
        Action::StoredRecording(index) => {
            let path = format!("recordings/stored/{}", r.segments[*index].raw);
            match owner::ask(r.gw, &path).await {
                Some(node) => to_node(r, &node, route, &r.out).await,
                None => own(ari_error(StatusCode::NOT_FOUND, "Recording not found")),
            }
        }
        Action::Subscription => subscription::route(r, route).await,
        Action::UserEvent => {
            for source in r.params.list("source") {
                let kind = match source.split_once(':') {
                    Some(("channel", id)) => Some((Kind::Channel, id.to_string())),
                    Some(("bridge", id)) => Some((Kind::Bridge, id.to_string())),
                    _ => None,
                };
                if let Some((kind, id)) = kind {
                    if let Some(node) = owner::locate(r.gw, kind, &id).await {
                        return to_node(r, &node, route, &r.out).await;
                    }
                }
            }
            any(r, route).await
        }
        Action::Any => any(r, route).await,
    }
}

/// Sends to one node and learns from its answer.
async fn to_node(r: &Incoming<'_>, node: &Node, route: &Route, out: &Outgoing) -> Routed {
    match send(r.gw, node, out, None).await {
        Ok(answer) => {
            learn(r, route, node, &answer);
            (answer.into_response(), node.eid.to_string())
        }
        Err(_) => (ari_error(StatusCode::SERVICE_UNAVAILABLE, "The Asterisk node did not answer"), node.eid.to_string()),
    }
}

/// Tries the nodes in order: the next one only when the request cannot have been done
/// (the connection was refused) or, for reads, on any failure.
async fn first_answering(r: &Incoming<'_>, nodes: &[Node], route: &Route) -> Routed {
    for (i, node) in nodes.iter().enumerate() {
        match send(r.gw, node, &r.out, None).await {
            Ok(answer) => {
                learn(r, route, node, &answer);
                return (answer.into_response(), node.eid.to_string());
            }
            Err(failure) if i + 1 < nodes.len() && (failure.before_sending || r.is_read()) => continue,
            Err(_) => return (ari_error(StatusCode::SERVICE_UNAVAILABLE, "The Asterisk node did not answer"), node.eid.to_string()),
        }
    }
    own(ari_error(StatusCode::SERVICE_UNAVAILABLE, "No Asterisk node is serving"))
}

async fn placed(r: &Incoming<'_>, route: &Route) -> Routed {
    match placement::candidates(r.gw, r.headers, &r.params).await {
        Ok(nodes) => first_answering(r, &nodes, route).await,
        Err(refusal) => own(refusal),
    }
}

/// Node-local things that are the same on every node: spread over the placeable nodes, then
/// the other serving ones.
async fn any(r: &Incoming<'_>, route: &Route) -> Routed {
    let mut nodes = r.gw.pool.placeable();
    if !nodes.is_empty() {
        let turn = r.gw.rotation.fetch_add(1, Ordering::Relaxed) % nodes.len();
        nodes.rotate_left(turn);
    }
    nodes.extend(r.gw.pool.serving().into_iter().filter(|n| !n.placeable()));
    first_answering(r, &nodes, route).await
}

/// Learns the owner of what a successful answer carries, and of the second channel a client
/// named for a Local originate (`otherChannelId`), which the answer does not show.
fn learn(r: &Incoming<'_>, route: &Route, node: &Node, answer: &Answer) {
    let Some(kind) = route.learn else { return };
    if !answer.status.is_success() {
        return;
    }
    let field = if kind == Kind::Recording { "name" } else { "id" };
    if let Some(id) = answer.json().as_ref().and_then(|v| v.get(field)).and_then(|v| v.as_str()) {
        r.gw.owners.learn(kind, id, &node.eid);
    }
    if matches!(route.action, Action::Create { kind: Kind::Channel, .. }) {
        if let Some(other) = r.params.get("otherChannelId") {
            r.gw.owners.learn(Kind::Channel, &other, &node.eid);
        }
    }
}

/// Every serving node's answer to the same request, in node order.
async fn ask_all(r: &Incoming<'_>, nodes: &[Node], out: &Outgoing, timeout: Option<std::time::Duration>) -> Vec<Option<Answer>> {
    join_all(nodes.iter().map(|n| async move { send(r.gw, n, out, timeout).await.ok() })).await
}

/// The successful JSON answers, or the answer to give when there is none.
fn successes(nodes: &[Node], answers: Vec<Option<Answer>>) -> Result<Vec<(Node, serde_json::Value)>, Response> {
    let mut ok = Vec::new();
    let mut refusal = None;
    for (node, answer) in nodes.iter().zip(answers) {
        match answer {
            Some(a) if a.status.is_success() => match a.json() {
                Some(v) => ok.push((node.clone(), v)),
                None => tracing::warn!(node = %node.eid, "a node's answer to a pool-wide request is not JSON; left out"),
            },
            Some(a) => {
                refusal.get_or_insert(a);
            }
            None => {}
        }
    }
    match (ok.is_empty(), refusal) {
        (false, _) => Ok(ok),
        (true, Some(a)) => Err(a.into_response()),
        (true, None) => Err(ari_error(StatusCode::SERVICE_UNAVAILABLE, "No Asterisk node answered")),
    }
}

fn merged_answer(merge: Merge, ok: Vec<(Node, serde_json::Value)>) -> Response {
    match merge.merge(ok.into_iter().map(|(_, v)| v).collect()) {
        Some(v) => Answer::from_json(StatusCode::OK, &v).into_response(),
        None => ari_error(StatusCode::BAD_GATEWAY, "An Asterisk node gave an answer ARI does not document"),
    }
}

/// A pool-wide read. Nodes that fail are left out, so the resources of healthy nodes stay
/// visible; the channels and bridges listed teach the gateway their owners.
async fn merged(r: &Incoming<'_>, merge: Merge) -> Routed {
    let nodes = r.gw.pool.serving();
    if nodes.is_empty() {
        return own(ari_error(StatusCode::SERVICE_UNAVAILABLE, "No Asterisk node is serving"));
    }
    let answers = ask_all(r, &nodes, &r.out, Some(r.gw.config.nodes.probe_timeout)).await;
    let ok = match successes(&nodes, answers) {
        Ok(ok) => ok,
        Err(refusal) => return (refusal, POOL.into()),
    };
    let listed = match merge {
        Merge::Channels => Some(Kind::Channel),
        Merge::Bridges => Some(Kind::Bridge),
        _ => None,
    };
    if let Some(kind) = listed {
        for (node, list) in &ok {
            for id in list.as_array().into_iter().flatten().filter_map(|o| o.get("id")?.as_str()) {
                r.gw.owners.learn(kind, id, &node.eid);
            }
        }
    }
    (merged_answer(merge, ok), POOL.into())
}

/// A node-wide change on every serving node: any refusal is the answer (so the client sees
/// it), else the first node's (or the merged) answer.
async fn broadcast(r: &Incoming<'_>, merge: Option<Merge>) -> Routed {
    let nodes = r.gw.pool.serving();
    if nodes.is_empty() {
        return own(ari_error(StatusCode::SERVICE_UNAVAILABLE, "No Asterisk node is serving"));
    }
    let answers = ask_all(r, &nodes, &r.out, None).await;
    if let Some(refusal) = answers.iter().flatten().position(|a| !a.status.is_success()) {
        let answer = answers.into_iter().flatten().nth(refusal).expect("position is within the answers");
        return (answer.into_response(), POOL.into());
    }
    match merge {
        Some(merge) => match successes(&nodes, answers) {
            Ok(ok) => (merged_answer(merge, ok), POOL.into()),
            Err(refusal) => (refusal, POOL.into()),
        },
        None => match answers.into_iter().flatten().next() {
            Some(answer) => (answer.into_response(), POOL.into()),
            None => (ari_error(StatusCode::SERVICE_UNAVAILABLE, "No Asterisk node answered"), POOL.into()),
        },
    }
}

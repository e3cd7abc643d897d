//! A REST request's way through the gateway, top to bottom: authenticate as ARI does, check
//! the path and the body size, find the route (owner / placement / every node / any node),
//! send it upstream, learn ownership from the answer, answer the client.

mod members;
pub mod merge;
mod owner;
pub mod params;
pub mod path;
mod placement;
mod routes;
mod subscription;
pub mod upstream;

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
    let out = Outgoing { method: parts.method.clone(), path: segments.iter().map(|s| s.raw.as_str()).collect::<Vec<_>>().join("/"), query: params.forwarded_query(&[]), content_type, body };
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
        Action::DestroyBridge(index) => {
            crate::bridging::destroy(r.gw, r.id(*index)).await;
            to_owner(r, route, Kind::Bridge, *index).await
        }
        Action::Owner(kind, index) => to_owner(r, route, *kind, *index).await,
        Action::Members { index, adding } => members::route(r, route, *index, *adding).await,
        Action::Create { kind, id_param, id_index } => {
            let chosen = id_index.map(|i| r.id(i).to_string()).or_else(|| r.params.get(id_param));
            let known = chosen.and_then(|id| r.gw.owners.lookup(*kind, &id)).and_then(|eid| r.gw.pool.node(&eid)).filter(Node::serving);
            match known {
                Some(node) => to_node(r, &node, route, &r.out).await,
                None => placed(r, route, *kind).await,
            }
        }
        Action::OwnerOrCreate(kind, index) => match owner::locate(r.gw, *kind, r.id(*index)).await {
            Some(node) => to_node(r, &node, route, &r.out).await,
            None => placed(r, route, *kind).await,
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

/// To the node owning the resource named by segment `index`.
async fn to_owner(r: &Incoming<'_>, route: &Route, kind: Kind, index: usize) -> Routed {
    let Some(node) = owner::locate(r.gw, kind, r.id(index)).await else { return own(owner::not_found(kind, r.method)) };
    if kind == Kind::Channel {
        r.gw.bridging.note_channel_node(&node.eid);
    }
    let routed = to_node(r, &node, route, &r.out).await;
    // The owner no longer has it, or it was just hung up / destroyed / stopped.
    let deleted = r.method == "DELETE" && r.segments.len() == index + 1 && routed.0.status().is_success();
    if routed.0.status() == StatusCode::NOT_FOUND || deleted {
        r.gw.owners.forget(kind, r.id(index));
    }
    routed
}

/// Sends to one node and learns from its answer.
async fn to_node(r: &Incoming<'_>, node: &Node, route: &Route, out: &Outgoing) -> Routed {
    match send(r.gw, node, out, None).await {
        Ok(answer) => {
            learn(r, route, node, &answer);
            (hide_helpers(r.gw, answer).into_response(), node.eid.to_string())
        }
        Err(_) => (ari_error(StatusCode::SERVICE_UNAVAILABLE, "The Asterisk node did not answer"), node.eid.to_string()),
    }
}

/// Takes cross-node bridges' helpers out of a node's JSON answer (only while there are any).
fn hide_helpers(gw: &Gateway, answer: Answer) -> Answer {
    if !answer.status.is_success() || !gw.bridging.rewrites(false) {
        return answer;
    }
    match answer.json() {
        Some(mut value) => {
            gw.bridging.rewrite_answer(&mut value);
            Answer { body: value.to_string().into(), ..answer }
        }
        None => answer,
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

async fn placed(r: &Incoming<'_>, route: &Route, kind: Kind) -> Routed {
    match placement::candidates(r.gw, r.headers, &r.params, kind).await {
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

fn merged_answer(gw: &Gateway, merge: Merge, ok: Vec<(Node, serde_json::Value)>) -> Response {
    match merge.merge(ok.into_iter().map(|(_, v)| v).collect()) {
        Some(mut v) => {
            if gw.bridging.rewrites(matches!(merge, Merge::Applications | Merge::Application | Merge::Channels | Merge::Bridges)) {
                gw.bridging.rewrite_answer(&mut v);
            }
            Answer::from_json(StatusCode::OK, &v).into_response()
        }
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
    (merged_answer(r.gw, merge, ok), POOL.into())
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
            Ok(ok) => (merged_answer(r.gw, merge, ok), POOL.into()),
            Err(refusal) => (refusal, POOL.into()),
        },
        None => match answers.into_iter().flatten().next() {
            Some(answer) => (answer.into_response(), POOL.into()),
            None => (ari_error(StatusCode::SERVICE_UNAVAILABLE, "No Asterisk node answered"), POOL.into()),
        },
    }
}

#[cfg(test)]
mod tests {
    //! The routing of whole requests, against fake nodes that answer like ARI for the few
    //! calls used here and record what reached them.

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use axum::extract::{Path, RawQuery, State as AxState};
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use axum::Router;
    use serde_json::{json, Value};

    use super::*;
    use crate::config::Config;

    #[derive(Default)]
    struct FakeNode {
        name: String,
        channels: Mutex<Vec<String>>,
        /// `METHOD path` of every request that reached this node.
        seen: Mutex<Vec<String>>,
    }

    impl FakeNode {
        fn saw(&self, what: &str) {
            self.seen.lock().unwrap().push(what.to_string());
        }
        fn has(&self, id: &str) -> bool {
            self.channels.lock().unwrap().iter().any(|c| c == id)
        }
    }

    type Fake = Arc<FakeNode>;

    async fn list(AxState(n): AxState<Fake>) -> Response {
        n.saw("GET channels");
        let list: Vec<Value> = n.channels.lock().unwrap().iter().map(|id| json!({"id": id})).collect();
        Answer::from_json(StatusCode::OK, &Value::Array(list)).into_response()
    }

    async fn originate(AxState(n): AxState<Fake>, RawQuery(query): RawQuery) -> Response {
        n.saw(&format!("POST channels?{}", query.unwrap_or_default()));
        let id = format!("{}-{}", n.name, n.channels.lock().unwrap().len());
        n.channels.lock().unwrap().push(id.clone());
        Answer::from_json(StatusCode::OK, &json!({"id": id})).into_response()
    }

    async fn channel(AxState(n): AxState<Fake>, Path(id): Path<String>) -> Response {
        n.saw(&format!("GET channels/{id}"));
        if n.has(&id) {
            Answer::from_json(StatusCode::OK, &json!({"id": id})).into_response()
        } else {
            ari_error(StatusCode::NOT_FOUND, "Channel not found")
        }
    }

    async fn answer(AxState(n): AxState<Fake>, Path(id): Path<String>) -> Response {
        n.saw(&format!("POST channels/{id}/answer"));
        if n.has(&id) {
            StatusCode::NO_CONTENT.into_response()
        } else {
            ari_error(StatusCode::NOT_FOUND, "Channel not found")
        }
    }

    async fn docs(AxState(n): AxState<Fake>, Path(file): Path<String>) -> Response {
        n.saw(&format!("GET api-docs/{file}"));
        Answer::from_json(StatusCode::OK, &json!({"basePath": "http://node:8088/ari", "apis": [], "models": {"Event": {"subTypes": ["StasisStart"]}}})).into_response()
    }

    /// Answers with the application as this node has it: its own channels and the sources.
    async fn subscribe(AxState(n): AxState<Fake>, Path(app): Path<String>, RawQuery(query): RawQuery) -> Response {
        let query = query.unwrap_or_default();
        n.saw(&format!("POST subscription?{query}"));
        let sources = crate::ari::auth::query_param(&query, "eventSource").unwrap_or_default();
        let endpoints: Vec<&str> = sources.split(',').filter_map(|s| s.strip_prefix("endpoint:")).collect();
        let channels = n.channels.lock().unwrap().clone();
        Answer::from_json(StatusCode::OK, &json!({"name": app, "channel_ids": channels, "bridge_ids": [], "endpoint_ids": endpoints, "device_names": []})).into_response()
    }

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}")
    }

    async fn fake_node(name: &str) -> (Fake, Node) {
        let fake = Arc::new(FakeNode { name: name.into(), ..Default::default() });
        let router = Router::new()
            .route("/ari/channels", get(list).post(originate))
            .route("/ari/channels/{id}", get(channel))
            .route("/ari/channels/{id}/answer", post(answer))
            .route("/ari/api-docs/{file}", get(docs))
            .route("/ari/applications/{app}/subscription", post(subscribe))
            .with_state(fake.clone());
        let url = serve(router).await;
        (fake, Node { eid: format!("eid-{name}").into(), id: name.into(), ari_url: format!("{url}/ari"), health: "passing", sip: None })
    }

    fn config() -> Config {
        let env: BTreeMap<String, String> =
            [("SCALE_GATEWAY_NODES_ARI_USER", "ari"), ("SCALE_GATEWAY_CLIENTS", "app:pw"), ("SCALE_GATEWAY_NODES_PROBE_TIMEOUT", "500ms")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        crate::config::load(None, &env).unwrap()
    }

    /// A gateway in front of `nodes`, with an empty ownership map (a fresh replica).
    async fn gateway(nodes: &[Node]) -> String {
        let config = config();
        let gw = Arc::new(Gateway::new(config).unwrap());
        gw.pool.set_nodes(nodes.to_vec());
        format!("{}/ari", serve(crate::server::router(gw)).await)
    }

    async fn call(method: reqwest::Method, url: &str) -> (StatusCode, Value) {
        call_with(reqwest::Client::new().request(method, url)).await
    }

    async fn call_with(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let r = request.basic_auth("app", Some("pw")).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn calls_reach_the_owner_even_through_a_gateway_that_never_saw_the_channel() {
        let (a, node_a) = fake_node("a").await;
        let (b, node_b) = fake_node("b").await;
        let nodes = [node_a, node_b];
        let first = gateway(&nodes).await;
        // Two originates: the second goes to the node with fewer channels.
        let (_, one) = call(reqwest::Method::POST, &format!("{first}/channels?endpoint=Local/1@x&app=x")).await;
        let (_, two) = call(reqwest::Method::POST, &format!("{first}/channels?endpoint=Local/1@x&app=x")).await;
        assert_eq!((one["id"].as_str(), two["id"].as_str()), (Some("a-0"), Some("b-0")));

        let second = gateway(&nodes).await;
        let (status, _) = call(reqwest::Method::POST, &format!("{second}/channels/b-0/answer")).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(b.seen.lock().unwrap().contains(&"POST channels/b-0/answer".to_string()));
        assert!(!a.seen.lock().unwrap().iter().any(|s| s.ends_with("/answer")), "only the owner is asked to act: {:?}", a.seen.lock().unwrap());

        let (status, body) = call(reqwest::Method::GET, &format!("{second}/channels/nobody")).await;
        assert_eq!((status, body), (StatusCode::NOT_FOUND, json!({"message": "Channel not found"})));

        let (status, list) = call(reqwest::Method::GET, &format!("{second}/channels")).await;
        assert_eq!((status, list), (StatusCode::OK, json!([{"id": "a-0"}, {"id": "b-0"}])));
    }

    #[tokio::test]
    async fn resources_of_healthy_nodes_stay_reachable_while_another_node_is_dead() {
        let (_a, node_a) = fake_node("a").await;
        // A node Consul still lists as passing, but nothing listens on its port.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let dead = Node { eid: "eid-dead".into(), id: "dead".into(), ari_url: format!("http://{closed}/ari"), health: "passing", sip: None };
        let gw = gateway(&[node_a, dead]).await;
        for _ in 0..2 {
            let (status, channel) = call(reqwest::Method::POST, &format!("{gw}/channels?endpoint=Local/1@x&app=x")).await;
            assert_eq!((status, channel["id"].as_str().map(|s| s.starts_with("a-"))), (StatusCode::OK, Some(true)));
        }
        let (status, list) = call(reqwest::Method::GET, &format!("{gw}/channels")).await;
        assert_eq!((status, list), (StatusCode::OK, json!([{"id": "a-0"}, {"id": "a-1"}])));
        let (status, _) = call(reqwest::Method::POST, &format!("{gw}/channels/a-1/answer")).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }

    /// A GET sent as written: HTTP client libraries resolve dot segments before sending.
    async fn raw_get(base: &str, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (host, prefix) = base.trim_start_matches("http://").split_once('/').unwrap();
        let mut tcp = tokio::net::TcpStream::connect(host).await.unwrap();
        let request = format!("GET /{prefix}/{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic YXBwOnB3\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        let status = answer[9..12].parse().unwrap();
        (status, answer.split_once("\r\n\r\n").unwrap().1.to_string())
    }

    #[tokio::test]
    async fn path_escapes_and_trailing_slashes_never_reach_a_node() {
        let (a, node_a) = fake_node("a").await;
        let gw = gateway(&[node_a]).await;
        for path in ["channels/../../x", "channels/%2e%2e/%2e%2e/x", "channels/a%2Fb/answer", "channels/..%5c..%5cx", "channels/a\\..\\..\\x"] {
            let (status, body) = raw_get(&gw, path).await;
            assert_eq!((status, body.as_str()), (404, r#"{"message":"Resource not found"}"#), "{path}");
        }
        let (status, body) = call(reqwest::Method::GET, &format!("{gw}/channels/")).await;
        assert_eq!((status, body), (StatusCode::NOT_FOUND, json!({"message": "ARI URLs do not end with a slash. Try /ari/channels"})));
        assert!(a.seen.lock().unwrap().is_empty(), "{:?}", a.seen.lock().unwrap());
    }

    #[tokio::test]
    async fn the_placement_hint_picks_the_node_and_stays_in_the_gateway() {
        let (a, node_a) = fake_node("a").await;
        let (b, node_b) = fake_node("b").await;
        let gw = gateway(&[node_a, node_b]).await;
        let (_, channel) = call(reqwest::Method::POST, &format!("{gw}/channels?endpoint=Local/1@x&ast_id=EID-B&api_key=app:pw")).await;
        assert_eq!(channel["id"], "b-0");
        let (_, channel) = call_with(reqwest::Client::new().post(format!("{gw}/channels?endpoint=Local/1@x")).header("X-Asterisk-ID", "eid-b")).await;
        assert_eq!(channel["id"], "b-1");
        assert_eq!(*b.seen.lock().unwrap(), ["POST channels?endpoint=Local/1@x", "POST channels?endpoint=Local/1@x"]);
        let (status, body) = call(reqwest::Method::POST, &format!("{gw}/channels?endpoint=Local/1@x&ast_id=eid-gone")).await;
        assert_eq!((status, body["message"].as_str()), (StatusCode::BAD_REQUEST, Some("No serving Asterisk node has the ID 'eid-gone'")));
        assert!(a.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn api_docs_point_at_the_gateway_and_are_fetched_once() {
        let (a, node_a) = fake_node("a").await;
        let gw = gateway(&[node_a]).await;
        for _ in 0..2 {
            let (status, doc) = call_with(reqwest::Client::new().get(format!("{gw}/api-docs/events.json")).header("Host", "pbx.example:8090")).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(doc["basePath"], "http://pbx.example:8090/ari");
            assert_eq!(doc["models"]["Event"]["subTypes"], json!(["StasisStart", "EventsLost"]));
        }
        assert_eq!(*a.seen.lock().unwrap(), ["GET api-docs/events.json"]);
        let (status, body) = call(reqwest::Method::POST, &format!("{gw}/api-docs/events.json")).await;
        assert_eq!((status, body), (StatusCode::METHOD_NOT_ALLOWED, json!({"message": "Unsupported method"})));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_with_413() {
        let (a, node_a) = fake_node("a").await;
        let gw = gateway(&[node_a]).await;
        let big = vec![b'x'; 2 << 20];
        let (status, body) = call_with(reqwest::Client::new().post(format!("{gw}/channels")).header("Content-Type", "application/json").body(big)).await;
        assert_eq!((status, body["message"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("Request body too large: at most 1048576 bytes")));
        assert!(a.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_channel_source_is_subscribed_on_its_owner_and_an_endpoint_source_everywhere() {
        let (a, node_a) = fake_node("a").await;
        let (b, node_b) = fake_node("b").await;
        b.channels.lock().unwrap().push("c-b".into());
        let gw = gateway(&[node_a, node_b]).await;
        let (status, app) = call(reqwest::Method::POST, &format!("{gw}/applications/app/subscription?eventSource=channel:c-b,endpoint:PJSIP/alice")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!((&app["channel_ids"], &app["endpoint_ids"]), (&json!(["c-b"]), &json!(["PJSIP/alice"])));
        let subscribed = |n: &FakeNode| n.seen.lock().unwrap().iter().filter(|s| s.starts_with("POST subscription")).cloned().collect::<Vec<_>>();
        assert_eq!(subscribed(&a), ["POST subscription?eventSource=endpoint%3APJSIP%2Falice"]);
        assert_eq!(subscribed(&b), ["POST subscription?eventSource=channel%3Ac-b%2Cendpoint%3APJSIP%2Falice"]);
    }
}

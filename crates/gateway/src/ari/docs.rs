//! `/ari/api-docs/`: the swagger files of the nodes' ARI, served with the gateway's own
//! `basePath` (swagger clients call whatever it says), and with the models of every event the
//! gateway itself can send. Fetched once from a node, then kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::authenticate;
use super::errors::{ari_error, resource_not_found};
use crate::config::Config;
use crate::metrics::RequestLabels;
use crate::state::Gateway;

/// The api-docs files, as the nodes serve them (with the gateway's models added).
#[derive(Default)]
pub struct Docs {
    files: Mutex<HashMap<String, Arc<Value>>>,
}

impl Docs {
    fn get(&self, file: &str) -> Option<Arc<Value>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).get(file).cloned()
    }

    fn keep(&self, file: &str, value: Value) -> Arc<Value> {
        let value = Arc::new(value);
        self.files.lock().unwrap_or_else(|e| e.into_inner()).insert(file.to_string(), value.clone());
        value
    }
}

/// `GET /ari/api-docs/{file}`.
pub async fn api_docs(State(gw): State<Arc<Gateway>>, request: Request) -> Response {
    let (request, _) = request.into_parts();
    let answer = answer(&gw, &request).await;
    let labels = RequestLabels { route: format!("{} /api-docs/{{file}}", request.method), node: "gateway".into(), status: answer.status().as_u16() };
    gw.metrics.requests.get_or_create(&labels).inc();
    answer
}

async fn answer(gw: &Gateway, request: &Parts) -> Response {
    if let Err(refusal) = authenticate(&gw.config.clients, &request.method, &request.headers, request.uri.query()) {
        gw.metrics.refuse("auth");
        return refusal;
    }
    if request.method != axum::http::Method::GET {
        return ari_error(StatusCode::METHOD_NOT_ALLOWED, "Unsupported method");
    }
    let file = request.uri.path().strip_prefix("/ari/api-docs/").unwrap_or_default();
    if !is_doc_name(file) {
        gw.metrics.refuse("path");
        return resource_not_found();
    }
    let doc = match gw.docs.get(file) {
        Some(doc) => doc,
        None => match fetch(gw, file).await {
            Ok(doc) => gw.docs.keep(file, doc),
            Err(response) => return response,
        },
    };
    let mut doc = Value::clone(&doc);
    match base_path(&gw.config, &request.headers) {
        Some(base) => doc["basePath"] = Value::from(base),
        // As Asterisk: without a Host there is no basePath to give.
        None => drop(doc.as_object_mut().map(|o| o.remove("basePath"))),
    }
    ([(header::CONTENT_TYPE, "application/json")], doc.to_string()).into_response()
}

/// `resources.json`, `channels.json`, ...: a plain file name, nothing that could be a path.
fn is_doc_name(file: &str) -> bool {
    file.strip_suffix(".json").is_some_and(|stem| !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_alphanumeric()))
}

async fn fetch(gw: &Gateway, file: &str) -> Result<Value, Response> {
    let mut nodes = gw.pool.placeable();
    nodes.extend(gw.pool.serving().into_iter().filter(|n| !n.placeable()));
    for node in nodes {
        let answer = match gw.pool.request(&node, reqwest::Method::GET, &format!("api-docs/{file}")).send().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(node = %node.eid, error = %e, "cannot fetch api-docs/{file}; trying another node");
                gw.pool.mark_failed(&node.eid);
                continue;
            }
        };
        if answer.status() == StatusCode::NOT_FOUND {
            return Err(resource_not_found());
        }
        match answer.json::<Value>().await {
            Ok(mut doc) if doc.is_object() => {
                if file == "events.json" {
                    add_gateway_events(&mut doc);
                }
                return Ok(doc);
            }
            _ => tracing::warn!(node = %node.eid, "api-docs/{file} from the node is not a JSON object; trying another node"),
        }
    }
    Err(ari_error(StatusCode::SERVICE_UNAVAILABLE, "No Asterisk node answered"))
}

/// The events the gateway sends itself, so clients that look every event type up in the
/// models (node ari-client, ari-py) know them.
fn add_gateway_events(doc: &mut Value) {
    let Some(models) = doc.get_mut("models").and_then(Value::as_object_mut) else { return };
    models.insert(
        "EventsLost".into(),
        json!({
            "id": "EventsLost",
            "description": "Events of this application were lost between an Asterisk node and the gateway (the node's queue or the gateway's queue overflowed). Sent before the next event, to sockets that asked for it with reportGaps=true.",
            "properties": {
                "count": { "required": true, "type": "long", "description": "How many events were lost." }
            }
        }),
    );
    if let Some(sub_types) = models.get_mut("Event").and_then(|e| e.get_mut("subTypes")).and_then(Value::as_array_mut) {
        if !sub_types.iter().any(|t| t == "EventsLost") {
            sub_types.push(Value::from("EventsLost"));
        }
    }
}

/// `<scheme>://<host><prefix>/ari`: the scheme of the listener (or of `public_url`), the
/// host the client used (the Python clients send credentials only to that host), the path
/// prefix of `public_url`.
fn base_path(config: &Config, headers: &HeaderMap) -> Option<String> {
    let public = config.public_url.as_deref().and_then(|u| u.split_once("://"));
    let scheme = match (config.tls.is_some(), public) {
        (true, _) => "https",
        (false, Some((scheme, _))) => scheme,
        (false, None) => "http",
    };
    let (public_host, prefix) = match public {
        Some((_, rest)) => rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p)),
        None => ("", ""),
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| is_host(h)).or(Some(public_host).filter(|h| !h.is_empty()))?;
    let prefix = prefix.trim_matches('/');
    Some(if prefix.is_empty() { format!("{scheme}://{host}/ari") } else { format!("{scheme}://{host}/{prefix}/ari") })
}

fn is_host(h: &str) -> bool {
    !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use std::collections::BTreeMap;

    fn config(public_url: Option<&str>) -> Config {
        let mut env: BTreeMap<String, String> = [("SCALE_GATEWAY_NODES_ARI_USER", "ari"), ("SCALE_GATEWAY_CLIENTS", "u:p")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        if let Some(u) = public_url {
            env.insert("SCALE_GATEWAY_PUBLIC_URL".into(), u.into());
        }
        crate::config::load(None, &env).unwrap()
    }

    fn host(h: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(h).unwrap());
        headers
    }

    #[test]
    fn base_path_points_at_the_gateway_the_client_used() {
        assert_eq!(base_path(&config(None), &host("gw.example:8090")).as_deref(), Some("http://gw.example:8090/ari"));
        let public = config(Some("https://pbx.example/voice/"));
        assert_eq!(base_path(&public, &host("lb.example")).as_deref(), Some("https://lb.example/voice/ari"));
        assert_eq!(base_path(&public, &HeaderMap::new()).as_deref(), Some("https://pbx.example/voice/ari"));
        assert_eq!(base_path(&config(None), &HeaderMap::new()), None);
        assert_eq!(base_path(&config(None), &host("evil/x\"y")), None);
    }

    #[test]
    fn only_plain_file_names_are_docs() {
        assert!(is_doc_name("resources.json"));
        assert!(is_doc_name("deviceStates.json"));
        for bad in ["../x.json", "a/b.json", ".json", "x.txt", "%2e%2e.json", "x.json/"] {
            assert!(!is_doc_name(bad), "{bad}");
        }
    }

    #[test]
    fn events_json_lists_the_gateway_events_and_keeps_the_rest() {
        let mut doc = json!({"models": {"Event": {"id": "Event", "subTypes": ["StasisStart"]}, "StasisStart": {"id": "StasisStart"}}});
        add_gateway_events(&mut doc);
        add_gateway_events(&mut doc);
        assert_eq!(doc["models"]["Event"]["subTypes"], json!(["StasisStart", "EventsLost"]));
        assert_eq!(doc["models"]["EventsLost"]["properties"]["count"]["required"], true);
        assert!(doc["models"]["StasisStart"].is_object());
    }
}

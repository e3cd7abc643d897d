//! One request to one node, and its answer. Transport failures mark the node failed (no new
//! work for a while) and are told apart from answers; the node's latency goes to the metrics.

use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::metrics::NodeLabels;
use crate::pool::Node;
use crate::state::Gateway;

/// Answer headers that mean something to an ARI client (the rest is the node's own: Server,
/// Date, connection handling).
const KEPT_HEADERS: [HeaderName; 5] = [header::CONTENT_TYPE, header::LOCATION, header::ALLOW, header::CONTENT_DISPOSITION, header::CACHE_CONTROL];

/// What is sent to a node: the path relative to its `/ari/` (segments as the client encoded
/// them), the query without gateway-only parameters, the body unchanged.
#[derive(Clone)]
pub struct Outgoing {
    pub method: reqwest::Method,
    pub path: String,
    pub query: String,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

impl Outgoing {
    /// A body-less GET (ownership questions, reads the gateway makes itself).
    pub fn get(path: String) -> Outgoing {
        Outgoing { method: reqwest::Method::GET, path, query: String::new(), content_type: None, body: Bytes::new() }
    }

    fn path_and_query(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A JSON answer the gateway made (a merged read).
    pub fn from_json(status: StatusCode, value: &serde_json::Value) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Answer { status, headers, body: Bytes::from(value.to_string()) }
    }

    /// An error answer in ARI's shape.
    pub fn error(status: StatusCode, message: &str) -> Answer {
        Answer::from_json(status, &serde_json::json!({ "message": message }))
    }

    pub fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        *response.headers_mut() = self.headers;
        response
    }
}

/// The node did not answer (refused, reset, timed out).
#[derive(Debug)]
pub struct Failure {
    /// The request never reached the node, so sending it elsewhere cannot do it twice.
    pub before_sending: bool,
}

pub async fn send(gw: &Gateway, node: &Node, out: &Outgoing, timeout: Option<Duration>) -> Result<Answer, Failure> {
    let started = Instant::now();
    let mut request = gw.pool.request(node, out.method.clone(), &out.path_and_query());
    if let Some(t) = timeout {
        request = request.timeout(t);
    }
    if let Some(ct) = &out.content_type {
        request = request.header(header::CONTENT_TYPE, ct.clone());
    }
    if !out.body.is_empty() {
        request = request.body(out.body.clone());
    }
    let result = match request.send().await {
        Ok(r) => {
            let status = r.status();
            let mut headers = HeaderMap::new();
            for name in KEPT_HEADERS {
                if let Some(v) = r.headers().get(&name) {
                    headers.insert(name, v.clone());
                }
            }
            r.bytes().await.map(|body| Answer { status, headers, body })
        }
        Err(e) => Err(e),
    };
    gw.metrics.upstream_seconds.get_or_create(&NodeLabels { node: node.eid.to_string() }).observe(started.elapsed().as_secs_f64());
    match result {
        Ok(answer) if answer.status == StatusCode::UNAUTHORIZED => {
            // The nodes' credentials are the gateway's, not the client's: say so, and do not
            // hand the client a challenge it cannot answer.
            tracing::error!(node = %node.eid, "the node refused the gateway's ARI credentials ([nodes] ari_user / ari_password)");
            gw.pool.mark_answered(&node.eid);
            Ok(Answer::error(StatusCode::BAD_GATEWAY, "The Asterisk node refused the gateway's credentials"))
        }
        Ok(answer) => {
            gw.pool.mark_answered(&node.eid);
            Ok(answer)
        }
        Err(e) => {
            let before_sending = e.is_connect();
            tracing::warn!(node = %node.eid, path = %out.path, error = %e, "node did not answer; no new work for it for a while");
            gw.pool.mark_failed(&node.eid);
            Err(Failure { before_sending })
        }
    }
}

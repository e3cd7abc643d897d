//! `GET /healthz`: 200 only when Consul and RabbitMQ are connected and at least one node can
//! take work; the JSON body says which part is missing. Load balancers and the gateway's own
//! Consul check use it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::state::Gateway;

pub struct Health {
    pub healthy: bool,
    pub body: serde_json::Value,
}

pub fn check(gw: &Gateway) -> Health {
    let consul = gw.pool.consul_error();
    let amqp = gw.amqp_error();
    let nodes = gw.pool.nodes();
    let serving = nodes.iter().filter(|n| n.serving()).count();
    let placeable = gw.pool.placeable().len();
    let mut missing = Vec::new();
    if consul.is_some() {
        missing.push("consul");
    }
    if amqp.is_some() {
        missing.push("amqp");
    }
    if placeable == 0 {
        missing.push("nodes");
    }
    let body = json!({
        "status": if missing.is_empty() { "ok" } else { "unhealthy" },
        "missing": missing,
        "instance_id": gw.config.instance_id,
        "consul": consul.as_deref().unwrap_or("connected"),
        "amqp": amqp.as_deref().unwrap_or("connected"),
        "nodes": { "total": nodes.len(), "serving": serving, "placeable": placeable },
    });
    Health { healthy: missing.is_empty(), body }
}

pub async fn healthz(State(gw): State<Arc<Gateway>>) -> Response {
    let h = check(&gw);
    let status = if h.healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(h.body)).into_response()
}

//! The gateway's own Stasis application on every node, over one ARI WebSocket per node
//! (straight to the node, not through RabbitMQ: the leg set-up waits on it). Helper calls
//! arrive in it on the bridge's node; since it holds both ends of every helper call, it is
//! subscribed to the application bridges and helper bridges they are in, so it sees members
//! leave and helper calls end, also while the application's own socket is away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use base64::Engine;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{legs, lock};
use crate::owners::Eid;
use crate::pool::Node;
use crate::routing::params::encode_value;
use crate::state::Gateway;

const RETRY: Duration = Duration::from_secs(1);
/// How often the set of nodes is compared with the sockets.
const FOLLOW: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl super::Bridging {
    pub fn is_connected(&self, node: &Eid) -> bool {
        lock(&self.connected).contains(node)
    }
}

/// Keeps one socket per serving node until shutdown. A node that Consul stops listing keeps
/// its socket while the socket works (an agent that restarted empty lists nobody for a moment;
/// the legs need not go for that); it ends when the node cannot be reached.
pub async fn run(gw: Arc<Gateway>) {
    let mut sockets: HashMap<Eid, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        sockets.retain(|_, task| !task.is_finished());
        for node in gw.pool.serving() {
            if !sockets.contains_key(&node.eid) {
                let task = gw.tasks.spawn(socket(gw.clone(), node.clone(), gw.shutdown.child_token()));
                sockets.insert(node.eid.clone(), task);
            }
        }
        tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            _ = tokio::time::sleep(FOLLOW) => {}
        }
    }
}

/// One node's socket: reconnected at once when it drops; when the node cannot be reached or
/// the gateway stops, the legs that touch it are torn down. On connecting, what a previous run
/// of this gateway left there is swept away.
async fn socket(gw: Arc<Gateway>, node: Node, stop: CancellationToken) {
    let mut reported = false;
    loop {
        match connect(&gw, &node).await {
            Ok(ws) => {
                tracing::info!(node = %node.eid, app = %gw.bridging.app, "bridging: helper application connected");
                reported = false;
                lock(&gw.bridging.connected).insert(node.eid.clone());
                let (gw2, node2) = (gw.clone(), node.clone());
                gw.tasks.spawn(async move { legs::sweep(&gw2, &node2).await });
                serve(&gw, &node, ws, &stop).await;
                if stop.is_cancelled() {
                    // Stopping: the legs go while the node still answers, so nothing is left
                    // behind for nobody to manage.
                    legs::node_lost(&gw, &node.eid).await;
                    lock(&gw.bridging.connected).remove(&node.eid);
                    return;
                }
                lock(&gw.bridging.connected).remove(&node.eid);
                continue;
            }
            Err(e) => {
                if !reported {
                    tracing::warn!(node = %node.eid, error = %e, "bridging: cannot connect the helper application; retrying");
                    reported = true;
                }
                legs::node_lost(&gw, &node.eid).await;
                if gw.pool.node(&node.eid).is_none() {
                    tracing::info!(node = %node.eid, "bridging: the node left the pool; its helper application socket ends");
                    return;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(gw: &Gateway, node: &Node) -> Result<Socket, String> {
    let base = node.ari_url.replacen("http", "ws", 1);
    let url = format!("{base}/events?app={}&subscribeAll=false", encode_value(&gw.bridging.app));
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", gw.config.nodes.ari_user, gw.config.nodes.ari_password));
    let value = HeaderValue::from_str(&format!("Basic {credentials}")).map_err(|e| e.to_string())?;
    request.headers_mut().insert(header::AUTHORIZATION, value);
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

async fn serve(gw: &Arc<Gateway>, node: &Node, mut ws: Socket, stop: &CancellationToken) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            m = ws.next() => m,
        };
        match message {
            Some(Ok(Message::Text(text))) => match serde_json::from_str::<Value>(text.as_str()) {
                Ok(event) => handle(gw, &event),
                Err(e) => tracing::warn!(node = %node.eid, error = %e, "bridging: the node sent the helper application something that is not JSON"),
            },
            Some(Ok(Message::Close(_))) | None => return,
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(node = %node.eid, error = %e, "bridging: helper application socket failed");
                return;
            }
        }
    }
}

fn handle(gw: &Arc<Gateway>, event: &Value) {
    let text = |pointer: &str| event.pointer(pointer).and_then(Value::as_str).map(str::to_string);
    let channel = text("/channel/id");
    match event.get("type").and_then(Value::as_str).unwrap_or("") {
        // A helper call arrived on the bridge's node (dialplan: Stasis(<app>,<leg>)), waited
        // for by its leg id; or the far end, created by the gateway, entered: by its own id.
        "StasisStart" => {
            let Some(channel) = channel else { return };
            let mut waiters = lock(&gw.bridging.waiters);
            let waiter = text("/args/0").and_then(|leg| waiters.remove(&leg)).or_else(|| waiters.remove(&channel));
            if let Some(waiter) = waiter {
                let _ = waiter.send(channel);
            }
        }
        "ChannelLeftBridge" => {
            let (Some(bridge), Some(channel)) = (text("/bridge/id"), channel) else { return };
            let is_member = lock(&gw.bridging.registry).leg_of_member(&channel).is_some();
            if is_member {
                let gw2 = gw.clone();
                gw.tasks.spawn(async move { legs::member_left(&gw2, &bridge, &channel).await });
            }
        }
        "StasisEnd" | "ChannelDestroyed" => {
            let Some(channel) = channel else { return };
            let is_helper = lock(&gw.bridging.registry).leg_of_helper(&channel).is_some();
            if is_helper {
                let gw2 = gw.clone();
                gw.tasks.spawn(async move { legs::helper_gone(&gw2, &channel).await });
            }
        }
        "BridgeDestroyed" => {
            let Some(bridge) = text("/bridge/id") else { return };
            let has_legs = lock(&gw.bridging.registry).bridges.contains_key(&bridge);
            if has_legs {
                let gw2 = gw.clone();
                gw.tasks.spawn(async move { legs::destroy(&gw2, &bridge).await });
            }
        }
        _ => {}
    }
}

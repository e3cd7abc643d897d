//! `GET /ari/events?app=a,b[&subscribeAll=..][&reportGaps=true]`: the event WebSocket, as ARI
//! has it (auth before the upgrade, 400 without `app`, subprotocol `ari` or none), fed from
//! RabbitMQ. One event's way: queue -> seq check -> ownership learned -> socket, acked once
//! written.

pub mod apps;
mod keys;
pub mod link;
mod ownership;
mod relay;
mod seq;

use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use res_scale_core::consul::apps::valid_app_name;
use tokio::sync::mpsc;

use self::apps::Socket;
use self::relay::Outgoing;
use crate::ari::auth::{authenticate, query_param};
use crate::state::Gateway;

pub use self::apps::Hub;

/// The background tasks of the events part: the AMQP link and the watch of the app keys.
pub fn start(gw: &Arc<Gateway>) {
    gw.tasks.spawn(link::run(gw.clone(), gw.events.link.clone()));
    gw.tasks.spawn(keys::watch(gw.clone()));
}

/// Frames written per flush at most: a burst goes out in few writes, and acks follow soon.
const WRITE_BATCH: usize = 64;

pub async fn events(State(gw): State<Arc<Gateway>>, method: Method, headers: HeaderMap, RawQuery(query): RawQuery, upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>) -> Response {
    if let Err(refusal) = authenticate(&gw.config.clients, &method, &headers, query.as_deref()) {
        gw.metrics.refuse("auth");
        return refusal;
    }
    let query = query.unwrap_or_default();
    let Some(apps) = query_param(&query, "app").filter(|a| !a.is_empty()) else {
        return bad_request("HTTP request is missing param: [app]");
    };
    let mut apps: Vec<String> = apps.split(',').map(|a| a.trim().to_string()).collect();
    // `app=a,a` is one subscription, as in Asterisk (a second registration of the same name
    // would replace the socket's own first one).
    let mut seen = std::collections::HashSet::new();
    apps.retain(|a| seen.insert(a.clone()));
    if let Some(bad) = apps.iter().find(|a| !valid_app_name(a)) {
        return bad_request(&format!("Invalid application name '{bad}': 1 to 128 letters, digits, '-', '_' or '.'"));
    }
    let report_gaps = query_param(&query, "reportGaps").is_some_and(|v| matches!(v.as_str(), "true" | "yes" | "1"));
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let limit = gw.config.limits.max_frame_bytes;
    upgrade.protocols(["ari"]).max_frame_size(limit).max_message_size(limit).on_upgrade(move |ws| serve(gw, ws, apps, report_gaps))
}

/// What Asterisk's HTTP server answers for a bad event socket request (`ast_http_error`).
fn bad_request(text: &str) -> Response {
    let body = format!("<!DOCTYPE HTML PUBLIC \"-//IETF//DTD HTML 2.0//EN\">\r\n<html><head>\r\n<title>400 Bad Request</title>\r\n</head><body>\r\n<h1>Bad Request</h1>\r\n<p>{text}</p>\r\n<hr />\r\n<address>scale-gateway</address>\r\n</body></html>\r\n");
    (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/html")], body).into_response()
}

async fn serve(gw: Arc<Gateway>, ws: WebSocket, apps: Vec<String>, report_gaps: bool) {
    let (tx, mut rx) = mpsc::channel::<Outgoing>(usize::from(gw.config.amqp.prefetch).max(1));
    let socket = Socket { id: format!("{:016x}", rand::random::<u64>()).into(), out: tx, report_gaps };
    tracing::info!(socket = %socket.id, apps = %apps.join(","), "events: socket opened");
    gw.metrics.sockets.inc();
    gw.events.attach(&gw, &socket, &apps);
    let (mut sink, mut stream) = ws.split();
    let close = loop {
        tokio::select! {
            _ = gw.shutdown.cancelled() => break Some((1000, "scale-gateway stopping".to_string())),
            incoming = stream.next() => match incoming {
                None | Some(Ok(Message::Close(_))) => break None,
                Some(Err(e)) => {
                    let text = e.to_string();
                    // tungstenite reports an oversized frame as "Space limit exceeded: Message too long".
                    let code = if text.contains("too long") { 1009 } else { 1002 };
                    break Some((code, text.chars().take(120).collect()));
                }
                // Pings are answered by the WebSocket layer; ARI's REST-over-WebSocket is not relayed.
                Some(Ok(_)) => {}
            },
            first = rx.recv() => {
                let Some(first) = first else { break None };
                if write_batch(&mut sink, first, &mut rx).await.is_err() {
                    break None;
                }
            }
        }
    };
    gw.events.detach(&gw, &socket, &apps);
    gw.metrics.sockets.dec();
    if let Some((code, reason)) = close {
        let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
    }
    tracing::info!(socket = %socket.id, "events: socket closed");
}

/// Writes `first` and whatever else is ready, flushes once, then acks what was written.
async fn write_batch(sink: &mut futures_util::stream::SplitSink<WebSocket, Message>, first: Outgoing, rx: &mut mpsc::Receiver<Outgoing>) -> Result<(), axum::Error> {
    let mut written = Vec::with_capacity(WRITE_BATCH);
    let mut next = Some(first);
    while let Some(frame) = next.take() {
        // A frame of an app this socket lost meanwhile stays unwritten (and unacked).
        if frame.delivery.as_ref().is_none_or(|d| !d.relay.is_cancelled()) {
            sink.feed(Message::Text(frame.text)).await?;
            written.extend(frame.delivery);
        }
        if written.len() < WRITE_BATCH {
            next = rx.try_recv().ok();
        }
    }
    sink.flush().await?;
    for delivered in written {
        delivered.written().await;
    }
    Ok(())
}

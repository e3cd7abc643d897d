//! The applications' keys in Consul: `<apps_prefix><app>` = `{"name", "gateway", "socket"}`.
//! Every node creates the Stasis app while the key exists. The watch keeps ours in place after
//! a Consul restart and notices when another replica's socket took an app (ARI's rule, the
//! newest socket wins, across replicas).

use std::sync::Arc;
use std::time::Duration;

use res_scale_core::backoff::Backoff;
use res_scale_core::consul::api::ConsulApi;
use serde::Deserialize;

use super::apps::KeyCheck;
use crate::state::Gateway;

const WATCH_WAIT: Duration = Duration::from_secs(30);

fn key(gw: &Gateway, app: &str) -> String {
    format!("{}{app}", gw.config.consul.apps_prefix)
}

pub fn value(app: &str, instance_id: &str, socket: &str) -> Vec<u8> {
    serde_json::json!({ "name": app, "gateway": instance_id, "socket": socket }).to_string().into_bytes()
}

#[derive(Deserialize)]
struct Holder {
    #[serde(default)]
    socket: Option<String>,
}

/// The socket a key's value names (a key written by hand or by an older tool names none).
fn socket_of(value: &[u8]) -> Option<String> {
    serde_json::from_slice::<Holder>(value).ok().and_then(|h| h.socket)
}

/// Writes the key once the relay bound the app's queue (not at all if it stopped first).
pub async fn write_once_bound(gw: Arc<Gateway>, app: String, socket: Arc<str>, mut bound: tokio::sync::watch::Receiver<bool>) {
    if bound.wait_for(|b| *b).await.is_ok() {
        write(gw, app, socket).await;
    }
}

/// Writes the key, then reads it back: our version's modify index is what later changes are
/// judged against, and another socket's value read after our write is a takeover.
pub async fn write(gw: Arc<Gateway>, app: String, socket: Arc<str>) {
    let key = key(&gw, &app);
    if let Err(e) = gw.consul.kv_put(&key, &value(&app, &gw.config.instance_id, &socket)).await {
        // The watch writes it again once Consul answers.
        tracing::warn!(app = %app, error = %e, "events: cannot write the key of '{app}'; retrying when Consul answers");
        return;
    }
    let Ok(listing) = gw.consul.kv_list(&key, 0, Duration::ZERO).await else { return };
    if let Some(entry) = listing.value.iter().find(|e| e.key == key) {
        let holder = socket_of(&entry.value).unwrap_or_default();
        let check = if holder == *socket { gw.events.check_key(&app, Some(&holder), entry.modify_index) } else { gw.events.check_takeover(&app, &socket) };
        act(&gw, &app, check).await;
    }
}

async fn act(gw: &Arc<Gateway>, app: &str, check: KeyCheck) {
    match check {
        KeyCheck::Rewrite(socket) => {
            tracing::info!(app, "events: the key of '{app}' is gone from Consul; writing it again");
            Box::pin(write(gw.clone(), app.to_string(), socket)).await;
        }
        KeyCheck::Replaced => {
            if gw.events.replaced_elsewhere(app) {
                tracing::info!(app, "events: another gateway's socket took application '{app}'");
                super::relay::delete_queue(gw, &gw.events.link, app).await;
            }
        }
        KeyCheck::Confirmed | KeyCheck::Ignore => {}
    }
}

/// Deletes the key unless another socket wrote it since (`index`: our version's modify index).
pub async fn delete(gw: &Gateway, app: &str, socket: &str, index: Option<u64>) {
    let key = key(gw, app);
    let index = match index {
        Some(i) => i,
        None => match gw.consul.kv_list(&key, 0, Duration::ZERO).await {
            Ok(listing) => match listing.value.iter().find(|e| e.key == key) {
                Some(e) if socket_of(&e.value).as_deref() == Some(socket) => e.modify_index,
                _ => return,
            },
            Err(e) => {
                tracing::warn!(app, error = %e, "events: cannot remove the key of '{app}'");
                return;
            }
        },
    };
    match gw.consul.kv_delete(&key, Some(index)).await {
        Ok(true) => tracing::info!(app, "events: removed the key of '{app}'"),
        Ok(false) => tracing::info!(app, "events: the key of '{app}' changed meanwhile; left in place"),
        Err(e) => tracing::warn!(app, error = %e, "events: cannot remove the key of '{app}'"),
    }
}

/// Watches the apps prefix until shutdown.
pub async fn watch(gw: Arc<Gateway>) {
    let prefix = gw.config.consul.apps_prefix.clone();
    let mut index = 0;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let answer = tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            a = gw.consul.kv_list(&prefix, index, WATCH_WAIT) => a,
        };
        match answer {
            Ok(listing) => {
                backoff.reset();
                index = if listing.index < index { 0 } else { listing.index };
                for app in gw.events.names() {
                    let key = key(&gw, &app);
                    let entry = listing.value.iter().find(|e| e.key == key);
                    let socket = entry.map(|e| socket_of(&e.value).unwrap_or_default());
                    let check = gw.events.check_key(&app, socket.as_deref(), entry.map_or(0, |e| e.modify_index));
                    act(&gw, &app, check).await;
                }
            }
            Err(e) => {
                index = 0;
                tracing::debug!(error = %e, "events: cannot watch the application keys; retrying");
                tokio::select! {
                    _ = gw.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_names_app_gateway_and_socket() {
        let v = value("conf", "gw-1", "abc");
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&v).unwrap(), serde_json::json!({"name": "conf", "gateway": "gw-1", "socket": "abc"}));
        assert_eq!(socket_of(&v).as_deref(), Some("abc"));
        assert_eq!(socket_of(br#"{"name":"conf"}"#), None);
        assert_eq!(socket_of(b"not json"), None);
    }
}

//! Which socket holds each application, as on one Asterisk: the newest socket wins and the
//! older one is told `ApplicationReplaced` (it stays open, without that app's events). When
//! an app's socket closes, its key stays in Consul and its events stay in its queue for the
//! linger; a socket that takes the app within it resumes where the last one left off.
//! Afterwards the key is deleted (if it is still ours) and the queue expires by `x-expires`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::link::Link;
use super::relay::{self, Outgoing, Target};
use super::seq::Committed;
use crate::state::Gateway;

/// One socket's claim on its apps.
#[derive(Clone)]
pub struct Socket {
    pub id: Arc<str>,
    pub out: mpsc::Sender<Outgoing>,
    pub report_gaps: bool,
}

struct App {
    committed: Arc<Committed>,
    holder: Option<Socket>,
    /// The socket id in the Consul key: the holder's, or the last holder's while lingering.
    key_socket: Arc<str>,
    /// The key's modify index once Consul confirmed our value.
    key_index: Option<u64>,
    relay: Option<(CancellationToken, JoinHandle<()>)>,
    linger: Option<CancellationToken>,
}

#[derive(Default)]
pub struct Hub {
    pub link: Arc<Link>,
    apps: Mutex<HashMap<String, App>>,
}

/// What the Consul watch should do about one app's key.
pub enum KeyCheck {
    /// Not ours (or no longer): nothing to do.
    Ignore,
    /// Missing (Consul lost it): write it again with this socket id.
    Rewrite(Arc<str>),
    /// Ours, at this modify index.
    Confirmed,
    /// Another socket (of another replica) wrote it after us.
    Replaced,
}

impl Hub {
    fn apps(&self) -> std::sync::MutexGuard<'_, HashMap<String, App>> {
        self.apps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `socket` takes `apps`: the previous holder of each is told, relays start, keys are
    /// written once the app's queue is bound (the nodes create the app when they see its key,
    /// and its first events must find the queue).
    pub fn attach(&self, gw: &Arc<Gateway>, socket: &Socket, apps: &[String]) {
        let mut map = self.apps();
        for name in apps {
            let app = map.entry(name.clone()).or_insert_with(|| App { committed: Arc::default(), holder: None, key_socket: socket.id.clone(), key_index: None, relay: None, linger: None });
            if let Some(linger) = app.linger.take() {
                linger.cancel();
            }
            if let Some(old) = app.holder.take() {
                tracing::info!(app = %name, "events: replacing the socket of application '{name}'");
                tell_replaced(&old, name);
            }
            let previous = app.relay.take().map(|(stop, handle)| {
                stop.cancel();
                handle
            });
            let stop = gw.shutdown.child_token();
            let (bound, when_bound) = tokio::sync::watch::channel(false);
            let target = Target { app: name.as_str().into(), out: socket.out.clone(), report_gaps: socket.report_gaps, committed: app.committed.clone(), bound: Arc::new(bound) };
            let handle = tokio::spawn(relay::run(gw.clone(), self.link.clone(), target, stop.clone(), previous));
            app.relay = Some((stop, handle));
            app.holder = Some(socket.clone());
            app.key_socket = socket.id.clone();
            app.key_index = None;
            gw.tasks.spawn(super::keys::write_once_bound(gw.clone(), name.clone(), socket.id.clone(), when_bound));
        }
    }

    /// `socket` closed: the apps it still holds stop relaying and linger.
    pub fn detach(&self, gw: &Arc<Gateway>, socket: &Socket, apps: &[String]) {
        let mut map = self.apps();
        for name in apps {
            let Some(app) = map.get_mut(name) else { continue };
            if app.holder.as_ref().map(|h| &h.id) != Some(&socket.id) {
                continue;
            }
            app.holder = None;
            if let Some((stop, _)) = &app.relay {
                stop.cancel();
            }
            let linger = gw.shutdown.child_token();
            app.linger = Some(linger.clone());
            tracing::info!(app = %name, linger = ?gw.config.apps.linger, "events: the last socket of '{name}' closed; keeping its events for the linger");
            gw.tasks.spawn(expire_after_linger(gw.clone(), name.clone(), linger));
        }
    }

    /// The linger of `name` ran out: forgets the app; the key's socket and index to delete.
    fn expire(&self, name: &str, linger: &CancellationToken) -> Option<(Arc<str>, Option<u64>)> {
        let mut map = self.apps();
        let app = map.get(name)?;
        if linger.is_cancelled() || app.holder.is_some() {
            return None;
        }
        let app = map.remove(name)?;
        Some((app.key_socket, app.key_index))
    }

    /// Judges the app's key as Consul has it (`None`: no such key).
    pub fn check_key(&self, name: &str, socket: Option<&str>, modify_index: u64) -> KeyCheck {
        let mut map = self.apps();
        let Some(app) = map.get_mut(name) else { return KeyCheck::Ignore };
        match socket {
            None => KeyCheck::Rewrite(app.key_socket.clone()),
            Some(s) if s == &*app.key_socket => {
                app.key_index = Some(app.key_index.unwrap_or(0).max(modify_index));
                KeyCheck::Confirmed
            }
            // Only a change after our write counts; an older answer may still show the previous value.
            Some(_) if app.key_index.is_some_and(|ours| modify_index > ours) => KeyCheck::Replaced,
            Some(_) => KeyCheck::Ignore,
        }
    }

    /// Our write of `socket` into the key was read back with another socket in it: a takeover,
    /// unless a newer socket of ours has taken the app meanwhile (its own write decides).
    pub fn check_takeover(&self, name: &str, socket: &str) -> KeyCheck {
        match self.apps().get(name) {
            Some(app) if &*app.key_socket == socket => KeyCheck::Replaced,
            _ => KeyCheck::Ignore,
        }
    }

    /// Another replica's socket took `name`: our socket is told so and the app is dropped here.
    pub fn replaced_elsewhere(&self, name: &str) -> bool {
        let mut map = self.apps();
        let Some(mut app) = map.remove(name) else { return false };
        if let Some((stop, _)) = app.relay.take() {
            stop.cancel();
        }
        if let Some(linger) = app.linger.take() {
            linger.cancel();
        }
        if let Some(old) = app.holder.take() {
            tell_replaced(&old, name);
        }
        true
    }

    /// The apps whose keys this gateway keeps.
    pub fn names(&self) -> Vec<String> {
        self.apps().keys().cloned().collect()
    }
}

fn tell_replaced(old: &Socket, app: &str) {
    let frame = Outgoing { text: application_replaced(app), delivery: None };
    // The old socket may be slow: it gets the notice after what it already has, never blocking us.
    let out = old.out.clone();
    tokio::spawn(async move {
        let _ = out.send(frame).await;
    });
}

/// ARI's `ApplicationReplaced`, as res/stasis/app.c sends it (members in its order).
pub fn application_replaced(app: &str) -> Utf8Bytes {
    #[derive(serde::Serialize)]
    struct Replaced<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        timestamp: String,
        application: &'a str,
    }
    let event = Replaced { kind: "ApplicationReplaced", timestamp: ari_timestamp(std::time::SystemTime::now()), application: app };
    serde_json::to_string(&event).unwrap_or_default().into()
}

/// ARI's timestamp format, e.g. `2026-12-01T10:20:14.123+0000`.
pub fn ari_timestamp(t: std::time::SystemTime) -> String {
    let millis = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_millis());
    format!("{}.{millis:03}+0000", res_scale_core::status::format_utc(t).replace(' ', "T"))
}

async fn expire_after_linger(gw: Arc<Gateway>, name: String, linger: CancellationToken) {
    tokio::select! {
        _ = linger.cancelled() => return,
        _ = tokio::time::sleep(gw.config.apps.linger) => {}
    }
    let Some((socket, index)) = gw.events.expire(&name, &linger) else { return };
    tracing::info!(app = %name, "events: '{name}' lingered without a socket; removing its key");
    super::keys::delete(&gw, &name, &socket, index).await;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    /// A gateway whose Consul and RabbitMQ do not answer (port 1): relays wait for a broker,
    /// key writes fail and are logged. What the hub decides is all there is to see.
    fn gateway(linger: &str) -> Arc<Gateway> {
        let env: BTreeMap<String, String> = [
            ("SCALE_GATEWAY_CLIENTS", "app:secret"),
            ("SCALE_GATEWAY_NODES_ARI_USER", "ari"),
            ("SCALE_GATEWAY_NODES_ARI_PASSWORD", "x"),
            ("SCALE_GATEWAY_CONSUL_URL", "http://127.0.0.1:1"),
            ("SCALE_GATEWAY_AMQP_URL", "amqp://127.0.0.1:1/%2f"),
            ("SCALE_GATEWAY_APPS_LINGER", linger),
            ("SCALE_GATEWAY_INSTANCE_ID", "test"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let config = crate::config::load(None, &env).unwrap_or_else(|e| panic!("{e:?}"));
        Arc::new(Gateway::new(config).unwrap())
    }

    fn socket(id: &str) -> (Socket, mpsc::Receiver<Outgoing>) {
        let (out, rx) = mpsc::channel(8);
        (Socket { id: id.into(), out, report_gaps: false }, rx)
    }

    async fn next_text(rx: &mut mpsc::Receiver<Outgoing>) -> serde_json::Value {
        let frame = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("a frame").expect("open");
        serde_json::from_str(frame.text.as_str()).unwrap()
    }

    #[tokio::test]
    async fn the_newest_socket_wins_and_the_older_is_told_once() {
        let gw = gateway("30s");
        let (first, mut first_rx) = socket("s1");
        let (second, mut second_rx) = socket("s2");
        gw.events.attach(&gw, &first, &["conf".into(), "other".into()]);
        gw.events.attach(&gw, &second, &["conf".into()]);
        let told = next_text(&mut first_rx).await;
        assert_eq!((told["type"].as_str(), told["application"].as_str()), (Some("ApplicationReplaced"), Some("conf")));
        assert!(second_rx.try_recv().is_err(), "the new socket is told nothing");

        // The old socket closing leaves the new holder alone; its other app lingers.
        gw.events.detach(&gw, &first, &["conf".into(), "other".into()]);
        assert!(matches!(gw.events.check_key("conf", Some("s2"), 5), KeyCheck::Confirmed));
        assert!(gw.events.apps().get("conf").unwrap().holder.as_ref().is_some_and(|h| &*h.id == "s2"));
        assert!(gw.events.apps().get("other").unwrap().holder.is_none());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(first_rx.try_recv().is_err(), "nothing more for the replaced socket");
    }

    #[tokio::test]
    async fn a_key_written_by_another_replica_after_ours_replaces_our_socket() {
        let gw = gateway("30s");
        let (ours, mut rx) = socket("s1");
        gw.events.attach(&gw, &ours, &["conf".into()]);
        assert!(matches!(gw.events.check_key("conf", Some("theirs"), 3), KeyCheck::Ignore), "an answer from before our write is no takeover");
        assert!(matches!(gw.events.check_key("conf", Some("s1"), 4), KeyCheck::Confirmed));
        assert!(matches!(gw.events.check_key("conf", None, 0), KeyCheck::Rewrite(s) if &*s == "s1"), "a lost key is written again");
        assert!(matches!(gw.events.check_key("conf", Some("theirs"), 9), KeyCheck::Replaced));
        assert!(gw.events.replaced_elsewhere("conf"));
        assert_eq!(next_text(&mut rx).await["type"], "ApplicationReplaced");
        assert!(gw.events.names().is_empty());

        // Our write read back with another socket in it: overwritten before the watch saw ours.
        let (first, _rx1) = socket("s3");
        gw.events.attach(&gw, &first, &["conf".into()]);
        assert!(matches!(gw.events.check_takeover("conf", "s3"), KeyCheck::Replaced));
        let (second, _rx2) = socket("s4");
        gw.events.attach(&gw, &second, &["conf".into()]);
        assert!(matches!(gw.events.check_takeover("conf", "s3"), KeyCheck::Ignore), "a newer socket of ours wrote since");
    }

    #[tokio::test]
    async fn a_socket_within_the_linger_keeps_the_app_and_after_it_the_app_is_forgotten() {
        let gw = gateway("1s");
        let (first, _rx1) = socket("s1");
        gw.events.attach(&gw, &first, &["conf".into()]);
        gw.events.detach(&gw, &first, &["conf".into()]);
        let (second, _rx2) = socket("s2");
        gw.events.attach(&gw, &second, &["conf".into()]);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(gw.events.names(), ["conf"], "the new socket holds it: no expiry");
        gw.events.detach(&gw, &second, &["conf".into()]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(gw.events.names(), ["conf"], "lingering");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(gw.events.names().is_empty(), "forgotten after the linger");
    }

    #[test]
    fn timestamps_are_written_as_ari_writes_them() {
        assert_eq!(ari_timestamp(UNIX_EPOCH + Duration::from_millis(1_796_120_858_703)), "2026-12-01T10:27:38.703+0000");
    }

    #[test]
    fn application_replaced_has_ari_shape() {
        let text = application_replaced("conf");
        assert!(text.as_str().starts_with(r#"{"type":"ApplicationReplaced","timestamp":"#), "{}", text.as_str());
        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!((v["type"].as_str(), v["application"].as_str()), (Some("ApplicationReplaced"), Some("conf")));
        assert!(v["timestamp"].as_str().unwrap().ends_with("+0000"));
    }
}

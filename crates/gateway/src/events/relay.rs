//! One application's events on their way from its queue to the socket that holds the app:
//! queue declared and bound, consumed with manual acks and a prefetch window (a slow socket
//! backs up in RabbitMQ, not here), each delivery judged by its seq, its resource ids learned,
//! helpers of cross-node bridges hidden, and handed to the socket's writer, which acks it once
//! written.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::Acker;
use lapin::{Channel, Connection};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::link::Link;
use super::ownership::EventIds;
use super::seq::{Committed, Position, Tracker, Verdict};
use crate::bridging::hide::Verdict as Shown;
use crate::metrics::{AppNodeLabels, ReasonLabels};
use crate::owners::Eid;
use crate::state::Gateway;

/// A frame for a socket's writer.
pub struct Outgoing {
    pub text: Utf8Bytes,
    /// For a relayed event (not for the gateway's own EventsLost / ApplicationReplaced).
    pub delivery: Option<Delivered>,
}

/// What the writer does once the event is on the wire.
pub struct Delivered {
    acker: Acker,
    committed: Arc<Committed>,
    node: Eid,
    at: Option<Position>,
    relayed: Counter,
    /// Cancelled when the app was taken from this socket: the frame is then dropped unwritten
    /// (unacked, RabbitMQ gives it to the next consumer).
    pub relay: CancellationToken,
}

impl Delivered {
    pub async fn written(self) {
        if let Some(at) = self.at {
            self.committed.commit(&self.node, at);
        }
        self.relayed.inc();
        // A failed ack (the channel closed meanwhile) means a redelivery, dropped by its seq.
        let _ = self.acker.ack(Default::default()).await;
    }

    /// Done with, unwritten: an event about a cross-node bridge's helpers.
    pub async fn skipped(self) {
        if let Some(at) = self.at {
            self.committed.commit(&self.node, at);
        }
        let _ = self.acker.ack(Default::default()).await;
    }
}

/// Where one relay sends, for one app.
#[derive(Clone)]
pub struct Target {
    pub app: Arc<str>,
    pub out: mpsc::Sender<Outgoing>,
    pub report_gaps: bool,
    pub committed: Arc<Committed>,
    /// Set once the app's queue is declared and bound.
    pub bound: Arc<tokio::sync::watch::Sender<bool>>,
}

/// `scale-gateway.<instance_id>.<app>`: one queue per gateway instance and app, found again by
/// a restarted gateway with the same instance id.
pub fn queue_name(instance_id: &str, app: &str) -> String {
    format!("scale-gateway.{instance_id}.{app}")
}

/// The queue's arguments, the same on every declare (RabbitMQ refuses a re-declare that
/// differs): bounded, dropping the oldest, gone once unused for the app's linger; a quorum
/// queue (replicated on every broker of a cluster) when configured so.
pub fn queue_arguments(max_length: u32, linger: Duration, quorum: bool) -> FieldTable {
    let mut args = FieldTable::default();
    if quorum {
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    }
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(i64::from(max_length)));
    args.insert("x-overflow".into(), AMQPValue::LongString("drop-head".into()));
    args.insert("x-expires".into(), AMQPValue::LongLongInt(linger.as_millis().max(1) as i64));
    args
}

/// Runs until `stop`: after `previous` (the app's last relay) ended, so that what it left
/// unacked is back in the queue, in order, before this one consumes.
pub async fn run(gw: Arc<Gateway>, link: Arc<Link>, target: Target, stop: CancellationToken, previous: Option<JoinHandle<()>>) {
    if let Some(previous) = previous {
        let _ = previous.await;
    }
    loop {
        let Some(connection) = link.connection(&stop).await else { return };
        match consume(&gw, &connection, &target, &stop).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(app = %target.app, error = %e, "events: consuming stopped; resuming when the broker is back"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn declare(gw: &Gateway, channel: &Channel, app: &str) -> lapin::Result<ShortString> {
    let amqp = &gw.config.amqp;
    let queue: ShortString = queue_name(&gw.config.instance_id, app).into();
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.clone(), options, queue_arguments(amqp.queue_max_length, gw.config.apps.linger, amqp.quorum_queues)).await?;
    let binding = format!("stasis.app.{app}.#");
    channel.queue_bind(queue.clone(), amqp.events_exchange.as_str().into(), binding.into(), QueueBindOptions::default(), FieldTable::default()).await?;
    Ok(queue)
}

async fn consume(gw: &Gateway, connection: &Connection, target: &Target, stop: &CancellationToken) -> Result<(), String> {
    let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
    let queue = declare(gw, &channel, &target.app).await.map_err(|e| format!("declaring the queue: {e}"))?;
    target.bound.send_replace(true);
    channel.basic_qos(gw.config.amqp.prefetch, BasicQosOptions::default()).await.map_err(|e| e.to_string())?;
    let mut consumer = channel.basic_consume(queue, "".into(), BasicConsumeOptions::default(), FieldTable::default()).await.map_err(|e| e.to_string())?;
    let mut relay = Relay { gw, target, stop, tracker: Tracker::resume(&target.committed), nodes: HashMap::new() };
    let result = loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            d = consumer.next() => d,
        };
        match delivery {
            Some(Ok(delivery)) => {
                if !relay.handle(delivery).await {
                    break Ok(());
                }
            }
            Some(Err(e)) => break Err(e.to_string()),
            None => break Err("the consumer was cancelled".to_string()),
        }
    };
    // Closing the channel returns what it delivered and nobody acked to the queue.
    let _ = channel.close(200, "relay stopped".into()).await;
    result
}

struct Relay<'a> {
    gw: &'a Gateway,
    target: &'a Target,
    stop: &'a CancellationToken,
    tracker: Tracker,
    /// Each node's EID and relayed-events counter, shared by its events.
    nodes: HashMap<String, (Eid, Counter)>,
}

impl Relay<'_> {
    fn reject(&self, reason: &str) {
        self.gw.metrics.events_rejected.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    fn labels(&self, node: &Eid) -> AppNodeLabels {
        AppNodeLabels { app: self.target.app.to_string(), node: node.to_string() }
    }

    fn node(&mut self, eid: &str) -> (Eid, Counter) {
        if let Some(known) = self.nodes.get(eid) {
            return known.clone();
        }
        let node: Eid = eid.into();
        let relayed = self.gw.metrics.events_relayed.get_or_create(&self.labels(&node)).clone();
        self.nodes.insert(eid.to_string(), (node.clone(), relayed.clone()));
        (node, relayed)
    }

    /// Judges one delivery and hands it on; false when the socket is gone or the app was
    /// taken from it.
    async fn handle(&mut self, delivery: lapin::message::Delivery) -> bool {
        let headers = delivery.properties.headers().as_ref();
        let header_int = |name: &str| headers.and_then(|h| h.inner().get(name)).and_then(amqp_int);
        let position = header_int("seq").zip(header_int("seq_start")).map(|(seq, start)| Position { seq, start });
        let header_eid = headers.and_then(|h| h.inner().get("asterisk_id")).and_then(amqp_text);
        let Ok(text) = Utf8Bytes::try_from(Bytes::from(delivery.data)) else {
            self.reject("not_utf8");
            let _ = delivery.acker.ack(Default::default()).await;
            return true;
        };
        let ids = match EventIds::parse(text.as_bytes()) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(app = %self.target.app, error = %e, "events: dropped a message that is not an ARI event");
                self.reject("not_json");
                let _ = delivery.acker.ack(Default::default()).await;
                return true;
            }
        };
        let Some(eid) = header_eid.or_else(|| ids.asterisk_id.as_deref().map(str::to_string)) else {
            self.reject("no_asterisk_id");
            let _ = delivery.acker.ack(Default::default()).await;
            return true;
        };
        let (node, relayed) = self.node(&eid);
        match position {
            Some(at) => match self.tracker.check(&node, at) {
                Verdict::Duplicate => {
                    self.gw.metrics.events_duplicate.get_or_create(&self.labels(&node)).inc();
                    let _ = delivery.acker.ack(Default::default()).await;
                    return true;
                }
                Verdict::Fresh { lost: 0 } => {}
                Verdict::Fresh { lost } => {
                    tracing::warn!(node = %node, app = %self.target.app, count = lost, "events: lost {lost} event(s) of this node's sequence");
                    self.gw.metrics.events_lost.get_or_create(&self.labels(&node)).inc_by(lost);
                    if self.target.report_gaps && !self.send(Outgoing { text: events_lost(&self.target.app, &node, lost), delivery: None }).await {
                        return false;
                    }
                }
            },
            // Relayed unchecked (a module without seq cannot be deduplicated), and counted.
            None => self.reject("no_seq"),
        }
        ids.apply(&self.gw.owners, &node);
        let delivered = Delivered { acker: delivery.acker, committed: self.target.committed.clone(), node, at: position, relayed, relay: self.stop.clone() };
        let text = match self.gw.bridging.judge(text.as_bytes()) {
            Shown::Keep => text,
            Shown::Rewrite(shown) => shown.into(),
            Shown::Drop => {
                delivered.skipped().await;
                return true;
            }
        };
        self.send(Outgoing { text, delivery: Some(delivered) }).await
    }

    async fn send(&self, frame: Outgoing) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            sent = self.target.out.send(frame) => sent.is_ok(),
        }
    }
}

fn amqp_int(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        _ => None,
    }
}

fn amqp_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_string),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// The documented event for a counted gap. Like every ARI event it has a timestamp (the
/// `Event` model requires one, and swagger clients check it).
pub fn events_lost(app: &str, node: &str, count: u64) -> Utf8Bytes {
    #[derive(serde::Serialize)]
    struct Lost<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        timestamp: String,
        application: &'a str,
        asterisk_id: &'a str,
        count: u64,
    }
    serde_json::to_string(&Lost { kind: "EventsLost", timestamp: super::apps::ari_timestamp(std::time::SystemTime::now()), application: app, asterisk_id: node, count }).unwrap_or_default().into()
}

/// Deletes this gateway's queue of `app` (another replica holds the app now: what piles up
/// here would be stale if the app came back to us).
pub async fn delete_queue(gw: &Gateway, link: &Link, app: &str) {
    let Some(connection) = link.connection(&gw.shutdown).await else { return };
    let Ok(channel) = connection.create_channel().await else { return };
    let queue = queue_name(&gw.config.instance_id, app);
    if let Err(e) = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await {
        tracing::warn!(app, error = %e, "events: could not delete the queue of an app another gateway holds");
    }
    let _ = channel.close(200, "queue deleted".into()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_name_and_arguments_are_stable() {
        assert_eq!(queue_name("gw-1", "conf"), "scale-gateway.gw-1.conf");
        let args = queue_arguments(100_000, Duration::from_secs(30), false);
        assert_eq!(args, queue_arguments(100_000, Duration::from_secs(30), false), "a re-declare sends the same arguments");
        let inner = args.inner();
        assert_eq!(inner.get("x-max-length"), Some(&AMQPValue::LongLongInt(100_000)));
        assert_eq!(inner.get("x-overflow"), Some(&AMQPValue::LongString("drop-head".into())));
        assert_eq!(inner.get("x-expires"), Some(&AMQPValue::LongLongInt(30_000)));
        assert_eq!(inner.get("x-queue-type"), None, "classic unless configured");
        let quorum = queue_arguments(100_000, Duration::from_secs(30), true);
        assert_eq!(quorum.inner().get("x-queue-type"), Some(&AMQPValue::LongString("quorum".into())));
    }

    #[test]
    fn events_lost_has_the_documented_shape() {
        let mut v: serde_json::Value = serde_json::from_str(events_lost("conf", "02:00:00:00:00:01", 3).as_str()).unwrap();
        let timestamp = v.as_object_mut().unwrap().remove("timestamp").expect("a timestamp, as every ARI event");
        assert!(timestamp.as_str().is_some_and(|t| t.ends_with("+0000")), "{timestamp}");
        assert_eq!(v, serde_json::json!({"type": "EventsLost", "application": "conf", "asterisk_id": "02:00:00:00:00:01", "count": 3}));
    }

    #[test]
    fn seq_headers_are_read_in_any_integer_form() {
        assert_eq!(amqp_int(&AMQPValue::LongLongInt(1_796_000_000_000_000)), Some(1_796_000_000_000_000));
        assert_eq!(amqp_int(&AMQPValue::LongString("42".into())), Some(42));
        assert_eq!(amqp_int(&AMQPValue::LongLongInt(-1)), None);
        assert_eq!(amqp_int(&AMQPValue::Boolean(true)), None);
    }
}

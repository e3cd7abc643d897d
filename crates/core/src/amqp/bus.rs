//! A node's link to one of the pool's exchanges (registrations, state): one connection that
//! consumes the node's own queue (bound with the subsystem's keys, e.g. `registration.#`) and
//! publishes what the node has to say. It only moves bytes; what they
//! mean is the subsystem's applier's business.
//!
//! On every (re)connect it reports [`Inbound::Connected`] with the queue's name, so that the
//! applier re-announces this node's phones and asks the pool for a SYNC (replies come to that
//! queue). Messages are acknowledged in groups after they were handed to the applier, and at
//! most [`PREFETCH`] are unacknowledged, so a slow applier slows the broker down instead of
//! filling memory.
//!
//! With a pool key it signs every message it publishes and checks every delivery's signature
//! (`amqp::signing`), on the runtime's threads; the applier decides what a delivery that fails
//! the check means.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties, Channel, Connection, Consumer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::amqp::lapin_broker::{open, text, Endpoint};
use crate::amqp::publisher::{first_reachable, record_failure, AmqpStatus};
use crate::amqp::signing::{PoolKeys, Signature, HEADER};
use crate::backoff::Backoff;
use crate::config;
use crate::consul::registration::NodeIdentity;
use crate::state_log::StateLog;

/// Unacknowledged deliveries at most.
pub const PREFETCH: u16 = 2000;
/// A node's queue goes this long after its last consumer left (a node that left the pool), so
/// a node that comes back sooner (a restart, a network cut) finds what was sent meanwhile.
const QUEUE_EXPIRES: Duration = Duration::from_secs(600);
/// At most this many messages wait in a node's queue; past it the oldest go first (the node
/// SYNCs after every reconnect, which brings back what a dropped message said).
const QUEUE_MAX_LENGTH: i64 = 1_000_000;
/// Deliveries acknowledged at once (or fewer when the queue goes quiet).
const ACK_EVERY: u64 = 200;
const ACK_WHEN_QUIET: Duration = Duration::from_millis(20);

pub struct BusSettings {
    /// Names the subsystem in logs and in the status of `first_reachable`.
    pub subsystem: &'static str,
    /// What happens while no broker answers, for the log line (e.g. "registrations wait").
    pub meanwhile: &'static str,
    pub urls: Vec<String>,
    pub exchange: String,
    /// The node's own queue, e.g. `res_scale.registrations.<node ID>`.
    pub queue: String,
    /// What the node's queue is bound with, e.g. `registration.#`.
    pub bindings: Vec<String>,
    pub connection_name: String,
    pub heartbeat: Duration,
    pub extra_ca: Option<String>,
    /// `[general] pool_key`: signs what is published, checks what arrives; None: neither.
    pub keys: Option<PoolKeys>,
}

impl BusSettings {
    /// The bus of `subsystem` (`registrations`, `state`) on `node`: the brokers, heartbeat and
    /// CA file of `[amqp]`, the node's own queue `<exchange>.<node ID>`, and a connection named
    /// `res_scale <node ID> (<system name>) <subsystem>`. An unreadable CA file is logged and left
    /// out (the broker's certificate is then checked against the system's store alone).
    pub fn for_node(subsystem: &'static str, meanwhile: &'static str, amqp: &config::Amqp, exchange: &str, bindings: Vec<String>, node: &NodeIdentity, keys: Option<PoolKeys>) -> BusSettings {
        BusSettings {
            subsystem,
            meanwhile,
            urls: amqp.urls.clone(),
            exchange: exchange.to_string(),
            queue: format!("{exchange}.{}", node.node_id),
            bindings,
            connection_name: format!("res_scale {} ({}) {subsystem}", node.node_id, node.system_name),
            heartbeat: amqp.heartbeat,
            extra_ca: amqp.ca_file.as_deref().and_then(|path| std::fs::read_to_string(path).map_err(|e| tracing::error!("{subsystem}: cannot read ca_file {path}: {e}")).ok()),
            keys,
        }
    }
}

/// What the bus hands to the applier.
#[derive(Debug)]
pub enum Inbound {
    /// A (new) connection is up; replies to this node go to `queue`.
    Connected {
        queue: String,
    },
    Delivery {
        body: Vec<u8>,
        reply_to: Option<String>,
        signature: Signature,
    },
}

/// A message to send: to the exchange under `routing_key`, or straight to a queue.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub to: Destination,
    pub body: Vec<u8>,
    /// Set on SYNC_REQUEST: where the answers go.
    pub reply_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Exchange { routing_key: String },
    Queue(String),
}

struct Link {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
}

pub struct Bus {
    pub settings: BusSettings,
    pub status: Arc<Mutex<AmqpStatus>>,
    /// Connections made after the first.
    pub reconnects: Arc<std::sync::atomic::AtomicU64>,
}

impl Bus {
    /// Runs until shutdown; `inbound` receives what arrives (in the caller's own type).
    pub async fn run<T: From<Inbound> + Send + 'static>(self, inbound: mpsc::Sender<T>, mut outbound: mpsc::Receiver<Outgoing>, shutdown: CancellationToken) {
        let mut log = StateLog::new(self.settings.subsystem);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut first = true;
        loop {
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return,
                link = first_reachable(&self.settings.urls, &mut log, &self.status, self.settings.meanwhile, |url| self.connect(url)) => link,
            };
            let Some((link, queue)) = connected else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                }
            };
            backoff.reset();
            if !first {
                self.reconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            first = false;
            if inbound.send(Inbound::Connected { queue }.into()).await.is_err() {
                return;
            }
            match self.pump(link, &inbound, &mut outbound, &shutdown).await {
                Ok(()) => return,
                Err(e) => record_failure(&mut log, &self.status, "disconnected", format!("lost the broker: {e}; reconnecting")),
            }
        }
    }

    async fn connect(&self, url: &str) -> Result<(Link, String), String> {
        let s = &self.settings;
        let endpoint = Endpoint { connection_name: &s.connection_name, heartbeat: s.heartbeat, extra_ca: s.extra_ca.as_deref(), exchange: &s.exchange };
        let (connection, channel) = open(url, &endpoint).await?;
        // Named after the node, durable and of type quorum (replicated on every broker of a
        // RabbitMQ cluster): what is published while the node reconnects, to another broker
        // or the same one, waits for it instead of being lost. Deleted at a clean stop.
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(QUEUE_EXPIRES.as_millis() as i64));
        arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(QUEUE_MAX_LENGTH));
        let options = QueueDeclareOptions { durable: true, ..Default::default() };
        let queue = channel.queue_declare(s.queue.as_str().into(), options, arguments).await.map_err(text)?;
        let name = queue.name().clone();
        for binding in &s.bindings {
            channel.queue_bind(name.clone(), s.exchange.as_str().into(), binding.as_str().into(), QueueBindOptions::default(), FieldTable::default()).await.map_err(text)?;
        }
        channel.basic_qos(PREFETCH, BasicQosOptions::default()).await.map_err(text)?;
        let consumer = channel.basic_consume(name.clone(), "res_scale".into(), BasicConsumeOptions::default(), FieldTable::default()).await.map_err(text)?;
        Ok((Link { connection, channel, consumer }, name.to_string()))
    }

    /// Moves messages both ways until shutdown (Ok) or a broken connection (Err).
    async fn pump<T: From<Inbound>>(&self, mut link: Link, inbound: &mpsc::Sender<T>, outbound: &mut mpsc::Receiver<Outgoing>, shutdown: &CancellationToken) -> Result<(), String> {
        let mut unacked: Option<Acker> = None;
        let mut pending = 0u64;
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                delivery = link.consumer.next() => {
                    let delivery = match delivery {
                        Some(Ok(d)) => d,
                        Some(Err(e)) => break Err(text(e)),
                        None => break Err("the broker cancelled the consumer".into()),
                    };
                    let reply_to = delivery.properties.reply_to().as_ref().map(|q| q.to_string());
                    let signature = self.check(&delivery);
                    let message = Inbound::Delivery { body: delivery.data, reply_to, signature };
                    tokio::select! {
                        _ = shutdown.cancelled() => break Ok(()),
                        sent = inbound.send(message.into()) => if sent.is_err() { break Ok(()) },
                    }
                    unacked = Some(delivery.acker);
                    pending += 1;
                    if pending >= ACK_EVERY {
                        ack(&mut unacked, &mut pending).await?;
                    }
                }
                message = outbound.recv() => match message {
                    Some(message) => publish(&link.channel, &self.settings.exchange, self.settings.keys.as_ref(), message).await?,
                    None => break Ok(()),
                },
                _ = tokio::time::sleep(ACK_WHEN_QUIET), if pending > 0 => ack(&mut unacked, &mut pending).await?,
            }
        };
        if result.is_ok() {
            let _ = ack(&mut unacked, &mut pending).await;
            // A stopping node asks for nothing more; it SYNCs when it starts again.
            let _ = link.channel.queue_delete(self.settings.queue.as_str().into(), QueueDeleteOptions::default()).await;
            let _ = link.connection.close(200, "res_scale stopping".into()).await;
        }
        result
    }

    /// What the pool key says of a delivery's `x-res-scale-signature` header.
    fn check(&self, delivery: &lapin::message::Delivery) -> Signature {
        let Some(keys) = &self.settings.keys else { return Signature::NotChecked };
        let header = delivery.properties.headers().as_ref().and_then(|table| table.inner().iter().find(|(name, _)| name.as_str() == HEADER)).map(|(_, value)| match value {
            AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).unwrap_or(""),
            // Of another type: no signature of ours.
            _ => "",
        });
        keys.check(&delivery.data, header)
    }
}

/// Acknowledges every delivery up to the last one handed over.
async fn ack(unacked: &mut Option<Acker>, pending: &mut u64) -> Result<(), String> {
    if let Some(acker) = unacked.take() {
        acker.ack(BasicAckOptions { multiple: true }).await.map_err(text)?;
    }
    *pending = 0;
    Ok(())
}

async fn publish(channel: &Channel, exchange: &str, keys: Option<&PoolKeys>, message: Outgoing) -> Result<(), String> {
    let mut properties = BasicProperties::default().with_content_type("application/json".into());
    if let Some(keys) = keys {
        let mut headers = FieldTable::default();
        headers.insert(HEADER.into(), AMQPValue::LongString(keys.sign(&message.body).into()));
        properties = properties.with_headers(headers);
    }
    if let Some(queue) = message.reply_to {
        properties = properties.with_reply_to(queue.into());
    }
    let (exchange, key) = match message.to {
        Destination::Exchange { routing_key } => (exchange.to_string(), routing_key),
        Destination::Queue(queue) => (String::new(), queue),
    };
    channel.basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), &message.body, properties).await.map_err(text)?;
    Ok(())
}

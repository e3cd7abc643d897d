//! A small blocking AMQP 0-9-1 client for the tests, on lapin 4: binds a queue to the module's
//! exchange, drains or consumes what the module published, publishes.
//!
//! Every call opens its own connection and closes it before returning, so a probe outlives broker
//! restarts without any reconnect logic. Connecting is retried for a few seconds (a broker that
//! just came back may refuse for a moment); any other failure panics with what was being done.
//!
//! The probe owns a one-worker tokio runtime: lapin's I/O thread needs a reactor that keeps
//! running between our own awaits, which a current-thread runtime only does inside `block_on`.
//! Each connection runs on its own `lapin-io-loop` OS thread, which ends when it closes; the first
//! close also starts async-compat's process-wide fallback thread (`async-compat/tokio-1`), which
//! stays for the life of the test process (harmless in a test binary).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;

use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// How long a broker that refuses connections is retried before the probe panics.
const CONNECT_FOR: Duration = Duration::from_secs(15);
/// The bound of a single call, on top of any wait the caller asked for.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One message taken from a queue.
#[derive(Debug, Clone)]
pub struct Received {
    pub routing_key: String,
    pub body: String,
    /// The body parsed as JSON, `Value::Null` when it is not JSON.
    pub json: serde_json::Value,
    /// The AMQP header table, each value rendered as a string (long and short strings as their
    /// text, numbers and booleans as written by Rust, nested tables and arrays in debug form).
    pub headers: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
}

pub struct AmqpProbe {
    url: String,
    rt: tokio::runtime::Runtime,
}

impl AmqpProbe {
    pub fn new(url: &str) -> AmqpProbe {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("amqp-probe").enable_all().build().expect("build the AMQP probe's tokio runtime");
        AmqpProbe { url: url.to_string(), rt }
    }

    /// Declares `exchange` as a durable topic exchange (the module's declaration), a durable,
    /// non-exclusive, non-auto-delete queue `queue`, and binds them with `binding_key`
    /// (e.g. `stasis.app.conf.#`). Idempotent.
    pub fn bind_queue(&self, queue: &str, exchange: &str, binding_key: &str) {
        self.bind(queue, exchange, binding_key, true, FieldTable::default());
    }

    /// Like `bind_queue_to_existing`, with a quorum queue: replicated on every node of a
    /// RabbitMQ cluster, so it outlives the loss of any one.
    pub fn bind_quorum_queue(&self, queue: &str, exchange: &str, binding_key: &str) {
        let mut arguments = FieldTable::default();
        arguments.insert(short("x-queue-type"), AMQPValue::LongString("quorum".into()));
        self.bind(queue, exchange, binding_key, false, arguments);
    }

    /// Like `bind_queue`, but the exchange must already exist (the module must have declared
    /// it): the bind fails with NOT_FOUND otherwise.
    pub fn bind_queue_to_existing(&self, queue: &str, exchange: &str, binding_key: &str) {
        self.bind(queue, exchange, binding_key, false, FieldTable::default());
    }

    /// Deletes `exchange` (and with it every binding to it).
    pub fn delete_exchange(&self, exchange: &str) {
        let what = format!("delete exchange {exchange:?}");
        self.run(&what, CALL_TIMEOUT, |ch| async move {
            ch.exchange_delete(short(exchange), ExchangeDeleteOptions::default()).await.unwrap_or_else(|e| panic!("AMQP exchange.delete {exchange:?}: {e}"));
        });
    }

    /// Deletes `queue` (and whatever it still holds).
    pub fn delete_queue(&self, queue: &str) {
        let what = format!("delete queue {queue:?}");
        self.run(&what, CALL_TIMEOUT, |ch| async move {
            ch.queue_delete(short(queue), QueueDeleteOptions::default()).await.unwrap_or_else(|e| panic!("AMQP queue.delete {queue:?}: {e}"));
        });
    }

    fn bind(&self, queue: &str, exchange: &str, binding_key: &str, declare_exchange: bool, arguments: FieldTable) {
        let what = format!("bind queue {queue:?} to exchange {exchange:?} with {binding_key:?}");
        self.run(&what, CALL_TIMEOUT, |ch| async move {
            if declare_exchange {
                let exchange_options = ExchangeDeclareOptions { durable: true, auto_delete: false, ..Default::default() };
                ch.exchange_declare(short(exchange), ExchangeKind::Topic, exchange_options, FieldTable::default())
                    .await
                    .unwrap_or_else(|e| panic!("AMQP exchange.declare {exchange:?} (durable topic): {e}"));
            }
            let queue_options = QueueDeclareOptions { durable: true, exclusive: false, auto_delete: false, ..Default::default() };
            ch.queue_declare(short(queue), queue_options, arguments).await.unwrap_or_else(|e| panic!("AMQP queue.declare {queue:?} (durable): {e}"));
            ch.queue_bind(short(queue), short(exchange), short(binding_key), QueueBindOptions::default(), FieldTable::default())
                .await
                .unwrap_or_else(|e| panic!("AMQP queue.bind {queue:?} -> {exchange:?} ({binding_key:?}): {e}"));
        });
    }

    /// Takes messages off `queue` (basic.get, auto-ack) until at least `min` arrived or `within`
    /// passed, then whatever else is there right away; returns them in arrival order.
    pub fn drain(&self, queue: &str, min: usize, within: Duration) -> Vec<Received> {
        let what = format!("drain queue {queue:?} (at least {min} within {within:?})");
        self.run(&what, within + CALL_TIMEOUT, |ch| async move {
            let deadline = Instant::now() + within;
            let mut got = Vec::new();
            loop {
                let message = ch.basic_get(short(queue), BasicGetOptions { no_ack: true }).await.unwrap_or_else(|e| panic!("AMQP basic.get {queue:?}: {e}"));
                match message {
                    Some(message) => got.push(received(message.delivery)),
                    None if got.len() >= min || Instant::now() >= deadline => break,
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            got
        })
    }

    /// Consumes (basic.consume, auto-ack) until `n` messages arrived or `within` passed, with
    /// the wall-clock time each one arrived: what a latency measurement needs, unlike `drain`,
    /// which polls. `ready` runs once the broker has registered the consumer, so a caller on
    /// another thread can start publishing then.
    pub fn consume(&self, queue: &str, n: usize, within: Duration, ready: impl FnOnce()) -> Vec<(Received, SystemTime)> {
        let mut got = Vec::with_capacity(n);
        self.consume_each(queue, n, within, ready, |delivery| got.push((received(delivery), SystemTime::now())));
        got
    }

    /// `consume`, handing each delivery to `take` as it arrives instead of keeping it: a
    /// throughput measurement counts 100,000 messages and should not pay for parsing them.
    /// Returns how many arrived.
    pub fn consume_each(&self, queue: &str, n: usize, within: Duration, ready: impl FnOnce(), mut take: impl FnMut(lapin::message::Delivery)) -> usize {
        let mut arrived = 0;
        self.consume_while(queue, within, ready, |delivery| {
            take(delivery);
            arrived += 1;
            arrived < n
        });
        arrived
    }

    /// Consumes (basic.consume, auto-ack), handing each delivery to `more`, until it returns
    /// false or `within` passed; returns how many arrived.
    pub fn consume_while(&self, queue: &str, within: Duration, ready: impl FnOnce(), mut more: impl FnMut(lapin::message::Delivery) -> bool) -> usize {
        let what = format!("consume messages from {queue:?}");
        self.run(&what, within + CALL_TIMEOUT, |ch| async move {
            let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
            let mut consumer = ch.basic_consume(short(queue), short("res_scale-tests"), options, FieldTable::default()).await.unwrap_or_else(|e| panic!("AMQP basic.consume {queue:?}: {e}"));
            ready();
            let mut arrived = 0;
            let deadline = tokio::time::Instant::now() + within;
            loop {
                match tokio::time::timeout_at(deadline, consumer.next()).await {
                    Ok(Some(Ok(delivery))) => {
                        arrived += 1;
                        if !more(delivery) {
                            break;
                        }
                    }
                    Ok(Some(Err(e))) => panic!("AMQP consume {queue:?}: {e}"),
                    Ok(None) | Err(_) => break,
                }
            }
            arrived
        })
    }

    /// Publishes one message (content type application/json, no headers, no confirm), returning
    /// once the broker has processed it (the channel's close handshake comes after it).
    pub fn publish(&self, exchange: &str, routing_key: &str, body: &[u8]) {
        let what = format!("publish to exchange {exchange:?} with routing key {routing_key:?}");
        self.run(&what, CALL_TIMEOUT, |ch| async move {
            ch.basic_publish(short(exchange), short(routing_key), BasicPublishOptions::default(), body, json_properties())
                .await
                .unwrap_or_else(|e| panic!("AMQP basic.publish to {exchange:?} ({routing_key:?}): {e}"));
            // The channel's close handshake comes after the message in the broker's order.
            ch.close(200, "OK".into()).await.unwrap_or_else(|e| panic!("AMQP channel.close after a publish: {e}"));
        });
    }

    /// Publishes one message with publisher confirms and says whether the broker took it: a
    /// user without write permission on the exchange gets the channel closed (ACCESS_REFUSED).
    pub fn try_publish(&self, exchange: &str, routing_key: &str, body: &[u8]) -> Result<(), String> {
        let what = format!("publish to exchange {exchange:?} with routing key {routing_key:?}");
        self.run(&what, CALL_TIMEOUT, |ch| async move {
            ch.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| e.to_string())?;
            let confirm = ch.basic_publish(short(exchange), short(routing_key), BasicPublishOptions::default(), body, json_properties()).await.map_err(|e| e.to_string())?;
            if confirm.await.map_err(|e| e.to_string())?.is_ack() {
                Ok(())
            } else {
                Err("not acknowledged".into())
            }
        })
    }

    /// The benchmark baseline: publishes every body in order on one channel as fast as lapin
    /// takes them (each publish is handed to lapin at once; only a window of them is awaited for
    /// being written out). Returns the time from the first publish to the broker's answer to the
    /// channel close, which comes after the last message. `headers` go on every message as long
    /// strings (empty: none). With `confirms`, the channel is in confirm mode and the time runs
    /// until the broker has confirmed every message (none may be nacked).
    pub fn publish_burst(&self, exchange: &str, routing_key_for: impl Fn(usize) -> String, bodies: &[Vec<u8>], headers: &[(&str, &str)], confirms: bool) -> Duration {
        let properties = json_properties_with(headers);
        const WINDOW: usize = 1024;
        let what = format!("publish a burst of {} messages to exchange {exchange:?}", bodies.len());
        let keys: Vec<ShortString> = (0..bodies.len()).map(|i| short(&routing_key_for(i))).collect();
        let within = CALL_TIMEOUT + Duration::from_millis(bodies.len() as u64);
        self.run(&what, within, |ch| async move {
            if confirms {
                ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap_or_else(|e| panic!("AMQP confirm.select: {e}"));
            }
            let start = Instant::now();
            let mut pending = std::collections::VecDeque::with_capacity(WINDOW);
            for (key, body) in keys.into_iter().zip(bodies) {
                let mut publish = Box::pin(ch.basic_publish(short(exchange), key, BasicPublishOptions::default(), body, properties.clone()));
                // One poll queues the frames in lapin; the rest only reports them written.
                let first = std::future::poll_fn(|cx| std::task::Poll::Ready(publish.as_mut().poll(cx))).await;
                match first {
                    std::task::Poll::Ready(done) => {
                        done.unwrap_or_else(|e| panic!("AMQP basic.publish to {exchange:?}: {e}"));
                    }
                    std::task::Poll::Pending => pending.push_back(publish),
                }
                while pending.len() >= WINDOW {
                    pending.pop_front().unwrap().await.unwrap_or_else(|e| panic!("AMQP basic.publish to {exchange:?}: {e}"));
                }
            }
            for publish in pending {
                publish.await.unwrap_or_else(|e| panic!("AMQP basic.publish to {exchange:?}: {e}"));
            }
            if confirms {
                let returned = ch.wait_for_confirms().await.unwrap_or_else(|e| panic!("AMQP confirms of the burst: {e}"));
                assert!(returned.is_empty(), "the broker returned {} message(s) of the burst", returned.len());
            }
            ch.close(200, "OK".into()).await.unwrap_or_else(|e| panic!("AMQP channel.close after the burst: {e}"));
            start.elapsed()
        })
    }

    /// Publishes `n` messages, `per_second` of them a second, each body made by `body_for` from
    /// its sequence number and send time (ns since the epoch), with `headers`: the reference
    /// path for the module's event latency (publisher -> broker -> consumer, nothing else).
    pub fn publish_paced(&self, exchange: &str, routing_key: &str, n: usize, per_second: u64, headers: &[(&str, &str)], body_for: impl Fn(usize, u128) -> Vec<u8>) {
        let properties = json_properties_with(headers);
        let what = format!("publish {n} messages at {per_second}/s to exchange {exchange:?}");
        let within = CALL_TIMEOUT + Duration::from_secs(n as u64 / per_second.max(1));
        self.run(&what, within, |ch| async move {
            let start = tokio::time::Instant::now();
            for seq in 0..n {
                tokio::time::sleep_until(start + Duration::from_nanos(seq as u64 * 1_000_000_000 / per_second.max(1))).await;
                let sent_ns = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
                ch.basic_publish(short(exchange), short(routing_key), BasicPublishOptions::default(), &body_for(seq, sent_ns), properties.clone())
                    .await
                    .unwrap_or_else(|e| panic!("AMQP basic.publish to {exchange:?}: {e}"));
            }
            ch.close(200, "OK".into()).await.unwrap_or_else(|e| panic!("AMQP channel.close after the paced publish: {e}"));
        })
    }

    /// Opens a connection and a channel, runs `body` on the channel, closes the connection.
    fn run<T, F, Fut>(&self, what: &str, within: Duration, body: F) -> T
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = T>,
    {
        self.rt.block_on(async {
            let (conn, ch) = timeout(what, CALL_TIMEOUT, self.open()).await;
            let value = timeout(what, within, body(ch.clone())).await;
            timeout(what, CALL_TIMEOUT, close(conn, ch)).await;
            value
        })
    }

    async fn open(&self) -> (Connection, Channel) {
        let deadline = Instant::now() + CONNECT_FOR;
        let properties = ConnectionProperties::default().with_connection_name("res_scale-tests-probe".into());
        let conn = loop {
            match Connection::connect(&self.url, properties.clone()).await {
                Ok(conn) => break conn,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => panic!("AMQP connect to {} failed for {CONNECT_FOR:?}: {e}", self.url),
            }
        };
        let ch = conn.create_channel().await.unwrap_or_else(|e| panic!("AMQP channel.open: {e}"));
        (conn, ch)
    }
}

/// Closes the channel, then the connection. Closing the connection while a channel close is
/// still in flight (as dropping the last clone of a `Channel` starts one) fails with "invalid
/// channel state: Closing", so the channel is closed first and explicitly.
async fn close(conn: Connection, ch: Channel) {
    if ch.status().connected() {
        ch.close(200, "OK".into()).await.unwrap_or_else(|e| panic!("AMQP channel.close: {e}"));
    }
    // A connection the broker already closed has nothing left to close.
    if conn.status().connected() {
        conn.close(200, "OK".into()).await.unwrap_or_else(|e| panic!("AMQP connection.close: {e}"));
    }
}

async fn timeout<T>(what: &str, within: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(within, fut).await {
        Ok(value) => value,
        Err(_) => panic!("AMQP probe: timed out after {within:?} trying to {what}"),
    }
}

/// An AMQP short string (at most 255 bytes: lapin's `From<&str>` would panic without saying which).
fn short(s: &str) -> ShortString {
    ShortString::try_new(s).unwrap_or_else(|e| panic!("AMQP name {s:?}: {e}"))
}

fn json_properties() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into())
}

/// JSON properties with `headers` as long strings (none when empty).
fn json_properties_with(headers: &[(&str, &str)]) -> BasicProperties {
    if headers.is_empty() {
        return json_properties();
    }
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(short(k), AMQPValue::LongString((*v).into()));
    }
    json_properties().with_headers(table)
}

fn received(delivery: lapin::message::Delivery) -> Received {
    let properties = &delivery.properties;
    let headers = properties.headers().as_ref().map(|table| table.inner().iter().map(|(k, v)| (k.to_string(), render(v))).collect()).unwrap_or_default();
    let body = String::from_utf8_lossy(&delivery.data).into_owned();
    Received {
        routing_key: delivery.routing_key.to_string(),
        json: serde_json::from_slice(&delivery.data).unwrap_or(serde_json::Value::Null),
        body,
        headers,
        content_type: properties.content_type().as_ref().map(ToString::to_string),
        delivery_mode: *properties.delivery_mode(),
    }
}

fn render(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::Void => String::new(),
        other => format!("{other:?}"),
    }
}

//! The real broker: RabbitMQ over lapin (AMQP 0-9-1, amqps with the system's CA store).

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};

use super::event::Event;
use super::publisher::{Broker, Link};
use super::runtime_kit::HandleKit;

/// A broker that does not answer the AMQP handshake in this time counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct LapinBroker {
    pub exchange: String,
    pub eid: String,
    pub persistent: bool,
    pub confirms: bool,
    /// Shown in RabbitMQ's management UI and `rabbitmqctl list_connections`.
    pub connection_name: String,
    pub heartbeat: Duration,
    /// PEM CA certificates trusted for amqps besides the system's.
    pub extra_ca: Option<String>,
}

pub struct LapinLink {
    connection: Connection,
    channel: Channel,
    exchange: ShortString,
    eid: String,
    delivery_mode: u8,
    confirms: bool,
}

/// The URL with the configured heartbeat, unless the URL sets one itself.
fn with_heartbeat(url: &str, heartbeat: Duration) -> String {
    if url.contains("heartbeat=") {
        return url.to_string();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}heartbeat={}", heartbeat.as_secs())
}

/// Where and how to connect; shared by the events publisher and the registrations bus.
pub struct Endpoint<'a> {
    pub connection_name: &'a str,
    pub heartbeat: Duration,
    /// PEM CA certificates trusted for amqps besides the system's.
    pub extra_ca: Option<&'a str>,
    /// A durable topic exchange, declared on every connect.
    pub exchange: &'a str,
}

/// Connects to one broker on the current tokio runtime, opens a channel and declares the
/// exchange.
pub async fn open(url: &str, endpoint: &Endpoint<'_>) -> Result<(Connection, Channel), String> {
    let properties = ConnectionProperties::default().with_connection_name(endpoint.connection_name.to_string().into());
    let runtime = HandleKit::runtime(tokio::runtime::Handle::current());
    let url = with_heartbeat(url, endpoint.heartbeat);
    let tls = OwnedTLSConfig { identity: None, cert_chain: endpoint.extra_ca.map(str::to_string) };
    let connect = Connection::connect_with_config(&url, properties, tls, runtime);
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, connect).await.map_err(|_| format!("no AMQP handshake within {CONNECT_TIMEOUT:?}"))?.map_err(text)?;
    let channel = connection.create_channel().await.map_err(text)?;
    let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(endpoint.exchange.into(), ExchangeKind::Topic, options, FieldTable::default()).await.map_err(|e| format!("declaring exchange '{}': {e}", endpoint.exchange))?;
    Ok((connection, channel))
}

pub fn text(e: lapin::Error) -> String {
    e.to_string()
}

impl Broker for LapinBroker {
    type Link = LapinLink;

    async fn connect(&self, url: &str) -> Result<LapinLink, String> {
        let (connection, channel) = open(url, &Endpoint { connection_name: &self.connection_name, heartbeat: self.heartbeat, extra_ca: self.extra_ca.as_deref(), exchange: &self.exchange }).await?;
        if self.confirms {
            channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(text)?;
        }
        Ok(LapinLink { connection, channel, exchange: self.exchange.clone().into(), eid: self.eid.clone(), delivery_mode: if self.persistent { 2 } else { 1 }, confirms: self.confirms })
    }
}

impl Link for LapinLink {
    async fn publish(&self, routing_key: String, event: Arc<Event>) -> Result<bool, String> {
        let mut headers = FieldTable::default();
        headers.insert("application".into(), AMQPValue::LongString((*event.app).into()));
        headers.insert("asterisk_id".into(), AMQPValue::LongString(self.eid.as_str().into()));
        headers.insert("event_type".into(), AMQPValue::LongString(event.event_type().into()));
        // Signed: RabbitMQ's field tables have no unsigned 64-bit type (clock microseconds fit).
        headers.insert("seq".into(), AMQPValue::LongLongInt(event.seq.value as i64));
        headers.insert("seq_start".into(), AMQPValue::LongLongInt(event.seq.start as i64));
        let properties = BasicProperties::default().with_content_type("application/json".into()).with_delivery_mode(self.delivery_mode).with_headers(headers);
        let confirm = self.channel.basic_publish(self.exchange.clone(), routing_key.into(), BasicPublishOptions::default(), event.body(), properties).await.map_err(text)?;
        if !self.confirms {
            return Ok(true);
        }
        Ok(!matches!(confirm.await.map_err(text)?, Confirmation::Nack(_)))
    }

    async fn close(self) {
        let _ = self.connection.close(200, "res_scale stopping".into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_is_added_unless_the_url_has_one() {
        assert_eq!(with_heartbeat("amqp://h/%2f", Duration::from_secs(30)), "amqp://h/%2f?heartbeat=30");
        assert_eq!(with_heartbeat("amqp://h/%2f?frame_max=8192", Duration::ZERO), "amqp://h/%2f?frame_max=8192&heartbeat=0");
        assert_eq!(with_heartbeat("amqp://h/?heartbeat=5", Duration::from_secs(30)), "amqp://h/?heartbeat=5");
    }
}

//! The gateway's connection to RabbitMQ for events: the configured brokers tried in order
//! (core's `open`, which also declares the events exchange), reconnected with backoff when it
//! breaks. Relays wait here for a live connection and open their own channel on it, so a
//! reconnect resumes every consumer (each re-declares its queue).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Connection;
use res_scale_core::amqp::lapin_broker::{open, Endpoint};
use res_scale_core::amqp::publisher::{first_reachable, record_failure, AmqpStatus};
use res_scale_core::backoff::Backoff;
use res_scale_core::state_log::StateLog;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::state::Gateway;

pub struct Link {
    current: watch::Sender<Option<Arc<Connection>>>,
}

impl Default for Link {
    fn default() -> Self {
        Link { current: watch::Sender::new(None) }
    }
}

impl Link {
    /// The live connection, once there is one; None when `stop` fires first.
    pub async fn connection(&self, stop: &CancellationToken) -> Option<Arc<Connection>> {
        let mut rx = self.current.subscribe();
        loop {
            if let Some(c) = rx.borrow_and_update().clone().filter(|c| c.status().connected()) {
                return Some(c);
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                changed = rx.changed() => changed.ok()?,
            }
        }
    }
}

/// Keeps the link up until shutdown; `gw.set_amqp_error` follows its state.
pub async fn run(gw: Arc<Gateway>, link: Arc<Link>) {
    let amqp = &gw.config.amqp;
    let extra_ca = match amqp.ca_file.as_deref().map(std::fs::read_to_string).transpose() {
        Ok(pem) => pem,
        Err(e) => {
            gw.set_amqp_error(Some(format!("[amqp] ca_file: {e}")));
            return;
        }
    };
    let name = format!("scale-gateway {}", gw.config.instance_id);
    let endpoint = Endpoint { connection_name: &name, heartbeat: amqp.heartbeat, extra_ca: extra_ca.as_deref(), exchange: &amqp.events_exchange };
    let mut log = StateLog::new("amqp");
    let status = Mutex::new(AmqpStatus::default());
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let connected = tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            c = first_reachable(&amqp.url, &mut log, &status, "event sockets wait", |url| open(url, &endpoint)) => c,
        };
        if let Some((connection, channel)) = connected {
            let _ = channel.close(200, "exchange declared".into()).await;
            backoff.reset();
            let connection = Arc::new(connection);
            let mut events = connection.events_listener();
            link.current.send_replace(Some(connection.clone()));
            gw.set_amqp_error(None);
            let lost = loop {
                tokio::select! {
                    _ = gw.shutdown.cancelled() => {
                        link.current.send_replace(None);
                        let _ = connection.close(200, "scale-gateway stopping".into()).await;
                        return;
                    }
                    event = events.next() => match event {
                        Some(lapin::Event::Error(e)) => break e.to_string(),
                        Some(_) => {}
                        None => break "the connection ended".to_string(),
                    },
                }
            };
            link.current.send_replace(None);
            record_failure(&mut log, &status, "disconnected", format!("lost the broker: {lost}; reconnecting"));
        }
        gw.set_amqp_error(status.lock().unwrap_or_else(|e| e.into_inner()).last_error.clone());
        tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

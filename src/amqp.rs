//! The AMQP subsystem of a loaded module: the event queue (filled by the Stasis callback) and
//! the publisher task that empties it into RabbitMQ.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use res_scale_core::amqp::event::{Counters, EventQueue};
use res_scale_core::amqp::lapin_broker::LapinBroker;
use res_scale_core::amqp::publisher::{AmqpStatus, Outbox, Publisher};
use res_scale_core::config;
use res_scale_core::consul::registration::NodeIdentity;

use crate::tasks::Tasks;

/// The publisher flushes for up to 2 s at shutdown; this leaves it room to close cleanly.
const STOP_TIMEOUT: Duration = Duration::from_secs(4);

/// The queue and its counters: created once per load, kept across publisher restarts.
#[derive(Clone)]
pub struct EventPipe {
    pub queue: EventQueue,
    pub counters: Arc<Counters>,
    outbox: Arc<Outbox>,
}

impl EventPipe {
    pub fn new(capacity: usize) -> EventPipe {
        let counters = Arc::new(Counters::default());
        let (queue, rx) = EventQueue::new(capacity, counters.clone());
        EventPipe { queue, counters, outbox: Arc::new(Outbox::new(rx)) }
    }
}

pub struct Amqp {
    pub pipe: EventPipe,
    pub status: Arc<Mutex<AmqpStatus>>,
    tasks: Tasks,
}

impl Amqp {
    pub fn start(runtime: &tokio::runtime::Handle, settings: &config::Amqp, node: &NodeIdentity, pipe: EventPipe) -> Amqp {
        let status = Arc::new(Mutex::new(AmqpStatus { state: "connecting".into(), ..Default::default() }));
        let broker = LapinBroker {
            exchange: settings.events_exchange.clone(),
            eid: node.eid.clone(),
            persistent: settings.persistent,
            confirms: settings.confirms,
            connection_name: format!("res_scale {} ({})", node.node_id, node.system_name),
            heartbeat: settings.heartbeat,
            extra_ca: settings.ca_file.as_deref().and_then(|path| {
                // Validated at load; a file that went away since is reported and skipped.
                std::fs::read_to_string(path).map_err(|e| tracing::error!("amqp: cannot read ca_file {path}: {e}")).ok()
            }),
        };
        let publisher =
            Publisher { broker: Arc::new(broker), urls: settings.urls.clone(), eid: node.eid.clone(), confirms: settings.confirms, counters: pipe.counters.clone(), status: status.clone() };
        let tasks = Tasks::new();
        tasks.spawn(runtime, publisher.run(pipe.outbox.clone(), tasks.shutdown()));
        Amqp { pipe, status, tasks }
    }

    /// Stops the publisher after it flushed what it could; the queue stays with the pipe.
    pub fn stop(self, runtime: &tokio::runtime::Runtime) -> EventPipe {
        self.tasks.stop(runtime, STOP_TIMEOUT, "amqp");
        self.pipe
    }
}

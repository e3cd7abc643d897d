//! What every request and task of the gateway shares.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};

use res_scale_core::consul::http::HttpConsul;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ari::docs::Docs;
use crate::bridging::Bridging;
use crate::config::Config;
use crate::events::Hub;
use crate::metrics::Metrics;
use crate::owners::Owners;
use crate::pool::Pool;

pub struct Gateway {
    pub config: Config,
    pub pool: Arc<Pool>,
    pub owners: Arc<Owners>,
    pub metrics: Arc<Metrics>,
    pub consul: Arc<HttpConsul>,
    /// Which socket holds each application, and the AMQP link their events come over.
    pub events: Hub,
    /// `None` while the events link to RabbitMQ is up, else why it is not.
    pub amqp_error: RwLock<Option<String>>,
    /// Cancelled on SIGTERM/SIGINT: sockets close with a normal close frame, tasks end.
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// The api-docs files, fetched once from a node.
    pub docs: Docs,
    /// Spreads node-local reads over the nodes.
    pub rotation: AtomicUsize,
    /// Cross-node bridges: helper legs and what the applications must not see of them.
    pub bridging: Bridging,
}

impl Gateway {
    /// Everything but the tasks: nothing is connected or spawned yet.
    pub fn new(config: Config) -> Result<Gateway, String> {
        Ok(Gateway {
            consul: Arc::new(HttpConsul::new(&config.consul.url, &config.consul.token)?),
            pool: Arc::new(Pool::new(&config)?),
            owners: Arc::new(Owners::new(config.ownership.ttl)),
            metrics: Arc::new(Metrics::new()),
            events: Hub::default(),
            amqp_error: RwLock::new(Some("not connected yet".into())),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            docs: Docs::default(),
            rotation: AtomicUsize::new(0),
            bridging: Bridging::new(&config.instance_id, &config.bridging.endpoint),
            config,
        })
    }

    pub fn amqp_error(&self) -> Option<String> {
        self.amqp_error.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_amqp_error(&self, error: Option<String>) {
        self.metrics.set_connected("amqp", error.is_none());
        *self.amqp_error.write().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

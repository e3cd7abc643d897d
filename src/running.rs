//! The state of a loaded module, which `lifecycle` builds and takes down and the CLI reads. It
//! lives in a `Mutex<Option<..>>`: after `module unload` the library usually stays mapped and
//! `module load` builds it again, so nothing per-load may sit in a once-only static.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use res_scale_core::config::Config;
use res_scale_core::consul::apps::{AppsTable, EventCounters};
use res_scale_core::consul::registration::NodeIdentity;

use crate::amqp::{Amqp, EventPipe};
use crate::ast::cli;
use crate::consul::Consul;
use crate::events::Forwarder;
use crate::registrations::Registrations;
use crate::states::States;

/// Everything that exists while the module is loaded.
pub struct Running {
    pub config: Arc<Config>,
    pub config_source: String,
    pub started: Instant,
    pub eid: String,
    pub system_name: String,
    pub node: NodeIdentity,
    /// The Stasis applications this node registered; outlives Consul restarts on reload so
    /// that calls in those applications are not disturbed.
    pub apps: Arc<Mutex<AppsTable>>,
    pub counters: Arc<EventCounters>,
    pub consul: Option<Consul>,
    pub amqp: Option<Amqp>,
    pub registrations: Option<Registrations>,
    pub states: Option<States>,
    /// The event queue while the publisher is being restarted by a reload.
    pub(crate) parked_pipe: Option<EventPipe>,
    pub(crate) forwarder: Arc<Forwarder>,
    pub(crate) runtime: Option<tokio::runtime::Runtime>,
    pub(crate) cli: Option<cli::Registration>,
}

static STATE: Mutex<Option<Running>> = Mutex::new(None);

/// The running state; a poisoned lock is taken over (a panic was already logged by the guard).
pub fn state() -> MutexGuard<'static, Option<Running>> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

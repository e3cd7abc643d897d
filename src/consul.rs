//! The Consul subsystem of a loaded module: the registration agent, the apps watcher and the
//! pool view, running on the module's runtime until `stop`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use res_scale_core::config;
use res_scale_core::consul::apps::{AppsTable, AppsWatcher, EventCounters};
use res_scale_core::consul::http::HttpConsul;
use res_scale_core::consul::nodes::{self, PoolView};
use res_scale_core::consul::registration::{Liveness, NodeIdentity, Registrar, RegistrationStatus, Request, Timing};
use tokio::sync::mpsc;

use crate::ast::identity;
use crate::ast::stasis::AsteriskStasis;
use crate::tasks::Tasks;

/// How long a CLI command waits for Consul to confirm a drain change.
const DRAIN_REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long stop waits for the tasks (and the deregistration) to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Consul {
    pub node_id: String,
    pub prefix: String,
    pub agent: Arc<HttpConsul>,
    pub status: Arc<Mutex<RegistrationStatus>>,
    pub view: Arc<Mutex<PoolView>>,
    requests: mpsc::Sender<Request>,
    tasks: Tasks,
}

struct AsteriskAlive;

impl Liveness for AsteriskAlive {
    fn check(&self) -> Result<(), String> {
        if identity::shutting_down() {
            Err("Asterisk is shutting down".into())
        } else {
            Ok(())
        }
    }
}

impl Consul {
    pub fn start(runtime: &tokio::runtime::Handle, settings: &config::Consul, node: NodeIdentity, apps: Arc<Mutex<AppsTable>>, counters: Arc<EventCounters>) -> Result<Consul, String> {
        let agent = Arc::new(HttpConsul::new(&settings.urls, &settings.token)?);
        let status = Arc::new(Mutex::new(RegistrationStatus { state: "starting".into(), ..Default::default() }));
        let view = Arc::new(Mutex::new(PoolView::default()));
        let (requests, requests_rx) = mpsc::channel(16);
        let tasks = Tasks::new();

        let registrar = Registrar {
            api: agent.clone(),
            identity: node.clone(),
            timing: Timing { ttl: settings.check_ttl, deregister_after: settings.deregister_after },
            status: status.clone(),
            liveness: Arc::new(AsteriskAlive),
        };
        tasks.spawn(runtime, registrar.run(requests_rx, tasks.shutdown()));
        let watcher = AppsWatcher { api: agent.clone(), prefix: settings.apps_prefix.clone(), stasis: Arc::new(AsteriskStasis), table: apps, counters, registration: requests.clone() };
        tasks.spawn(runtime, watcher.run(tasks.shutdown()));
        tasks.spawn(runtime, nodes::watch(agent.clone(), node.service_name.clone(), view.clone(), tasks.shutdown()));
        Ok(Consul { node_id: node.node_id, prefix: settings.apps_prefix.clone(), agent, status, view, requests, tasks })
    }

    /// Turns maintenance mode on or off and waits (bounded) for Consul's answer.
    pub fn drain(&self, on: bool) -> Result<(), String> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.requests.try_send(Request::Drain(on, reply)).map_err(|e| format!("the Consul agent task is busy or gone: {e}"))?;
        match answer.recv_timeout(DRAIN_REPLY_TIMEOUT) {
            Ok(result) => result,
            Err(_) => Err("no answer from Consul yet; the change applies as soon as it answers".into()),
        }
    }

    /// Stops the tasks (the registration agent deregisters the node) and waits for them.
    pub fn stop(self, runtime: &tokio::runtime::Runtime) {
        self.tasks.stop(runtime, STOP_TIMEOUT, "consul");
    }
}

//! The node's service in Consul: registered at start, its TTL check passed every third of the
//! TTL while the node is alive, registered again when the agent forgot it, drained on demand,
//! deregistered at shutdown. Registration is refused while another live node uses our EID.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::api::{ConsulApi, ConsulError, ServiceRegistration, TtlCheck};
use crate::backoff::Backoff;
use crate::state_log::{Severity, StateLog};

/// Who this node is, as published in the service's meta data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub node_id: String,
    pub service_name: String,
    pub eid: String,
    pub system_name: String,
    /// Host and port of the SIP transport (the service's Address/Port).
    pub sip_host: String,
    pub sip_port: u16,
    pub ari_url: String,
    pub asterisk_version: String,
    /// Random per load: tells our own stale registration apart from another node's.
    pub instance: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub ttl: Duration,
    pub deregister_after: Duration,
}

/// Requests from the rest of the module.
#[derive(Debug)]
pub enum Request {
    /// Maintenance mode on or off; the answer says whether Consul took it.
    Drain(bool, std::sync::mpsc::Sender<Result<(), String>>),
    /// The set of Stasis apps this node runs changed (published in meta `apps`).
    Apps(Vec<String>),
}

/// What `scale show status` and `scale show nodes` show about the registration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrationStatus {
    pub state: String,
    pub last_error: Option<String>,
    pub drain: bool,
    pub registrations: u64,
    pub ttl_passes: u64,
    pub failures: u64,
}

/// Whether the node may pass its check: Asterisk alive and not shutting down.
pub trait Liveness: Send + Sync + 'static {
    fn check(&self) -> Result<(), String>;
}

/// Name of the TTL check of a node's service.
pub fn check_id(node_id: &str) -> String {
    format!("res_scale:{node_id}")
}

pub fn service_registration(id: &NodeIdentity, timing: Timing, apps: &[String]) -> ServiceRegistration {
    let meta: BTreeMap<String, String> = [
        ("eid", id.eid.clone()),
        ("system_name", id.system_name.clone()),
        ("ari_url", id.ari_url.clone()),
        ("asterisk_version", id.asterisk_version.clone()),
        ("res_scale_version", env!("CARGO_PKG_VERSION").to_string()),
        ("instance", id.instance.clone()),
        ("apps", apps_meta(apps)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    ServiceRegistration {
        id: id.node_id.clone(),
        name: id.service_name.clone(),
        tags: vec!["res_scale".into()],
        address: id.sip_host.clone(),
        port: id.sip_port,
        meta,
        check: TtlCheck { id: check_id(&id.node_id), name: format!("res_scale on {}", id.node_id), ttl: timing.ttl, deregister_after: timing.deregister_after, status: "passing" },
    }
}

/// Consul caps a meta value at 512 characters; a longer app list is cut and says so.
fn apps_meta(apps: &[String]) -> String {
    const MAX: usize = 512;
    let full = apps.join(",");
    if full.len() <= MAX {
        return full;
    }
    let mut shown = String::new();
    for (i, app) in apps.iter().enumerate() {
        let suffix = format!(",+{} more", apps.len() - i);
        if shown.len() + app.len() + 1 + suffix.len() > MAX {
            shown.push_str(&suffix);
            break;
        }
        if !shown.is_empty() {
            shown.push(',');
        }
        shown.push_str(app);
    }
    shown
}

pub struct Registrar<C> {
    pub api: Arc<C>,
    pub identity: NodeIdentity,
    pub timing: Timing,
    pub status: Arc<Mutex<RegistrationStatus>>,
    pub liveness: Arc<dyn Liveness>,
}

enum Refusal {
    Duplicate(String),
    Consul(ConsulError),
}

impl<C: ConsulApi> Registrar<C> {
    /// Runs until `shutdown`, then deregisters the node.
    pub async fn run(self, mut requests: mpsc::Receiver<Request>, shutdown: CancellationToken) {
        let mut log = StateLog::new("consul");
        let mut registered = false;
        let mut apps: Vec<String> = Vec::new();
        let mut drain = false;
        let interval = self.timing.ttl / 3;
        let mut backoff = Backoff::new(Duration::from_millis(200), interval.min(Duration::from_secs(10)));
        loop {
            if !registered {
                match self.register(&apps, drain).await {
                    Ok(()) => {
                        registered = true;
                        backoff.reset();
                        self.update(|s| s.registrations += 1);
                        self.enter(
                            &mut log,
                            "registered",
                            Severity::Info,
                            &format!("node {} registered as service '{}' (EID {})", self.identity.node_id, self.identity.service_name, self.identity.eid),
                            None,
                        );
                    }
                    Err(Refusal::Duplicate(other)) => {
                        let text = format!(
                            "not registering: another live node uses EID {} ({other}); give every node its own entityid in asterisk.conf. Retrying until that node's check fails",
                            self.identity.eid
                        );
                        self.enter(&mut log, "refused: duplicate EID", Severity::Error, &text, Some(text.clone()));
                    }
                    Err(Refusal::Consul(e)) => self.consul_failed(&mut log, e),
                }
            }
            let delay = if registered { interval } else { backoff.next_delay() };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                request = requests.recv() => match request {
                    None => break,
                    Some(Request::Drain(on, reply)) => {
                        drain = on;
                        self.update(|s| s.drain = on);
                        let result = if registered {
                            self.apply_drain(on).await.map_err(|e| e.to_string())
                        } else {
                            Err("the node is not registered in Consul yet; the drain state applies once it is".into())
                        };
                        let _ = reply.send(result);
                    }
                    Some(Request::Apps(list)) => {
                        apps = list;
                        // Re-registering updates the meta; on failure the loop registers again.
                        if registered && self.register(&apps, drain).await.is_err() {
                            registered = false;
                        }
                    }
                },
                _ = tokio::time::sleep(delay) => {
                    if registered {
                        registered = self.pass(&mut log).await;
                    }
                }
            }
        }
        if registered {
            match tokio::time::timeout(Duration::from_secs(2), self.api.deregister_service(&self.identity.node_id)).await {
                Ok(Ok(())) => tracing::info!("consul: node {} deregistered", self.identity.node_id),
                Ok(Err(e)) => tracing::warn!("consul: could not deregister {}: {e}", self.identity.node_id),
                Err(_) => tracing::warn!("consul: deregistering {} timed out", self.identity.node_id),
            }
        }
    }

    /// Passes the TTL check; returns whether the service is still registered.
    async fn pass(&self, log: &mut StateLog) -> bool {
        if let Err(why) = self.liveness.check() {
            self.enter(log, "not passing", Severity::Warning, &format!("not passing the health check: {why}"), Some(why));
            return true;
        }
        let note = format!("res_scale {} alive", env!("CARGO_PKG_VERSION"));
        match self.api.pass_check(&check_id(&self.identity.node_id), &note).await {
            Ok(()) => {
                self.update(|s| s.ttl_passes += 1);
                self.enter(log, "registered", Severity::Info, "Consul reachable again; check passing", None);
                true
            }
            Err(ConsulError::NotFound(_)) => {
                tracing::warn!("consul: the agent no longer knows node {}; registering again", self.identity.node_id);
                false
            }
            Err(e) => {
                self.consul_failed(log, e);
                true
            }
        }
    }

    async fn register(&self, apps: &[String], drain: bool) -> Result<(), Refusal> {
        if let Some(other) = self.live_duplicate().await.map_err(Refusal::Consul)? {
            return Err(Refusal::Duplicate(other));
        }
        let registration = service_registration(&self.identity, self.timing, apps);
        self.api.register_service(&registration).await.map_err(Refusal::Consul)?;
        // A fresh registration is out of maintenance; put it back if the node is drained.
        if drain {
            self.apply_drain(true).await.map_err(Refusal::Consul)?;
        }
        Ok(())
    }

    /// Another registration with our EID whose checks are not critical.
    async fn live_duplicate(&self) -> Result<Option<String>, ConsulError> {
        let all = self.api.health_service(&self.identity.service_name, 0, Duration::ZERO).await?;
        Ok(all
            .value
            .iter()
            .find(|s| s.meta.get("eid") == Some(&self.identity.eid) && s.meta.get("instance") != Some(&self.identity.instance) && s.health() != "critical")
            .map(|s| format!("service {} on Consul node {} at {}:{}", s.id, s.node, s.address, s.port)))
    }

    async fn apply_drain(&self, on: bool) -> Result<(), ConsulError> {
        let reason = if on { "drained with 'scale set drain on'" } else { "" };
        self.api.set_maintenance(&self.identity.node_id, on, reason).await?;
        tracing::info!("consul: drain {} for node {}", if on { "on" } else { "off" }, self.identity.node_id);
        Ok(())
    }

    fn consul_failed(&self, log: &mut StateLog, e: ConsulError) {
        self.update(|s| s.failures += 1);
        let (state, severity) = match &e {
            ConsulError::Forbidden(_) => ("forbidden", Severity::Error),
            ConsulError::Unreachable(_) => ("unreachable", Severity::Warning),
            _ => ("failing", Severity::Warning),
        };
        let text = format!("{e}; retrying");
        self.enter(log, state, severity, &text, Some(e.to_string()));
    }

    fn enter(&self, log: &mut StateLog, state: &str, severity: Severity, detail: &str, error: Option<String>) {
        log.enter(state, severity, detail);
        self.update(|s| {
            s.state = state.to_string();
            if error.is_some() {
                s.last_error = error;
            }
        });
    }

    fn update(&self, f: impl FnOnce(&mut RegistrationStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_app_lists_are_cut_to_consuls_limit() {
        let apps: Vec<String> = (0..100).map(|i| format!("application-{i:03}")).collect();
        let meta = apps_meta(&apps);
        assert!(meta.len() <= 512, "{}", meta.len());
        assert!(meta.starts_with("application-000,application-001"));
        assert!(meta.ends_with(" more"), "{meta}");
        assert_eq!(apps_meta(&["a".into(), "b".into()]), "a,b");
    }

    #[test]
    fn registration_carries_the_contract_fields() {
        let id = NodeIdentity {
            node_id: "asterisk-020000000001".into(),
            service_name: "asterisk".into(),
            eid: "02:00:00:00:00:01".into(),
            system_name: "node1".into(),
            sip_host: "10.0.0.1".into(),
            sip_port: 5060,
            ari_url: "http://10.0.0.1:8088/ari".into(),
            asterisk_version: "22.10.1".into(),
            instance: "abc".into(),
        };
        let timing = Timing { ttl: Duration::from_secs(15), deregister_after: Duration::from_secs(60) };
        let json = serde_json::to_value(service_registration(&id, timing, &["conf".into()])).unwrap();
        assert_eq!(json["ID"], "asterisk-020000000001");
        assert_eq!(json["Name"], "asterisk");
        assert_eq!(json["Address"], "10.0.0.1");
        assert_eq!(json["Port"], 5060);
        assert_eq!(json["Tags"][0], "res_scale");
        for key in ["eid", "system_name", "ari_url", "asterisk_version", "res_scale_version"] {
            assert!(json["Meta"][key].is_string(), "meta {key}");
        }
        assert_eq!(json["Meta"]["apps"], "conf");
        assert_eq!(json["Check"]["CheckID"], "res_scale:asterisk-020000000001");
        assert_eq!(json["Check"]["TTL"], "15000ms");
        assert_eq!(json["Check"]["DeregisterCriticalServiceAfter"], "60000ms");
    }
}

#[cfg(test)]
mod agent_tests {
    use super::*;
    use crate::consul::fake::FakeConsul;

    struct Alive;
    impl Liveness for Alive {
        fn check(&self) -> Result<(), String> {
            Ok(())
        }
    }

    fn identity(node_id: &str, eid: &str, instance: &str) -> NodeIdentity {
        NodeIdentity {
            node_id: node_id.into(),
            service_name: "asterisk".into(),
            eid: eid.into(),
            system_name: "n".into(),
            sip_host: "127.0.0.1".into(),
            sip_port: 5060,
            ari_url: "http://127.0.0.1:8088/ari".into(),
            asterisk_version: "22".into(),
            instance: instance.into(),
        }
    }

    const TIMING: Timing = Timing { ttl: Duration::from_secs(15), deregister_after: Duration::from_secs(60) };

    struct Running {
        consul: Arc<FakeConsul>,
        status: Arc<Mutex<RegistrationStatus>>,
        requests: mpsc::Sender<Request>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(consul: Arc<FakeConsul>, id: NodeIdentity) -> Running {
        let status = Arc::new(Mutex::new(RegistrationStatus::default()));
        let (requests, rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let registrar = Registrar { api: consul.clone(), identity: id, timing: TIMING, status: status.clone(), liveness: Arc::new(Alive) };
        let task = tokio::spawn(registrar.run(rx, shutdown.clone()));
        Running { consul, status, requests, shutdown, task }
    }

    async fn settle(d: Duration) {
        tokio::time::sleep(d).await;
    }

    #[tokio::test(start_paused = true)]
    async fn registers_passes_every_third_of_the_ttl_and_deregisters_at_shutdown() {
        let r = start(Arc::new(FakeConsul::default()), identity("n1", "02:00:00:00:00:01", "i1"));
        settle(Duration::from_millis(1)).await;
        assert!(r.consul.with(|s| s.services.contains_key("n1")));
        settle(Duration::from_secs(16)).await;
        assert_eq!(r.consul.with(|s| s.passes), 3);
        assert_eq!(r.status.lock().unwrap().state, "registered");
        r.shutdown.cancel();
        r.task.await.unwrap();
        assert!(r.consul.with(|s| s.services.is_empty()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgetful_agent_gets_the_service_back_within_one_ttl() {
        let r = start(Arc::new(FakeConsul::default()), identity("n1", "02:00:00:00:00:01", "i1"));
        settle(Duration::from_millis(1)).await;
        r.consul.with(|s| {
            s.down = true;
            s.services.clear();
        });
        settle(Duration::from_secs(6)).await;
        assert_eq!(r.status.lock().unwrap().state, "unreachable");
        r.consul.with(|s| s.down = false);
        settle(TIMING.ttl).await;
        assert!(r.consul.with(|s| s.services.contains_key("n1")), "registered again");
        assert_eq!(r.status.lock().unwrap().registrations, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_node_with_the_same_eid_blocks_registration_until_it_dies() {
        let consul = Arc::new(FakeConsul::default());
        let other = start(consul.clone(), identity("other", "02:00:00:00:00:01", "i-other"));
        settle(Duration::from_millis(1)).await;
        let r = start(consul.clone(), identity("n1", "02:00:00:00:00:01", "i1"));
        settle(Duration::from_secs(5)).await;
        assert!(!consul.with(|s| s.services.contains_key("n1")));
        let status = r.status.lock().unwrap().clone();
        assert_eq!(status.state, "refused: duplicate EID");
        assert!(status.last_error.unwrap().contains("another live node uses EID 02:00:00:00:00:01"));
        // The other node dies without deregistering: its check turns critical.
        other.task.abort();
        consul.with(|s| s.check_status.insert("other".into(), "critical".into()));
        settle(Duration::from_secs(11)).await;
        assert!(consul.with(|s| s.services.contains_key("n1")));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_asked_before_registration_says_so_and_applies_later() {
        let consul = Arc::new(FakeConsul::default());
        consul.with(|s| s.down = true);
        let r = start(consul.clone(), identity("n1", "02:00:00:00:00:01", "i1"));
        settle(Duration::from_millis(1)).await;
        let (tx, rx) = std::sync::mpsc::channel();
        r.requests.send(Request::Drain(true, tx)).await.unwrap();
        settle(Duration::from_millis(1)).await;
        assert!(rx.try_recv().unwrap().unwrap_err().contains("not registered in Consul yet"));
        consul.with(|s| s.down = false);
        settle(Duration::from_secs(10)).await;
        assert_eq!(consul.with(|s| s.maintenance.get("n1").copied()), Some(true));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_survives_a_new_registration() {
        let r = start(Arc::new(FakeConsul::default()), identity("n1", "02:00:00:00:00:01", "i1"));
        settle(Duration::from_millis(1)).await;
        let (tx, rx) = std::sync::mpsc::channel();
        r.requests.send(Request::Drain(true, tx)).await.unwrap();
        settle(Duration::from_millis(1)).await;
        assert_eq!(rx.try_recv().unwrap(), Ok(()));
        assert_eq!(r.consul.with(|s| s.maintenance.get("n1").copied()), Some(true));
        r.consul.with(|s| s.services.clear());
        settle(TIMING.ttl).await;
        assert_eq!(r.consul.with(|s| s.maintenance.get("n1").copied()), Some(true));
        assert!(r.status.lock().unwrap().drain);
    }
}

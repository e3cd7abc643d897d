//! What res_scale needs from Consul, as a trait so the agents are unit-tested with a fake.
//! The real implementation is [`super::http::HttpConsul`].

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The node's service, as registered with the local agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub check: TtlCheck,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TtlCheck {
    #[serde(rename = "CheckID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "TTL", serialize_with = "go_duration")]
    pub ttl: Duration,
    #[serde(rename = "DeregisterCriticalServiceAfter", serialize_with = "go_duration")]
    pub deregister_after: Duration,
    /// Starts passing: the module registers only once it is up.
    #[serde(rename = "Status")]
    pub status: &'static str,
}

fn go_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

/// One key under a KV prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    /// Consul's index of the key's last change: a delete with it as `cas` removes only this
    /// version, not one another writer put since.
    pub modify_index: u64,
}

/// A blocking-query answer: the value and the index to wait on next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed<T> {
    pub index: u64,
    pub value: T,
}

/// One instance of a service with the state of its checks, from the health endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServiceInstance {
    pub node: String,
    pub id: String,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub checks: Vec<CheckState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CheckState {
    pub id: String,
    pub status: String,
}

/// The maintenance check Consul adds to a service in maintenance mode starts with this.
pub const MAINTENANCE_CHECK_PREFIX: &str = "_service_maintenance:";

impl ServiceInstance {
    /// `maintenance`, `critical`, `warning` or `passing`, worst first.
    pub fn health(&self) -> &'static str {
        if self.checks.iter().any(|c| c.id.starts_with(MAINTENANCE_CHECK_PREFIX)) {
            "maintenance"
        } else if self.checks.iter().any(|c| c.status == "critical") {
            "critical"
        } else if self.checks.iter().any(|c| c.status == "warning") {
            "warning"
        } else {
            "passing"
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsulError {
    /// No agent answered (all URLs tried).
    Unreachable(String),
    /// The agent does not know the service or check (e.g. it was restarted).
    NotFound(String),
    /// 403: the token lacks a permission.
    Forbidden(String),
    /// Any other refusal or an answer we could not read.
    Failed(String),
}

impl fmt::Display for ConsulError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsulError::Unreachable(e) => write!(f, "Consul unreachable: {e}"),
            ConsulError::NotFound(e) => write!(f, "not known to Consul: {e}"),
            ConsulError::Forbidden(e) => write!(f, "Consul refused the token: {e}"),
            ConsulError::Failed(e) => write!(f, "Consul error: {e}"),
        }
    }
}

pub type ConsulResult<T> = Result<T, ConsulError>;

pub trait ConsulApi: Send + Sync + 'static {
    fn register_service(&self, registration: &ServiceRegistration) -> impl Future<Output = ConsulResult<()>> + Send;
    fn deregister_service(&self, service_id: &str) -> impl Future<Output = ConsulResult<()>> + Send;
    /// Marks a TTL check passing; `NotFound` when the agent forgot it.
    fn pass_check(&self, check_id: &str, note: &str) -> impl Future<Output = ConsulResult<()>> + Send;
    fn set_maintenance(&self, service_id: &str, enable: bool, reason: &str) -> impl Future<Output = ConsulResult<()>> + Send;
    /// Every key under `prefix`; blocks up to `wait` while the index is still `index`.
    fn kv_list(&self, prefix: &str, index: u64, wait: Duration) -> impl Future<Output = ConsulResult<Indexed<Vec<KvEntry>>>> + Send;
    /// Writes `value` under `key` (created or replaced).
    fn kv_put(&self, key: &str, value: &[u8]) -> impl Future<Output = ConsulResult<()>> + Send;
    /// Deletes `key`; with `cas`, only while its modify index is still that one. False when the
    /// key changed meanwhile (and so was left in place). A missing key counts as deleted.
    fn kv_delete(&self, key: &str, cas: Option<u64>) -> impl Future<Output = ConsulResult<bool>> + Send;
    /// Every instance of a service with its checks; blocks like `kv_list`.
    fn health_service(&self, name: &str, index: u64, wait: Duration) -> impl Future<Output = ConsulResult<Indexed<Vec<ServiceInstance>>>> + Send;
}

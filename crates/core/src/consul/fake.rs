//! An in-memory Consul agent for unit tests: services, TTL checks, maintenance and KV, with
//! switches to take it down or make it forget everything (an agent restart).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::api::{CheckState, ConsulApi, ConsulError, ConsulResult, Indexed, KvEntry, ServiceInstance, ServiceRegistration};

#[derive(Default)]
pub struct FakeConsul {
    pub state: Mutex<FakeState>,
}

#[derive(Default)]
pub struct FakeState {
    pub down: bool,
    pub services: BTreeMap<String, ServiceRegistration>,
    /// Check status by service id.
    pub check_status: BTreeMap<String, String>,
    pub maintenance: BTreeMap<String, bool>,
    pub passes: u64,
    pub registrations: u64,
    /// Value and modify index per key.
    pub kv: BTreeMap<String, (Vec<u8>, u64)>,
    pub index: u64,
    /// The index each `health_service` call asked for, in order.
    pub health_requests: Vec<u64>,
}

impl FakeConsul {
    pub fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    fn up(&self) -> ConsulResult<std::sync::MutexGuard<'_, FakeState>> {
        let s = self.state.lock().unwrap();
        if s.down {
            return Err(ConsulError::Unreachable("connection refused".into()));
        }
        Ok(s)
    }
}

impl ConsulApi for FakeConsul {
    async fn register_service(&self, r: &ServiceRegistration) -> ConsulResult<()> {
        let mut s = self.up()?;
        s.registrations += 1;
        s.check_status.insert(r.id.clone(), r.check.status.to_string());
        s.services.insert(r.id.clone(), r.clone());
        s.maintenance.remove(&r.id);
        Ok(())
    }

    async fn deregister_service(&self, id: &str) -> ConsulResult<()> {
        let mut s = self.up()?;
        s.services.remove(id);
        s.check_status.remove(id);
        Ok(())
    }

    async fn pass_check(&self, check_id: &str, _note: &str) -> ConsulResult<()> {
        let mut s = self.up()?;
        let id = s.services.values().find(|r| r.check.id == check_id).map(|r| r.id.clone());
        match id {
            Some(id) => {
                s.passes += 1;
                s.check_status.insert(id, "passing".into());
                Ok(())
            }
            None => Err(ConsulError::NotFound(format!("Unknown check {check_id}"))),
        }
    }

    async fn set_maintenance(&self, id: &str, enable: bool, _reason: &str) -> ConsulResult<()> {
        let mut s = self.up()?;
        if !s.services.contains_key(id) {
            return Err(ConsulError::NotFound(id.into()));
        }
        s.maintenance.insert(id.into(), enable);
        Ok(())
    }

    async fn kv_list(&self, prefix: &str, _index: u64, _wait: Duration) -> ConsulResult<Indexed<Vec<KvEntry>>> {
        let s = self.up()?;
        let value = s.kv.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, (v, i))| KvEntry { key: k.clone(), value: v.clone(), modify_index: *i }).collect();
        Ok(Indexed { index: s.index, value })
    }

    async fn kv_put(&self, key: &str, value: &[u8]) -> ConsulResult<()> {
        let mut s = self.up()?;
        s.index += 1;
        let index = s.index;
        s.kv.insert(key.into(), (value.to_vec(), index));
        Ok(())
    }

    async fn kv_delete(&self, key: &str, cas: Option<u64>) -> ConsulResult<bool> {
        let mut s = self.up()?;
        if let (Some(cas), Some((_, index))) = (cas, s.kv.get(key)) {
            if *index != cas {
                return Ok(false);
            }
        }
        if s.kv.remove(key).is_some() {
            s.index += 1;
        }
        Ok(true)
    }

    async fn health_service(&self, name: &str, index: u64, _wait: Duration) -> ConsulResult<Indexed<Vec<ServiceInstance>>> {
        // A real agent answers over the network: a watch calling in a loop must let other
        // tasks run.
        tokio::task::yield_now().await;
        let mut s = self.up()?;
        s.health_requests.push(index);
        let value = s
            .services
            .values()
            .filter(|r| r.name == name)
            .map(|r| ServiceInstance {
                node: "fake".into(),
                id: r.id.clone(),
                address: r.address.clone(),
                port: r.port,
                meta: r.meta.clone(),
                checks: vec![CheckState { id: r.check.id.clone(), status: s.check_status.get(&r.id).cloned().unwrap_or_default() }],
            })
            .collect();
        Ok(Indexed { index: s.index, value })
    }
}

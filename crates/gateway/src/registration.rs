//! The gateway registers itself in Consul as `scale-gateway` (configurable) with a TTL check
//! that passes only while `/healthz` would answer 200, so load balancers and operators can find
//! every healthy replica. Deregistered on a clean stop.

use std::collections::BTreeMap;
use std::sync::Arc;

use res_scale_core::consul::api::{ConsulApi, ServiceRegistration, TtlCheck};
use res_scale_core::state_log::{Severity, StateLog};

use crate::health;
use crate::state::Gateway;

fn service_id(gw: &Gateway) -> String {
    format!("{}-{}", gw.config.consul.service_name, gw.config.instance_id)
}

fn registration(gw: &Gateway) -> ServiceRegistration {
    let id = service_id(gw);
    let mut meta = BTreeMap::new();
    meta.insert("instance_id".to_string(), gw.config.instance_id.clone());
    meta.insert("version".to_string(), env!("CARGO_PKG_VERSION").to_string());
    ServiceRegistration {
        id: id.clone(),
        name: gw.config.consul.service_name.clone(),
        tags: vec!["res_scale".into(), "ari".into()],
        address: gw.config.listen.ip().to_string(),
        port: gw.config.listen.port(),
        meta,
        check: TtlCheck { id: format!("{id}:health"), name: "scale-gateway /healthz".into(), ttl: gw.config.consul.check_ttl, deregister_after: gw.config.consul.deregister_after, status: "critical" },
    }
}

/// Registers, then passes the check every third of the TTL while healthy; registers again when
/// the agent forgot the service. Deregisters when the gateway stops.
pub async fn run(gw: Arc<Gateway>) {
    let reg = registration(&gw);
    let mut log = StateLog::new("consul registration");
    let mut registered = false;
    let period = gw.config.consul.check_ttl / 3;
    loop {
        if !registered {
            match gw.consul.register_service(&reg).await {
                Ok(()) => {
                    registered = true;
                    log.enter("registered", Severity::Info, &format!("registered as service {} ({})", reg.name, reg.id));
                }
                Err(e) => {
                    log.enter("failed", Severity::Warning, &format!("cannot register service {}: {e}", reg.id));
                }
            }
        }
        if registered && health::check(&gw).healthy {
            if let Err(e) = gw.consul.pass_check(&reg.check.id, "healthy").await {
                registered = !matches!(e, res_scale_core::consul::api::ConsulError::NotFound(_));
                log.enter("check failed", Severity::Warning, &format!("cannot pass the health check: {e}"));
            }
        }
        tokio::select! {
            _ = gw.shutdown.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
        }
    }
    if registered {
        if let Err(e) = gw.consul.deregister_service(&reg.id).await {
            tracing::warn!(error = %e, "cannot deregister service {}", reg.id);
        }
    }
}

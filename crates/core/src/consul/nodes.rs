//! The pool as Consul sees it, kept fresh by a blocking query so that `scale show nodes`
//! answers from memory and never waits on the network.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::api::{ConsulApi, ServiceInstance};
use crate::backoff::Backoff;

const WATCH_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct PoolView {
    pub instances: Vec<ServiceInstance>,
    pub updated: Option<Instant>,
    pub last_error: Option<String>,
}

pub async fn watch<C: ConsulApi>(api: Arc<C>, service: String, view: Arc<Mutex<PoolView>>, shutdown: CancellationToken) {
    let mut index = 0;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let answer = tokio::select! {
            _ = shutdown.cancelled() => return,
            answer = api.health_service(&service, index, WATCH_WAIT) => answer,
        };
        let failed = {
            let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
            match answer {
                Ok(listing) => {
                    backoff.reset();
                    index = if listing.index < index { 0 } else { listing.index };
                    v.instances = listing.value;
                    v.updated = Some(Instant::now());
                    v.last_error = None;
                    false
                }
                Err(e) => {
                    // The registration agent already logs Consul outages; this only records it.
                    index = 0;
                    v.last_error = Some(e.to_string());
                    true
                }
            }
        };
        if failed {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}

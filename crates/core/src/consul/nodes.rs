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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::fake::FakeConsul;

    /// Waits until the fake has answered `n` health queries in all (panics if the watch stops
    /// asking: with the clock paused a timer would never fire while this task spins).
    async fn asked(api: &FakeConsul, n: usize) {
        for _ in 0..100_000 {
            if api.with(|s| s.health_requests.len()) >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the watch asked Consul {} times, not {n}", api.with(|s| s.health_requests.len()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_view_follows_consul_and_a_new_agent_is_asked_from_the_start() {
        let api = Arc::new(FakeConsul::default());
        api.with(|s| s.index = 5);
        let view = Arc::new(Mutex::new(PoolView::default()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watch(api.clone(), "asterisk".into(), view.clone(), shutdown.clone()));
        asked(&api, 3).await;
        assert!(view.lock().unwrap().updated.is_some(), "the view is filled from Consul's answer");
        // A fresh agent (a restart) counts from a lower index.
        let before = api.with(|s| {
            s.index = 3;
            s.health_requests.len()
        });
        asked(&api, before + 4).await;
        shutdown.cancel();
        task.await.unwrap();
        let requests = api.with(|s| s.health_requests.clone());
        assert_eq!(requests[..3], [0, 5, 5], "a blocking query goes on from the last index: {requests:?}");
        assert!(requests[before..].windows(2).any(|w| w == [0, 3]), "after an index went backwards, a query from 0: {requests:?}");
    }
}

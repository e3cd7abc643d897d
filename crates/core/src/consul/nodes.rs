//! The pool as Consul sees it, kept fresh by a blocking query so that `scale show nodes`
//! answers from memory and never waits on the network.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::api::{ConsulApi, ConsulResult, ServiceInstance};
use crate::backoff::Backoff;

const WATCH_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct PoolView {
    pub instances: Vec<ServiceInstance>,
    pub updated: Option<Instant>,
    pub last_error: Option<String>,
}

pub async fn watch<C: ConsulApi>(api: Arc<C>, service: String, view: Arc<Mutex<PoolView>>, shutdown: CancellationToken) {
    follow(&*api, &service, WATCH_WAIT, Duration::from_secs(10), &shutdown, |answer| {
        let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
        match answer {
            Ok(instances) => {
                v.instances = instances;
                v.updated = Some(Instant::now());
                v.last_error = None;
            }
            // The registration agent already logs Consul outages; this only records it.
            Err(e) => v.last_error = Some(e.to_string()),
        }
    })
    .await
}

/// Follows the instances of `service` with blocking queries (each waits up to `wait`) until
/// shutdown, handing every answer or error to `on_answer`. After an error it waits with a
/// backoff up to `max_backoff` and asks from index 0 again: a restarted agent has lower
/// indexes, and waiting on the old one would hang.
pub async fn follow<C: ConsulApi>(api: &C, service: &str, wait: Duration, max_backoff: Duration, shutdown: &CancellationToken, mut on_answer: impl FnMut(ConsulResult<Vec<ServiceInstance>>)) {
    let mut index = 0;
    let mut backoff = Backoff::new(Duration::from_millis(200), max_backoff);
    loop {
        let answer = tokio::select! {
            _ = shutdown.cancelled() => return,
            answer = api.health_service(service, index, wait) => answer,
        };
        match answer {
            Ok(listing) => {
                backoff.reset();
                index = if listing.index < index { 0 } else { listing.index };
                on_answer(Ok(listing.value));
            }
            Err(e) => {
                index = 0;
                on_answer(Err(e));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
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

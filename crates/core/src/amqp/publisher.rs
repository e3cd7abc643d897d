//! The publisher task: takes events from the queue in order and publishes them, reconnecting
//! (brokers tried in order, backoff with jitter) whenever the connection fails. While no broker
//! is reachable the queue fills up to its capacity; what it holds is flushed, in order, once a
//! broker is back.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::event::{Counters, Event};
use crate::backoff::Backoff;
use crate::config::mask_password;
use crate::state_log::{Severity, StateLog};

/// Events published per round (and, with confirms, awaited together).
const BATCH: usize = 256;
/// At unload, how long the publisher may keep flushing what is queued.
const FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(2);

/// A way to reach RabbitMQ; [`super::lapin_broker::LapinBroker`] is the real one.
pub trait Broker: Send + Sync + 'static {
    type Link: Link;
    /// Connects to one broker and declares the exchange.
    fn connect(&self, url: &str) -> impl Future<Output = Result<Self::Link, String>> + Send;
}

/// One open connection.
pub trait Link: Send + 'static {
    /// Resolves to whether the broker acknowledged the message (publisher confirms).
    type Confirm: Future<Output = Result<bool, String>> + Send;
    /// Hands one message to the connection.
    fn publish(&mut self, routing_key: &str, event: &Event) -> impl Future<Output = Result<Self::Confirm, String>> + Send;
    /// Closes the connection cleanly (at shutdown).
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// The queue's receiving end and the events taken from it but not yet published. Shared so
/// that a publisher restarted by a reload carries on where the previous one stopped.
pub struct Outbox {
    rx: tokio::sync::Mutex<(mpsc::Receiver<Event>, VecDeque<Event>)>,
}

impl Outbox {
    pub fn new(rx: mpsc::Receiver<Event>) -> Outbox {
        Outbox { rx: tokio::sync::Mutex::new((rx, VecDeque::new())) }
    }
}

/// What `scale show amqp` shows besides the counters.
#[derive(Debug, Clone, Default)]
pub struct AmqpStatus {
    pub state: String,
    /// The broker in use (password masked), or the last one tried.
    pub broker: String,
    pub last_error: Option<String>,
}

pub struct Publisher<B> {
    pub broker: Arc<B>,
    pub urls: Vec<String>,
    pub eid: String,
    pub confirms: bool,
    pub counters: Arc<Counters>,
    pub status: Arc<Mutex<AmqpStatus>>,
}

impl<B: Broker> Publisher<B> {
    pub async fn run(self, outbox: Arc<Outbox>, shutdown: CancellationToken) {
        let mut guard = outbox.rx.lock().await;
        let (rx, pending) = &mut *guard;
        let mut log = StateLog::new("amqp");
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut first = true;
        'connect: loop {
            let Some(mut link) = self.connect(&mut log).await else {
                tokio::select! {
                    _ = shutdown.cancelled() => break 'connect,
                    _ = tokio::time::sleep(backoff.next_delay()) => continue 'connect,
                }
            };
            backoff.reset();
            if !first {
                self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            loop {
                if pending.is_empty() {
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            self.flush_at_shutdown(&mut link, rx, pending).await;
                            link.close().await;
                            break 'connect;
                        }
                        event = rx.recv() => match event {
                            Some(event) => pending.push_back(event),
                            None => break 'connect,
                        },
                    }
                    while pending.len() < BATCH {
                        match rx.try_recv() {
                            Ok(event) => pending.push_back(event),
                            Err(_) => break,
                        }
                    }
                }
                if let Err(e) = self.send(&mut link, pending).await {
                    self.failed(&mut log, "disconnected", format!("lost the broker: {e}; {} event(s) wait, reconnecting", pending.len() + rx.len()));
                    continue 'connect;
                }
            }
        }
        let left = pending.len() + rx.len();
        if left > 0 {
            tracing::warn!("amqp: {left} event(s) not published at shutdown");
        }
    }

    /// Tries every broker in order; logs only when the state changes.
    async fn connect(&self, log: &mut StateLog) -> Option<B::Link> {
        let mut errors = Vec::new();
        for url in &self.urls {
            match self.broker.connect(url).await {
                Ok(link) => {
                    let masked = mask_password(url);
                    log.enter("connected", Severity::Info, &format!("connected to {masked}"));
                    let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
                    s.state = "connected".into();
                    s.broker = masked;
                    return Some(link);
                }
                Err(e) => errors.push(format!("{}: {e}", mask_password(url))),
            }
        }
        self.failed(log, "unreachable", format!("no broker reachable ({}); events are queued, retrying", errors.join("; ")));
        None
    }

    /// Publishes `pending` in order; an event leaves it once published (and confirmed, with
    /// confirms on), so a failure leaves exactly the events still to send.
    async fn send(&self, link: &mut B::Link, pending: &mut VecDeque<Event>) -> Result<(), String> {
        if !self.confirms {
            while let Some(event) = pending.front() {
                // Without confirms there is nothing to wait for.
                drop(link.publish(&event.routing_key(&self.eid), event).await?);
                pending.pop_front();
                self.counters.published.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(());
        }
        let mut confirms = Vec::with_capacity(pending.len());
        for event in pending.iter() {
            confirms.push(link.publish(&event.routing_key(&self.eid), event).await?);
            self.counters.published.fetch_add(1, Ordering::Relaxed);
        }
        for confirm in confirms {
            let acked = confirm.await?;
            let event = pending.pop_front();
            if acked {
                self.counters.confirmed.fetch_add(1, Ordering::Relaxed);
            } else {
                self.counters.nacked.fetch_add(1, Ordering::Relaxed);
                let what = event.map(|e| format!("{} event of '{}'", e.event_type, e.app)).unwrap_or_default();
                tracing::warn!("amqp: the broker refused (nack) a {what}");
            }
        }
        Ok(())
    }

    async fn flush_at_shutdown(&self, link: &mut B::Link, rx: &mut mpsc::Receiver<Event>, pending: &mut VecDeque<Event>) {
        while let Ok(event) = rx.try_recv() {
            pending.push_back(event);
        }
        if tokio::time::timeout(FLUSH_AT_SHUTDOWN, self.send(link, pending)).await.is_err() {
            tracing::warn!("amqp: flushing at shutdown took longer than {FLUSH_AT_SHUTDOWN:?}");
        }
    }

    fn failed(&self, log: &mut StateLog, state: &str, detail: String) {
        log.enter(state, Severity::Warning, &detail);
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.state = state.to_string();
        s.last_error = Some(detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::event::EventQueue;

    /// A broker per URL that is up or down; records what was published where.
    #[derive(Default)]
    struct FakeBroker {
        state: Mutex<FakeState>,
    }

    #[derive(Default)]
    struct FakeState {
        down: Vec<String>,
        published: Vec<(String, String, String)>,
        /// Fail the publish after this many more messages (a broken connection).
        break_after: Option<usize>,
        nack_type: Option<String>,
    }

    struct FakeLink {
        url: String,
        broker: Arc<FakeBroker>,
    }

    struct Wrapper(Arc<FakeBroker>);

    impl Broker for Wrapper {
        type Link = FakeLink;
        async fn connect(&self, url: &str) -> Result<FakeLink, String> {
            if self.0.state.lock().unwrap().down.iter().any(|u| u == url) {
                return Err("connection refused".into());
            }
            Ok(FakeLink { url: url.into(), broker: self.0.clone() })
        }
    }

    impl Link for FakeLink {
        type Confirm = std::future::Ready<Result<bool, String>>;
        async fn publish(&mut self, routing_key: &str, event: &Event) -> Result<Self::Confirm, String> {
            let mut s = self.broker.state.lock().unwrap();
            if s.down.contains(&self.url) {
                return Err("connection reset".into());
            }
            if let Some(n) = s.break_after.as_mut() {
                if *n == 0 {
                    s.break_after = None;
                    return Err("connection reset".into());
                }
                *n -= 1;
            }
            s.published.push((self.url.clone(), routing_key.to_string(), event.event_type.clone()));
            let acked = s.nack_type.as_deref() != Some(event.event_type.as_str());
            Ok(std::future::ready(Ok(acked)))
        }

        async fn close(self) {}
    }

    struct Harness {
        broker: Arc<FakeBroker>,
        queue: EventQueue,
        counters: Arc<Counters>,
        status: Arc<Mutex<AmqpStatus>>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(urls: &[&str], confirms: bool, down: &[&str]) -> Harness {
        let broker = Arc::new(FakeBroker::default());
        broker.state.lock().unwrap().down = down.iter().map(|s| s.to_string()).collect();
        let counters = Arc::new(Counters::default());
        let (queue, rx) = EventQueue::new(100, counters.clone());
        let status = Arc::new(Mutex::new(AmqpStatus::default()));
        let shutdown = CancellationToken::new();
        let publisher = Publisher {
            broker: Arc::new(Wrapper(broker.clone())),
            urls: urls.iter().map(|s| s.to_string()).collect(),
            eid: "02:00:00:00:00:01".into(),
            confirms,
            counters: counters.clone(),
            status: status.clone(),
        };
        let task = tokio::spawn(publisher.run(Arc::new(Outbox::new(rx)), shutdown.clone()));
        Harness { broker, queue, counters, status, shutdown, task }
    }

    fn push(h: &Harness, types: &[&str]) {
        for t in types {
            assert!(h.queue.push(Event::new("conf", t, "{}").unwrap()));
        }
    }

    fn published(h: &Harness) -> Vec<String> {
        h.broker.state.lock().unwrap().published.iter().map(|(_, _, t)| t.clone()).collect()
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_in_order_with_the_contract_routing_key() {
        let h = start(&["amqp://a"], false, &[]);
        push(&h, &["1", "2", "3"]);
        settle().await;
        assert_eq!(published(&h), ["1", "2", "3"]);
        assert_eq!(h.broker.state.lock().unwrap().published[0].1, "stasis.app.conf.02:00:00:00:00:01");
        assert_eq!(Counters::get(&h.counters.published), 3);
        assert_eq!(h.status.lock().unwrap().state, "connected");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_queues_events_and_flushes_them_in_order_on_return() {
        let h = start(&["amqp://a"], false, &["amqp://a"]);
        push(&h, &["1", "2", "3"]);
        settle().await;
        assert!(published(&h).is_empty());
        assert_eq!(h.status.lock().unwrap().state, "unreachable");
        assert_eq!(h.queue.depth(), 3, "everything waits in the queue while no broker answers");
        h.broker.state.lock().unwrap().down.clear();
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(published(&h), ["1", "2", "3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn fails_over_to_the_next_broker_in_order() {
        let h = start(&["amqp://u:secret@a", "amqp://b"], false, &["amqp://u:secret@a"]);
        push(&h, &["1"]);
        settle().await;
        assert_eq!(h.broker.state.lock().unwrap().published[0].0, "amqp://b");
        assert_eq!(h.status.lock().unwrap().broker, "amqp://b");
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_connection_resends_what_was_not_sent_without_reordering() {
        let h = start(&["amqp://a"], true, &[]);
        h.broker.state.lock().unwrap().break_after = Some(2);
        push(&h, &["1", "2", "3", "4"]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        // With confirms, nothing of the failed round counts as sent: it is all sent again.
        assert_eq!(published(&h), ["1", "2", "1", "2", "3", "4"]);
        assert_eq!(Counters::get(&h.counters.confirmed), 4);
        assert_eq!(Counters::get(&h.counters.reconnects), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn nacks_are_counted() {
        let h = start(&["amqp://a"], true, &[]);
        h.broker.state.lock().unwrap().nack_type = Some("2".into());
        push(&h, &["1", "2", "3"]);
        settle().await;
        assert_eq!((Counters::get(&h.counters.confirmed), Counters::get(&h.counters.nacked)), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_flushes_what_is_queued() {
        let h = start(&["amqp://a"], false, &[]);
        settle().await;
        push(&h, &["1", "2"]);
        h.shutdown.cancel();
        let Harness { broker, task, .. } = h;
        task.await.unwrap();
        let types: Vec<String> = broker.state.lock().unwrap().published.iter().map(|(_, _, t)| t.clone()).collect();
        assert_eq!(types, ["1", "2"]);
    }
}

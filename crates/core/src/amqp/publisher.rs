//! The publisher task: takes events from the queue in order and publishes them, reconnecting
//! (brokers tried in order, backoff with jitter) whenever the connection fails. While no broker
//! is reachable the queue fills up to its capacity; what it holds is flushed, in order, once a
//! broker is back. Up to [`WINDOW`] messages are in flight at once, as a sliding window, so the
//! connection never idles between batches.
//!
//! Delivery is at least once: an event leaves the publisher's hands only when it was written
//! out (and, with confirms on, confirmed); after a broken connection, what was in flight is
//! sent again.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::event::{Counters, Event};
use crate::backoff::Backoff;
use crate::config::mask_password;
use crate::state_log::{Severity, StateLog};

/// Messages in flight at once.
const WINDOW: usize = 1024;
/// While events flow, the publisher looks for new ones this often instead of asking to be
/// woken: a wake-up is a system call that the sender, an Asterisk thread, would pay per event.
const POLL_EVERY: Duration = Duration::from_millis(1);
/// After this long without an event the publisher waits to be woken (an idle module costs
/// nothing; the first event of the next burst pays one wake-up).
const QUIET_AFTER: Duration = Duration::from_millis(200);
/// At unload, how long the publisher may keep flushing what is queued.
const FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(2);

/// The next event of the queue (`None` once every sender is gone): polled every POLL_EVERY,
/// then, after QUIET_AFTER without one, awaited.
async fn next_event(rx: &mut mpsc::Receiver<Event>) -> Option<Event> {
    let quiet_since = tokio::time::Instant::now();
    loop {
        match rx.try_recv() {
            Ok(event) => return Some(event),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) if quiet_since.elapsed() >= QUIET_AFTER => return rx.recv().await,
            Err(mpsc::error::TryRecvError::Empty) => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}

/// A way to reach RabbitMQ; [`super::lapin_broker::LapinBroker`] is the real one.
pub trait Broker: Send + Sync + 'static {
    type Link: Link;
    /// Connects to one broker and declares the exchange.
    fn connect(&self, url: &str) -> impl Future<Output = Result<Self::Link, String>> + Send;
}

/// One open connection.
pub trait Link: Send + Sync + 'static {
    /// Sends one message and resolves once it is written out and, with confirms on, confirmed:
    /// to whether the broker acknowledged it. Several may be in flight at once; they go out in
    /// the order they are first polled.
    fn publish(&self, routing_key: String, event: Arc<Event>) -> impl Future<Output = Result<bool, String>> + Send + '_;
    /// Closes the connection cleanly (at shutdown).
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// The queue's receiving end and the events taken from it but not yet published. Shared so
/// that a publisher restarted by a reload carries on where the previous one stopped.
pub struct Outbox {
    rx: tokio::sync::Mutex<(mpsc::Receiver<Event>, VecDeque<Arc<Event>>)>,
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
    /// The broker in use, or while none answers the ones being tried (passwords masked).
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

type InFlight<'a> = FuturesOrdered<std::pin::Pin<Box<dyn Future<Output = Result<bool, String>> + Send + 'a>>>;

impl<B: Broker> Publisher<B> {
    pub async fn run(self, outbox: Arc<Outbox>, shutdown: CancellationToken) {
        let mut guard = outbox.rx.lock().await;
        let (rx, pending) = &mut *guard;
        let mut log = StateLog::new("amqp");
        // Capped low: events wait in memory meanwhile, so a broker that is back must be found fast.
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut first = true;
        loop {
            // A broker that drops packets can take CONNECT_TIMEOUT to fail: stay stoppable.
            let connected = tokio::select! {
                _ = shutdown.cancelled() => break,
                link = self.connect(&mut log) => link,
            };
            let Some(link) = connected else {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                }
            };
            backoff.reset();
            if !first {
                self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            match self.pump(&link, rx, pending, &shutdown).await {
                Ok(()) => {
                    link.close().await;
                    break;
                }
                Err(e) => {
                    let waiting = pending.len() + rx.len();
                    self.failed(&mut log, "disconnected", format!("lost the broker: {e}; {waiting} event(s) wait, reconnecting"));
                }
            }
        }
        let left = pending.len() + rx.len();
        if left > 0 {
            tracing::warn!("amqp: {left} event(s) not published at shutdown");
        }
    }

    /// Moves events from the queue to the connection until shutdown (then flushes) or an error.
    async fn pump(&self, link: &B::Link, rx: &mut mpsc::Receiver<Event>, pending: &mut VecDeque<Arc<Event>>, shutdown: &CancellationToken) -> Result<(), String> {
        let mut inflight: InFlight<'_> = FuturesOrdered::new();
        loop {
            self.fill(link, pending, &mut inflight);
            tokio::select! {
                biased;
                Some(outcome) = inflight.next() => self.completed(pending, outcome?),
                event = next_event(rx), if pending.len() < WINDOW => match event {
                    Some(event) => {
                        pending.push_back(Arc::new(event));
                        // Whatever else waits comes along now, rather than one event per turn
                        // of this loop.
                        while pending.len() < WINDOW {
                            let Ok(event) = rx.try_recv() else { break };
                            pending.push_back(Arc::new(event));
                        }
                    }
                    None => return Ok(()),
                },
                _ = shutdown.cancelled() => return self.flush(link, rx, pending, inflight).await,
            }
        }
    }

    /// Puts the events of `pending` that are not in flight yet on the wire, up to the window.
    fn fill<'a>(&self, link: &'a B::Link, pending: &VecDeque<Arc<Event>>, inflight: &mut InFlight<'a>) {
        while inflight.len() < pending.len().min(WINDOW) {
            let event = pending[inflight.len()].clone();
            inflight.push_back(Box::pin(link.publish(event.routing_key(&self.eid), event)));
        }
    }

    /// The oldest event in flight is done.
    fn completed(&self, pending: &mut VecDeque<Arc<Event>>, acked: bool) {
        let event = pending.pop_front();
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        if !self.confirms {
            return;
        }
        if acked {
            self.counters.confirmed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.nacked.fetch_add(1, Ordering::Relaxed);
            let what = event.map(|e| format!("{} event of '{}'", e.event_type(), e.app)).unwrap_or_default();
            tracing::warn!("amqp: the broker refused (nack) a {what}");
        }
    }

    /// At shutdown: sends what is queued, for at most FLUSH_AT_SHUTDOWN.
    async fn flush<'a>(&self, link: &'a B::Link, rx: &mut mpsc::Receiver<Event>, pending: &mut VecDeque<Arc<Event>>, mut inflight: InFlight<'a>) -> Result<(), String> {
        while let Ok(event) = rx.try_recv() {
            pending.push_back(Arc::new(event));
        }
        let drain = async {
            loop {
                self.fill(link, pending, &mut inflight);
                match inflight.next().await {
                    Some(outcome) => self.completed(pending, outcome?),
                    None => return Ok(()),
                }
            }
        };
        tokio::time::timeout(FLUSH_AT_SHUTDOWN, drain).await.unwrap_or_else(|_| {
            tracing::warn!("amqp: flushing at shutdown took longer than {FLUSH_AT_SHUTDOWN:?}");
            Ok(())
        })
    }

    /// Tries every broker in order; logs only when the state changes.
    async fn connect(&self, log: &mut StateLog) -> Option<B::Link> {
        first_reachable(&self.urls, log, &self.status, "events are queued", |url| self.broker.connect(url)).await
    }

    fn failed(&self, log: &mut StateLog, state: &str, detail: String) {
        record_failure(log, &self.status, state, detail);
    }
}

/// Connects to the first broker of `urls` that answers, in order; logs only when the state
/// changes and keeps `status` current. `meanwhile` says what happens while none answers.
pub async fn first_reachable<'a, L, F, Fut>(urls: &'a [String], log: &mut StateLog, status: &Mutex<AmqpStatus>, meanwhile: &str, mut connect: F) -> Option<L>
where
    F: FnMut(&'a str) -> Fut,
    Fut: Future<Output = Result<L, String>>,
{
    let mut errors = Vec::new();
    for url in urls {
        match connect(url).await {
            Ok(link) => {
                let masked = mask_password(url);
                log.enter("connected", Severity::Info, &format!("connected to {masked}"));
                let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                s.state = "connected".into();
                s.broker = masked;
                return Some(link);
            }
            Err(e) => errors.push(format!("{}: {e}", mask_password(url))),
        }
    }
    record_failure(log, status, "unreachable", format!("no broker reachable ({}); {meanwhile}, retrying", errors.join("; ")));
    // Until one answers, "the broker" an operator wants to see is the list being tried.
    status.lock().unwrap_or_else(|e| e.into_inner()).broker = urls.iter().map(|u| mask_password(u)).collect::<Vec<_>>().join(", ");
    None
}

/// Records a failed or lost connection: one log line per state change, the last error kept.
pub fn record_failure(log: &mut StateLog, status: &Mutex<AmqpStatus>, state: &str, detail: String) {
    log.enter(state, Severity::Warning, &detail);
    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
    s.state = state.to_string();
    s.last_error = Some(detail);
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
        /// Once a connection broke, everything sent on it fails.
        broken: std::sync::atomic::AtomicBool,
    }

    struct Wrapper(Arc<FakeBroker>);

    impl Broker for Wrapper {
        type Link = FakeLink;
        async fn connect(&self, url: &str) -> Result<FakeLink, String> {
            if self.0.state.lock().unwrap().down.iter().any(|u| u == url) {
                return Err("connection refused".into());
            }
            Ok(FakeLink { url: url.into(), broker: self.0.clone(), broken: Default::default() })
        }
    }

    impl Link for FakeLink {
        async fn publish(&self, routing_key: String, event: Arc<Event>) -> Result<bool, String> {
            let mut s = self.broker.state.lock().unwrap();
            if s.down.contains(&self.url) {
                return Err("connection reset".into());
            }
            match s.break_after {
                Some(0) => {
                    s.break_after = None;
                    self.broken.store(true, Ordering::Relaxed);
                }
                Some(n) => s.break_after = Some(n - 1),
                None => {}
            }
            if self.broken.load(Ordering::Relaxed) {
                return Err("connection reset".into());
            }
            s.published.push((self.url.clone(), routing_key, event.event_type().to_string()));
            Ok(s.nack_type.as_deref() != Some(event.event_type()))
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
            assert!(h.queue.push(crate::amqp::event::tests::event("conf", t)));
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
        assert_eq!(h.status.lock().unwrap().broker, "amqp://a", "the broker being tried is shown");
        assert_eq!(h.queue.depth(), 3, "everything waits in the queue while no broker answers");
        h.broker.state.lock().unwrap().down.clear();
        tokio::time::sleep(Duration::from_secs(6)).await;
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
        // What was confirmed before the break is not sent again; the rest is, in order.
        assert_eq!(published(&h), ["1", "2", "3", "4"]);
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

//! The state subsystem of a loaded module: device state and mailbox (MWI) state shared across
//! the pool.
//!
//! - The subscriptions (on Stasis threads) hear of every state this node itself published,
//!   number it in [`LocalStates`] / [`LocalMailboxes`] and queue its message without waiting:
//!   a full queue drops it and counts. At start, the states Asterisk already held are recorded
//!   too.
//! - The bus task (core `amqp::bus`) consumes this node's queue (bound to `device.#` and
//!   `sync.#`, and `mwi.#` with `[state] mwi`) and publishes what was queued.
//! - The applier thread owns the [`StateBook`] (with the MWI book): it decodes every message
//!   and hands other nodes' states to Asterisk under their EIDs (Asterisk calls, hence a thread of its own and
//!   not a tokio worker). After every (re)connect it re-announces this node's states and asks
//!   the pool for theirs (a SYNC); it answers the SYNCs of others; it takes back the states of
//!   a node that left the pool (the rule of registrations: missing from Consul, or its check
//!   critical, for [`NODE_LOSS_GRACE`]) and asks for a SYNC when that node is back. When it
//!   stops, it takes back everything learned from others.
//!
//! Stopping (unload, or a reload that restarts the subsystem) runs while Asterisk holds its
//! module list lock, so every step is bounded: messages still queued are dropped, and taking
//! states back stops after [`CLEAR_TIME`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use res_scale_core::amqp::bus::{Bus, BusSettings, Destination, Inbound, Outgoing};
use res_scale_core::amqp::publisher::AmqpStatus;
use res_scale_core::amqp::signing::PoolKeys;
use res_scale_core::config;
use res_scale_core::consul::membership::{watch_members, Members, NodeWatch, NODE_LOSS_GRACE};
use res_scale_core::consul::nodes::PoolView;
use res_scale_core::consul::registration::NodeIdentity;
use res_scale_core::state::book::{Counters, Handled, StateBook};
use res_scale_core::state::devices::DevicePatterns;
use res_scale_core::state::local::LocalStates;
use res_scale_core::state::message::{self, routing_key, MAX_MESSAGE_BYTES};
use res_scale_core::state::mwi::book::{MwiBook, TakenBack};
use res_scale_core::state::mwi::local::LocalMailboxes;
use res_scale_core::state::mwi::message as mwi_message;
use tokio::sync::mpsc;

use crate::ast::devstate::{self, AsteriskStates, StateSink};
use crate::ast::mwi::{self, MwiSink};
use crate::tasks::{send, Applying, Input, Tasks, CLEAR_TIME, INBOX, OUTBOX, STOP_TIMEOUT, TICK};

/// SYNC answers and re-announcements are cut into batches this large (receivers take 256 KiB).
const BATCH_BYTES: usize = MAX_MESSAGE_BYTES * 3 / 4;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct States {
    pub status: Arc<Mutex<AmqpStatus>>,
    pub counters: Arc<Counters>,
    pub reconnects: Arc<AtomicU64>,
    pub book: Arc<Mutex<StateBook>>,
    pub local: Arc<Mutex<LocalStates>>,
    pub exchange: String,
    pub devices: DevicePatterns,
    /// None with `[state] mwi = no`.
    pub mwi: Option<Arc<MwiParts>>,
    inbox: mpsc::Sender<Input>,
    /// Set when stopping begins: the applier drops what is still queued.
    stopping: Arc<AtomicBool>,
    applier: Option<Applying>,
    tasks: Tasks,
}

/// Where the subscription delivers this node's changes.
struct LocalSink {
    local: Arc<Mutex<LocalStates>>,
    outbox: mpsc::Sender<Outgoing>,
    counters: Arc<Counters>,
}

impl StateSink for LocalSink {
    fn changed(&self, device: &str, state: &str, cachable: bool) {
        let Some(change) = lock(&self.local).changed(device, state, cachable) else { return };
        let message = Outgoing { to: Destination::Exchange { routing_key: routing_key(&change.device) }, body: message::encode(&change), reply_to: None };
        send(&self.outbox, message, &self.counters.published, &self.counters.publish_dropped);
    }

    /// Told to the pool by the re-announcement after the next connect.
    fn held(&self, device: &str, state: &str, cachable: bool) {
        lock(&self.local).adopt(device, state, cachable);
    }
}

/// The mailbox half of the subsystem (its book is inside the [`StateBook`]).
pub struct MwiParts {
    pub counters: Arc<Counters>,
    pub local: Arc<Mutex<LocalMailboxes>>,
    pub mailboxes: DevicePatterns,
}

/// Where the MWI subscription delivers this node's changes.
struct MailboxSink {
    mwi: Arc<MwiParts>,
    outbox: mpsc::Sender<Outgoing>,
}

impl MwiSink for MailboxSink {
    fn changed(&self, mailbox: &str, new: i32, old: i32, deleted: bool) {
        let Some(change) = lock(&self.mwi.local).changed(mailbox, new, old, deleted) else { return };
        let message = Outgoing { to: Destination::Exchange { routing_key: mwi_message::routing_key(&change.mailbox) }, body: mwi_message::encode(&change), reply_to: None };
        send(&self.outbox, message, &self.mwi.counters.published, &self.mwi.counters.publish_dropped);
    }

    /// Told to the pool by the re-announcement after the next connect.
    fn held(&self, mailbox: &str, new: i32, old: i32) {
        lock(&self.mwi.local).adopt(mailbox, new, old);
    }
}

impl States {
    pub fn start(
        runtime: &tokio::runtime::Handle,
        amqp: &config::Amqp,
        settings: &config::State,
        keys: Option<PoolKeys>,
        node: &NodeIdentity,
        pool: Option<Arc<Mutex<PoolView>>>,
    ) -> Result<States, String> {
        let status = Arc::new(Mutex::new(AmqpStatus { state: "connecting".into(), ..Default::default() }));
        let counters = Arc::new(Counters::default());
        let reconnects = Arc::new(AtomicU64::new(0));
        // Microseconds since the epoch: larger than any seq this node used before a restart.
        let first_seq = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1);
        let mwi = settings.mwi.then(|| {
            Arc::new(MwiParts {
                counters: Arc::new(Counters::default()),
                local: Arc::new(Mutex::new(LocalMailboxes::new(&node.eid, settings.mailboxes.clone(), first_seq))),
                mailboxes: settings.mailboxes.clone(),
            })
        });
        let mwi_book = mwi.as_ref().map(|m| MwiBook::new(&node.eid, settings.mailboxes.clone(), m.counters.clone()));
        let book = Arc::new(Mutex::new(StateBook::new(&node.eid, settings.devices.clone(), mwi_book)));
        let local = Arc::new(Mutex::new(LocalStates::new(&node.eid, settings.devices.clone(), first_seq)));
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        let (inbox, inbox_rx) = mpsc::channel(INBOX);
        let stopping = Arc::new(AtomicBool::new(false));

        let applier = Applier {
            book: book.clone(),
            local: local.clone(),
            mwi: mwi.clone(),
            stopping: stopping.clone(),
            counters: counters.clone(),
            outbox: outbox.clone(),
            own_eid: node.eid.to_ascii_lowercase(),
            nodes: NodeWatch::new(NODE_LOSS_GRACE),
            queue: None,
        };
        let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("res_scale-state".into())
            .spawn(move || {
                let _ended = ended_tx;
                applier.run(inbox_rx);
            })
            .map_err(|e| format!("cannot start the state thread: {e}"))?;
        let applying = Applying { thread, ended };
        let subscribed = devstate::subscribe(Arc::new(LocalSink { local: local.clone(), outbox: outbox.clone(), counters: counters.clone() }))
            .and_then(|()| mwi.as_ref().map_or(Ok(()), |mwi| mwi::subscribe(Arc::new(MailboxSink { mwi: mwi.clone(), outbox }))));
        if let Err(e) = subscribed {
            devstate::unsubscribe();
            let _ = inbox.try_send(Input::Stop);
            applying.join(STOP_TIMEOUT + CLEAR_TIME, "state");
            return Err(e);
        }
        // After subscribing: a state that changes meanwhile is recorded as a change, and the
        // report does not overwrite it.
        devstate::report_local();
        if mwi.is_some() {
            mwi::report_local();
        }
        let mut bindings: Vec<String> = message::BINDINGS.iter().map(|b| b.to_string()).collect();
        if mwi.is_some() {
            bindings.push(mwi_message::BINDING.into());
        }

        let tasks = Tasks::new();
        let bus = Bus { settings: BusSettings::for_node("state", "state changes wait", amqp, &settings.exchange, bindings, node, keys), status: status.clone(), reconnects: reconnects.clone() };
        tasks.spawn(runtime, bus.run(inbox.clone(), outbox_rx, tasks.shutdown()));
        tasks.spawn(runtime, watch_members(inbox.clone(), pool, node.eid.clone(), TICK, tasks.shutdown()));
        Ok(States { status, counters, reconnects, book, local, exchange: settings.exchange.clone(), devices: settings.devices.clone(), mwi, inbox, stopping, applier: Some(applying), tasks })
    }

    /// Stops hearing and consuming, then takes back the states applied from others: without
    /// the module nothing would keep them right.
    pub fn stop(mut self, runtime: &tokio::runtime::Runtime) {
        // First, so that taking states back (which has Asterisk publish local states again)
        // sends nothing to the pool.
        devstate::unsubscribe();
        mwi::unsubscribe();
        self.stopping.store(true, Ordering::Relaxed);
        self.tasks.stop(runtime, STOP_TIMEOUT, "state");
        // Wakes an idle applier; a busy one sees `stopping` after the message at hand.
        let _ = self.inbox.try_send(Input::Stop);
        if let Some(applier) = self.applier.take() {
            applier.join(STOP_TIMEOUT + CLEAR_TIME, "state");
        }
    }
}

struct Applier {
    book: Arc<Mutex<StateBook>>,
    local: Arc<Mutex<LocalStates>>,
    mwi: Option<Arc<MwiParts>>,
    stopping: Arc<AtomicBool>,
    counters: Arc<Counters>,
    outbox: mpsc::Sender<Outgoing>,
    own_eid: String,
    nodes: NodeWatch,
    /// Our queue on the current connection (where SYNC answers come).
    queue: Option<String>,
}

impl Applier {
    fn send(&self, message: Outgoing) {
        send(&self.outbox, message, &self.counters.published, &self.counters.publish_dropped);
    }

    fn run(mut self, mut inbox: mpsc::Receiver<Input>) {
        let mut asterisk = AsteriskStates;
        while let Some(input) = inbox.blocking_recv() {
            if self.stopping.load(Ordering::Relaxed) {
                break;
            }
            match input {
                Input::Bus(Inbound::Delivery { body, reply_to, signature }) => {
                    let mut book = lock(&self.book);
                    if !book.admits(signature, &self.counters) {
                        continue;
                    }
                    let handled = book.handle(&body, &mut asterisk, &self.counters);
                    drop(book);
                    if let (Handled::SyncRequest { origin }, Some(queue)) = (handled, reply_to) {
                        self.answer_sync(&origin, queue);
                    }
                }
                Input::Bus(Inbound::Connected { queue }) => {
                    self.connected(&queue);
                    self.queue = Some(queue);
                }
                Input::Tick(Members(Some(members))) => self.watch_nodes(&members, &mut asterisk),
                Input::Tick(Members(None)) => {}
                Input::Stop => break,
            }
        }
        // One deadline for both kinds: stopping waits for this thread at most that long.
        let deadline = Instant::now() + CLEAR_TIME;
        let mut book = lock(&self.book);
        let (cleared, left) = book.clear(&mut asterisk, deadline);
        if cleared > 0 {
            tracing::info!("state: took back the {cleared} device state(s) learned from other nodes");
        }
        if left > 0 {
            tracing::warn!("state: {left} device state(s) learned from other nodes left in place after {CLEAR_TIME:?} of taking them back");
        }
        if let Some(mwi) = book.mwi_mut() {
            let done = mwi.clear(&mut asterisk, deadline);
            if done.taken + done.kept > 0 {
                tracing::info!("state: {}", taken_back_text(&done, "learned from other nodes"));
            }
            if done.left > 0 {
                tracing::warn!("state: {} mailbox state(s) learned from other nodes left in place after {CLEAR_TIME:?} of taking them back", done.left);
            }
        }
    }

    /// This node's own states: devices, and mailboxes if shared.
    fn own_batches(&self) -> (usize, Vec<Vec<u8>>) {
        let states = lock(&self.local).all();
        let mailboxes = self.mwi.as_ref().map(|m| lock(&m.local).all()).unwrap_or_default();
        (states.len() + mailboxes.len(), message::encode_batches(&self.own_eid, &states, &mailboxes, BATCH_BYTES))
    }

    /// A new connection: what this node said while the broker was away may be lost, and what
    /// the others said surely is. Re-announce ours, ask for theirs.
    fn connected(&self, queue: &str) {
        for body in self.own_batches().1 {
            self.send(Outgoing { to: Destination::Exchange { routing_key: message::BATCH_KEY.into() }, body, reply_to: None });
        }
        self.request_sync(queue);
    }

    fn request_sync(&self, queue: &str) {
        let body = message::encode_sync_request(&self.own_eid);
        self.send(Outgoing { to: Destination::Exchange { routing_key: message::SYNC_REQUEST_KEY.into() }, body, reply_to: Some(queue.to_string()) });
        Counters::count(&self.counters.sync_requested);
    }

    /// This node's own states (only those: every node answers for itself), straight to the
    /// asker's queue.
    fn answer_sync(&self, origin: &str, queue: String) {
        let (count, batches) = self.own_batches();
        tracing::debug!("state: answering the SYNC request of {origin} with {count} state(s) in {} batch(es)", batches.len());
        for body in batches {
            self.send(Outgoing { to: Destination::Queue(queue.clone()), body, reply_to: None });
        }
        Counters::count(&self.counters.sync_answered);
    }

    /// Takes back the states of nodes that left the pool; asks for a SYNC when one returns
    /// (a stalled node does not know that we forgot what it said).
    fn watch_nodes(&mut self, members: &BTreeSet<String>, asterisk: &mut AsteriskStates) {
        let changes = self.nodes.observe(members, Instant::now());
        for eid in changes.gone {
            let origin = eid.to_ascii_lowercase();
            let mut book = lock(&self.book);
            let cleared = book.forget_origin(&origin, asterisk, &self.counters);
            tracing::info!("state: node {eid} left the pool; took back the {cleared} device state(s) it had shared");
            if let Some(done) = book.mwi_mut().map(|mwi| mwi.forget_origin(&origin, asterisk)) {
                tracing::info!("state: node {eid} left the pool; {}", taken_back_text(&done, "it had shared"));
            }
        }
        for eid in changes.back {
            if let Some(queue) = &self.queue {
                tracing::info!("state: node {eid} is back in the pool; asking for a SYNC");
                self.request_sync(queue);
            }
        }
    }
}

/// "took back 2 mailbox state(s) <whose> (1 kept: ...)", for the log.
fn taken_back_text(done: &TakenBack, whose: &str) -> String {
    format!("took back {} mailbox state(s) {whose} ({} kept: a later state of this node or another had replaced them)", done.taken, done.kept)
}

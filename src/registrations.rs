//! The registrations subsystem of a loaded module: SIP registrations shared across the pool.
//!
//! - The bus task (core `amqp::bus`) consumes this node's queue and publishes.
//! - The applier thread owns the [`Book`]: it decodes every message and applies it to PJSIP
//!   (blocking Asterisk calls, hence a thread of its own and not a tokio worker), answers SYNC
//!   requests, re-announces this node's phones and asks for a SYNC after every connect, and
//!   withdraws the contacts of nodes that left the pool.
//! - The contact observer (on sorcery's thread) records the contacts phones register here in
//!   the [`LocalBook`] and queues their ANNOUNCE/WITHDRAW without waiting. Changes of contacts
//!   without endpoint it leaves for the applier, which tells whether the registrar refreshed
//!   one it applied (a phone registered the same URI here: the contact becomes this node's).
//!
//! Stopping (unload, or a reload that restarts registrations) runs while Asterisk holds its
//! module list lock, so every step of it is bounded: messages still queued are dropped (they
//! were acked, and what they would create is removed at once), and removing the contacts
//! learned from others stops after [`CLEAR_TIME`] (the rest expire by themselves).

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
use res_scale_core::registrations::book::{Book, Counters, Entry, Handled, Key, LocalBook, LocalChange};
use res_scale_core::registrations::message::{self, routing_key, Contact, MAX_MESSAGE_BYTES};
use res_scale_core::registrations::show::Listed;
use tokio::sync::mpsc;

use crate::ast::contact_store::{self, Installed};
use crate::ast::contacts::{self, AsteriskLocation, ContactSink};
use crate::tasks::{send, Applying, Input, Tasks, CLEAR_TIME, INBOX, OUTBOX, STOP_TIMEOUT, TICK};

/// SYNC replies and re-announcements are cut into batches this large (receivers take 256 KiB).
const BATCH_BYTES: usize = MAX_MESSAGE_BYTES * 3 / 4;

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Registrations {
    pub status: Arc<Mutex<AmqpStatus>>,
    pub counters: Arc<Counters>,
    pub reconnects: Arc<AtomicU64>,
    pub book: Arc<Mutex<Book>>,
    pub local: Arc<Mutex<LocalBook>>,
    pub exchange: String,
    inbox: mpsc::Sender<Input>,
    /// Set when stopping begins: the applier drops what is still queued.
    stopping: Arc<AtomicBool>,
    applier: Option<Applying>,
    tasks: Tasks,
    /// Whether PJSIP's contacts are in the indexed store (to be moved back at stop).
    pub indexed: bool,
}

/// Contacts without endpoint whose change the observer reported, latest report per contact:
/// the applier checks them against what it applied.
type Refreshed = Arc<Mutex<HashMap<Key, Contact>>>;

/// Where the contact observer delivers changes.
struct LocalSink {
    local: Arc<Mutex<LocalBook>>,
    refreshed: Refreshed,
    outbox: mpsc::Sender<Outgoing>,
    counters: Arc<Counters>,
    publish: bool,
}

impl ContactSink for LocalSink {
    fn changed(&self, change: LocalChange, aor: &str, contact: Contact, registered_here: bool) {
        let key = (aor.to_string(), contact.uri.clone());
        let mut local = lock(&self.local);
        // One that became this node's (see Book::refreshed) reports without endpoint too.
        if !registered_here && !local.contains(&key) {
            drop(local);
            if change == LocalChange::Registered {
                lock(&self.refreshed).insert(key, contact);
            }
            return;
        }
        let Some(update) = local.changed(change, aor, contact) else { return };
        drop(local);
        if self.publish {
            let message = Outgoing { to: Destination::Exchange { routing_key: routing_key(aor) }, body: message::encode_update(&update), reply_to: None };
            send(&self.outbox, message, &self.counters.published, &self.counters.publish_dropped);
        }
    }
}

impl Registrations {
    pub fn start(
        runtime: &tokio::runtime::Handle,
        amqp: &config::Amqp,
        settings: &config::Registrations,
        keys: Option<PoolKeys>,
        node: &NodeIdentity,
        pool: Option<Arc<Mutex<PoolView>>>,
    ) -> Result<Registrations, String> {
        let status = Arc::new(Mutex::new(AmqpStatus { state: "connecting".into(), ..Default::default() }));
        let counters = Arc::new(Counters::default());
        let reconnects = Arc::new(AtomicU64::new(0));
        let book = Arc::new(Mutex::new(Book::new(&node.eid).with_unsigned_origins(settings.unsigned_origins.clone())));
        // Microseconds since the epoch: larger than any seq this node used before a restart.
        let first_seq = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1);
        let local = Arc::new(Mutex::new(LocalBook::new(&node.eid, first_seq)));
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        let (inbox, inbox_rx) = mpsc::channel(INBOX);
        let refreshed = Refreshed::default();
        let stopping = Arc::new(AtomicBool::new(false));

        let indexed = settings.indexed_contacts && index_contacts();
        contacts::set_sink(Some(Arc::new(LocalSink { local: local.clone(), refreshed: refreshed.clone(), outbox: outbox.clone(), counters: counters.clone(), publish: settings.publish_local })));
        // From here on, a failed start must take the observer back: the load or reload that
        // fails never calls stop, and the next start would add a second one.
        let undo = || {
            stop_observing();
            if indexed {
                unindex_contacts();
            }
        };
        contacts::observe(true).inspect_err(|_| undo())?;
        // Phones that registered before we were loaded.
        lock(&local).snapshot_begins();
        contacts::report_all();
        lock(&local).snapshot_ends();

        let applier = Applier {
            book: book.clone(),
            local: local.clone(),
            refreshed,
            stopping: stopping.clone(),
            counters: counters.clone(),
            outbox,
            sync_on_connect: settings.sync_on_start,
            publish_local: settings.publish_local,
            withdraw_on_node_loss: settings.withdraw_on_node_loss,
            own_eid: node.eid.clone(),
            nodes: NodeWatch::new(NODE_LOSS_GRACE),
            queue: None,
        };
        let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
        let thread = spawn_applier(move || {
            let _ended = ended_tx;
            applier.run(inbox_rx);
        })
        .map_err(|e| {
            undo();
            format!("cannot start the registrations thread: {e}")
        })?;

        let tasks = Tasks::new();
        let bus = Bus {
            settings: BusSettings::for_node("registrations", "registrations wait", amqp, &settings.exchange, vec!["registration.#".into()], node, keys),
            status: status.clone(),
            reconnects: reconnects.clone(),
        };
        tasks.spawn(runtime, bus.run(inbox.clone(), outbox_rx, tasks.shutdown()));
        tasks.spawn(runtime, watch_members(inbox.clone(), pool, node.eid.clone(), TICK, tasks.shutdown()));
        Ok(Registrations { status, counters, reconnects, book, local, exchange: settings.exchange.clone(), inbox, stopping, applier: Some(Applying { thread, ended }), tasks, indexed })
    }

    /// Stops observing and consuming, then removes the contacts applied from others: without
    /// the module nothing would refresh or withdraw them.
    pub fn stop(mut self, runtime: &tokio::runtime::Runtime) {
        // First, so that the applier gives up the backlog while the rest stops.
        self.stopping.store(true, Ordering::Relaxed);
        stop_observing();
        self.tasks.stop(runtime, STOP_TIMEOUT, "registrations");
        // Wakes an idle applier; a busy one (inbox full) sees `stopping` after the message at
        // hand.
        let _ = self.inbox.try_send(Input::Stop);
        if let Some(applier) = self.applier.take() {
            applier.join(STOP_TIMEOUT + CLEAR_TIME, "registrations");
        }
        // After the applied contacts are gone: what is left, this node's phones, goes back.
        if self.indexed {
            unindex_contacts();
        }
    }
}

/// Puts PJSIP's contacts in the indexed store; whether they are there.
fn index_contacts() -> bool {
    match contact_store::install() {
        Ok(Installed::Indexed) => {
            tracing::info!("registrations: PJSIP contacts are in res_scale's indexed store ({} now)", contact_store::size().unwrap_or(0));
            true
        }
        Ok(Installed::LeftAlone) => {
            tracing::warn!("registrations: sorcery.conf maps contacts to other than `memory` alone; they stay there (each contact change then costs more the more contacts a node holds)");
            false
        }
        Err(e) => {
            tracing::error!("registrations: {e}");
            false
        }
    }
}

fn unindex_contacts() {
    match contact_store::uninstall() {
        Ok(()) => tracing::info!("registrations: PJSIP contacts are back in sorcery's `memory` store"),
        Err(e) => tracing::error!("registrations: {e}"),
    }
}

/// Removes the contact observer and, once no call of it runs any more, its sink.
fn stop_observing() {
    let _ = contacts::observe(false);
    if !contacts::wait_idle(STOP_TIMEOUT) {
        tracing::warn!("registrations: a contact observer call was still running after {STOP_TIMEOUT:?}");
    }
    contacts::set_sink(None);
}

/// Test builds: the next start fails where it spawns the applier (`scale test fail
/// registrations`), to prove that a failed start leaves nothing behind.
#[cfg(feature = "test-hooks")]
pub static FAIL_NEXT_SPAWN: AtomicBool = AtomicBool::new(false);

fn spawn_applier(run: impl FnOnce() + Send + 'static) -> std::io::Result<std::thread::JoinHandle<()>> {
    #[cfg(feature = "test-hooks")]
    if FAIL_NEXT_SPAWN.swap(false, Ordering::Relaxed) {
        return Err(std::io::Error::other("failure injected by 'scale test fail registrations'"));
    }
    std::thread::Builder::new().name("res_scale-reg".into()).spawn(run)
}

struct Applier {
    book: Arc<Mutex<Book>>,
    local: Arc<Mutex<LocalBook>>,
    refreshed: Refreshed,
    stopping: Arc<AtomicBool>,
    counters: Arc<Counters>,
    outbox: mpsc::Sender<Outgoing>,
    sync_on_connect: bool,
    publish_local: bool,
    withdraw_on_node_loss: bool,
    own_eid: String,
    nodes: NodeWatch,
    /// Our queue on the current connection (where SYNC replies come).
    queue: Option<String>,
}

impl Applier {
    fn send(&self, message: Outgoing) {
        send(&self.outbox, message, &self.counters.published, &self.counters.publish_dropped);
    }

    fn run(mut self, mut inbox: mpsc::Receiver<Input>) {
        let mut location = AsteriskLocation;
        while let Some(input) = inbox.blocking_recv() {
            if self.stopping.load(Ordering::Relaxed) {
                break;
            }
            self.check_refreshed(&mut location);
            match input {
                Input::Bus(Inbound::Delivery { body, reply_to, signature }) => {
                    if !lock(&self.book).admits(&body, signature, &self.counters) {
                        continue;
                    }
                    let registered_here = |key: &Key| lock(&self.local).contains(key);
                    let handled = Book::handle_shared(&self.book, &body, &mut location, &registered_here, &self.counters, unix_now());
                    if let (Handled::SyncRequest { origin }, Some(queue)) = (handled, reply_to) {
                        self.answer_sync(&origin, queue);
                    }
                }
                Input::Bus(Inbound::Connected { queue }) => {
                    self.connected(&queue);
                    self.queue = Some(queue);
                }
                Input::Tick(Members(members)) => {
                    let now = unix_now();
                    lock(&self.book).sweep(now);
                    lock(&self.local).sweep(now);
                    if let Some(members) = members {
                        self.watch_nodes(&members, &mut location);
                    }
                }
                Input::Stop => break,
            }
        }
        let (removed, left) = lock(&self.book).clear(&mut location, Instant::now() + CLEAR_TIME);
        if removed > 0 {
            tracing::info!("registrations: removed the {removed} contact(s) learned from other nodes");
        }
        if left > 0 {
            tracing::warn!("registrations: {left} contact(s) learned from other nodes left in place after {CLEAR_TIME:?} of removing; they go when they expire");
        }
    }

    /// Gives up the applied contacts that this node's registrar refreshed meanwhile.
    fn check_refreshed(&self, location: &mut AsteriskLocation) {
        let seen = std::mem::take(&mut *lock(&self.refreshed));
        if seen.is_empty() {
            return;
        }
        let mut book = lock(&self.book);
        for (key, contact) in seen {
            book.refreshed(&key, &contact, location, &self.counters);
        }
    }

    /// A new connection: tell the pool about our phones again (what was said while the broker
    /// was away may be lost) and ask it for what we missed.
    fn connected(&self, queue: &str) {
        if self.publish_local {
            let known = lock(&self.local).known(unix_now());
            for body in message::encode_batches(&self.own_eid, &known, BATCH_BYTES) {
                self.send(Outgoing { to: Destination::Exchange { routing_key: routing_key("batch") }, body, reply_to: None });
            }
        }
        if self.sync_on_connect {
            self.request_sync(queue);
        }
    }

    fn request_sync(&self, queue: &str) {
        let body = message::encode_sync_request(&self.own_eid);
        self.send(Outgoing { to: Destination::Exchange { routing_key: routing_key("sync") }, body, reply_to: Some(queue.to_string()) });
    }

    /// Everything we know, origins kept, straight to the asker's queue.
    fn answer_sync(&self, origin: &str, queue: String) {
        let now = unix_now();
        let mut known = lock(&self.book).known(now);
        if self.publish_local {
            known.extend(lock(&self.local).known(now));
        }
        let batches = message::encode_batches(&self.own_eid, &known, BATCH_BYTES);
        tracing::debug!("registrations: answering the SYNC request of {origin} with {} contact(s) in {} batch(es)", known.len(), batches.len());
        for body in batches {
            self.send(Outgoing { to: Destination::Queue(queue.clone()), body, reply_to: None });
        }
        Counters::count(&self.counters.sync_requests_answered);
    }

    /// Withdraws the contacts of nodes that left the pool; asks for a SYNC when one returns
    /// after that (a stalled node, say: it does not know, so we ask the pool, which includes
    /// it, for what we dropped).
    fn watch_nodes(&mut self, members: &BTreeSet<String>, location: &mut AsteriskLocation) {
        let changes = self.nodes.observe(members, Instant::now());
        for eid in changes.gone {
            if !self.withdraw_on_node_loss {
                tracing::info!("registrations: node {eid} left the pool; keeping the contacts it announced (withdraw_on_node_loss = no)");
                continue;
            }
            let removed = Book::withdraw_origin_shared(&self.book, &eid, location, &self.counters);
            tracing::info!("registrations: node {eid} left the pool; withdrew the {removed} contact(s) it had announced");
        }
        if !self.withdraw_on_node_loss {
            return;
        }
        for eid in changes.back {
            if let Some(queue) = &self.queue {
                tracing::info!("registrations: node {eid} is back in the pool; asking for a SYNC");
                self.request_sync(queue);
            }
        }
    }
}

/// Contacts with their AOR and URI, as the CLI lists them.
pub type Contacts = Vec<(Key, Entry)>;

impl Registrations {
    /// Copies of the contacts registered here and of those applied from others (those `listed`
    /// says), each with how many there are in all: a node holds every phone of the pool, and
    /// a look at one AOR or at the counts must not copy them all under the applier's lock.
    pub fn snapshot(&self, listed: Listed<'_>) -> ((Contacts, usize), (Contacts, usize)) {
        let copy = |all: &BTreeMap<Key, Entry>| {
            let rows = match listed {
                Listed::Counts => Vec::new(),
                Listed::All => all.iter().map(|(k, e)| (k.clone(), e.clone())).collect(),
                Listed::Aor(aor) => all.range((aor.to_string(), String::new())..).take_while(|(k, _)| k.0 == aor).map(|(k, e)| (k.clone(), e.clone())).collect(),
            };
            (rows, all.len())
        };
        let local = copy(lock(&self.local).entries());
        let remote = copy(lock(&self.book).entries());
        (local, remote)
    }
}

//! The state subsystem of a loaded module: device state and mailbox (MWI) state shared across
//! the pool.
//!
//! - The subscriptions (on Stasis threads) hear of every state this node itself published,
//!   number it in [`LocalStates`] / [`LocalMailboxes`] and queue its message without waiting:
//!   a full queue drops it and counts.
//! - The bus task (core `amqp::bus`) consumes this node's queue (bound to `device.#`, and to
//!   `mwi.#` with `[state] mwi`) and publishes what was queued.
//! - The applier thread owns the [`StateBook`] and the [`MwiBook`]: it decodes every message
//!   (by its routing key's first word) and hands other nodes' states to Asterisk under their
//!   EIDs (Asterisk calls, hence a thread of its own and not a tokio worker). When it stops,
//!   it takes back everything learned from others.
//!
//! Stopping (unload, or a reload that restarts the subsystem) runs while Asterisk holds its
//! module list lock, so every step is bounded: messages still queued are dropped, and taking
//! states back stops after [`CLEAR_TIME`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use res_scale_core::amqp::bus::{Bus, BusSettings, Destination, Inbound, Outgoing};
use res_scale_core::amqp::publisher::AmqpStatus;
use res_scale_core::config;
use res_scale_core::consul::registration::NodeIdentity;
use res_scale_core::state::book::{Counters, StateBook};
use res_scale_core::state::devices::DevicePatterns;
use res_scale_core::state::local::LocalStates;
use res_scale_core::state::message::{self, routing_key};
use res_scale_core::state::mwi::book::MwiBook;
use res_scale_core::state::mwi::local::LocalMailboxes;
use res_scale_core::state::mwi::message as mwi_message;
use tokio::sync::mpsc;

use crate::ast::devstate::{self, AsteriskDeviceStates, StateSink};
use crate::ast::mwi::{self, AsteriskMailboxes, MwiSink};
use crate::tasks::{Applying, Tasks};

/// Changes waiting to be published.
const OUTBOX: usize = 10_000;
/// Messages received and not yet applied.
const INBOX: usize = 4_096;
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long stopping spends taking back the states learned from others.
const CLEAR_TIME: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the applier thread receives.
enum Input {
    Bus(Inbound),
    Stop,
}

impl From<Inbound> for Input {
    fn from(inbound: Inbound) -> Input {
        Input::Bus(inbound)
    }
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

/// The mailbox half of the subsystem.
pub struct MwiParts {
    pub counters: Arc<Counters>,
    pub book: Arc<Mutex<MwiBook>>,
    pub local: Arc<Mutex<LocalMailboxes>>,
    pub mailboxes: DevicePatterns,
}

/// Queues a message for the exchange without waiting; a full queue drops it and counts.
fn queue(outbox: &mpsc::Sender<Outgoing>, counters: &Counters, routing_key: String, body: Vec<u8>) {
    match outbox.try_send(Outgoing { to: Destination::Exchange { routing_key }, body, reply_to: None }) {
        Ok(()) => Counters::count(&counters.published),
        Err(_) => Counters::count(&counters.publish_dropped),
    }
}

/// Where the device state subscription delivers this node's changes.
struct LocalSink {
    local: Arc<Mutex<LocalStates>>,
    outbox: mpsc::Sender<Outgoing>,
    counters: Arc<Counters>,
}

impl StateSink for LocalSink {
    fn changed(&self, device: &str, state: &str, cachable: bool) {
        let Some(change) = lock(&self.local).changed(device, state, cachable) else { return };
        queue(&self.outbox, &self.counters, routing_key(&change.device), message::encode(&change));
    }
}

/// Where the MWI subscription delivers this node's changes.
struct MailboxSink {
    mwi: Arc<MwiParts>,
    outbox: mpsc::Sender<Outgoing>,
}

impl MwiSink for MailboxSink {
    fn changed(&self, mailbox: &str, new: i32, old: i32, deleted: bool) {
        let Some(change) = lock(&self.mwi.local).changed(mailbox, new, old, deleted) else { return };
        queue(&self.outbox, &self.mwi.counters, mwi_message::routing_key(&change.mailbox), mwi_message::encode(&change));
    }
}

impl States {
    pub fn start(runtime: &tokio::runtime::Handle, amqp: &config::Amqp, settings: &config::State, node: &NodeIdentity) -> Result<States, String> {
        let status = Arc::new(Mutex::new(AmqpStatus { state: "connecting".into(), ..Default::default() }));
        let counters = Arc::new(Counters::default());
        let reconnects = Arc::new(AtomicU64::new(0));
        let book = Arc::new(Mutex::new(StateBook::new(&node.eid, settings.devices.clone())));
        // Microseconds since the epoch: larger than any seq this node used before a restart.
        let first_seq = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1);
        let local = Arc::new(Mutex::new(LocalStates::new(&node.eid, settings.devices.clone(), first_seq)));
        let mwi = settings.mwi.then(|| {
            Arc::new(MwiParts {
                counters: Arc::new(Counters::default()),
                book: Arc::new(Mutex::new(MwiBook::new(&node.eid, settings.mailboxes.clone()))),
                local: Arc::new(Mutex::new(LocalMailboxes::new(&node.eid, settings.mailboxes.clone(), first_seq))),
                mailboxes: settings.mailboxes.clone(),
            })
        });
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        let (inbox, inbox_rx) = mpsc::channel(INBOX);
        let stopping = Arc::new(AtomicBool::new(false));

        let applier = Applier { book: book.clone(), mwi: mwi.clone(), stopping: stopping.clone(), counters: counters.clone() };
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
        let mut bindings = vec!["device.#".to_string()];
        if mwi.is_some() {
            bindings.push("mwi.#".into());
        }

        let tasks = Tasks::new();
        let bus = Bus {
            settings: BusSettings {
                subsystem: "state",
                meanwhile: "state changes wait",
                urls: amqp.urls.clone(),
                exchange: settings.exchange.clone(),
                bindings,
                connection_name: format!("res_scale {} ({}) state", node.node_id, node.system_name),
                heartbeat: amqp.heartbeat,
                extra_ca: amqp.ca_file.as_deref().and_then(|path| std::fs::read_to_string(path).map_err(|e| tracing::error!("state: cannot read ca_file {path}: {e}")).ok()),
            },
            status: status.clone(),
            reconnects: reconnects.clone(),
        };
        tasks.spawn(runtime, bus.run(inbox.clone(), outbox_rx, tasks.shutdown()));
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
    mwi: Option<Arc<MwiParts>>,
    stopping: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl Applier {
    fn run(self, mut inbox: mpsc::Receiver<Input>) {
        let mut asterisk = AsteriskDeviceStates;
        while let Some(input) = inbox.blocking_recv() {
            if self.stopping.load(Ordering::Relaxed) {
                break;
            }
            match input {
                Input::Bus(Inbound::Delivery { body, routing_key, .. }) => match &self.mwi {
                    Some(mwi) if routing_key.starts_with("mwi.") => lock(&mwi.book).handle(&body, &mut AsteriskMailboxes, &mwi.counters),
                    _ => lock(&self.book).handle(&body, &mut asterisk, &self.counters),
                },
                // States travel only as they change: nothing to catch up on at a (re)connect.
                Input::Bus(Inbound::Connected { .. }) => {}
                Input::Stop => break,
            }
        }
        // One deadline for both kinds: stopping waits for this thread at most that long.
        let deadline = Instant::now() + CLEAR_TIME;
        let (cleared, left) = lock(&self.book).clear(&mut asterisk, deadline);
        if cleared > 0 {
            tracing::info!("state: took back the {cleared} device state(s) learned from other nodes");
        }
        if left > 0 {
            tracing::warn!("state: {left} device state(s) learned from other nodes left in place after {CLEAR_TIME:?} of taking them back");
        }
        if let Some(mwi) = &self.mwi {
            let done = lock(&mwi.book).clear(&mut AsteriskMailboxes, deadline);
            if done.taken + done.kept > 0 {
                tracing::info!("state: took back {} mailbox state(s) learned from other nodes ({} kept: a later state of this node or another had replaced them)", done.taken, done.kept);
            }
            if done.left > 0 {
                tracing::warn!("state: {} mailbox state(s) learned from other nodes left in place after {CLEAR_TIME:?} of taking them back", done.left);
            }
        }
    }
}

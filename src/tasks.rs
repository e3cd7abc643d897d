//! The background tasks of one subsystem (Consul, AMQP): spawned on the module's runtime with a
//! shared shutdown token, and stopped together with a bounded wait; and what the subsystems that
//! apply other nodes' messages on a thread of their own (registrations, device state) share:
//! their bounds, what their thread receives, how they queue for the bus, and the bounded join.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use res_scale_core::amqp::bus::{Inbound, Outgoing};
use res_scale_core::consul::membership::Members;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Messages waiting to be published (this node's own, SYNC answers).
pub const OUTBOX: usize = 10_000;
/// Messages received and not yet applied.
pub const INBOX: usize = 4_096;
/// How often an applier looks at who is in the pool.
pub const TICK: Duration = Duration::from_secs(2);
/// How long stopping waits for tasks and for an applier's message at hand.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long stopping spends taking back what was learned from other nodes.
pub const CLEAR_TIME: Duration = Duration::from_secs(5);

/// What an applier thread receives.
pub enum Input {
    Bus(Inbound),
    /// Every TICK: who is in the pool.
    Tick(Members),
    Stop,
}

impl From<Inbound> for Input {
    fn from(inbound: Inbound) -> Input {
        Input::Bus(inbound)
    }
}

impl From<Members> for Input {
    fn from(members: Members) -> Input {
        Input::Tick(members)
    }
}

/// Queues a message for the bus without waiting; counts it as `published`, or as `dropped` when
/// the queue is full.
pub fn send(outbox: &mpsc::Sender<Outgoing>, message: Outgoing, published: &AtomicU64, dropped: &AtomicU64) {
    let counter = if outbox.try_send(message).is_ok() { published } else { dropped };
    counter.fetch_add(1, Ordering::Relaxed);
}

pub struct Tasks {
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks { shutdown: CancellationToken::new(), tracker: TaskTracker::new() }
    }

    /// The token the tasks watch to know they must stop.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn spawn(&self, runtime: &tokio::runtime::Handle, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn_on(task, runtime);
    }

    /// Signals shutdown and waits up to `within` for every task to finish.
    pub fn stop(self, runtime: &tokio::runtime::Runtime, within: Duration, what: &str) {
        self.shutdown.cancel();
        self.tracker.close();
        // The timer must be created inside the runtime, hence the async block.
        if runtime.block_on(async { tokio::time::timeout(within, self.tracker.wait()).await }).is_err() {
            tracing::warn!("{what}: tasks did not stop within {within:?}");
        }
    }
}

/// A subsystem's applier thread, and the channel that disconnects when it ends.
pub struct Applying {
    pub thread: std::thread::JoinHandle<()>,
    pub ended: std::sync::mpsc::Receiver<()>,
}

impl Applying {
    /// Waits at most `limit` for the thread to end; `what` names the subsystem in the warning.
    pub fn join(self, limit: Duration, what: &str) {
        match self.ended.recv_timeout(limit) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!("{what}: the {what} thread was still busy after {limit:?}; left to finish on its own");
            }
            _ => {
                let _ = self.thread.join();
            }
        }
    }
}

//! The background tasks of one subsystem (Consul, AMQP): spawned on the module's runtime with a
//! shared shutdown token, and stopped together with a bounded wait; and the thread a subsystem
//! applies its messages on (registrations, device state), joined with a bounded wait too.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

//! The background tasks of one subsystem (Consul, AMQP): spawned on the module's runtime with a
//! shared shutdown token, and stopped together with a bounded wait.

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

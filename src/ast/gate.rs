//! Counts callbacks that Asterisk is running in our code. Unregistering a Stasis application or
//! a sorcery observer does not wait for a call already under way, so unload waits on the
//! callback's gate until none runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct Gate {
    in_flight: AtomicUsize,
}

/// Held for the duration of one callback.
pub struct Pass<'a>(&'a Gate);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    pub const fn new() -> Gate {
        Gate { in_flight: AtomicUsize::new(0) }
    }

    pub fn enter(&self) -> Pass<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Pass(self)
    }

    /// Waits until no callback runs; false if some still did after `timeout`.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.in_flight.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

//! Polling with a deadline, for conditions that become true "soon" (a process booting, a
//! service appearing). The deadline bounds a test's run time; it is not a performance claim.

use std::time::{Duration, Instant};

/// Calls `probe` every `every` until it returns `Some`, or panics with `what` after `within`.
pub fn until<T>(what: &str, within: Duration, every: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

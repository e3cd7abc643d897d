//! Polling with a deadline, for conditions that become true "soon" (a process booting, a
//! service appearing). The deadline bounds a test's run time; it is not a performance claim.

use std::time::{Duration, Instant};

/// Calls `probe` every `every` until it returns `Some`, or panics with `what` after `within`.
pub fn until<T>(what: &str, within: Duration, every: Duration, probe: impl FnMut() -> Option<T>) -> T {
    try_until(within, every, probe).unwrap_or_else(|| panic!("timed out after {within:?} waiting for {what}"))
}

/// Calls `probe` every `every` until it returns `Some`; `None` after `within`.
pub fn try_until<T>(within: Duration, every: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

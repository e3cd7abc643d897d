//! The one place where a Rust panic is stopped before it reaches C: unwinding into Asterisk
//! would be undefined behaviour, so every `extern "C"` entry point runs its body through
//! [`guarded`], which logs the panic and returns the caller's failure value instead.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

/// Runs `body`; if it panics, logs `what` with the panic message and returns `on_panic`.
pub fn guarded<R>(what: &str, on_panic: R, body: impl FnOnce() -> R) -> R {
    install_panic_hook();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_else(|| "(no message)".into());
            tracing::error!("internal error in {what}: {message}; the call failed, Asterisk goes on");
            on_panic
        }
    }
}

/// Replaces the default hook (which writes to stderr, invisible to most operators) by one that
/// logs where the panic happened; `guarded` then logs what failed.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            tracing::error!("panic at {location}");
        }));
    });
}

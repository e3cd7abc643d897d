//! Sends `tracing` events to Asterisk's logger, so res_scale's messages land in the same
//! console, `full` log and verbosity controls as the rest of Asterisk.

use std::ffi::CString;
use std::fmt::Write;
use std::os::raw::c_int;
use std::sync::Once;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::sys;

/// Installs the forwarding subscriber. The library stays mapped across `module unload`, so
/// this runs once per process, not once per load.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(AsteriskLogger);
        // Fails only if something else in this library set one first; then that one stays.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

struct AsteriskLogger;

impl<S: Subscriber> Layer<S> for AsteriskLogger {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let level = match *meta.level() {
            Level::ERROR => sys::__LOG_ERROR,
            Level::WARN => sys::__LOG_WARNING,
            Level::INFO => sys::__LOG_NOTICE,
            Level::DEBUG | Level::TRACE => {
                if !debug_enabled() {
                    return;
                }
                sys::__LOG_DEBUG
            }
        };
        let mut text = TextVisitor(String::new());
        event.record(&mut text);
        write(level as c_int, meta.file().unwrap_or("res_scale"), meta.line().unwrap_or(0), meta.target(), &text.0);
    }
}

fn debug_enabled() -> bool {
    // SAFETY: reads Asterisk's debug globals; callable from any thread.
    unsafe { sys::res_scale_debug_enabled() != 0 }
}

/// One log line through ast_log, with the message passed as an argument of a "%s" format so
/// that a '%' in it is never interpreted.
fn write(level: c_int, file: &str, line: u32, function: &str, message: &str) {
    let file = CString::new(file).unwrap_or_default();
    let function = CString::new(function).unwrap_or_default();
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call;
    // ast_log copies them. The format is a literal "%s\n" with exactly one string argument.
    unsafe {
        sys::ast_log(level, file.as_ptr(), line as c_int, function.as_ptr(), c"%s\n".as_ptr(), message.as_ptr());
    }
}

/// Renders the `message` field first, then other fields as `key=value`.
struct TextVisitor(String);

impl Visit for TextVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}{rest}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

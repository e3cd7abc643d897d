//! Stasis applications: registration in Asterisk and the event callback. The callback runs on
//! an Asterisk thread, so it hands the event to a sink that must not block, and it is counted
//! in flight so that unload can wait until no callback is still running in our code.
//!
//! An ARI client (a WebSocket, say) can register an application of the same name after us.
//! res_stasis then replaces our handler, and tells us with an `ApplicationReplaced` event only
//! because our registration carries data (a token). From then on the application is the
//! client's: we never unregister it, which would deactivate the client's handler. Once the
//! client lets it go (res_stasis unregisters it with the client's socket), we take it back.

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::os::raw::{c_char, c_void};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;
#[cfg(feature = "test-hooks")]
use std::time::Instant;

use res_scale_core::amqp::event::{Event, Seq};
use res_scale_core::consul::apps::StasisApps;

use crate::ast::event_json;
use crate::ast::gate::Gate;
use crate::ast::guard::guarded;
use crate::sys;

/// Receives every event of the applications we registered. Called on Asterisk's threads:
/// implementations copy what they need and return at once.
pub trait EventSink: Send + Sync {
    fn event(&self, app: &str, message: &Message<'_>);
}

/// An event as Asterisk made it, borrowed for the duration of the callback.
pub struct Message<'a> {
    json: *mut sys::ast_json,
    _borrow: PhantomData<&'a sys::ast_json>,
}

impl Message<'_> {
    /// The event as a message body for `app` (None when it is not a JSON object or nests
    /// absurdly deep).
    pub fn to_event(&self, app: Arc<str>, seq: Seq) -> Option<Event> {
        // SAFETY: json is the event Asterisk lent to the callback; it stays live and nobody
        // modifies it until the callback returns, which outlasts `self`.
        unsafe { event_json::to_event(self.json, app, seq) }
    }
}

static SINK: RwLock<Option<Arc<dyn EventSink>>> = RwLock::new(None);
static GATE: Gate = Gate::new();
/// Applications another handler took from us (see the module comment).
static REPLACED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn replaced() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    REPLACED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the event is res_stasis telling us that another handler took the application.
///
/// # Safety
/// `message` must be a live JSON value.
unsafe fn is_replaced(message: *mut sys::ast_json) -> bool {
    // SAFETY: a live JSON value (the caller's promise); object_get returns NULL for a missing
    // member or a non-object, string_get NULL for a non-string; both borrow.
    let kind = unsafe { sys::ast_json_string_get(sys::ast_json_object_get(message, c"type".as_ptr())) };
    // SAFETY: a NUL-terminated string owned by the JSON value, alive during the call.
    !kind.is_null() && unsafe { CStr::from_ptr(kind) } == c"ApplicationReplaced"
}

/// The data every registration carries: an ao2 object without destructor (nothing in it
/// points into this library), made once and kept for the life of the process.
struct Token(*mut c_void);
// SAFETY: an opaque ao2 object that we never touch; res_stasis refcounts it under its locks.
unsafe impl Send for Token {}
// SAFETY: as above.
unsafe impl Sync for Token {}
static TOKEN: OnceLock<Token> = OnceLock::new();

/// Sets (or with `None` clears) where events go.
pub fn set_sink(sink: Option<Arc<dyn EventSink>>) {
    *SINK.write().unwrap_or_else(|e| e.into_inner()) = sink;
}

/// Waits until no callback runs in our code; false if some still did after `timeout`.
pub fn wait_idle(timeout: Duration) -> bool {
    GATE.wait_idle(timeout)
}

unsafe extern "C" fn on_event(_data: *mut c_void, app_name: *const c_char, message: *mut sys::ast_json) {
    #[cfg(feature = "test-hooks")]
    let started = Instant::now();
    let _pass = GATE.enter();
    guarded("a Stasis event callback", (), || {
        if app_name.is_null() || message.is_null() {
            return;
        }
        // SAFETY: Asterisk passes the app's NUL-terminated name, valid during the call.
        let app = unsafe { CStr::from_ptr(app_name) }.to_string_lossy();
        // SAFETY: Asterisk lends a live JSON value for the duration of the call.
        if unsafe { is_replaced(message) } {
            tracing::warn!("Stasis app '{app}' was taken over by another client (an ARI WebSocket, say): its events no longer come to res_scale, and res_scale leaves the app to that client");
            replaced().insert(app.to_string());
        }
        let sink = SINK.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(sink) = sink {
            sink.event(&app, &Message { json: message, _borrow: PhantomData });
        }
    });
    #[cfg(feature = "test-hooks")]
    LAST_CALLBACK.set(started.elapsed());
}

#[cfg(feature = "test-hooks")]
thread_local! {
    /// How long the last callback on this thread took (`inject` reports it).
    static LAST_CALLBACK: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

/// Stasis applications registered through res_stasis.
pub struct AsteriskStasis;

impl StasisApps for AsteriskStasis {
    fn register(&self, name: &str) -> Result<(), String> {
        let c_name = CString::new(name).map_err(|_| "name contains NUL".to_string())?;
        // SAFETY: makes an ao2 object without destructor (or NULL when out of memory).
        let token = TOKEN.get_or_init(|| Token(unsafe { sys::res_scale_app_token() }));
        if token.0.is_null() {
            return Err("out of memory for the registration token".into());
        }
        // SAFETY: valid C string; data is an ao2 object, which res_stasis refs and unrefs; the
        // callback is a plain function that lives as long as the (never unmapped) library.
        let rc = unsafe { sys::stasis_app_register(c_name.as_ptr(), Some(on_event), token.0) };
        if rc != 0 {
            return Err(format!("stasis_app_register returned {rc}"));
        }
        // Ours again (re-registering our own app replaces our previous handler, too).
        replaced().remove(name);
        Ok(())
    }

    fn reclaim(&self, name: &str) -> bool {
        if !replaced().contains(name) {
            return false;
        }
        let Ok(c_name) = CString::new(name) else { return false };
        // SAFETY: valid C string; a lookup in res_stasis's registry, under its lock.
        if unsafe { sys::stasis_app_is_registered(c_name.as_ptr()) } != 0 {
            return false;
        }
        self.register(name).is_ok()
    }

    fn unregister(&self, name: &str) {
        if replaced().remove(name) {
            tracing::info!("Stasis app '{name}' is another client's now; res_scale leaves it registered");
            return;
        }
        if let Ok(c_name) = CString::new(name) {
            // SAFETY: valid C string; unregistering an unknown name is a no-op in res_stasis.
            unsafe { sys::stasis_app_unregister(c_name.as_ptr()) };
        }
    }
}

/// How long one injected event took.
#[cfg(feature = "test-hooks")]
pub struct Injected {
    /// The whole `stasis_app_send` call: res_stasis's dispatch (app lookup, locking) and ours.
    pub send: Duration,
    /// Our callback alone.
    pub callback: Duration,
    /// The scheduler took the CPU away from this thread meanwhile (for another thread or
    /// process): then the times include however long that one ran.
    pub preempted: bool,
    /// The thread took a page fault meanwhile (memory touched for the first time): the
    /// kernel's time is in the times too.
    pub faulted: bool,
    /// The thread gave up the CPU meanwhile (a voluntary switch: it slept, typically waiting
    /// for a lock another thread held).
    pub waited: bool,
}

/// What happened to the calling thread so far: involuntary switches, page faults, voluntary
/// switches.
#[cfg(feature = "test-hooks")]
fn thread_usage() -> [libc::c_long; 3] {
    // SAFETY: getrusage writes the struct we pass; RUSAGE_THREAD is the calling thread.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        [usage.ru_nivcsw, usage.ru_minflt + usage.ru_majflt, usage.ru_nvcsw]
    }
}

/// Hands a benchmark event to an application the way res_stasis delivers events
/// (synchronously, through our callback) and times it. Test builds only: it feeds benchmarks.
///
/// The event is parsed once and sent again and again with a new `seq` and `sent_ns`: parsing
/// a StasisStart-sized event per send took longer than everything res_scale does with it, and
/// a burst should spend its CPU on the path it measures. Sends far apart renew the event first
/// (a fresh deep copy): res_stasis hands the callback an event built just before, not one
/// last touched a millisecond ago, whose cold cache lines would make the callback look slower
/// than it is. Our callback copies what it needs, so reusing the object is safe.
#[cfg(feature = "test-hooks")]
pub struct Injector {
    app: CString,
    event: *mut sys::ast_json,
}

#[cfg(feature = "test-hooks")]
impl Injector {
    /// `json`: the event, a JSON object with integer members `seq` and `sent_ns`.
    pub fn new(app: &str, json: &str) -> Result<Injector, String> {
        let app = CString::new(app).map_err(|_| "NUL in app name")?;
        let json = CString::new(json).map_err(|_| "NUL in JSON")?;
        // SAFETY: a valid C string; the parsed JSON (or NULL) is ours until Drop unrefs it.
        let event = unsafe { sys::ast_json_load_string(json.as_ptr(), std::ptr::null_mut()) };
        if event.is_null() {
            return Err("invalid JSON".into());
        }
        Ok(Injector { app, event })
    }

    /// Replaces the event with a fresh copy of itself, as if just built.
    pub fn renew(&mut self) -> Result<(), String> {
        // SAFETY: self.event is our live JSON object; the copy (NULL if out of memory) takes
        // its place, and the old one is unreffed once nothing points at it.
        unsafe {
            let copy = sys::ast_json_deep_copy(self.event);
            if copy.is_null() {
                return Err("could not copy the event".into());
            }
            sys::ast_json_unref(std::mem::replace(&mut self.event, copy));
        }
        Ok(())
    }

    /// Sends the event as number `seq`, made at `sent_ns` (ns since the epoch).
    pub fn send(&mut self, seq: i64, sent_ns: i64) -> Result<Injected, String> {
        // SAFETY: self.event is our live JSON object; object_set takes over the new integer
        // (and refuses NULL); stasis_app_send borrows the event for the duration of the call.
        unsafe {
            for (key, value) in [(c"seq", seq), (c"sent_ns", sent_ns)] {
                if sys::ast_json_object_set(self.event, key.as_ptr(), sys::ast_json_integer_create(value)) != 0 {
                    return Err(format!("could not set {}", key.to_string_lossy()));
                }
            }
            LAST_CALLBACK.set(Duration::ZERO);
            let before = thread_usage();
            let started = Instant::now();
            let rc = sys::stasis_app_send(self.app.as_ptr(), self.event);
            let send = started.elapsed();
            let after = thread_usage();
            if rc != 0 {
                return Err(format!("stasis_app_send returned {rc} (is '{}' registered?)", self.app.to_string_lossy()));
            }
            Ok(Injected { send, callback: LAST_CALLBACK.get(), preempted: after[0] != before[0], faulted: after[1] != before[1], waited: after[2] != before[2] })
        }
    }
}

#[cfg(feature = "test-hooks")]
impl Drop for Injector {
    fn drop(&mut self) {
        // SAFETY: our reference to the event; stasis_app_send keeps none after it returns.
        unsafe { sys::ast_json_unref(self.event) };
    }
}
